"""The distributed topology (``RECSYS_TOPOLOGY=distributed``), one per test session.

``topology`` (session): a :class:`Topology` of a fresh home with the distributed topology on free ports,
``os.environ`` pointing at its settings. It starts nothing: a test starts what it needs with
``topology.up("redis", ...)`` (idempotent, so services started by an earlier test are shared by the later
ones), and every service started that way is stopped at the end of the session.
"""

from __future__ import annotations

from typing import Iterator

import pytest



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


class Topology:
    """The session's distributed topology: its settings and the services tests started."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.started: list[str] = []

    def up(self, *names: str):
        """Start these services (and wait until they answer); returns the settings."""
        from recsys import stack

        # Recorded first: a service that fails to start must not leave the others running after the session.
        self.started += [n for n in names if n not in self.started]
        stack.up(self.settings, only=names)
        return self.settings


@pytest.fixture(scope="session")
def topology(tmp_path_factory) -> Iterator[Topology]:
    from recsys import stack
    from recsys.settings import load_settings
    from recsys.stack.service import free_port
    from shared_helpers import CLEARED_SETTINGS, patched_environ

    home = tmp_path_factory.mktemp("recsys-topology")
    triton = free_port_block(6)  # two replicas: http, grpc, metrics each
    env = {
        **dict.fromkeys(CLEARED_SETTINGS),  # unset: the topology's own services and secrets
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
        running = Topology(load_settings())
        try:
            yield running
        finally:
            if running.started:
                stack.down(running.settings, only=running.started)
