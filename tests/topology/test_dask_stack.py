"""The distributed topology's Dask cluster as a service of the stack: which scheduler the ETL uses, what
``recsys stack status`` says, loopback only, a busy port and an external scheduler named clearly."""

from __future__ import annotations

import dataclasses
import socket

import psutil
import pytest

from recsys.errors import ServiceError
from recsys.settings import load_settings
from recsys.stack import services
from recsys.stack.dask import DaskService
from shared_helpers import patched_environ


def test_the_etl_uses_the_address_setting_else_the_embedded_cluster_else_local_threads():
    with patched_environ({"RECSYS_TOPOLOGY": None, "RECSYS_DASK_SCHEDULER_ADDRESS": None,
                          "RECSYS_HOST": "127.0.0.1", "RECSYS_DASK_SCHEDULER_PORT": "8330"}):
        embedded = load_settings()
    assert embedded.dask_scheduler is None  # embedded topology: local threads
    assert "dask" not in [s.name for s in services(embedded)]
    distributed = dataclasses.replace(embedded, topology="distributed")
    assert distributed.dask_scheduler == "tcp://127.0.0.1:8330"
    external = dataclasses.replace(distributed, dask_scheduler_address="tls://dask.example:8786")
    assert external.dask_scheduler == "tls://dask.example:8786" and not external.embedded["dask"]
    assert dataclasses.replace(embedded, dask_scheduler_address="tcp://10.0.0.5:8786").dask_scheduler == "tcp://10.0.0.5:8786"


def test_a_worker_memory_that_is_no_amount_is_refused():
    from recsys.settings import SettingError

    with patched_environ({"RECSYS_DASK_WORKER_MEMORY": "4 lots"}), pytest.raises(SettingError, match="DASK_WORKER_MEMORY"):
        load_settings()


@pytest.mark.slow
def test_status_names_the_workers_and_every_port_is_on_loopback(topology):
    s = topology.up("dask")
    service = DaskService(s)
    report = service.status()  # what `recsys stack status` shows for dask
    assert report["answering"] and report["embedded"]
    assert report["url"] == f"tcp://127.0.0.1:{s.dask_scheduler_port}"
    assert report["workers"] == ["dask-worker-1", "dask-worker-2"]
    assert report["log"] == str(s.services_root / "dask" / "dask-scheduler.log")
    for name in ("dask-scheduler", "dask-worker-1", "dask-worker-2"):
        assert (s.services_root / "dask" / f"{name}.log").stat().st_size > 0
    listening = [c.laddr for pid in service.all_pids() for c in psutil.Process(pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 5  # scheduler + its HTTP server, each worker's nanny and worker
    assert {address.ip for address in listening} == {"127.0.0.1"}, listening


@pytest.mark.slow
def test_an_external_scheduler_is_checked_and_a_dead_one_named(topology, tmp_path):
    s = topology.up("dask")
    external = dataclasses.replace(s, home=tmp_path, dask_scheduler_address=s.dask_scheduler)
    service = DaskService(external)
    assert not service.embedded and service.processes == [] and service.answering()
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        gone = dataclasses.replace(external, dask_scheduler_address=f"tcp://127.0.0.1:{unused.getsockname()[1]}")
    with pytest.raises(ServiceError, match="external dask at tcp://127.0.0.1:[0-9]+ is not answering"):
        DaskService(gone).up()


def test_a_busy_scheduler_port_names_its_setting(tmp_path):
    from recsys.stack.service import free_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        with patched_environ({"RECSYS_HOME": str(tmp_path), "RECSYS_HOST": "127.0.0.1", "RECSYS_TOPOLOGY": "distributed",
                              "RECSYS_DASK_SCHEDULER_ADDRESS": None,
                              "RECSYS_DASK_SCHEDULER_PORT": str(busy.getsockname()[1])}):
            service = DaskService(load_settings())
        with pytest.raises(ServiceError, match="RECSYS_DASK_SCHEDULER_PORT"):
            service.start()
    assert not any(proc.running() for proc in service.processes)
