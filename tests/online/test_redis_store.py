"""The Redis online store against the real redis-server of the test session."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis
from online_helpers import changed_tables, client_hset_fields, seen_of, snapshot, tables

from recsys.online.redis_store import ConcurrentRefreshError, OnlineStoreError


def _version_keys(client, store, version):
    return sorted(client.scan_iter(match=f"{store.version_prefix}{version}:*", count=1000))


def _assert_reads_equal(store, t, snap):
    """Every user and item read back equals the tables the snapshot was built from."""
    user_ids = t["user_ids"].tolist()
    item_ids = t["item_ids"].tolist()
    for position, user_id in enumerate(user_ids):
        rows = store.read(user_id, item_ids if position == 0 else [], with_seen=True)
        assert rows.user_found
        for column in t["users"].columns:
            assert rows.user[column][0] == t["users"][column].iloc[position], (user_id, column)
        expected_seen = np.unique(t["interactions"].item_id[t["interactions"].user_id == user_id])
        np.testing.assert_array_equal(rows.seen, expected_seen)
    rows = store.read(None, item_ids)
    assert rows.item_found.all()
    for column in t["items"].columns:
        np.testing.assert_array_equal(rows.items[column], t["items"][column].to_numpy())
    assert rows.items["category"].dtype == np.int64 and rows.items["price"].dtype == np.float32


def test_full_refresh_then_reads_equal_the_rows(make_store):
    store = make_store(batch_size=16)
    t = tables()
    snap = snapshot(t)
    result = store.refresh(snap)
    assert (result.mode, result.users_written, result.items_written) == ("full", 60, 25)
    _assert_reads_equal(store, t, snap)

    # unknown user and item: flagged, filled with the out-of-vocabulary code / 0.0
    rows = store.read(424242, [5000, 999999])
    assert not rows.user_found and rows.user["segment"][0] == 2
    np.testing.assert_array_equal(rows.item_found, [True, False])
    assert rows.items["category"][1] == 2 and rows.items["price"][1] == 0.0

    counts = t["interactions"][t["interactions"].label == 1].item_id.value_counts()
    top = store.popularity()
    assert len(top) == 10 and counts[top[0]] == counts.max()
    assert list(counts[top]) == sorted(counts[top], reverse=True)
    assert store.display([5003, 1]) == [{"title": "item 5003", "category": t["raw_items"].category[3]}, None]
    assert store.seen_items(999999).size == 0

    info = store.current()
    assert info.version == result.version and info.feature_version == "fv1" and info.data_version == "dv1"
    assert 0 <= info.age_seconds < 60


def test_refreshing_the_current_feature_version_is_a_no_op_unless_forced(make_store, redis_client):
    store = make_store()
    first = store.refresh(snapshot(tables()))
    again = store.refresh(snapshot(tables()))
    assert again.skipped and again.version == first.version
    forced = store.refresh(snapshot(tables()), force=True)
    assert not forced.skipped and forced.version != first.version
    assert store.current().version == forced.version


def test_incremental_refresh_writes_only_changed_entities_and_equals_a_full_refresh(make_store, redis_client):
    t, t2 = changed_tables()
    store = make_store(batch_size=8)
    base_version = store.refresh(snapshot(t)).version

    results = []
    written = client_hset_fields(
        redis_client,
        lambda: results.append(store.refresh(snapshot(t2, feature_version="fv2"), incremental=True)),
        f"{store.version_prefix}fv2-",
    )
    result = results[0]
    assert result.mode == "incremental" and result.base_version == base_version
    changed_users = {1001, 1002, 1003, 77777} | {u for u in t["user_ids"] if seen_of(t, u) != seen_of(t2, u)}
    assert 1010 in changed_users and len(changed_users) < 30
    assert result.users_written == len(changed_users)
    assert result.items_written == 2  # two new titles; the deleted item is simply not copied
    assert result.users_copied == len(t2["user_ids"]) - len(changed_users)
    assert result.items_copied == len(t2["item_ids"]) - 2
    assert (result.users_deleted, result.items_deleted) == (0, 1)
    # what actually went over the wire (MONITOR): only the changed rows
    assert written[store.key(result.version, "u")] == len(changed_users)
    assert written[store.key(result.version, "s")] == len(changed_users)
    assert written[store.key(result.version, "i")] == 2
    assert written[store.key(result.version, "d")] == 2

    # the incremental version holds exactly what a full refresh of the new data holds
    full = make_store()
    full.refresh(snapshot(t2, feature_version="fv2"))
    for suffix in ("u", "s", "i", "d", "pop", "hu", "hi"):
        a, b = store.key(result.version, suffix), full.key(full.current().version, suffix)
        if suffix in ("pop", "hu", "hi"):
            assert redis_client.get(a) == redis_client.get(b), suffix
        else:
            assert redis_client.hgetall(a) == redis_client.hgetall(b), suffix
    _assert_reads_equal(store, t2, None)
    assert store.read(None, [5024]).item_found.tolist() == [False]


def test_incremental_with_a_new_column_layout_falls_back_to_full(make_store):
    t = tables()
    store = make_store()
    store.refresh(snapshot(t))
    t2 = dict(t, users=t["users"].assign(extra=np.float32(1.0)))
    result = store.refresh(snapshot(t2, feature_version="fv2"), incremental=True)
    assert result.mode == "full" and "layout" in result.reason
    assert store.read(1000).user["extra"][0] == 1.0


@pytest.mark.parametrize("failure", ["hook", "bad_row"])
def test_a_refresh_failing_half_way_leaves_current_untouched_and_no_partial_keys(make_store, redis_client, failure):
    store = make_store(batch_size=10)
    t = tables()
    good = store.refresh(snapshot(t))
    before = store.read(1000, [5000, 5001])

    t2 = dict(t, users=t["users"].assign(activity=np.float32(9.0)))
    snap2 = snapshot(t2, feature_version="fv2")
    hook = None
    if failure == "hook":
        def hook(kind, written):
            if kind == "users" and written >= 30:
                raise RuntimeError("injected failure between batches")

        expected = pytest.raises(RuntimeError, match="injected failure between batches")
    else:
        snap2.users.features[35] = None  # a row Redis cannot take: packing the 4th batch's commands fails
        # hiredis' packing refuses it: TypeError from the store's own framing, DataError through a cluster pipeline
        expected = pytest.raises((TypeError, redis.DataError), match="must be str, int, float or bytes")
    with expected:
        store.refresh(snap2, on_batch=hook)

    assert store.current().version == good.version
    after = store.read(1000, [5000, 5001])
    assert after.version == good.version and after.user["activity"][0] == before.user["activity"][0] == 0.0
    failed_version = f"fv2-{int(redis_client.get(store.key_seq))}"
    assert _version_keys(redis_client, store, failed_version) == []
    assert redis_client.zcard(store.key_writing) == 0


def test_a_concurrent_switch_is_detected_and_the_loser_cleans_up(make_store, redis_client):
    store, rival = make_store(batch_size=10), make_store()
    store.refresh(snapshot(tables()))

    def rival_refresh(kind, written):
        if kind == "users" and written == 10:
            rival.refresh(snapshot(tables(), feature_version="rival"))

    with pytest.raises(ConcurrentRefreshError):
        store.refresh(snapshot(tables(), feature_version="mine"), on_batch=rival_refresh)
    assert store.current().feature_version == "rival"
    assert not [k for k in redis_client.scan_iter(match=f"{store.version_prefix}mine-*")]


def test_a_version_missing_rows_on_the_server_is_never_switched_to(make_store, redis_client):
    """Writes Redis acknowledged can be lost (a primary that dies before its replica got them, which then
    takes over): the switch counts the version's rows against its meta and refuses a version with holes."""
    store = make_store(batch_size=10)
    good = store.refresh(snapshot(tables()))

    def lose_a_written_user(kind, written):
        if kind == "items" and written == 10:  # every user is written by now
            (users_key,) = redis_client.scan_iter(match=f"{store.version_prefix}fv2-*:u")
            redis_client.hdel(users_key, "1003")

    with pytest.raises(OnlineStoreError, match=r"incomplete on the server \(59 of 60 users and 25 of 25 items"):
        store.refresh(snapshot(tables(), feature_version="fv2"), on_batch=lose_a_written_user)
    assert store.current().version == good.version
    assert not [k for k in redis_client.scan_iter(match=f"{store.version_prefix}fv2-*")]


