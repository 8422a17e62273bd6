"""Airflow 3: the orchestrator, run as four processes with one log file each.

``api-server`` (REST API, UI and the task execution API), ``scheduler`` (with the LocalExecutor),
``dag-processor`` (parses ``<repo>/dags``) and ``triggerer``. The metadata database is SQLite under
``<home>/services/airflow/``, which is ``AIRFLOW_HOME`` too. Users log in with the simple auth
manager: user ``settings.airflow_user`` (admin role) and ``settings.airflow_password`` or a
generated password kept in ``<home>/services/airflow/passwords.json`` (mode 0600).

Every Airflow process gets ``settings.as_env()``, so tasks see the same settings as the CLI
(``RECSYS_HOME``, ``MLFLOW_TRACKING_URI``, ...). :func:`airflow_env` gives that environment to
anyone who runs the ``airflow`` CLI or ``dag.test()`` against this installation.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from recsys import credentials
from recsys.errors import ConfigError, ServiceError
from recsys.settings import PROJECT_ROOT, Settings
from recsys.stack.service import ManagedProcess, Service, connect_host, http_ok, tail

log = logging.getLogger(__name__)

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
CONTROL_QUEUE = "default"
"""Airflow's default queue: every task but the Merlin-runtime ones (distributed topology: worker-default)."""
# Key in GET /api/v2/monitor/health for each component that heartbeats.
_HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


def airflow_home(settings: Settings) -> Path:
    return settings.services_root / "airflow"


def password_file(settings: Settings) -> Path:
    """The simple auth manager's password file (JSON ``{user: password}``)."""
    return airflow_home(settings) / "passwords.json"


def airflow_password(settings: Settings) -> str:
    """The Airflow password: ``settings.airflow_password``, else the one the embedded stack generated."""
    if settings.airflow_password:
        return settings.airflow_password
    path = password_file(settings)
    try:
        return json.loads(path.read_text())[settings.airflow_user]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        if not settings.embedded["airflow"]:
            raise ConfigError(
                f"external Airflow at {settings.airflow}: set RECSYS_AIRFLOW_PASSWORD "
                f"for user {settings.airflow_user!r}"
            ) from None
        raise ServiceError(f"no Airflow password yet in {path}; run `recsys stack up` first") from None


def ensure_password_file(settings: Settings) -> Path:
    """Write the password file (mode 0600): the configured password, or keep/generate one."""
    path = password_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        passwords = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        passwords = {}
    wanted = settings.airflow_password or passwords.get(settings.airflow_user) or secrets.token_urlsafe(12)
    if passwords.get(settings.airflow_user) != wanted or not path.exists():
        passwords[settings.airflow_user] = wanted
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(passwords, f)
            f.write("\n")
        tmp.replace(path)
    os.chmod(path, 0o600)
    return path


def airflow_env(settings: Settings) -> dict[str, str]:
    """The full environment for any Airflow process or CLI call against the embedded Airflow.

    Starts from ``os.environ``, adds the project settings (``settings.as_env()``) and the Airflow
    configuration (``AIRFLOW_HOME``, dags/plugins folders, executor, auth, API address).
    """
    home = airflow_home(settings)
    host = connect_host(settings.host)
    env = settings.child_env()
    bin_dir = str(Path(sys.executable).parent)  # `airflow` and the task runner live here
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    # Tunables a user may override in their own environment (AIRFLOW__SECTION__KEY).
    env.setdefault("AIRFLOW__CORE__PARALLELISM", str(max(2, 2 * (os.cpu_count() or 1))))
    # New DAG files show up within 30 s (the default, 5 min, is long for development).
    env.setdefault("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30")
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file(settings)),
            "AIRFLOW__API__HOST": settings.host,
            "AIRFLOW__API__PORT": str(settings.airflow_port),
            "AIRFLOW__API__WORKERS": "1",
            # Task processes report to the API server through this URL.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{host}:{settings.airflow_port}/execution/",
            # The JWT secret (Airflow generates 16 bytes; PyJWT wants 64 for HS512) and the session key,
            # read from their 0600 files by Airflow's `_CMD` options: never in an environment or airflow.cfg.
            "AIRFLOW__API_AUTH__JWT_SECRET_CMD": _cat(credentials.AIRFLOW_JWT_SECRET, settings),
            "AIRFLOW__API__SECRET_KEY_CMD": _cat(credentials.AIRFLOW_SECRET_KEY, settings),
        }
    )
    if settings.distributed:
        env.update(_celery_env(settings))
        # Task processes a worker runs at once (Airflow's default, 16, is a lot of memory on a small machine).
        env.setdefault("AIRFLOW__CELERY__WORKER_CONCURRENCY", str(max(2, os.cpu_count() or 1)))
    return env


