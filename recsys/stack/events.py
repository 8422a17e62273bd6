"""The event worker as a service of the stack: ``recsys events worker`` in the background.

It has no URL of its own besides its Prometheus endpoint, which is also its health check. It runs
in the control environment (this interpreter) with the settings as environment variables; its
stdout (the worker logs there) goes to ``<home>/services/events/events.log``. Stopping it sends
SIGTERM: the part being written is finished (or abandoned, which is safe by construction), the
entries it holds stay pending for its next start under the same consumer name.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from recsys.stack.service import ManagedProcess, Service, connect_host, http_ok


@dataclass
class EventWorkerService(Service):
    name: str = "events"
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.embedded:
            command = [sys.executable, "-m", "recsys.cli", "events", "worker"]
            env = self.settings.child_env()
            self.processes = [ManagedProcess("events", command, self.directory, health=self.answering, env=env)]

    @property
    def url(self) -> str:
        """The worker's metrics endpoint (``events_worker_url`` for a worker run elsewhere)."""
        if self.settings.events_worker_url:
            return self.settings.events_worker_url
        return f"http://{connect_host(self.settings.host)}:{self.settings.events_metrics_port}/metrics"

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.events_metrics_port

    def answering(self) -> bool:
        return http_ok(self.url)
