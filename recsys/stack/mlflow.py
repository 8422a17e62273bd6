"""MLflow tracking server: experiments, runs, the model registry, and artifacts served through it.

Its backend store is SQLite (``services/mlflow/mlflow.db``), or in the distributed topology the ``mlflow``
database of Postgres (:meth:`MlflowService.backend_store_env`).

Artifacts are proxied by the server (``--artifacts-destination``), so a client in the other
environment (the Merlin runtime) uploads over HTTP and needs no access to the folder.

Embedded, it runs MLflow's basic-auth app (``--app-name basic-auth``): every request needs a user and
password. Its configuration ``services/mlflow/basic_auth.ini`` (mode 0600) names the user store
(``basic_auth.db``, SQLite in both topologies, as in docker/compose.yaml: a handful of users read once
per 5 minutes, kept beside the server's configuration, and no third database to create) and the admin
user ``settings.mlflow_tracking_username`` with the password of
:data:`recsys.credentials.MLFLOW_PASSWORD`, which MLflow sets when it creates that user at the first
start (a later change of the setting does not change a stored password: use MLflow's
update-password API, then the setting). Clients authenticate through
:func:`recsys.tracking.runs.client`. The Flask secret of its CSRF protection is read by MLflow from
its environment only: it is generated into ``services/mlflow/flask_secret_key`` and given to the
server's process alone.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from recsys.stack.service import ManagedProcess, Service, connect_host, http_ok


@dataclass
class MlflowService(Service):
    name: str = "mlflow"
    start_timeout: float = 120.0

    def __post_init__(self) -> None:
        s = self.settings
        if self.embedded:
            command = [
                sys.executable, "-m", "mlflow", "server",
                "--artifacts-destination", str(self.directory / "artifacts"),
                "--host", s.host,
                "--port", str(s.mlflow_port),
                "--workers", "1",
            ]
            # MLflow's default host check already admits localhost and 127.0.0.1 on any port
            # (and its CORS default the same origins); a server bound to another address
            # must also admit that address, or its own clients get "Invalid Host header".
            host = connect_host(s.host)
            if host not in {"127.0.0.1", "localhost"}:
                command += ["--allowed-hosts", f"localhost,localhost:*,127.0.0.1,127.0.0.1:*,{host},{host}:*"]
            command += ["--app-name", "basic-auth"]
            env = s.child_env()
            env.update(self.backend_store_env())
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config)
            # The server's job runner (7 Huey consumer processes, ~1.3 GB) serves GenAI scorer
            # jobs this project does not use; a user can turn it back on in their environment.
            env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            self.processes = [ManagedProcess("mlflow", command, self.directory, health=self.answering, env=env)]

    def backend_store_env(self) -> dict[str, str]:
        """Where runs, experiments and the registry live, as MLflow's own variable (not on the command line:
        an external Postgres's URL carries its password): SQLite beside the server, or in the distributed
        topology the ``mlflow`` database of Postgres (the embedded one's password from libpq's pgpass file)."""
        if not self.settings.distributed:
            return {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{self.directory / 'mlflow.db'}"}
        from recsys.stack import postgres

        return {"MLFLOW_BACKEND_STORE_URI": postgres.database_url(self.settings, "mlflow"),
                **postgres.client_env(self.settings)}

    @property
    def auth_config(self) -> Path:
        return self.directory / "basic_auth.ini"

    def prepare(self) -> None:
        from recsys import credentials

        super().prepare()
        s = self.settings
        if s.distributed:
            from recsys.stack.postgres import ensure_ready

            ensure_ready(s, "mlflow")  # its backend store's database must exist when the server starts
        password = credentials.ensure(s, credentials.MLFLOW_PASSWORD)
        credentials.write_private(
            self.auth_config,
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{self.directory / 'basic_auth.db'}\n"
            f"admin_username = {s.mlflow_tracking_username}\n"
            f"admin_password = {password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # MLflow checks a password with a slow hash (~0.45 s a request here): a publish's download of
            # a champion (~120 requests) took ~60 s more. A verified user/password pair is remembered for
            # 5 minutes by the server process (a changed password is seen at once by the worker that
            # changed it: one worker here).
            "auth_cache_ttl_seconds = 300\n",
        )
        self.processes[0].env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = credentials.ensure(s, credentials.MLFLOW_FLASK_SECRET)

    @property
    def url(self) -> str:
        return self.settings.mlflow_uri

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.mlflow_port

    def answering(self) -> bool:
        if not self.url.startswith(("http://", "https://")):
            return True  # a local store (sqlite:///, file:) has no server to ask
        return http_ok(self.url.rstrip("/") + "/health")
