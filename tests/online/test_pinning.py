"""Feature-version pinning: a served model keeps reading the rows of ITS feature version (real Redis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from online_helpers import snapshot, tables

from recsys.online.redis_store import NoOnlineVersionError


def _version_keys(client, store, version):
    return sorted(client.scan_iter(match=f"{store.version_prefix}{version}:*", count=1000))


def test_a_pinned_reader_keeps_its_feature_versions_rows_after_a_refresh_switched_current(make_store):
    store = make_store()
    old_t, new_t = tables(seed=0, marker=0.25), tables(seed=1, marker=0.75)  # other codes, other values
    old = store.refresh(snapshot(old_t, feature_version="fvA"))
    new = store.refresh(snapshot(new_t, feature_version="fvB", data_version="dv2"))
    assert store.current().version == new.version

    user, items = 1007, [5000, 5004, 5011]
    pinned = store.read(user, items, with_seen=True, feature_version="fvA")
    assert pinned.version == old.version
    assert pinned.user["segment"][0] == old_t["users"].segment[7]
    np.testing.assert_array_equal(pinned.items["category"], old_t["items"].category.iloc[[0, 4, 11]])
    np.testing.assert_array_equal(pinned.items["price"], [0.25] * 3)
    # the unpinned read (and the other feature version's pinned read) see the new rows
    for rows in (store.read(user, items), store.read(user, items, feature_version="fvB")):
        assert rows.version == new.version
        np.testing.assert_array_equal(rows.items["price"], [0.75] * 3)
        np.testing.assert_array_equal(rows.items["category"], new_t["items"].category.iloc[[0, 4, 11]])
    # every read path honours the pin
    assert store.current(feature_version="fvA").version == old.version
    assert store.read_pipelined(user, items, feature_version="fvA").version == old.version
    np.testing.assert_array_equal(store.seen_items(user, feature_version="fvA"), pinned.seen)
    assert store.display([5001], feature_version="fvA") == [{"title": "item 5001", "category": old_t["raw_items"].category[1]}]
    assert list(store.popularity(feature_version="fvA")) == list(snapshot(old_t).popularity)
    assert list(store.popularity(feature_version="fvB")) == list(snapshot(new_t).popularity)

    # a newer refresh of the same feature version moves its pointer (same encoding, fresher rows)
    again = store.refresh(snapshot(old_t, feature_version="fvA", data_version="dv3"))
    assert store.read(user, feature_version="fvA").version == again.version


def test_a_read_pinned_to_a_feature_version_without_online_version_is_a_clear_error(make_store):
    store = make_store()
    store.refresh(snapshot(tables(), feature_version="fvA"))
    for read in (
        lambda: store.read(1000, [5000], feature_version="fvX"),
        lambda: store.popularity(feature_version="fvX"),
        lambda: store.read_pipelined(1000, [5000], feature_version="fvX"),
    ):
        with pytest.raises(NoOnlineVersionError, match="no version of feature version 'fvX'.*recsys online refresh"):
            read()
    assert store.current(feature_version="fvX") is None


def test_a_plain_refresh_sets_the_missing_pointer_of_a_version_written_before_pointers_existed(make_store, redis_client):
    store = make_store()
    old_t = tables()
    written = store.refresh(snapshot(old_t, feature_version="fvA"))
    pointer = store.pointer_key("fvA")
    redis_client.delete(pointer)  # what an online version written before the pointers looks like
    with pytest.raises(NoOnlineVersionError):
        store.read(1000, [5000], feature_version="fvA")

    again = store.refresh(snapshot(old_t, feature_version="fvA"))
    assert again.skipped and again.reason == "already current" and again.version == written.version
    assert redis_client.get(pointer).decode() == written.version
    assert store.read(1000, [5000], feature_version="fvA").version == written.version
    # idempotent, and never moves a pointer that is already set
    redis_client.set(pointer, "kept")
    assert store.refresh(snapshot(old_t, feature_version="fvA")).skipped
    assert redis_client.get(pointer).decode() == "kept"


def test_gc_keeps_a_pinned_version_past_the_grace_period_and_collects_it_once_unpinned(make_store, redis_client):
    store = make_store(grace_seconds=100)
    old = store.refresh(snapshot(tables(), feature_version="fvA"))
    assert store.pin("fvA", "triton v1 serving") is True
    assert store.pin("fvA", "triton v1 serving") is False  # already pinned
    new = store.refresh(snapshot(tables(seed=1), feature_version="fvB"))
    retired_at = redis_client.zscore(store.key_retired, old.version)

    # far past the grace period: kept, still readable by the pinned reader
    assert store.collect_garbage(now=retired_at + 10_000) == []
    assert _version_keys(redis_client, store, old.version)
    assert store.read(1000, feature_version="fvA").version == old.version
    status = store.status()
    assert status["pinned"] == {"fvA": {"reason": "triton v1 serving", "online_version": old.version}}
    assert old.version in status["retired"]

    # unpinned: the grace period starts again from the unpin (requests in flight finish) ...
    assert store.unpin("fvA") is True and store.unpin("fvA") is False
    unpinned_at = redis_client.zscore(store.key_retired, old.version)
    assert unpinned_at > retired_at
    assert store.collect_garbage(now=unpinned_at + 99) == []
    # ... then it is collected, and its pointer with it: a pinned read now says what is missing
    assert store.collect_garbage(now=unpinned_at + 101) == [old.version]
    assert _version_keys(redis_client, store, old.version) == []
    assert redis_client.get(store.pointer_key("fvA")) is None
    with pytest.raises(NoOnlineVersionError, match="fvA"):
        store.read(1000, feature_version="fvA")
    assert store.read(1000, feature_version="fvB").version == new.version
    assert store.pins() == {}


def test_gc_collects_an_older_version_of_a_pinned_feature_version(make_store, redis_client):
    """A pin keeps the NEWEST version of its feature version only: older ones follow the grace period."""
    store = make_store(grace_seconds=0)
    first = store.refresh(snapshot(tables(), feature_version="fvA", data_version="dv1"))
    store.pin("fvA", "triton v1 serving")
    second = store.refresh(snapshot(tables(), feature_version="fvA", data_version="dv2"))
    third = store.refresh(snapshot(tables(seed=1), feature_version="fvB"))
    assert store.collect_garbage(now=redis_client.zscore(store.key_retired, second.version) + 1) == [first.version]
    assert store.read(1000, feature_version="fvA").version == second.version
    assert store.current().version == third.version


def test_online_status_cli_shows_pins(make_store, stack_settings):
    store = make_store()
    store.refresh(snapshot(tables(), feature_version="fvA"))
    store.pin("fvA", "triton v3 serving")
    env = {**os.environ, **stack_settings.as_env(), "RECSYS_ONLINE_KEY_PREFIX": store.prefix}
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "online", "status"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["pinned"]["fvA"]["reason"] == "triton v3 serving"
    assert status["pinned"]["fvA"]["online_version"] == store.current().version
