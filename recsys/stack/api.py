"""The recsys HTTP API (:mod:`recsys.api`): uvicorn serving events in and recommendations out.

Embedded: ``<control python> -m recsys.api.server`` (uvicorn, ``settings.api_workers`` workers) bound
to ``settings.host:settings.api_port`` with the settings in its environment; log
``<home>/services/api/api.log``; healthy once ``GET /healthz`` answers. Its bearer token is
``settings.api_token`` or one generated before the first start into ``<home>/services/api/token``
(mode 0600; ``status()["token_file"]`` names it, like Airflow's ``password_file``; never logged).
External (``settings.api_url`` set): only health-checked.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from recsys.stack.service import ManagedProcess, Service, http_ok


@dataclass
class ApiService(Service):
    name: str = "api"
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.embedded:
            return
        env = self.settings.child_env()
        command = [sys.executable, "-m", "recsys.api.server"]
        self.processes = [ManagedProcess("api", command, self.directory, health=self.answering, env=env)]

    @property
    def url(self) -> str:
        return self.settings.api

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.api_port

    def answering(self) -> bool:
        return http_ok(f"{self.url}/healthz")

    def start(self) -> None:
        """Generate the token (first start) before uvicorn's workers race to, then start the server."""
        if not self.embedded:
            return
        from recsys.api.token import ensure_token

        ensure_token(self.settings)
        super().start()

    def status(self) -> dict[str, Any]:
        from recsys.api.token import ENV_NAME, token_source

        out = super().status()
        out["token_file"] = token_source(self.settings) if self.embedded else ENV_NAME
        out["docs"] = f"{self.url}/docs"
        return out
