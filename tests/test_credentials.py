"""recsys.credentials: generated secrets are private from their first byte, created once even when
several processes ask at the same moment, and give way to the operator's setting."""

from __future__ import annotations

import multiprocessing
import stat

import pytest

from recsys import credentials
from recsys.errors import ConfigError, ServiceError
from recsys.settings import load_settings, replace


@pytest.fixture
def settings(tmp_path):
    return load_settings({"RECSYS_HOME": str(tmp_path)})


def _ensure_in_child(home: str, queue) -> None:
    queue.put(credentials.ensure(load_settings({"RECSYS_HOME": home}), credentials.REDIS_PASSWORD))


def test_a_generated_secret_is_private_long_and_stable(settings):
    value = credentials.ensure(settings, credentials.AIRFLOW_JWT_SECRET)
    path = credentials.AIRFLOW_JWT_SECRET.path(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(value.encode()) >= 64
    assert credentials.ensure(settings, credentials.AIRFLOW_JWT_SECRET) == value
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_processes_racing_for_a_new_secret_all_get_the_same_one(settings):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_ensure_in_child, args=(str(settings.home), queue)) for _ in range(6)]
    for child in children:
        child.start()
    values = {queue.get(timeout=30) for _ in children}
    for child in children:
        child.join(timeout=30)
    assert values == {credentials.read(credentials.REDIS_PASSWORD.path(settings))}


def test_the_setting_wins_over_the_file_and_status_names_the_variable(settings):
    credentials.ensure(settings, credentials.REDIS_PASSWORD)
    chosen = replace(settings, redis_password="chosen-by-operator")
    assert credentials.ensure(chosen, credentials.REDIS_PASSWORD) == "chosen-by-operator"
    assert credentials.source(chosen, credentials.REDIS_PASSWORD) == "RECSYS_REDIS_PASSWORD"
    assert credentials.source(settings, credentials.REDIS_PASSWORD) == str(credentials.REDIS_PASSWORD.path(settings))


def test_a_file_that_lost_its_mode_is_made_private_again(settings):
    credentials.ensure(settings, credentials.TRITON_CONTROL_KEY)
    path = credentials.TRITON_CONTROL_KEY.path(settings)
    path.chmod(0o644)  # e.g. restored from a backup
    credentials.ensure(settings, credentials.TRITON_CONTROL_KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_empty_secret_file_names_itself(settings):
    path = credentials.MLFLOW_PASSWORD.path(settings)
    path.parent.mkdir(parents=True)
    path.write_text("\n")
    with pytest.raises(ServiceError, match=str(path)):
        credentials.ensure(settings, credentials.MLFLOW_PASSWORD)


def test_an_external_api_without_its_token_is_a_configuration_error(settings):
    external = replace(settings, api_url="http://127.0.0.1:1")
    assert not external.embedded["api"]
    with pytest.raises(ConfigError, match="RECSYS_API_TOKEN"):
        credentials.client_value(external, credentials.API_TOKEN)
    assert credentials.client_value(replace(settings, redis_url="redis://127.0.0.1:1"), credentials.REDIS_PASSWORD) is None


def test_write_private_replaces_atomically_and_privately(tmp_path):
    path = tmp_path / "conf" / "redis.conf"
    credentials.write_private(path, "requirepass one\n")
    credentials.write_private(path, "requirepass two\n")
    assert path.read_text() == "requirepass two\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["redis.conf"]
