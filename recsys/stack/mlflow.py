"""MLflow tracking server: experiments, runs, the model registry, and artifacts served through it.

Artifacts are proxied by the server (``--artifacts-destination``), so a client in the other
environment (the Merlin runtime) uploads over HTTP and needs no access to the folder.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

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
                "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
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
            env = dict(os.environ)
            # The server's job runner (7 Huey consumer processes, ~1.3 GB) serves GenAI scorer
            # jobs this project does not use; a user can turn it back on in their environment.
            env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            self.processes = [ManagedProcess("mlflow", command, self.directory, health=self.answering, env=env)]

    @property
    def url(self) -> str:
        return self.settings.mlflow_uri

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.mlflow_port

    def answering(self) -> bool:
        if not self.url.startswith(("http://", "https://")):
            return True  # a local store (sqlite:///, file:) has no server to ask
        return http_ok(self.url.rstrip("/") + "/health")
