"""The stack's secrets: each one a setting an operator may give, or generated at its first use.

    ensure(settings, REDIS_PASSWORD)        # the value: the setting, else the generated file (created once)
    client_value(settings, REDIS_PASSWORD)  # what a client sends; None for an external service without one
    source(settings, REDIS_PASSWORD)        # where it comes from, for `recsys stack status` (a variable or a file)

Every generated secret is one file ``<home>/services/<service>/<file>``, mode 0600 from its first byte,
beside the service that needs it (like Airflow's ``passwords.json``):

==================  ====================================  =========================================
secret              file                                  who uses it
==================  ====================================  =========================================
API_TOKEN           services/api/token                    HTTP API clients (bearer token)
REDIS_PASSWORD      services/redis/password               every Redis client (``requirepass``)
TRITON_CONTROL_KEY  services/triton/control_key           publishing (Triton's model-repository API)
MLFLOW_PASSWORD     services/mlflow/password              every MLflow client (basic auth, user admin)
MLFLOW_FLASK_SECRET services/mlflow/flask_secret_key      the MLflow server (CSRF tokens of its auth app)
AIRFLOW_JWT_SECRET  services/airflow/jwt_secret           Airflow's components (signs its JWTs)
AIRFLOW_SECRET_KEY  services/airflow/secret_key           Airflow's API server (session cookies)
POSTGRES_PASSWORD   services/postgres/password            the embedded Postgres's superuser ``postgres``
                                                          (clients read it from ``services/postgres/pgpass``)
BROKER_PASSWORD     services/broker/password              the embedded Celery broker (``requirepass``)
==================  ====================================  =========================================

A generated secret is written atomically and without clobbering: in full under a temporary name
(created 0600, never readable by others, not even for a moment), then hard-linked to its final name,
which fails if another process got there first (a second worker starting at the same moment, or a
client asking before the server starts); that process's value then wins and is read back. Nothing
here logs or prints a value. Standard library only: both runtimes and ``recsys stack status`` import it.

Rejected: secrets in the settings' environment that every child process inherits (tasks, stubs and
tools would all carry every secret; the files are read where needed: a service that takes a secret
only from its environment, MLflow's Flask key, gets it in its own process alone); one shared secrets file (each service's secret sits
in the folder an operator already looks at for that service, and a leak of one is not a leak of all).
"""

from __future__ import annotations

import contextlib
import os
import secrets as _random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from recsys.errors import ConfigError, ServiceError
from recsys.settings import Settings, env_name


@dataclass(frozen=True)
class Secret:
    service: str
    """The embedded service that owns it: its folder under ``<home>/services`` holds the file."""
    file: str
    setting: Optional[str]
    """The settings field an operator sets instead (``None``: always generated)."""
    nbytes: int
    """Entropy of a generated value (``secrets.token_urlsafe``: about 1.3 characters a byte)."""
    external_needs_it: bool = False
    """A client of an external service cannot work without it (an external API's token)."""

    def path(self, settings: Settings) -> Path:
        return settings.services_root / self.service / self.file

    @property
    def env(self) -> Optional[str]:
        return env_name(self.setting) if self.setting else None


API_TOKEN = Secret("api", "token", "api_token", 32, external_needs_it=True)
REDIS_PASSWORD = Secret("redis", "password", "redis_password", 32)
TRITON_CONTROL_KEY = Secret("triton", "control_key", "triton_control_key", 32)
MLFLOW_PASSWORD = Secret("mlflow", "password", "mlflow_tracking_password", 24)
MLFLOW_FLASK_SECRET = Secret("mlflow", "flask_secret_key", None, 32)
# PyJWT warns below 64 bytes for HS512, the algorithm Airflow picks for a shared secret.
AIRFLOW_JWT_SECRET = Secret("airflow", "jwt_secret", None, 64)
AIRFLOW_SECRET_KEY = Secret("airflow", "secret_key", None, 64)
# The distributed topology's: an external Postgres or broker carries its password in its URL setting.
POSTGRES_PASSWORD = Secret("postgres", "password", None, 32)
BROKER_PASSWORD = Secret("broker", "password", None, 32)
ALL = (API_TOKEN, REDIS_PASSWORD, TRITON_CONTROL_KEY, MLFLOW_PASSWORD, MLFLOW_FLASK_SECRET, AIRFLOW_JWT_SECRET,
       AIRFLOW_SECRET_KEY, POSTGRES_PASSWORD, BROKER_PASSWORD)


def configured(settings: Settings, secret: Secret) -> Optional[str]:
    """The operator's value from the settings, if any."""
    return getattr(settings, secret.setting) or None if secret.setting else None


def ensure(settings: Settings, secret: Secret) -> str:
    """The secret: the setting, else the generated file (created, 0600, on the first call)."""
    value = configured(settings, secret)
    if value:
        return value
    path = secret.path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_new(path, _random.token_urlsafe(secret.nbytes))
    os.chmod(path, 0o600)  # a file restored from a backup may have lost its mode
    return read(path)


def client_value(settings: Settings, secret: Secret) -> Optional[str]:
    """What a client of the service sends: the setting, the embedded service's secret, or ``None``
    (an external service that needs none, e.g. a Redis whose password is in ``RECSYS_REDIS_URL``)."""
    value = configured(settings, secret)
    if value:
        return value
    if settings.embedded[secret.service]:
        return ensure(settings, secret)
    if secret.external_needs_it:
        raise ConfigError(f"the external {secret.service} service needs its secret: set {secret.env}")
    return None


def source(settings: Settings, secret: Secret) -> str:
    """What holds the secret, for status output: the variable when set, else the file's path."""
    return secret.env if configured(settings, secret) else str(secret.path(settings))


def read(path: Path) -> str:
    """The secret kept in ``path``; :class:`ServiceError` naming the file if it is unusable."""
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        raise ServiceError(f"the secret file {path} is empty; delete it and a new one is generated at the next start")
    return value


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by this user only from its first byte
    (for files that carry a secret, e.g. a service's configuration)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _private_tmp(path, text) as tmp:
        os.replace(tmp, path)


def _write_new(path: Path, value: str) -> None:
    """Create ``path`` holding ``value`` unless it exists: the first writer wins, nobody clobbers."""
    with _private_tmp(path, value + "\n") as tmp:
        try:
            os.link(tmp, path)  # atomic, and refuses to replace a value another process just wrote
        except FileExistsError:
            pass


@contextlib.contextmanager
def _private_tmp(path: Path, text: str) -> Iterator[Path]:
    """A temporary file beside ``path`` holding ``text`` (0600 from creation, synced), removed on exit."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_random.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
