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

# Start order; stopped in reverse. The distributed topology (``settings.topology``) adds the services the
# embedded one folds into others: Postgres (instead of SQLite files), Celery's broker, the Dask cluster.
SERVICE_NAMES = ("postgres", "redis", "broker", "mlflow", "airflow", "dask", "triton", "api", "events")
EMBEDDED_TOPOLOGY = ("redis", "mlflow", "airflow", "triton", "api", "events")
_CLASSES = {  # name -> module, class (imported only when used: each pulls in its own clients)
    "postgres": ("recsys.stack.postgres", "PostgresService"),
    "redis": ("recsys.stack.redis", "RedisService"),
    "broker": ("recsys.stack.broker", "BrokerService"),
    "mlflow": ("recsys.stack.mlflow", "MlflowService"),
    "airflow": ("recsys.stack.airflow", "AirflowService"),
    "dask": ("recsys.stack.dask", "DaskService"),
    "triton": ("recsys.stack.triton", "TritonService"),
    "api": ("recsys.stack.api", "ApiService"),
    "events": ("recsys.stack.events", "EventWorkerService"),
}


def topology_services(settings: Settings) -> tuple[str, ...]:
    """The names of the services of ``settings.topology``, in start order."""
    return SERVICE_NAMES if settings.distributed else EMBEDDED_TOPOLOGY


def services(settings: Settings, only: Optional[Iterable[str]] = None) -> list[Service]:
    """The services of the settings' topology in start order (``only``: a subset by name)."""
    import importlib

    available = topology_services(settings)
    names = list(available) if only is None else [n.strip() for n in only if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        extra = " (the distributed topology's: RECSYS_TOPOLOGY=distributed)" if unknown[0] in SERVICE_NAMES else ""
        raise ConfigError(f"unknown service {unknown[0]!r}{extra}; choose from {', '.join(available)}")
    chosen = []
    for name in available:
        if name in names:
            module, cls = _CLASSES[name]
            chosen.append(getattr(importlib.import_module(module), cls)(settings))
    return chosen


def free_ports_env(distributed: bool) -> dict[str, str]:
    """Free ports for every embedded service of a topology, as ``RECSYS_*_PORT`` variables: a second stack
    beside a running one (tests, benchmarks). The Redis port starts a block of 6 (a Redis Cluster's nodes) and
    Triton's three ports a block of 6 (replica n adds 3n) in the distributed topology."""
    from recsys.stack.service import free_port, free_port_block

    names = ["MLFLOW", "AIRFLOW", "API", "EVENTS_METRICS"] + (["POSTGRES", "CELERY_BROKER", "DASK_SCHEDULER"] if distributed else [])
    env = {f"RECSYS_{name}_PORT": str(free_port()) for name in names}
    if distributed:
        from recsys.stack.redis import free_cluster_ports

        env["RECSYS_REDIS_PORT"] = str(free_cluster_ports())  # the cluster's six nodes and their bus ports
    else:
        env["RECSYS_REDIS_PORT"] = str(free_port())
    triton = free_port_block(6 if distributed else 3)
    env.update({"RECSYS_TRITON_HTTP_PORT": str(triton), "RECSYS_TRITON_GRPC_PORT": str(triton + 1),
                "RECSYS_TRITON_METRICS_PORT": str(triton + 2)})
    return env


def up(settings: Settings, only: Optional[Iterable[str]] = None) -> dict[str, float]:
    """Start the embedded services (all, or ``only`` these) and wait until they answer.

    A service that already runs is left alone; stale PID files are cleaned. All are started
    first and then waited for, so their boot times overlap. External services are only checked:
    one that does not answer raises :class:`ServiceError` after the embedded ones are up.
    Returns the seconds until each service answered.
    """
    began = time.monotonic()
    chosen = services(settings, only)
    elsewhere = _running_in_other_topology(settings)
    if elsewhere:
        other = _other_topology(settings).topology
        raise ConfigError(
            f"the stack of {settings.home} runs the {other} topology ({', '.join(elsewhere)} running); stop it first "
            f"(`recsys stack down`) or set RECSYS_TOPOLOGY={other}"
        )
    for service in chosen:
        service.start()
    timings: dict[str, float] = {}
    unreachable = []
    for service in chosen:
        try:
            service.wait()
        except ServiceError as exc:
            if service.embedded:
                raise
            unreachable.append(str(exc))  # names the service and why (e.g. Postgres's own refusal)
            continue
        timings[service.name] = round(time.monotonic() - began, 1)
        where = "embedded" if service.embedded else "external"
        log.info("%s (%s) answering at %s, %.1f s after start", service.name, where, masked_url(service.url), timings[service.name])
    if unreachable:
        raise ServiceError("external service(s) not answering: " + "; ".join(unreachable))
    return timings


def down(settings: Settings, only: Optional[Iterable[str]] = None) -> list[str]:
    """Stop the embedded services together (external ones are not ours to stop), those of either topology: a
    stack started with the other ``RECSYS_TOPOLOGY`` is stopped whole too.

    Returns the names of the processes that were running.
    """
    processes = {}
    for variant in (settings, _other_topology(settings)):
        names = topology_services(variant) if only is None else [n for n in only if n in topology_services(variant)]
        for service in services(variant, names):
            if service.embedded:
                processes.update({p.pid_file: p for p in service.processes if p.pid_file not in processes})
    return stop_all(list(processes.values()))


def _other_topology(settings: Settings) -> Settings:
    from recsys.settings import replace

    return replace(settings, topology="embedded" if settings.distributed else "distributed")


def _running_in_other_topology(settings: Settings) -> list[str]:
    """The running processes of this home that only the other topology has (its Postgres, cluster nodes, ...)."""
    ours = {p.pid_file for s in services(settings) if s.embedded for p in s.processes}
    return [p.name for s in services(_other_topology(settings)) if s.embedded for p in s.processes
            if p.pid_file not in ours and p.running()]


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per service: url, embedded, answering, pid, log (Airflow also: user, password_file, components)."""
    return {service.name: service.status() for service in services(settings)}


def pids(settings: Settings) -> list[int]:
    """Every process of the embedded stack (servers and their workers)."""
    return [pid for service in services(settings) for pid in service.all_pids()]
