from pathlib import Path

import pytest

from recsys.settings import load_settings


def test_defaults_are_embedded_services_on_loopback(tmp_path):
    s = load_settings({"RECSYS_HOME": str(tmp_path)})
    assert s.home == tmp_path
    assert s.redis == "redis://127.0.0.1:6390/0"
    assert s.mlflow_uri == "http://127.0.0.1:5050"
    assert s.airflow == "http://127.0.0.1:8280"
    assert s.embedded == {"postgres": True, "redis": True, "broker": True, "dask": True, "mlflow": True, "airflow": True,
                          "triton": True, "api": True, "events": True}
    assert s.topology == "embedded" and not s.distributed
    assert s.api == "http://127.0.0.1:8310"
    assert s.triton_http == "http://127.0.0.1:8300"
    assert s.landing == tmp_path / "landing"
    assert s.features_root == tmp_path / "features"


def test_external_services_come_from_settings():
    s = load_settings(
        {
            "RECSYS_REDIS_URL": "rediss://:pw@redis.internal:6380/2",
            "MLFLOW_TRACKING_URI": "https://mlflow.internal",
            "RECSYS_AIRFLOW_URL": "https://airflow.internal/",
            "RECSYS_TRITON_URL": "http://triton.internal:8000",
        }
    )
    assert s.redis == "rediss://:pw@redis.internal:6380/2"
    assert s.mlflow_uri == "https://mlflow.internal"
    assert s.airflow == "https://airflow.internal"
    assert s.embedded == {"postgres": True, "redis": False, "broker": True, "dask": True, "mlflow": False, "airflow": False,
                          "triton": False, "api": True, "events": True}
    assert s.triton_http == "http://triton.internal:8000"


def test_types_are_parsed_and_bad_values_name_the_variable():
    s = load_settings({"RECSYS_EPOCHS": "7", "RECSYS_LEARNING_RATE": "0.1", "RECSYS_MERLIN_PYTHON": "~/x/python"})
    assert s.epochs == 7 and s.learning_rate == 0.1
    assert s.merlin_python == Path("~/x/python").expanduser()
    with pytest.raises(ValueError, match="RECSYS_EPOCHS='many'"):
        load_settings({"RECSYS_EPOCHS": "many"})


def test_secrets_are_masked_and_env_round_trips(tmp_path):
    s = load_settings({"RECSYS_HOME": str(tmp_path), "RECSYS_AIRFLOW_PASSWORD": "s3cret", "RECSYS_REDIS_PORT": "7001"})
    assert s.public_dict()["airflow_password"] == "***"
    env = s.as_env()
    assert env["RECSYS_REDIS_PORT"] == "7001" and "MLFLOW_TRACKING_URI" not in env
    again = load_settings(env)
    assert again == s


def test_urls_with_passwords_are_masked():
    s = load_settings({"RECSYS_REDIS_URL": "rediss://:hunter2@redis.internal:6380/0"})
    assert s.public_dict()["redis_url"] == "rediss://:***@redis.internal:6380/0"
    assert s.redis == "rediss://:hunter2@redis.internal:6380/0"  # the real one is still used


