"""The distributed topology (``RECSYS_TOPOLOGY=distributed``), one per test session.

``topology`` (session): a :class:`Topology` of a fresh home with the distributed topology on free ports,
``os.environ`` pointing at its settings. It starts nothing: a test starts what it needs with
``topology.up("redis", ...)`` (idempotent, so services started by an earlier test are shared by the later
ones), and every service started that way is stopped at the end of the session.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from recsys.stack.service import free_port_block  # the first of N consecutive free ports


class Topology:
    """The session's distributed topology: its settings and the services tests started."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.started: list[str] = []

    def up(self, *names: str):
        """Start these services (and wait until they answer); returns the settings."""
        from recsys import stack

        stack.up(self.settings, only=names)
        self.started += [n for n in names if n not in self.started]
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
