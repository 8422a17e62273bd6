"""The HTTP API's bearer token: ``settings.api_token``, or one generated at the first start.

    token_file(settings)     # <home>/services/api/token (where a generated token lives)
    ensure_token(settings)   # the token; generates and writes the file (mode 0600) the first time
    api_token(settings)      # the token a client sends (never generates one for an external API)

The token is one of the stack's secrets (:mod:`recsys.credentials` writes, keeps and reads it). A
second uvicorn worker starting at the same moment reads the first one's token instead of replacing it.
"""

from __future__ import annotations

from pathlib import Path

from recsys import credentials
from recsys.settings import Settings

ENV_NAME = credentials.API_TOKEN.env


def token_file(settings: Settings) -> Path:
    """Where the embedded API keeps its generated token."""
    return credentials.API_TOKEN.path(settings)


def token_source(settings: Settings) -> str:
    """What holds the token, for ``recsys stack status``: the variable when set, else the file's path."""
    return credentials.source(settings, credentials.API_TOKEN)


def ensure_token(settings: Settings) -> str:
    """The API's token: ``settings.api_token``, else the generated one (created on the first call)."""
    return credentials.ensure(settings, credentials.API_TOKEN)


def api_token(settings: Settings) -> str:
    """The token a client of ``settings.api`` sends. An external API's token is not ours to generate."""
    return credentials.client_value(settings, credentials.API_TOKEN)
