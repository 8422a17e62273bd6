"""Fixtures for the event path: the session's real Redis (``stack_settings``), one key prefix and one
landing folder per test, settings that make the worker flush and claim quickly."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def prefix(redis_client):
    """This test's key prefix (its keys are deleted afterwards)."""
    name = f"events-{uuid.uuid4().hex[:8]}"
    yield name
    for key in redis_client.scan_iter(match=f"{{{name}}}:*", count=1000):
        redis_client.unlink(key)


@pytest.fixture
def store(redis_client, prefix):
    from recsys.online.redis_store import RedisOnlineStore

    return RedisOnlineStore(redis_client, prefix=prefix)


@pytest.fixture
def event_log(store):
    from recsys.events.redis_log import RedisEventLog

    return RedisEventLog(store)


@pytest.fixture
def settings(stack_settings, prefix, tmp_path):
    """The session's services, this test's keys and landing folder; quick flushes and claims."""
    from recsys.settings import replace
    from recsys.stack.service import free_port

    return replace(
        stack_settings,
        landing_dir=tmp_path / "landing",
        online_key_prefix=prefix,
        events_consumer_name="test-worker",
        events_flush_seconds=0.1,
        events_part_max_rows=50,
        events_claim_idle_seconds=0.5,
        events_metrics_port=free_port(),
    )