def test_settings_command_lists_every_variable_with_its_meaning(capsys):
    import json
    from dataclasses import fields

    from recsys.cli import main
    from recsys.settings import Settings, env_name
    from recsys.settings_cli import setting_docs

    # every setting is documented where it is declared (the docstring under its field) ...
    docs = setting_docs()
    assert [f.name for f in fields(Settings) if not docs.get(f.name, "").strip()] == []
    assert "State directory" in docs["home"]
    # ... and `recsys settings` lists each one's variable with that meaning
    assert main(["settings", "--json"]) == 0
    rows = {r["variable"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {env_name(f.name) for f in fields(Settings)}
    assert {name: rows[env_name(name)]["meaning"] for name in docs} == docs
    assert "RECSYS_HOME" in rows and "MLFLOW_TRACKING_URI" in rows and "RECSYS_CANDIDATES_K" in rows
    assert "Dask" in rows["RECSYS_DASK_SCHEDULER_ADDRESS"]["meaning"]


# variable=value -> what the one-line error must say (docs/bad-inputs.md lists these cases)
BAD_SETTINGS = {
    "RECSYS_API_PORT=abc": "setting RECSYS_API_PORT='abc' is not a valid int",
    "RECSYS_REDIS_PORT=70000": "setting RECSYS_REDIS_PORT=70000 must be at most 65535 (a port is 1 to 65535)",
    "RECSYS_TRITON_HTTP_PORT=0": "setting RECSYS_TRITON_HTTP_PORT=0 must be at least 1 and at most 65535",
    "RECSYS_EPOCHS=-1": "setting RECSYS_EPOCHS=-1 must be at least 1",
    "RECSYS_ONLINE_REFRESH_READ_BUDGET=-2": "setting RECSYS_ONLINE_REFRESH_READ_BUDGET=-2.0 must be at least 0",
    "RECSYS_VALIDATION_SPLIT=random": "setting RECSYS_VALIDATION_SPLIT='random' is not one of time, user, auto",
    "RECSYS_FAISS_INDEX=hnsw": "setting RECSYS_FAISS_INDEX='hnsw' is not one of flat, ivf, auto",
    "RECSYS_REFIT=maybe": "setting RECSYS_REFIT='maybe' is not a valid bool",
    "RECSYS_DROPOUT=1.5": "setting RECSYS_DROPOUT=1.5 must be at most 1",
    "RECSYS_LEARNING_RATE=0": "setting RECSYS_LEARNING_RATE=0.0 must be above 0",
    "RECSYS_EVENTS_MAX_AGE_HOURS=nan": "setting RECSYS_EVENTS_MAX_AGE_HOURS=nan is not a finite number",
    "RECSYS_RECOMMEND_DEFAULT_K=500": "setting RECSYS_RECOMMEND_DEFAULT_K=500 is above RECSYS_RECOMMEND_MAX_K=100",
    "RECSYS_EVENT_TYPES=,": "setting RECSYS_EVENT_TYPES=',' names no event type",
}


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """A clean settings environment for one in-process CLI run: no RECSYS_* of the caller's shell."""
    import os

    from recsys.settings import get_settings

    for variable in [v for v in os.environ if v.startswith("RECSYS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize("assignment", list(BAD_SETTINGS))
def test_a_bad_setting_is_one_line_naming_the_variable_and_the_command_does_nothing(assignment, cli_env, tmp_path, capsys):
    from recsys.cli import main
    from recsys.errors import ConfigError
    from recsys.settings import SettingError

    variable, value = assignment.split("=", 1)
    with pytest.raises(SettingError) as caught:
        load_settings({variable: value})
    assert isinstance(caught.value, ConfigError) and caught.value.problems == [BAD_SETTINGS[assignment]]

    # through the CLI: a valid ingest (into the settings' data root) is refused, no data version is written
    cli_env.setenv(variable, value)
    assert main(["data", "ingest", str(tiny_landing(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {BAD_SETTINGS[assignment]}\n"
    assert not (tmp_path / "home" / "data").exists()


def tiny_landing(tmp_path: Path) -> Path:
    """A valid landing folder of one interaction."""
    folder = tmp_path / "landing"
    folder.mkdir()
    (folder / "users.csv").write_text("user_id\n1\n")
    (folder / "items.csv").write_text("item_id\n2\n")
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\n1,2,2024-01-01\n")
    return folder


def test_the_same_ingest_with_valid_settings_writes_a_data_version(cli_env, tmp_path, capsys):
    from recsys.cli import main

    # the control of the test above: its "no data version" is what the bad setting prevented
    assert main(["data", "ingest", str(tiny_landing(tmp_path))]) == 0
    assert len(list((tmp_path / "home" / "data").iterdir())) == 1


def test_every_bad_setting_is_listed_at_once():
    with pytest.raises(ValueError) as caught:  # still a ValueError for callers that predate SettingError
        load_settings({"RECSYS_API_PORT": "abc", "RECSYS_EPOCHS": "0", "RECSYS_FAISS_INDEX": "hnsw"})
    assert str(caught.value) == (
        "setting RECSYS_API_PORT='abc' is not a valid int; setting RECSYS_EPOCHS=0 must be at least 1; "
        "setting RECSYS_FAISS_INDEX='hnsw' is not one of flat, ivf, auto"
    )


def test_replace_cannot_make_invalid_settings():
    from recsys.settings import SettingError, replace

    with pytest.raises(SettingError, match="RECSYS_API_PORT=-1 must be at least 1"):
        replace(load_settings({}), api_port=-1)


def test_an_unknown_variable_is_a_warning_naming_the_closest_setting(cli_env, capsys):
    from recsys.cli import main
    from recsys.settings import unknown_variables

    cli_env.setenv("RECSYS_EPOCH", "3")  # a typo of RECSYS_EPOCHS
    cli_env.setenv("RECSYS_ZZZ", "1")
    cli_env.setenv("RECSYS_DEBUG", "0")  # read by the CLI itself: not a typo
    assert main(["settings", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "warning: RECSYS_EPOCH is not a setting and is ignored (did you mean RECSYS_EPOCHS?)",
        "warning: RECSYS_ZZZ is not a setting and is ignored (`recsys settings` lists them)",
    ]
    assert '"value": 30' in captured.out.split('"RECSYS_EPOCHS"')[1].split("}")[0]  # the typo changed nothing
    assert unknown_variables({"RECSYS_EPOCHS": "3", "RECSYS_HOME": "/x", "PATH": "/bin"}) == []


def test_a_redis_url_where_nothing_answers_is_one_line_naming_it_without_its_password(cli_env, capsys):
    from recsys.cli import main
    from recsys.stack.service import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # a free port: nobody answers there
    cli_env.setenv("RECSYS_REDIS_URL", url)
    assert main(["online", "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Redis at {url.replace('hunter2', '***')} is not answering (") and "hunter2" not in err
    assert "RECSYS_REDIS_URL" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_triton_endpoints_one_per_replica():
    from recsys.serving.triton_client import endpoints
    from recsys.settings import SettingError

    ports = {"RECSYS_TRITON_HTTP_PORT": "9000", "RECSYS_TRITON_GRPC_PORT": "9001", "RECSYS_TRITON_METRICS_PORT": "9002"}
    assert load_settings(ports).triton_endpoints == (("http://127.0.0.1:9000", "127.0.0.1:9001"),)
    distributed = load_settings({**ports, "RECSYS_TOPOLOGY": "distributed"})  # two replicas, ports + 3n
    assert distributed.triton_endpoints == (("http://127.0.0.1:9000", "127.0.0.1:9001"),
                                            ("http://127.0.0.1:9003", "127.0.0.1:9004"))
    assert distributed.triton_ports(1) == (9003, 9004, 9005)
    assert load_settings({**ports, "RECSYS_TOPOLOGY": "distributed", "RECSYS_TRITON_REPLICAS": "3"}).triton_replica_count == 3
    external = load_settings({"RECSYS_TRITON_URL": "http://triton-1:8300, https://triton-2:8443/", "RECSYS_TRITON_GRPC_PORT": "8301"})
    assert external.triton_endpoints == (("http://triton-1:8300", "triton-1:8301"), ("https://triton-2:8443", "triton-2:8301"))
    assert external.triton_http == "http://triton-1:8300" and not external.embedded["triton"]
    second = endpoints(external)[1]
    assert (second.host, second.http_port, second.grpc_port, second.tls) == ("triton-2", 8443, 8301, True)
    assert str(second) == "Triton at https://triton-2:8443 (replica 2 of 2)"
    with pytest.raises(SettingError, match="RECSYS_TRITON_REPLICAS=2: the last replica's ports"):
        load_settings({"RECSYS_TRITON_HTTP_PORT": "65534", "RECSYS_TOPOLOGY": "distributed"})
    with pytest.raises(SettingError, match="RECSYS_TRITON_REPLICAS=-1 must be at least 0"):
        load_settings({"RECSYS_TRITON_REPLICAS": "-1"})
