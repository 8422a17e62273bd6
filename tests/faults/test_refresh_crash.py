"""Redis killed (SIGKILL) in the middle of a full refresh, restarted: no half version is ever current,
readers only ever see whole versions, and the retried refresh completes. Unpaced and paced (a paced
refresh's prober process reads through the outage too, and is reaped when the refresh fails).

A Redis of its own (its own home and port, the embedded configuration: password, append-only file).
Every continuous feature of a version holds that version's marker (1.0 old, 2.0 new), so a read that
mixed two versions would show two markers.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from recsys import stack
from recsys.online.redis_store import OnlineStoreError, RedisOnlineStore
from recsys.settings import replace
from recsys.stack.redis import RedisService
from recsys.stack.service import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "online"))
from online_helpers import snapshot, tables  # noqa: E402

USERS = [1000, 1500, 2999]
ITEMS = [5000, 5100, 5199]


@pytest.fixture
def own_redis(stack_settings, tmp_path):
    s = replace(stack_settings, home=tmp_path / "home", redis_port=free_port(), online_batch_size=100)
    stack.up(s, only=["redis"])
    yield s
    stack.down(s, only=["redis"])


class Reader(threading.Thread):
    """Reads one user and three items in a loop until stopped; keeps every answer and every error."""

    def __init__(self, settings):
        super().__init__(daemon=True)
        self.store = RedisOnlineStore.from_settings(settings)
        self.reads: list[tuple[str, set[float]]] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                rows = self.store.read(USERS[i % len(USERS)], ITEMS)
            except redis.RedisError:
                self.errors += 1  # Redis is down: the reader waits for it
                time.sleep(0.05)
                continue
            if rows.version:
                markers = {float(v) for v in np.concatenate([rows.user["activity"], rows.items["price"]])}
                self.reads.append((rows.version, markers))
            i += 1


@pytest.mark.parametrize("read_budget", [0.0, 2.0], ids=["unpaced", "paced"])
def test_redis_killed_during_a_full_refresh_never_serves_half_a_version(own_redis, read_budget):
    s = own_redis
    store = RedisOnlineStore.from_settings(s)
    old = store.refresh(snapshot(tables(n_users=2000, n_items=200, marker=1.0), feature_version="old"))
    new_snapshot = snapshot(tables(n_users=2000, n_items=200, seed=1, marker=2.0), feature_version="new")
    reader = Reader(s)
    reader.start()

    pid = RedisService(s).processes[0].pid()
    batches = []

    def kill_after_a_few_batches(kind: str, written: int) -> None:
        batches.append((kind, written))
        if len(batches) == 5:
            time.sleep(2.5)  # past appendfsync's window: the half-written keys reach the disk
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(OnlineStoreError, match="lost its Redis connection") as failed:
        store.refresh(new_snapshot, on_batch=kill_after_a_few_batches, read_budget=read_budget)
    assert isinstance(failed.value.__cause__, (redis.ConnectionError, ConnectionError))  # redis-py's, or the socket's
    assert len(batches) == 5
    assert not [p for p in multiprocessing.active_children() if p.name == "refresh-prober"]

    stack.up(s, only=["redis"])
    after = RedisOnlineStore.from_settings(s)
    assert after.current().version == old.version  # the half version never became current
    half = [v.decode() for v in after.client.zrange(after.key_writing, 0, -1)]
    assert half and all(v.startswith("new-") for v in half)  # its partial keys are known as unfinished

    retried = after.refresh(new_snapshot, read_budget=read_budget)
    assert retried.pacing["enabled"] is (read_budget > 0)
    assert not retried.skipped and retried.version not in half
    assert after.current().version == retried.version
    # the dead write is collected once it is stale; the versions that serve are untouched
    removed = after.collect_garbage(now=time.time() + s.online_gc_grace_seconds + 1)
    assert set(half) <= set(removed)
    assert not list(after.client.scan_iter(match=f"{after.version_prefix}{half[0]}:*"))
    time.sleep(0.3)
    reader.stop.set()
    reader.join(timeout=10)

    assert reader.errors > 0  # the reader did run through the outage
    assert {version for version, _ in reader.reads} <= {old.version, retried.version}
    assert reader.reads[-1][0] == retried.version
    mixed = [(version, markers) for version, markers in reader.reads
             if markers != ({1.0} if version == old.version else {2.0})]
    assert not mixed, mixed[:5]