def _celery_env(settings: Settings) -> dict[str, str]:
    """The distributed topology's Airflow: the CeleryExecutor, Postgres as the metadata database and the
    result backend, the Redis broker. No password is in these variables: libpq reads the embedded Postgres's
    from its pgpass file (``PGPASSFILE``), Airflow the broker's URL from a 0600 file (a ``_CMD`` option)."""
    from recsys.stack import broker, postgres

    env = postgres.client_env(settings)
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.database_url(settings, "airflow", "postgresql+psycopg2"),
            "AIRFLOW__CELERY__RESULT_BACKEND": postgres.database_url(settings, "airflow", "db+postgresql"),
            "AIRFLOW__CELERY__BROKER_URL_CMD": f"cat {shlex.quote(str(broker.url_file(settings)))}",
            # The control-plane tasks' queue (the Merlin tasks': settings.merlin_queue, see recsys.jobs.merlin_task).
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": CONTROL_QUEUE,
        }
    )
    return env


def _cat(secret: "credentials.Secret", settings: Settings) -> str:
    """A `_CMD` option printing ``secret`` (generated at the first call)."""
    credentials.ensure(settings, secret)
    return f"cat {shlex.quote(str(secret.path(settings)))}"


@dataclass
class AirflowService(Service):
    name: str = "airflow"
    start_timeout: float = 240.0

    def __post_init__(self) -> None:
        if not self.embedded:
            return
        s = self.settings
        airflow_bin = str(Path(sys.executable).parent / "airflow")
        commands = {
            "api-server": [airflow_bin, "api-server", "--host", s.host, "--port", str(s.airflow_port), "--workers", "1"],
            # No log servers: they bind every interface (0.0.0.0:8793/8794, not configurable) and serve
            # logs to remote API servers; here the API server reads the task logs from the shared folder.
            "scheduler": [airflow_bin, "scheduler", "--skip-serve-logs"],
            "dag-processor": [airflow_bin, "dag-processor"],
            "triggerer": [airflow_bin, "triggerer", "--skip-serve-logs"],
        }
        health = {name: self._component_health(name) for name in commands}
        if s.distributed:
            # The CeleryExecutor's workers: control-plane tasks, and the Merlin-runtime tasks one at a time
            # (the GPU's queue). Without --skip-serve-logs each would start a log server on 0.0.0.0.
            for worker, queue, concurrency in (("worker-default", CONTROL_QUEUE, None),
                                               ("worker-gpu", s.merlin_queue, "1")):
                node = celery_node(worker)
                commands[worker] = [airflow_bin, "celery", "worker", "--queues", queue, "--celery-hostname", node,
                                    "--skip-serve-logs"] + (["--concurrency", concurrency] if concurrency else [])
                health[worker] = self._worker_health(node)
        env = airflow_env(s)
        self.processes = [
            ManagedProcess(name, cmd, self.directory, health=health[name], env=env)
            for name, cmd in commands.items()
        ]

    @property
    def url(self) -> str:
        return self.settings.airflow

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.airflow_port

    def answering(self) -> bool:
        return http_ok(self.url + "/api/v2/monitor/health")

    def health(self) -> dict[str, Any]:
        """Airflow's own view of its components (``GET /api/v2/monitor/health``), {} if unreachable."""
        import httpx

        try:
            response = httpx.get(self.url + "/api/v2/monitor/health", timeout=3)
            return response.json() if response.is_success else {}
        except (httpx.HTTPError, ValueError):
            return {}

    def _component_health(self, component: str):
        def check() -> bool:
            if component == "api-server":
                return self.answering()
            entry = self.health().get(_HEALTH_KEYS[component]) or {}
            return entry.get("status") == "healthy"

        return check

    def _worker_health(self, node: str):
        """The worker answers Celery's ``ping`` through the broker (what ``celery inspect ping`` sends)."""

        def check() -> bool:
            from celery import Celery

            from recsys.stack.broker import broker_url

            app = Celery(broker=broker_url(self.settings), set_as_current=False)
            try:
                return bool(app.control.ping(destination=[node], timeout=1.0))
            finally:
                app.close()

        return check

    # --- start ------------------------------------------------------------------------------
    def start(self) -> None:
        """Prepare (password file, database migration) and start the components that are not running."""
        if not self.embedded:
            return
        ensure_password_file(self.settings)
        if self.settings.distributed:
            from recsys.stack.postgres import ensure_ready

            ensure_ready(self.settings, "airflow")  # its database, before the migration
        self._migrate()
        # The API server binds the port; the others only need the database, so they all start
        # together and boot while the API server does.
        super().start()

    def wait(self) -> None:
        """Wait until every component is healthy, then make sure the pool exists."""
        super().wait()
        if self.embedded:
            self._ensure_pool()

    def _migrate(self) -> None:
        """``airflow db migrate`` once per Airflow version (it is idempotent, but takes seconds)."""
        import importlib.metadata

        version = importlib.metadata.version("apache-airflow")
        marker = self.directory / f".migrated-{version}"
        if self.settings.distributed:
            # Per Postgres server (an external URL may change), and only while its database holds Airflow's
            # tables (the embedded server's data folder may have been removed since).
            import hashlib

            from recsys.stack import postgres

            url = postgres.database_url(self.settings, "airflow")
            marker = marker.with_name(f"{marker.name}-postgres-{hashlib.sha256(url.encode()).hexdigest()[:12]}")
            if marker.exists() and not postgres.has_table(self.settings, "airflow", "alembic_version"):
                marker.unlink()
        if marker.exists():
            return
        migrate_log = self.directory / "db-migrate.log"
        log.info("airflow: migrating the metadata database (log %s)", migrate_log)
        with open(migrate_log, "ab") as logf:
            result = subprocess.run(
                [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                env=airflow_env(self.settings),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        if result.returncode != 0:
            raise ServiceError(
                f"`airflow db migrate` failed (exit {result.returncode}); see {migrate_log}\n"
                f"--- last lines ---\n{tail(migrate_log)}"
            )
        marker.touch()

    def _ensure_pool(self) -> None:
        from recsys.stack.airflow_client import AirflowClient

        client = AirflowClient.from_settings(self.settings)
        client.ensure_pool(self.settings.gpu_pool, self.settings.gpu_pool_slots, "GPU-bound training tasks")

    # --- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        out = super().status()
        out["user"] = self.settings.airflow_user
        if self.embedded:
            out["password_file"] = (
                "RECSYS_AIRFLOW_PASSWORD" if self.settings.airflow_password else str(password_file(self.settings))
            )
            out["components"] = {proc.name: proc.describe() for proc in self.processes}
        else:
            out["password_file"] = "RECSYS_AIRFLOW_PASSWORD"
        return out


def celery_node(worker: str) -> str:
    """The Celery node name of a worker (``worker-gpu@<host>``): unique on the machine, found by ``ping``."""
    return f"{worker}@{socket.gethostname()}"


def component(settings: Settings, name: str) -> Optional[ManagedProcess]:
    """The managed process of one Airflow component (e.g. to read its ``log_file``)."""
    return next((p for p in AirflowService(settings).processes if p.name == name), None)
