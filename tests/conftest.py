"""Shared fixtures: a real local stack in a throw-away home, on free ports.

``stack_settings`` (session): embedded Redis and MLflow, started once for the whole test session.
``airflow_settings`` (session): the same home plus the embedded Airflow (slow to start: ask for it
only in tests that need the API server, scheduler and dag-processor).

Both runtimes import this file (the Merlin runtime runs tests/data, tests/features, ...), so it
imports nothing heavy at module level; the stack is imported inside the fixtures.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest



@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory) -> Iterator["Settings"]:  # noqa: F821
    """Settings of a fresh home whose embedded Redis and MLflow are running.

    ``os.environ`` points at them for the whole session (RECSYS_HOME, the ports,
    MLFLOW_TRACKING_URI), and ``get_settings()`` returns the same values.
    """
    from recsys import stack
    from recsys.settings import get_settings, load_settings
    from recsys.stack.service import free_port
    from shared_helpers import CLEARED_SETTINGS, patched_environ, triton_ports_env

    home = tmp_path_factory.mktemp("recsys-home")
    env = {
        **dict.fromkeys(CLEARED_SETTINGS),  # unset
        "RECSYS_HOME": str(home),
        "RECSYS_HOST": "127.0.0.1",
        "RECSYS_REDIS_PORT": str(free_port()),
        "RECSYS_MLFLOW_PORT": str(free_port()),
        "RECSYS_AIRFLOW_PORT": str(free_port()),
        "RECSYS_API_PORT": str(free_port()),
        "RECSYS_EVENTS_METRICS_PORT": str(free_port()),
        # Triton is not started here (tests/serving does), but its ports must never be a running demo's.
        **triton_ports_env(),
    }
    with patched_environ(env):
        settings = load_settings()
        try:
            stack.up(settings, only=["redis", "mlflow"])
            # MLflow's own variables, for code that uses the mlflow library's defaults: the URI, and the
            # user and password of the embedded server's basic auth (children started by tests inherit them).
            os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_uri
            # The services' generated secrets as settings: tests often give the shared services a
            # settings object of another home (replace(stack_settings, home=...)), whose own secret
            # files would not be these services'. Children (tasks, Triton, the API) inherit them.
            from recsys import credentials

            os.environ["RECSYS_REDIS_PASSWORD"] = credentials.ensure(settings, credentials.REDIS_PASSWORD)
            os.environ["MLFLOW_TRACKING_PASSWORD"] = credentials.ensure(settings, credentials.MLFLOW_PASSWORD)
            os.environ["RECSYS_TRITON_CONTROL_KEY"] = credentials.ensure(settings, credentials.TRITON_CONTROL_KEY)
            get_settings.cache_clear()
            from recsys.settings import replace
            from recsys.tracking.runs import authenticate

            # (not load_settings(): MLFLOW_TRACKING_URI in the environment would make MLflow look
            # external, and the `stack.down` below would leave the embedded server running)
            with_secrets = replace(
                settings,
                redis_password=os.environ["RECSYS_REDIS_PASSWORD"],
                mlflow_tracking_password=os.environ["MLFLOW_TRACKING_PASSWORD"],
                triton_control_key=os.environ["RECSYS_TRITON_CONTROL_KEY"],
            )
            authenticate(with_secrets)
            yield with_secrets
        finally:
            stack.down(settings)


@pytest.fixture(scope="session")
def airflow_settings(stack_settings) -> Iterator["Settings"]:  # noqa: F821
    """``stack_settings`` plus the embedded Airflow (API server, scheduler, dag-processor, triggerer).

    Talk to it with ``recsys.stack.airflow_client.AirflowClient.from_settings(airflow_settings)``;
    run the ``airflow`` CLI against it with ``recsys.stack.airflow.airflow_env(airflow_settings)``.
    """
    from recsys import stack

    try:
        stack.up(stack_settings, only=["airflow"])
        yield stack_settings
    finally:
        stack.down(stack_settings, only=["airflow"])


@pytest.fixture
def redis_client(stack_settings):
    """A redis-py client of the session's Redis."""
    from recsys.online.redis_store import client as redis_client_of

    client = redis_client_of(stack_settings)
    yield client
    client.close()


def pytest_collection_modifyitems(config, items):
    """The distributed topology's tests (tests/topology) run last: their session fixture points ``os.environ`` at
    the topology's services and secrets until the session ends (its services are shared by all its modules), so a
    test after them would find MLflow's password and the home of the topology instead of ``stack_settings``'."""
    items.sort(key=lambda item: item.path.parent.name == "topology")  # stable: the order within each group stays
