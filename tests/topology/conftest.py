"""The distributed topology (``RECSYS_TOPOLOGY=distributed``), one per test session.

``topology`` (session): a :class:`Topology` of a fresh home with the distributed topology on free ports,
``os.environ`` pointing at its settings. It starts nothing: a test starts what it needs with
``topology.up("redis", ...)`` (idempotent, so services started by an earlier test are shared by the later
ones), and every service started that way is stopped at the end of the session.
"""

from __future__ import annotations

from typing import Iterator

import pytest


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
    from shared_helpers import CLEARED_SETTINGS, patched_environ

    home = tmp_path_factory.mktemp("recsys-topology")
    env = {
        **dict.fromkeys(CLEARED_SETTINGS),  # unset: the topology's own services and secrets
        "RECSYS_HOME": str(home),
        "RECSYS_HOST": "127.0.0.1",
        "RECSYS_TOPOLOGY": "distributed",
        **stack.free_ports_env(distributed=True),
        # small and quick models (as tests/stack/test_loop.py); no refit: one training per model
        "RECSYS_EPOCHS": "1", "RECSYS_EMBEDDING_DIM": "16", "RECSYS_BATCH_SIZE": "512", "RECSYS_LEARNING_RATE": "0.005",
        "RECSYS_REFIT": "false",
        # no time-triggered refresh in the middle of a test (the features Asset starts one)
        "RECSYS_ONLINE_REFRESH_SCHEDULE": "0 0 1 1 *",
    }
    with patched_environ(env):
        running = Topology(load_settings())
        try:
            yield running
        finally:
            if running.started:
                stack.down(running.settings, only=running.started)
