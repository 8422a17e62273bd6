"""The local stack with real processes: Redis, MLflow and Airflow started, used, restarted, stopped."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from recsys import stack
from recsys.errors import ServiceError
from recsys.settings import load_settings, replace
from recsys.stack.service import ManagedProcess, free_port
from shared_helpers import patched_environ, triton_ports


PROJECT_DAGS = {"recsys_etl", "recsys_feature_refresh", "recsys_train", "recsys_publish", "recsys_batch_recommendations",
                "recsys_drift"}


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture()
def own_settings(tmp_path):
    """A home and ports of its own, so stopping this stack cannot disturb the shared one (stopped after
    the test whatever happened, so a failed test leaves no service running)."""
    settings = load_settings(
        {},
        home=tmp_path / "home",
        redis_port=free_port(),
        mlflow_port=free_port(),
        airflow_port=free_port(),
        api_port=free_port(),
        events_metrics_port=free_port(),
        **triton_ports(),
    )
    yield settings
    stack.down(settings)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_up_use_restart_down_with_all_services(own_settings, tmp_path, capsys):
    s = own_settings
    began = time.monotonic()
    timings = stack.up(s)
    elapsed = time.monotonic() - began
    with capsys.disabled():
        print(f"\n[stack] up from scratch: {elapsed:.1f} s; answering after {timings}")

    report = stack.status(s)
    assert {name: r["answering"] for name, r in report.items()} == {
        "redis": True, "mlflow": True, "airflow": True, "triton": True, "api": True, "events": True}
    assert all(r["embedded"] and r["pid"] for r in report.values())
    assert all(c["answering"] and c["pid"] for c in report["airflow"]["components"].values())
    assert report["redis"]["log"] == str(s.services_root / "redis" / "redis.log")
    # the HTTP API: its URL, and the file holding the token it generated (private, like Airflow's password)
    from recsys.api.token import token_file

    assert report["api"]["url"] == s.api and report["api"]["token_file"] == str(token_file(s))
    assert stat.S_IMODE(token_file(s).stat().st_mode) == 0o600
    assert report["events"]["log"] == str(s.services_root / "events" / "events.log")

    # Redis: real commands through redis-py, authenticated with the generated password (0600)
    import redis

    from recsys import credentials
    from recsys.online.redis_store import client

    assert stat.S_IMODE(credentials.REDIS_PASSWORD.path(s).stat().st_mode) == 0o600
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(s.redis).ping()  # no password: refused
    r = client(s)
    assert r.ping() is True
    r.set("stack-test", "42")
    assert r.get("stack-test") == b"42"
    r.close()

    # MLflow: clients on 127.0.0.1 and on localhost both pass the server's host check,
    # and artifacts are uploaded through the server; a caller without this home's password is refused.
    import httpx
    from mlflow import MlflowClient

    from recsys.tracking.runs import authenticate

    assert httpx.get(f"{s.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
    with patched_environ({"MLFLOW_TRACKING_USERNAME": None, "MLFLOW_TRACKING_PASSWORD": None}):
        authenticate(s)  # this stack's password, for the block only (the session's stack has its own)
        for base in (s.mlflow_uri, f"http://localhost:{s.mlflow_port}"):
            client = MlflowClient(base)
            exp_id = client.create_experiment(f"stack-test-{base.split('//')[1].split(':')[0]}")
            assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
        run = client.create_run(exp_id)
        (tmp_path / "hello.txt").write_text("hi")
        client.log_artifact(run.info.run_id, str(tmp_path / "hello.txt"))
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["hello.txt"]
    assert list((s.services_root / "mlflow" / "artifacts").rglob("hello.txt"))

    # Airflow: token, DAG list, the GPU pool; the password file is private.
    from recsys.stack.airflow import password_file
    from recsys.stack.airflow_client import AirflowClient

    assert stat.S_IMODE(password_file(s).stat().st_mode) == 0o600
    assert report["airflow"]["password_file"] == str(password_file(s))
    with AirflowClient.from_settings(s) as af:
        assert af.token().count(".") == 2  # a JWT
        # the dag-processor parses the project's DAGs, and the API lists them
        for dag_id in PROJECT_DAGS:
            af.wait_for_dag(dag_id, timeout=120, poll=1)
        dags = af.dags()
        assert PROJECT_DAGS <= {d["dag_id"] for d in dags} and all(isinstance(d["is_paused"], bool) for d in dags)
        assert af.pool(s.gpu_pool)["slots"] == s.gpu_pool_slots
    with pytest.raises(ServiceError, match="wrong password"):
        AirflowClient(s.airflow, s.airflow_user, "not-the-password").token()

    # Security by default: every listening socket on loopback, every service refuses a caller without
    # its secret, the secrets are private files and no log holds one (tests/stack/security_checks.py).
    from security_checks import (
        assert_every_listening_socket_is_on_loopback,
        assert_every_service_needs_its_secret_and_no_log_holds_one,
    )

    assert_every_listening_socket_is_on_loopback(s)
    assert_every_service_needs_its_secret_and_no_log_holds_one(s)

    # `up` again: a no-op, the very same processes keep running.
    pids_before = {name: r["pid"] for name, r in stack.status(s).items()}
    all_pids = stack.pids(s)
    assert len(all_pids) >= 5
    began = time.monotonic()
    stack.up(s)
    assert time.monotonic() - began < 15
    assert {name: r["pid"] for name, r in stack.status(s).items()} == pids_before

    # restart: down, then up again: other processes, and what the services held is still there.
    api_token = token_file(s).read_text()
    _down_and_nothing_left(s, all_pids)
    began = time.monotonic()
    stack.up(s)
    with capsys.disabled():
        print(f"[stack] up again after down: {time.monotonic() - began:.1f} s")
    report = stack.status(s)
    assert all(r["answering"] for r in report.values()), report
    restarted_pids = stack.pids(s)
    assert len(restarted_pids) == len(all_pids) and not set(restarted_pids) & set(all_pids)
    assert r.get("stack-test") == b"42"  # Redis: from its append-only file
    r.close()
    with patched_environ({"MLFLOW_TRACKING_USERNAME": None, "MLFLOW_TRACKING_PASSWORD": None}):
        authenticate(s)  # MLflow: the same password, its runs and artifacts
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["hello.txt"]
        assert client.get_experiment(exp_id).lifecycle_stage == "active"
    with AirflowClient.from_settings(s) as af:  # Airflow: the same password, the same metadata
        assert af.pool(s.gpu_pool)["slots"] == s.gpu_pool_slots
    assert token_file(s).read_text() == api_token  # the API keeps its token

    # down: nothing answers, no process (server or worker) is left, no PID file either.
    _down_and_nothing_left(s, restarted_pids)


def _down_and_nothing_left(s, pids: list[int]) -> None:
    stopped = stack.down(s)
    assert set(stopped) == {"redis", "mlflow", "api-server", "scheduler", "dag-processor", "triggerer", "triton", "api", "events"}
    report = stack.status(s)
    assert not any(r["answering"] for r in report.values())
    assert all(r["pid"] is None for r in report.values())
    assert [pid for pid in pids if _alive(pid)] == []
    assert list(s.services_root.rglob("*.pid")) == []


def test_shared_fixture_points_the_environment_at_its_services(stack_settings):
    from recsys.settings import get_settings

    current = get_settings()
    assert current.home == stack_settings.home
    assert current.redis == stack_settings.redis
    assert os.environ["MLFLOW_TRACKING_URI"] == stack_settings.mlflow_uri == current.mlflow_uri
    report = stack.status(stack_settings)
    assert report["redis"]["answering"] and report["mlflow"]["answering"]
    assert not report["airflow"]["answering"]  # Airflow only comes with `airflow_settings`


def test_cli_status_json_and_table(stack_settings, capsys):
    from recsys.cli import main

    rc = main(["stack", "status", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1  # Airflow is not running in this fixture, so not everything answers
    assert report["redis"]["answering"] is True
    assert report["redis"]["url"] == stack_settings.redis

    main(["stack", "status"])
    table = capsys.readouterr().out
    redis_line = next(line for line in table.splitlines() if line.startswith("redis"))
    assert " yes " in redis_line and str(stack_settings.services_root / "redis" / "redis.log") in redis_line
    assert "password:" in table


def test_external_services_that_are_down_are_reported_and_not_started(tmp_path):
    s = load_settings(
        {},
        home=tmp_path / "home",
        redis_url=f"redis://:secret@127.0.0.1:{free_port()}/0",
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
        airflow_url=f"http://127.0.0.1:{free_port()}",
        airflow_password="x",
        triton_url=f"http://127.0.0.1:{free_port()}",
        api_url=f"http://127.0.0.1:{free_port()}",
        events_worker_url=f"http://127.0.0.1:{free_port()}/metrics",
    )
    report = stack.status(s)
    for name, r in report.items():
        assert r["embedded"] is False and r["answering"] is False and r["pid"] is None, name
    assert "secret" not in report["redis"]["url"]
    with pytest.raises(ServiceError, match="external service.*redis.*mlflow.*airflow.*triton.*api.*events"):
        stack.up(s)
    assert not s.services_root.exists()  # nothing was started or prepared


def test_a_program_that_dies_at_start_points_at_its_log(tmp_path):
    proc = ManagedProcess(
        "crasher",
        [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"],
        tmp_path,
        health=lambda: False,
    )
    proc.start()
    with pytest.raises(ServiceError) as err:
        proc.wait_healthy(timeout=30, poll=0.1)
    assert str(proc.log_file) in str(err.value) and "boom: bad config" in str(err.value)
    assert not proc.pid_file.exists()


def test_a_program_that_never_answers_times_out_and_stops(tmp_path):
    proc = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, health=lambda: False)
    pid = proc.start()
    with pytest.raises(ServiceError, match="did not answer within 1 s"):
        proc.wait_healthy(timeout=1, poll=0.1)
    assert proc.stop(timeout=5) is True
    assert not _alive(pid) and proc.pid() is None


def test_a_stale_pid_file_is_cleaned(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    proc = ManagedProcess("gone", ["true"], tmp_path, health=lambda: False)
    proc.pid_file.write_text(f"{finished.pid} {time.time()}\n")
    assert proc.pid() is None
    assert not proc.pid_file.exists()
    assert proc.stop() is False


def test_a_port_taken_by_another_program_is_refused(own_settings):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", own_settings.redis_port))
        squatter.listen()
        with pytest.raises(ServiceError, match=f"port {own_settings.redis_port}.*already in use"):
            stack.up(own_settings, only=["redis"])
    assert stack.status(own_settings)["redis"]["pid"] is None


def test_free_ports_avoid_theephemeral_port_range_and_are_never_handed_out_twice():
    # Ports from the ephemeral range can be taken by any outgoing connection between
    # choosing and binding (CI saw MLflow fail that way), so test ports come from below it.
    from recsys.stack.service import ephemeral_port_range

    low, high = ephemeral_port_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(not (low <= p <= high) for p in ports), ports
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_unknown_service_name_is_a_clear_error(own_settings):
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown service 'kafka'"):
        stack.up(own_settings, only=["kafka"])


def test_password_file_is_generated_once_private_and_follows_the_setting(own_settings):
    from recsys.stack.airflow import airflow_password, ensure_password_file

    path = ensure_password_file(own_settings)
    generated = airflow_password(own_settings)
    assert len(generated) >= 12 and stat.S_IMODE(path.stat().st_mode) == 0o600
    ensure_password_file(own_settings)
    assert airflow_password(own_settings) == generated  # stable across `up`s

    configured = replace(own_settings, airflow_password="chosen-by-user")
    ensure_password_file(configured)
    assert json.loads(path.read_text()) == {"admin": "chosen-by-user"}


def test_airflow_env_carries_settings_and_airflow_config(own_settings):
    from recsys.settings import PROJECT_ROOT
    from recsys.stack.airflow import airflow_env

    env = airflow_env(own_settings)
    assert env["AIRFLOW_HOME"] == str(own_settings.services_root / "airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(PROJECT_ROOT / "dags")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://127.0.0.1:{own_settings.airflow_port}/execution/"
    assert env["RECSYS_HOME"] == str(own_settings.home)
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_airflow_fixture_serves_the_api_and_the_cli_env_reaches_the_same_database(airflow_settings):
    from recsys.stack.airflow import airflow_env
    from recsys.stack.airflow_client import AirflowClient

    s = airflow_settings
    with AirflowClient.from_settings(s) as af:
        assert af.pool(s.gpu_pool)["slots"] == s.gpu_pool_slots
        # the dag-processor parses the project's DAGs, and the API lists them
        for dag_id in PROJECT_DAGS:
            af.wait_for_dag(dag_id, timeout=120, poll=1)
        assert PROJECT_DAGS <= {d["dag_id"] for d in af.dags()}
    # The airflow CLI, run with airflow_env(), sees the running instance's metadata database.
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "airflow"), "pools", "get", s.gpu_pool, "-o", "json"],
        env=airflow_env(s), capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    assert json.loads(out)[0]["slots"] == str(s.gpu_pool_slots)  # the CLI prints strings
