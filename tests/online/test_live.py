"""The live layer of the Redis online store: accepted events, each user's live items, live counters,
and how they compose with versioned batch data (real Redis)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from online_helpers import as_string_ids, snapshot, tables
from recsys.data import ids
from recsys.events.live import apply_pending
from recsys.online.store import EventBatch

NOW = float(int(time.time()))  # counter buckets and live items expire by the real clock: "now" must be now
MS = int(NOW * 1000)


@pytest.fixture(autouse=True)
def fresh_now():
    """Each test's own "now" (the suite may have run for minutes since this module was imported)."""
    global NOW, MS
    NOW = float(int(time.time()))
    MS = int(NOW * 1000)


def accept(store, events, kinds=ids.IdKinds(), **kwargs):
    """Accept and apply (what the API and the live applier do between them)."""
    result = store.accept_events(batch(events, kinds), **kwargs)
    apply_pending(store)
    return result


def batch(events, kinds=ids.IdKinds()) -> EventBatch:
    """EventBatch of (user, item, type, ms ago) tuples."""
    return EventBatch(
        [ids.to_text(e[0]) for e in events],
        [ids.to_text(e[1]) for e in events],
        [e[2] for e in events],
        [MS - e[3] for e in events],
        ["" for _ in events],
        kinds,
    )


def test_an_accepted_event_is_logged_at_once_and_visible_once_applied(make_store, redis_client):
    store = make_store()
    result = store.accept_events(batch([(7, 12, "purchase", 0), (7, 13, "view", 1000)]), now=NOW)
    assert result.accepted == 2 and result.first_id and result.last_id and result.first_id != result.last_id
    entries = redis_client.xrange(store.key_events)
    assert [e[1][b"i"] for e in entries] == [b"12", b"13"]
    assert entries[0][1][b"e"] == b"purchase" and entries[0][1][b"k"] == b"ii" and int(entries[0][1][b"t"]) == MS
    assert store.live_items(7).tolist() == []  # logged, not applied yet
    assert apply_pending(store) == 2
    assert store.live_items(7).tolist() == [12, 13]  # newest event time first
    stats = store.event_stats()
    assert stats["accepted"] == 2 and stats["applied"] == 2 and stats["last_applied_ms"] >= stats["last_accept_ms"]


def test_each_logged_event_is_applied_exactly_once(make_store):
    from recsys.events.live import LiveApplier
    from recsys.events.log import EVENTS, part_columns
    from recsys.online.redis_store import LIVE_GROUP

    store = make_store()
    store.accept_events(batch([(1, 10, "view", 0), (1, 11, "view", 0)]))
    first, second = LiveApplier(store, "a", claim_idle_seconds=0), LiveApplier(store, "b", claim_idle_seconds=0)
    # "a" reads the entries and dies before applying; "b" claims and applies them
    first.log.ensure_group(EVENTS, LIVE_GROUP)
    read = first.log.read(EVENTS, LIVE_GROUP, "a", count=10)
    assert len(read) == 2
    assert second.step() == 2
    # "a" comes back and applies what it had read: nothing is applied twice
    (part,), _ = part_columns(read)
    assert store.apply_events(part.entry_ids, part.to_batch()) == 0
    assert first.step() == 0
    counts = store.live_counts("items", [10], ["view"])[0]
    assert counts == {"view": {"1h": 1, "24h": 1}}
    assert store.event_stats()["applied"] == 2


def test_live_items_keep_each_items_newest_time_and_a_late_event_does_not_move_it_back(make_store):
    store = make_store()
    accept(store, [(1, 10, "view", 5000), (1, 11, "view", 3000), (1, 10, "click", 1000)], now=NOW)
    assert store.live_items(1).tolist() == [10, 11]
    accept(store, [(1, 10, "view", 60_000)], now=NOW)  # late: older than what is there
    assert store.live_items(1).tolist() == [10, 11]


def test_live_items_leave_by_age_and_by_count(make_store, monkeypatch):
    import recsys.online.redis_store as rs

    store = make_store(live_ttl_seconds=60)
    accept(store, [(1, 10, "view", 120_000), (1, 11, "view", 1000)], now=NOW)
    assert store.live_items(1).tolist() == [11]  # 10 is older than the TTL
    ttl = store.client.pttl(f"{store.live_prefix}s:1")
    assert 0 < ttl <= 60_000
    monkeypatch.setattr(rs, "LIVE_MAX_ITEMS", 3)
    accept(store, [(2, 20 + n, "view", 10_000 - n) for n in range(5)], now=NOW)
    assert store.live_items(2).tolist() == [24, 23, 22]


