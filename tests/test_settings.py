from pathlib import Path

import pytest

from recsys.settings import load_settings


def test_defaults_are_embedded_services_on_loopback(tmp_path):
    s = load_settings({"RECSYS_HOME": str(tmp_path)})
    assert s.home == tmp_path
    assert s.redis == "redis://127.0.0.1:6390/0"
    assert s.mlflow_uri == "http://127.0.0.1:5050"
    assert s.airflow == "http://127.0.0.1:8280"
    assert s.embedded == {"redis": True, "mlflow": True, "airflow": True, "triton": True, "api": True, "events": True}
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
    assert s.embedded == {"redis": False, "mlflow": False, "airflow": False, "triton": False, "api": True, "events": True}
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
