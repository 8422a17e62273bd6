"""Who is calling: Airflow's own authentication, applied to the plugin's FastAPI app.

Airflow mounts a plugin's FastAPI app beside its API but does NOT put it behind the login, so every
endpoint here depends on :func:`require_user`, which delegates to the dependency Airflow's core API
uses (``airflow.api_fastapi.core_api.security.get_user``): a JWT from ``Authorization: Bearer``
(e.g. from ``POST /auth/token``) or from the ``_token`` cookie the UI sets at login, validated by the
configured auth manager (signature, expiry, audience). No token: 401; an expired one: 401; a forged
or malformed one: 403. The user must also be allowed to see the Airflow website.

Actions (starting a DAG) go to Airflow's REST API with the caller's own token (:func:`caller_token`),
so Airflow's authorization decides what the caller may do; the plugin stores no password.
"""

from __future__ import annotations

from typing import Annotated, Optional
from urllib.parse import urlsplit

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, HTTPException, Request, status


def require_user(user: Annotated[BaseUser, Depends(get_user)]) -> BaseUser:
    """The authenticated Airflow user, who must be allowed to see the Airflow website (else 403)."""
    if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="Forbidden")
    return user


UserDep = Annotated[BaseUser, Depends(require_user)]


def caller_token(request: Request) -> str:
    """The JWT this request authenticated with: the bearer token if any, else the ``_token`` cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    token = request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Not authenticated")
    return token


def uses_cookie(request: Request) -> bool:
    """True when the request authenticates with the browser's cookie (no bearer header)."""
    return not request.headers.get("authorization", "").lower().startswith("bearer ")


def require_same_origin(request: Request, user: UserDep) -> None:
    """Refuse a cookie-authenticated state change that another site's page may have sent (CSRF).

    Checked after authentication (``user``), so an anonymous caller gets 401 like everywhere else.

    A browser attaches the ``_token`` cookie to a form posted from any page of the same site, so a
    POST authenticated by that cookie must carry an ``Origin`` (or ``Referer``) of this server.
    Bearer-token callers are not exposed to this (a page cannot make the browser add that header).
    """
    if not uses_cookie(request):
        return
    claimed: Optional[str] = request.headers.get("origin") or request.headers.get("referer")
    if not claimed:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="missing Origin header")
    origin = urlsplit(claimed)
    own = urlsplit(str(request.base_url))
    if (origin.scheme, origin.netloc) != (own.scheme, own.netloc):
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="cross-origin request refused")
