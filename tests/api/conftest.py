"""Fixtures of the API tests: the real API service (uvicorn in its own process, started and stopped
through :class:`recsys.stack.api.ApiService`) on the session's real Redis, with a small catalogue.

No Triton here (its ports are free ones nobody listens on): these tests cover what the API does
itself (auth, events, live counters, metrics, OpenAPI, the token, the service) and how it answers
when Triton does not. The Triton-backed routes are tested in tests/serving/test_api_serving.py,
beside the trained model they need (the serving fixtures are session fixtures of that folder).
"""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from api_helpers import API_ENV_CLEARED

from shared_helpers import patched_environ, triton_ports


@pytest.fixture(scope="module")
def api_settings(stack_settings, tmp_path_factory):
    """The shared stack's Redis, a home and key prefix of this module, the API on a free port."""
    from recsys.settings import replace
    from recsys.stack.service import free_port

    return replace(
        stack_settings,
        home=tmp_path_factory.mktemp("api-home"),
        online_key_prefix=f"api-{uuid.uuid4().hex[:8]}",
        api_port=free_port(),
        api_url=None,
        api_token=None,
        events_max_batch=50,
        **triton_ports(),  # nobody listens there: Triton "does not answer"
    )


@pytest.fixture(scope="module")
def store(api_settings) -> Iterator:
    from api_helpers import drop_keys, refresh_catalogue

    from recsys.online.redis_store import RedisOnlineStore

    s = RedisOnlineStore.from_settings(api_settings)
    refresh_catalogue(s)
    yield s
    drop_keys(s)
    s.client.close()


@pytest.fixture(scope="module")
def api(api_settings, store) -> Iterator:
    """The API service running (its ``ApiService``); stopped after the module."""
    from recsys.stack.api import ApiService

    with patched_environ(API_ENV_CLEARED):
        service = ApiService(api_settings)
    service.up()
    try:
        yield service
    finally:
        service.down()


@pytest.fixture(scope="module")
def token(api, api_settings) -> str:
    from recsys.api.token import token_file

    return token_file(api_settings).read_text().strip()


@pytest.fixture()
def http(api, token) -> Iterator:
    """An HTTP client of the running API that sends the right token."""
    import httpx

    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        yield client