def test_counters_over_the_last_hour_and_day(make_store):
    store = make_store()
    accept(store, [(1, 10, "view", 60_000), (1, 10, "view", 2 * 3600_000), (2, 10, "purchase", 10_000),
                   (1, 11, "view", 30 * 3600_000)])  # 30 h ago: outside both windows
    item_10, item_11 = store.live_counts("items", [10, 11], ["view", "purchase"], now=NOW)
    assert item_10 == {"view": {"1h": 1, "24h": 2}, "purchase": {"1h": 1, "24h": 1}}
    assert item_11 == {}
    user_1, user_2, user_3 = store.live_counts("users", [1, 2, 3], ["view", "purchase"], now=NOW)
    assert user_1 == {"view": {"1h": 1, "24h": 2}} and user_2 == {"purchase": {"1h": 1, "24h": 1}} and user_3 == {}
    # an hour later the first view has left the hour window
    later = store.live_counts("items", [10], ["view"], now=NOW + 3 * 3600)[0]
    assert later == {"view": {"1h": 0, "24h": 2}}
    with pytest.raises(Exception, match="'users' and 'items'"):
        store.live_counts("carts", [1], ["view"])


def test_counter_buckets_expire_when_they_leave_their_window(make_store, redis_client):
    store = make_store()
    accept(store, [(1, 10, "view", 0)])
    keys = sorted(k.decode() for k in redis_client.scan_iter(match=f"{store.live_prefix}c:*"))
    assert len(keys) == 4  # users and items, 5-minute and hour buckets
    for key in keys:
        ttl_ms = redis_client.pttl(key)
        # a bucket expires once its end has left the window: window <= ttl <= window + bucket
        window, bucket = (3600_000, 300_000) if ":f:" in key else (86400_000, 3600_000)
        assert window - 5000 <= ttl_ms <= window + bucket, (key, ttl_ms)


def test_bulk_read_composes_live_items_with_the_version_and_a_refresh_keeps_them(make_store):
    t = tables()
    store = make_store()
    store.refresh(snapshot(t, "fv1"))
    user = int(t["user_ids"][0])
    item = int(t["item_ids"][3])
    accept(store, [(user, item, "purchase", 0), (999_999, item, "view", 0)])
    rows = store.read_users([user, 999_999, 555], with_seen=True, with_live=True)
    assert rows.live[0].tolist() == [item] and rows.live[1].tolist() == [item] and rows.live[2].tolist() == []
    assert not rows.found[1]  # a user unknown to the batch data still has live items
    without = store.read_users([user], with_seen=True)
    assert without.live is None
    # a full refresh to another version (and its switch) never wipes live state
    store.refresh(snapshot(t, "fv2"))
    again = store.read_users([user], with_seen=True, with_live=True)
    assert again.version != rows.version and again.live[0].tolist() == [item]


def test_text_ids_round_trip(make_store):
    t = as_string_ids(tables())
    store = make_store()
    store.refresh(snapshot(t, "fv1"))
    kinds = ids.IdKinds(ids.STRING, ids.STRING)
    user, item = str(t["user_ids"][0]), str(t["item_ids"][1])
    accept(store, [(user, item, "click", 0)], kinds, now=time.time())
    rows = store.read_users([user], with_live=True)
    assert rows.live[0].tolist() == [item] and rows.live[0].dtype == object
    assert store.live_items(user, ids.STRING).tolist() == [item]


def test_a_failing_script_applies_nothing(make_store, redis_client):
    store = make_store()
    bad = batch([(1, 10, "view", 0)])
    bad.timestamps_ms[0] = "soon"  # a script error after a write would not be rolled back: checked first
    with pytest.raises(Exception, match="unix milliseconds"):
        store.accept_events(bad, now=NOW)
    with pytest.raises(Exception, match="timestamp soon is not a number"):
        store.apply_events(["1-1"], bad)
    assert redis_client.xlen(store.key_events) == 0
    assert store.live_items(1).tolist() == []


def test_inbox_entries_are_acknowledged_in_the_same_step_and_never_accepted_twice(make_store, redis_client):
    from recsys.online.redis_store import INBOX_GROUP

    store = make_store()
    redis_client.xgroup_create(store.key_inbox, INBOX_GROUP, id="0", mkstream=True)
    entry = redis_client.xadd(store.key_inbox, {"user_id": "1", "item_id": "10", "event_type": "view", "timestamp": str(MS)})
    redis_client.xreadgroup(INBOX_GROUP, "w1", {store.key_inbox: ">"}, count=10)
    assert redis_client.xpending(store.key_inbox, INBOX_GROUP)["pending"] == 1
    assert accept(store, [(1, 10, "view", 0)], inbox_ids=[entry.decode()], now=NOW).accepted == 1
    assert redis_client.xpending(store.key_inbox, INBOX_GROUP)["pending"] == 0
    assert np.array_equal(store.live_items(1), [10])
    # a second worker that had read the same entry (claimed from the first) accepts nothing more
    again = store.accept_events(batch([(1, 10, "view", 0)]), inbox_ids=[entry.decode()], now=NOW)
    assert again.accepted == 0 and redis_client.xlen(store.key_events) == 1
    with pytest.raises(Exception, match="one per event"):
        store.accept_events(batch([(1, 10, "view", 0), (1, 11, "view", 0)]), inbox_ids=["1-1"])
