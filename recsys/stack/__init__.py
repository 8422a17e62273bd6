"""The local stack: Redis, MLflow, Airflow, Triton, the recsys HTTP API and the event worker, started by
the project itself (no root, no Docker).

Each service is *embedded* (started here, bound to ``settings.host``, state, logs and PIDs under
``<home>/services/<name>/``) or *external* (its URL setting is set; then it is only health-checked).
See ``Settings.embedded``.

    from recsys.stack import up, down, status
    up(settings)                      # idempotent: running services are left alone
    up(settings, only=["redis"])      # a subset
    status(settings)["mlflow"]["answering"]
    down(settings)
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Optional

from recsys.errors import ConfigError, ServiceError
from recsys.settings import Settings, masked_url
from recsys.stack.service import Service, stop_all

log = logging.getLogger(__name__)

SERVICE_NAMES = ("redis", "mlflow", "airflow", "triton", "api", "events")  # start order; stopped in reverse


def services(settings: Settings, only: Optional[Iterable[str]] = None) -> list[Service]:
    """The stack's services in start order (``only``: a subset by name)."""
    from recsys.stack.airflow import AirflowService
    from recsys.stack.api import ApiService
    from recsys.stack.events import EventWorkerService
    from recsys.stack.mlflow import MlflowService
    from recsys.stack.redis import RedisService
    from recsys.stack.triton import TritonService

    names = list(SERVICE_NAMES) if only is None else [n.strip() for n in only if n.strip()]
    unknown = [n for n in names if n not in SERVICE_NAMES]
    if unknown:
        raise ConfigError(f"unknown service {unknown[0]!r}; choose from {', '.join(SERVICE_NAMES)}")
    classes = {"redis": RedisService, "mlflow": MlflowService, "airflow": AirflowService, "triton": TritonService,
               "api": ApiService, "events": EventWorkerService}
    return [classes[n](settings) for n in SERVICE_NAMES if n in names]


def up(settings: Settings, only: Optional[Iterable[str]] = None) -> dict[str, float]:
    """Start the embedded services (all, or ``only`` these) and wait until they answer.

    A service that already runs is left alone; stale PID files are cleaned. All are started
    first and then waited for, so their boot times overlap. External services are only checked:
    one that does not answer raises :class:`ServiceError` after the embedded ones are up.
    Returns the seconds until each service answered.
    """
    began = time.monotonic()
    chosen = services(settings, only)
    for service in chosen:
        service.start()
    timings: dict[str, float] = {}
    unreachable = []
    for service in chosen:
        try:
            service.wait()
        except ServiceError:
            if service.embedded:
                raise
            unreachable.append(service)
            continue
        timings[service.name] = round(time.monotonic() - began, 1)
        where = "embedded" if service.embedded else "external"
        log.info("%s (%s) answering at %s, %.1f s after start", service.name, where, masked_url(service.url), timings[service.name])
    if unreachable:
        raise ServiceError(
            "external service(s) not answering: " + ", ".join(f"{s.name} at {masked_url(s.url)}" for s in unreachable)
        )
    return timings


def down(settings: Settings, only: Optional[Iterable[str]] = None) -> list[str]:
    """Stop the embedded services together (external ones are not ours to stop).

    Returns the names of the processes that were running.
    """
    processes = [p for s in services(settings, only) if s.embedded for p in s.processes]
    return stop_all(processes)


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per service: url, embedded, answering, pid, log (Airflow also: user, password_file, components)."""
    return {service.name: service.status() for service in services(settings)}


def pids(settings: Settings) -> list[int]:
    """Every process of the embedded stack (servers and their workers)."""
    return [pid for service in services(settings) for pid in service.all_pids()]