def test_gc_removes_retired_versions_only_after_the_grace_period(make_store, redis_client):
    store = make_store(grace_seconds=100)
    first = store.refresh(snapshot(tables()))
    second = store.refresh(snapshot(tables(), feature_version="fv2"))
    retired_at = redis_client.zscore(store.key_retired, first.version)
    assert retired_at is not None

    assert store.collect_garbage(now=retired_at + 99) == []
    assert _version_keys(redis_client, store, first.version)  # still readable in the grace period
    # a writer that died half-way (never switched): also collected after the grace period
    redis_client.zadd(store.key_writing, {"dead-9": retired_at})
    redis_client.hset(store.key("dead-9", "u"), "1", b"x")

    removed = store.collect_garbage(now=retired_at + 101)
    assert sorted(removed) == sorted([first.version, "dead-9"])
    assert _version_keys(redis_client, store, first.version) == []
    assert _version_keys(redis_client, store, "dead-9") == []
    assert store.current().version == second.version and store.read(1000).user_found
    assert store.collect_garbage(now=retired_at + 10_000) == []  # the current version is never collected


def test_a_reader_during_refreshes_never_sees_a_mixed_version(make_store):
    """Every continuous value of version "mN" is N: a row from another version would show."""
    writer = make_store(batch_size=7, grace_seconds=0)
    reader = make_store()
    snaps = [snapshot(tables(n_users=200, marker=float(m)), feature_version=f"m{m}") for m in (1, 2, 3)]
    writer.refresh(snaps[0])
    stop = threading.Event()
    seen_versions, reads, errors = set(), [0], []

    def hammer():
        item_ids = list(range(5000, 5025))
        while not stop.is_set():
            try:
                rows = reader.read(1000 + reads[0] % 200, item_ids)
                marker = float(rows.version.split("-")[0][1:])
                assert rows.user_found and rows.item_found.all()
                assert rows.user["activity"][0] == marker, rows.version
                assert (rows.items["price"] == marker).all(), rows.version
                seen_versions.add(rows.version)
                reads[0] += 1
            except Exception as exc:  # reported below, with the version it happened on
                errors.append(exc)
                return

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        for round_ in range(10):
            writer.refresh(snaps[(round_ + 1) % 3], force=True, incremental=round_ % 2 == 1)
            writer.collect_garbage()  # grace 0: the previous version vanishes at once
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[0]
    assert reads[0] > 50 and len(seen_versions) >= 3


