"""Redis killed with SIGKILL: what an operator changed live survives (the append-only file).

A Redis of its own (its own home and port, the embedded service's configuration), not the session's:
this test kills it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from recsys import stack
from recsys.online.redis_store import RedisOnlineStore
from recsys.settings import replace
from recsys.stack.redis import RedisService
from recsys.stack.service import free_port


@pytest.fixture
def own_redis(stack_settings, tmp_path):
    s = replace(stack_settings, home=tmp_path / "home", redis_port=free_port())
    stack.up(s, only=["redis"])
    yield s
    stack.down(s, only=["redis"])


def test_an_unavailable_set_change_survives_kill_9(own_redis):
    s = own_redis
    store = RedisOnlineStore.from_settings(s)
    store.add_unavailable([11, 12, 13])
    store.remove_unavailable([12])
    # No snapshot since: only the append-only file can bring this back. With `appendfsync everysec`
    # Redis may hold a write back while the previous second's fsync runs (up to 2 s; seen here: an
    # acknowledged SREM missing from the AOF when killed at once). That is the documented worst case;
    # past it, the change is on disk.
    assert store.client.info("persistence")["rdb_changes_since_last_save"] >= 2
    time.sleep(2.5)
    service = RedisService(s)
    pid = service.processes[0].pid()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(redis.ConnectionError):
        RedisOnlineStore.from_settings(s).client.ping()
    stack.up(s, only=["redis"])
    assert service.processes[0].pid() != pid
    after = RedisOnlineStore.from_settings(s)
    assert sorted(after.unavailable()) == ["11", "13"]  # the set holds members as written
    assert after.client.config_get("appendfsync") == {"appendfsync": "everysec"}
    log = service.processes[0].log_file.read_text()
    assert "DB loaded from append only file" in log or "Reading RDB preamble from AOF file" in log


def test_a_redis_needs_its_password(own_redis):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=own_redis.redis_port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=own_redis.redis_port, password="not-the-password").ping()
    assert RedisOnlineStore.from_settings(own_redis).client.ping()
