"""The Dask cluster of the distributed topology: Dask's own ``dask scheduler`` and ``dask worker`` programs
from the Merlin runtime, where NVTabular runs the ETL (``recsys etl``, the ETL DAG's task).

Embedded, it is ``settings.dask_workers + 1`` managed processes, each with its log in ``<home>/services/dask/``:

- ``dask-scheduler``: ``dask scheduler`` bound to ``settings.host`` on ``settings.dask_scheduler_port``. Its
  small HTTP server (``/health``, ``/json/identity.json``; the Merlin runtime has no Bokeh, so no dashboard)
  listens on loopback only, on a port the kernel picks; the scheduler writes it into its scheduler file
  (``scheduler.json``, Dask's ``--scheduler-file``), where the health check reads it. So a status poll is one
  HTTP request, not a Merlin interpreter start;
- ``dask-worker-1`` .. ``dask-worker-N``: ``dask worker`` (a nanny and its worker process) with
  ``settings.dask_worker_threads`` threads and ``settings.dask_worker_memory`` of memory each (Dask spills to
  its local directory ``services/dask/<name>/`` past 60 % of it, pauses at 80 %, restarts the worker at 95 %),
  connected to the scheduler's address. They import NVTabular before they register (Dask's ``distributed.worker.preload``). They run the Merlin interpreter of this checkout, so they import
  the same ``recsys`` as the ETL's client, and read the data files at the client's paths (same machine).
  A worker answers when the scheduler lists it by name.

The ETL uses ``settings.dask_scheduler`` (the one place that says which scheduler: an external address,
this cluster, or none: local threads).

Security: Dask has no password authentication; its only protection is TLS with client certificates
(``tls://`` addresses, ``distributed.comm.tls.*`` config). Anyone who reaches the scheduler's port can run
code on the workers. Embedded, everything binds to loopback by default (``settings.host``), which limits that
to the users of this machine. A cluster on a network must use TLS with certificates (or a private network
only the ETL's hosts reach): docs/production.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from recsys.errors import ServiceError
from recsys.stack.service import LOOPBACK, ManagedProcess, Service, port_is_open

SCHEDULER = "dask-scheduler"


def worker_names(count: int) -> list[str]:
    """``dask-worker-1`` .. ``dask-worker-<count>``: the workers' names in the scheduler and their log files."""
    return [f"dask-worker-{n}" for n in range(1, count + 1)]


@dataclass
class DaskService(Service):
    name: str = "dask"
    start_timeout: float = 120.0  # a worker imports NVTabular and TensorFlow before it registers (slow on a busy machine)
    port_setting: str = "dask_scheduler_port"

    def __post_init__(self) -> None:
        if self.embedded:
            self.processes = [ManagedProcess(SCHEDULER, self._scheduler_command(), self.directory,
                                             health=self._scheduler_answering)]
            for name in worker_names(self.settings.dask_workers):
                self.processes.append(ManagedProcess(name, self._worker_command(name), self.directory,
                                                     health=lambda name=name: name in self._worker_names()))

    # --- layout -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.settings.dask_scheduler or ""

    @property
    def scheduler_file(self) -> Path:
        """Written by the scheduler at start: its address and its HTTP server's port (``services.dashboard``)."""
        return self.directory / "scheduler.json"

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.dask_scheduler_port

    def _dask(self) -> str:
        """The ``dask`` command of the Merlin runtime (next to its interpreter; not resolved: the venv's bin/)."""
        return str(Path(self.settings.merlin_python).parent / "dask")

    def _scheduler_command(self) -> list[str]:
        s = self.settings
        return [self._dask(), "scheduler", "--host", s.host, "--port", str(s.dask_scheduler_port),
                "--no-dashboard", "--dashboard-address", f"{LOOPBACK}:0",
                "--scheduler-file", str(self.scheduler_file), "--no-show"]

    def _worker_command(self, name: str) -> list[str]:
        s = self.settings
        return [self._dask(), "worker", self.url, "--name", name, "--nworkers", "1",
                "--nthreads", str(s.dask_worker_threads), "--memory-limit", s.dask_worker_memory,
                "--local-directory", str(self.directory / name), "--host", s.host,
                "--no-dashboard", "--dashboard-address", f"{LOOPBACK}:0"]

    def prepare(self) -> None:
        """Check the Merlin runtime has ``dask``; the programs' environment: the settings, that runtime first."""
        dask = Path(self._dask())
        if not dask.exists():
            raise ServiceError(
                f"the embedded Dask cluster runs from the Merlin runtime, but {dask} does not exist; build it "
                "(`make envs`), set RECSYS_MERLIN_PYTHON, or RECSYS_DASK_SCHEDULER_ADDRESS to use an external cluster"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        env = self.settings.child_env()
        env["PATH"] = os.pathsep.join([str(dask.parent), env.get("PATH", "")])
        # A control-plane virtualenv's markers must not leak into the Merlin runtime's programs.
        for name in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"):
            env.pop(name, None)
        self.processes[0].env = env
        for worker in self.processes[1:]:
            # NVTabular (and the TensorFlow it imports: 3-15 s) at start, before the worker registers: the first
            # ETL after `stack up` does not pay it, and `up` returns when the workers are ready. Through Dask's
            # config, not `--preload`: the CLI imports a --preload module in the nanny too (+400 MiB each).
            worker.env = {**env, "DASK_DISTRIBUTED__WORKER__PRELOAD": '["nvtabular"]'}

    def start(self) -> None:
        if self.embedded and not self.processes[0].running():
            self.scheduler_file.unlink(missing_ok=True)  # a stale one would name the last run's HTTP port
        super().start()

    # --- health -------------------------------------------------------------------------
    def _identity(self) -> Optional[dict[str, Any]]:
        """The embedded scheduler's ``/json/identity.json`` (address, workers), or None if it does not answer."""
        import httpx

        try:
            port = json.loads(self.scheduler_file.read_text())["services"]["dashboard"]
            identity = httpx.get(f"http://{LOOPBACK}:{port}/json/identity.json", timeout=2.0).json()
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            return None
        # the port is the kernel's choice: make sure it is still our scheduler that answers there
        return identity if identity.get("address", "").endswith(f":{self.settings.dask_scheduler_port}") else None

    def _scheduler_answering(self) -> bool:
        return self._identity() is not None

    def _worker_names(self) -> list[str]:
        identity = self._identity() or {}
        return sorted(str(w.get("name")) for w in identity.get("workers", {}).values())

    def answering(self) -> bool:
        """Embedded: the scheduler answers and lists all its workers. External: its port accepts connections."""
        if self.embedded:
            return set(worker_names(self.settings.dask_workers)) <= set(self._worker_names())
        from urllib.parse import urlsplit

        address = urlsplit(self.url)
        return bool(address.hostname and address.port and port_is_open(address.hostname, address.port))

    def status(self) -> dict[str, Any]:
        report = super().status()
        if self.embedded:
            report["workers"] = self._worker_names()
            report["logs"] = str(self.directory)
        return report
