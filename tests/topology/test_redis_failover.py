"""Failover of the online store's Redis Cluster (distributed topology): ``kill -9`` of the primary that holds the
store, while a reader reads features through the store's own read path, and in the middle of a refresh.

What must hold (the drill is tests/topology/failover.py): a replica takes over (every live node's
``cluster_state:ok`` again, another primary serves the store's slot); reads fail only within one window, from
the first failed read to the first good one after it, and all succeed after it; no read ever mixes versions;
a refresh cut by the failover fails with a clear error (or completes) and its retry completes with one current
version; the killed node, restarted by ``stack up``, rejoins as a synced replica. The window's length is
printed here and measured by bench/redis_cluster.py (no timed assertions).
"""

from __future__ import annotations

import time
import uuid

import pytest
from failover import Reader, failure_window, kill_store_primary, marked_snapshot, rejoin, wait_for_takeover

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_service(topology):
    from recsys.stack.redis import RedisService

    topology.up("redis")
    return RedisService(topology.settings)


@pytest.fixture
def stores(redis_service):
    """Two stores of one fresh prefix on clients of their own: the writer's and the reader's."""
    from recsys.online.redis_store import RedisOnlineStore, client

    prefix = f"failover-{uuid.uuid4().hex[:8]}"
    made = [RedisOnlineStore(client(redis_service.settings, socket_timeout=5, socket_connect_timeout=2),
                             prefix=prefix, batch_size=50) for _ in range(2)]
    yield prefix, made[0], made[1]
    for store in made:
        store.close()


def wait_for_good_reads(reader: Reader, since: float, count: int = 20, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while reader.good_after(since) < count:
        assert time.monotonic() < deadline, f"fewer than {count} good reads within {timeout:.0f} s: {reader.reads[-3:]}"
        time.sleep(0.05)


def test_a_replica_takes_over_while_a_reader_reads(redis_service, stores, record_property):
    prefix, writer, reader_store = stores
    version = writer.refresh(marked_snapshot(1)).version
    with Reader(reader_store) as reader:
        wait_for_good_reads(reader, 0.0)
        killed, killed_at = kill_store_primary(redis_service, prefix)
        successor = wait_for_takeover(redis_service, prefix, killed)
        wait_for_good_reads(reader, time.monotonic())
    window = failure_window(reader.reads, killed_at)
    print(f"\nfailover of {killed} -> {successor}: {window}")
    record_property("failover_window", window)

    assert successor != killed
    assert window["failed"] > 0, "no read failed: the killed node did not hold the store"
    assert window["recovered"] and window["failed_after"] == 0, window
    assert not reader.mixed, reader.mixed[:3]
    assert {r.version for r in reader.reads if r.version} == {version}  # the replica had the whole version
    info = rejoin(redis_service.settings, redis_service, killed)
    assert info["master_port"] == dict(redis_service.nodes())[successor]
    assert redis_service.primary_of("{" + prefix + "}")[0] == successor  # the rejoined node did not take it back


def test_a_refresh_cut_by_a_failover_fails_clearly_and_its_retry_completes(redis_service, stores):
    from recsys.online.redis_store import OnlineStoreError

    prefix, writer, reader_store = stores
    first = writer.refresh(marked_snapshot(1)).version
    killed: list[tuple[str, float]] = []

    def kill_half_way(kind: str, written: int) -> None:
        if kind == "users" and written >= 1000 and not killed:
            killed.append(kill_store_primary(redis_service, prefix))

    with Reader(reader_store) as reader:
        wait_for_good_reads(reader, 0.0)
        try:
            result = writer.refresh(marked_snapshot(2, n_users=2000), on_batch=kill_half_way)
            outcome = f"completed: {result.version}"
        except OnlineStoreError as error:
            outcome = f"failed: {error}"
            assert "run the refresh again" in str(error) and "stays current" in str(error), error
        assert killed, "the refresh never reached the kill"
        wait_for_takeover(redis_service, prefix, killed[0][0])
        if outcome.startswith("failed"):
            assert writer.current().version == first  # the cut refresh switched nothing
            result = writer.refresh(marked_snapshot(2, n_users=2000))  # the retry: on the new primary
        switched = time.monotonic()
        wait_for_good_reads(reader, switched)
    print(f"\nrefresh cut by the failover of {killed[0][0]}: {outcome}; then {result.version} current")

    current = writer.current()
    assert current.version == result.version and current.feature_version == "m2"
    assert reader.reads[-1].version == result.version
    assert not reader.mixed, reader.mixed[:3]
    assert {r.version for r in reader.reads if r.version} <= {first, result.version}
    window = failure_window(reader.reads, killed[0][1])
    assert window["recovered"] and window["failed_after"] == 0, window
    rejoin(redis_service.settings, redis_service, killed[0][0])