def test_unavailable_items_apply_at_once_without_a_refresh(make_store):
    store = make_store()
    store.refresh(snapshot(tables()))
    version = store.current().version
    assert store.read(None, [5000, 5001, 5002]).unavailable.tolist() == [False, False, False]
    assert store.add_unavailable([5001, 5002]) == 2
    assert store.add_unavailable([5002]) == 0
    assert store.read(None, [5000, 5001, 5002]).unavailable.tolist() == [False, True, True]
    assert store.unavailable() == [5001, 5002]
    assert store.remove_unavailable([5002, 6000]) == 1
    assert store.read(None, [5000, 5001, 5002]).unavailable.tolist() == [False, True, False]
    assert store.current().version == version
    # not versioned: a refresh keeps the set
    store.refresh(snapshot(tables(), feature_version="fv2"))
    assert store.unavailable() == [5001]


def test_reading_before_any_refresh_is_a_clear_error(make_store):
    with pytest.raises(OnlineStoreError, match="no current version"):
        make_store().read(1000, [5000])


def test_pipelined_read_equals_the_scripted_read(make_store):
    store = make_store()
    store.refresh(snapshot(tables()))
    a = store.read(1003, [5000, 5010, 999])
    b = store.read_pipelined(1003, [5000, 5010, 999])
    assert a.version == b.version
    for column in a.items:
        np.testing.assert_array_equal(a.items[column], b.items[column])
    np.testing.assert_array_equal(a.item_found, b.item_found)
    assert a.user == b.user or all((a.user[c] == b.user[c]).all() for c in a.user)
