"""The online store's bulk reads for the serving model (OnlineStore.read_users, read_item_table,
unavailable_flags; the Redis backend) against the session's real redis-server."""

from __future__ import annotations

import numpy as np
import pytest
from online_helpers import snapshot, tables

from recsys.online.redis_store import OnlineStoreError, VersionGoneError


def test_read_users_equals_one_by_one_reads_in_one_version(make_store):
    store = make_store(batch_size=16)
    t = tables()
    version = store.refresh(snapshot(t)).version
    ids = [1003, 424242, 1000, 1003]  # a repeat and an unknown user
    users = store.read_users(ids, with_seen=True)
    assert users.version == version
    np.testing.assert_array_equal(users.found, [True, False, True, True])
    for i, user_id in enumerate(ids):
        one = store.read(user_id, with_seen=True)
        for column, values in one.user.items():
            assert users.columns[column][i] == values[0], (user_id, column)
            assert users.columns[column].dtype == values.dtype
        np.testing.assert_array_equal(users.seen[i], one.seen)
    assert users.columns["segment"][1] == 2  # unknown: the out-of-vocabulary code
    assert store.read_users([1000]).seen is None


def test_read_item_table_holds_every_item_of_that_version(make_store):
    store = make_store(batch_size=7)
    t = tables(n_items=25)
    first = store.refresh(snapshot(t)).version
    table = store.read_item_table(first, batch=4)  # several HSCAN steps
    assert len(table) == 25 and table.version == first
    np.testing.assert_array_equal(table.ids, np.sort(t["item_ids"]))
    by_row = store.read(None, table.ids.tolist()).items
    for column, values in by_row.items():
        np.testing.assert_array_equal(table.columns[column], values)
        assert table.columns[column].dtype == values.dtype
    np.testing.assert_array_equal(table.popularity, store.popularity())
    np.testing.assert_array_equal(table.rows_of(np.array([5003, 1, 5000])), [3, -1, 0])

    # a newer version with other values: the old table keeps its own, a new read sees the new ones
    second = store.refresh(snapshot(tables(n_items=25, marker=7.5), feature_version="fv2")).version
    assert second != first
    assert (store.read_item_table(second).columns["price"] == 7.5).all()
    assert (table.columns["price"] == 0.0).all()
    assert store.read_users([1000]).version == second


def test_a_collected_version_is_refused(make_store):
    store = make_store(grace_seconds=0)
    old = store.refresh(snapshot(tables())).version
    store.refresh(snapshot(tables(marker=1.0), feature_version="fv2"))
    store.collect_garbage(now=1e12)
    with pytest.raises(VersionGoneError):
        store.read_item_table(old)


def test_unavailable_flags_follow_the_live_set(make_store):
    store = make_store()
    store.refresh(snapshot(tables()))
    assert store.unavailable_flags([]).shape == (0,)
    store.add_unavailable([5001, 5004])
    np.testing.assert_array_equal(store.unavailable_flags([5000, 5001, 5004, 99]), [False, True, True, False])
    store.remove_unavailable([5001])
    np.testing.assert_array_equal(store.unavailable_flags([5001, 5004]), [False, True])


def test_read_users_without_a_version_or_users_is_a_clear_error(make_store):
    store = make_store()
    with pytest.raises(OnlineStoreError, match="no current version"):
        store.read_users([1000])
    with pytest.raises(OnlineStoreError, match="at least one user"):
        store.read_users([])


def test_read_users_pinned_to_a_feature_version(make_store):
    store = make_store()
    first = store.refresh(snapshot(tables(marker=1.0))).version
    second = store.refresh(snapshot(tables(marker=2.0), feature_version="fv2")).version
    assert store.read_users([1000]).version == second
    pinned = store.read_users([1000], feature_version="fv1")
    assert pinned.version == first and pinned.columns["activity"][0] == 1.0
    with pytest.raises(OnlineStoreError, match="no version of feature version 'fv9'"):
        store.read_users([1000], feature_version="fv9")
