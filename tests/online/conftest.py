"""Fixtures for the online store: the session's real Redis (``stack_settings``), one key prefix per test."""

from __future__ import annotations

import uuid

import pytest
from online_helpers import store_factory


@pytest.fixture
def make_store(redis_client):
    """Build RedisOnlineStore objects on the session Redis; each test gets its own key prefix."""
    with store_factory(redis_client, redis_client, f"test-{uuid.uuid4().hex[:8]}") as make:
        yield make
