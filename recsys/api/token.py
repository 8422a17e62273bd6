"""The HTTP API's bearer token: ``settings.api_token``, or one generated at the first start.

    token_file(settings)     # <home>/services/api/token (where a generated token lives)
    ensure_token(settings)   # the token; generates and writes the file (mode 0600) the first time
    api_token(settings)      # the token a client sends (never generates one for an external API)

A generated token is written atomically and without clobbering: the file is written in full under
a temporary name (created 0600, so it is never readable by others, not even for a moment) and then
hard-linked to its final name, which fails if another process (a second uvicorn worker starting at
the same moment) got there first; that process's token then wins and is read back. Nothing here
logs or prints the token. Standard library only: ``recsys stack status`` imports it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from recsys.errors import ConfigError, ServiceError
from recsys.settings import Settings

ENV_NAME = "RECSYS_API_TOKEN"
TOKEN_BYTES = 32
"""Entropy of a generated token (``secrets.token_urlsafe``: 43 URL-safe characters)."""


def token_file(settings: Settings) -> Path:
    """Where the embedded API keeps its generated token."""
    return settings.services_root / "api" / "token"


def token_source(settings: Settings) -> str:
    """What holds the token, for ``recsys stack status``: the variable when set, else the file's path."""
    return ENV_NAME if settings.api_token else str(token_file(settings))


def read_token(path: Path) -> str:
    """The token kept in ``path``; :class:`ServiceError` naming the file if it is unusable."""
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ServiceError(f"the API token file {path} is empty; delete it and a new token is generated at the next start")
    return token


def ensure_token(settings: Settings) -> str:
    """The API's token: ``settings.api_token``, else the generated one (created on the first call)."""
    if settings.api_token:
        return settings.api_token
    path = token_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _write_new(path, secrets.token_urlsafe(TOKEN_BYTES))
    os.chmod(path, 0o600)  # a file restored from a backup may have lost its mode
    return read_token(path)


def api_token(settings: Settings) -> str:
    """The token a client of ``settings.api`` sends. An external API's token is not ours to generate."""
    if settings.api_token:
        return settings.api_token
    if not settings.embedded["api"]:
        raise ConfigError(f"the external recsys API at {settings.api} needs its token: set {ENV_NAME}")
    return ensure_token(settings)


def _write_new(path: Path, token: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and refuses to replace a token another process just wrote
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
