"""Fixtures for the online store: the session's real Redis (``stack_settings``), one key prefix per test."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def make_store(redis_client):
    """Build RedisOnlineStore objects on the session Redis; each test gets its own key prefix."""
    from recsys.online.redis_store import RedisOnlineStore

    prefix = f"test-{uuid.uuid4().hex[:8]}"

    def make(**kwargs) -> RedisOnlineStore:
        kwargs.setdefault("prefix", prefix)
        return RedisOnlineStore(redis_client, **kwargs)

    yield make
    for key in redis_client.scan_iter(match=f"{{{prefix}}}:*", count=1000):
        redis_client.unlink(key)
