"""The distributed topology (``RECSYS_TOPOLOGY=distributed``), one per test session.

``topology_settings`` (session): settings of a fresh home with the distributed topology on free ports,
``os.environ`` pointing at them. It starts nothing: a test starts what it needs with
``stack.up(topology_settings, only=[...])`` (idempotent, so services started by an earlier test are
shared by the later ones) and the fixture stops every service of the topology at the end of the session.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from conftest import _CLEARED


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports (a Redis Cluster's nodes, Triton replicas' ports)."""
    import socket

    from recsys.stack.service import free_port

    for _ in range(100):
        first = free_port()
        try:
            for port in range(first + 1, first + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports after 100 tries")


@pytest.fixture(scope="session")
def topology_settings(tmp_path_factory) -> Iterator["Settings"]:  # noqa: F821
    from recsys import stack
    from recsys.settings import load_settings
    from recsys.stack.service import free_port
    from shared_helpers import patched_environ

    home = tmp_path_factory.mktemp("recsys-topology")
    triton = free_port_block(6)  # two replicas: http, grpc, metrics each
    env = {
        **dict.fromkeys(_CLEARED),  # unset: the topology's own services and secrets
        "RECSYS_HOME": str(home),
        "RECSYS_HOST": "127.0.0.1",
        "RECSYS_TOPOLOGY": "distributed",
        "RECSYS_REDIS_PORT": str(free_port_block(6)),  # 3 primaries + 3 replicas
        "RECSYS_POSTGRES_PORT": str(free_port()),
        "RECSYS_CELERY_BROKER_PORT": str(free_port()),
        "RECSYS_DASK_SCHEDULER_PORT": str(free_port()),
        "RECSYS_MLFLOW_PORT": str(free_port()),
        "RECSYS_AIRFLOW_PORT": str(free_port()),
        "RECSYS_API_PORT": str(free_port()),
        "RECSYS_EVENTS_METRICS_PORT": str(free_port()),
        "RECSYS_TRITON_HTTP_PORT": str(triton),
        "RECSYS_TRITON_GRPC_PORT": str(triton + 1),
        "RECSYS_TRITON_METRICS_PORT": str(triton + 2),
    }
    with patched_environ(env):
        settings = load_settings()
        try:
            yield settings
        finally:
            stack.down(settings)
