"""The online store with text ids (SKUs, UUIDs), against the session's real redis-server: hash fields
are the ids' text, packed lists use the text codec, readers give str back, and an incremental refresh
still writes only what changed (MONITOR shows what crossed the wire)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from online_helpers import as_string_ids, changed_tables, client_hset_fields, item_text, seen_of, snapshot, tables, user_text

from recsys.data import ids

KINDS = {"user_id": "string", "item_id": "string"}


def _assert_reads_equal(store, t):
    """Every user and item read back (by text id) equals the tables the snapshot was built from."""
    item_ids = t["item_ids"].tolist()
    for position, user_id in enumerate(t["user_ids"].tolist()):
        rows = store.read(user_id, item_ids if position == 0 else [], with_seen=True)
        assert rows.user_found, user_id
        for column in t["users"].columns:
            assert rows.user[column][0] == t["users"][column].iloc[position], (user_id, column)
        expected_seen = sorted(seen_of(t, user_id))
        assert rows.seen.dtype == object and rows.seen.tolist() == expected_seen, user_id
    rows = store.read(None, item_ids)
    assert rows.item_found.all()
    for column in t["items"].columns:
        np.testing.assert_array_equal(rows.items[column], t["items"][column].to_numpy())


def test_full_refresh_with_text_ids_reads_seen_popularity_and_display(make_store, redis_client):
    store = make_store(batch_size=16)
    t = as_string_ids(tables())
    result = store.refresh(snapshot(t))
    assert (result.mode, result.users_written, result.items_written) == ("full", 60, 25)
    _assert_reads_equal(store, t)

    # the ids' text is the hash field, as it is for int ids
    fields = {f.decode() for f in redis_client.hkeys(store.key(result.version, "u"))}
    assert fields == set(t["user_ids"].tolist()) and user_text(1003) == "u-3eb" in fields
    assert json.loads(redis_client.hget(store.key(result.version, "meta"), "ids")) == KINDS
    assert store.current().ids == KINDS

    rows = store.read("nobody", ["SKU-5003", "SKU-nope"])
    assert not rows.user_found and rows.item_found.tolist() == [True, False]
    assert store.seen_items("nobody").tolist() == [] and store.seen_items("nobody").dtype == object

    engaged = t["interactions"][t["interactions"].label == 1].item_id.value_counts()
    top = store.popularity()
    assert top.dtype == object and len(top) == 10 and all(isinstance(i, str) for i in top)
    assert list(engaged[top]) == sorted(engaged[top], reverse=True)
    ties = [sorted(i for i in top if engaged[i] == n) for n in dict.fromkeys(engaged[top])]
    assert [i for group in ties for i in group] == top.tolist()  # ties by id (text order)
    assert store.popularity(3).tolist() == top[:3].tolist()

    assert store.display(["SKU-5003", item_text(5005), "SKU-404"]) == [
        {"title": "item 5003", "category": t["raw_items"].category[3]},
        {"title": "item 5005", "category": t["raw_items"].category[5]},
        None,
    ]
    assert item_text(5005) == "SKU-05005é"  # non-ASCII and a leading zero survive the round trip


def test_incremental_refresh_with_text_ids_writes_only_changed_entities(make_store, redis_client):
    ints, ints2 = changed_tables()
    t, t2 = as_string_ids(ints), as_string_ids(ints2)
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
    changed_users = {user_text(u) for u in (1001, 1002, 1003, 77777)}
    changed_users |= {u for u in t["user_ids"] if seen_of(t, u) != seen_of(t2, u)}
    assert user_text(1010) in changed_users and len(changed_users) < 30
    assert (result.users_written, result.items_written) == (len(changed_users), 2)
    assert result.users_copied == len(t2["user_ids"]) - len(changed_users)
    assert result.items_copied == len(t2["item_ids"]) - 2
    assert (result.users_deleted, result.items_deleted) == (0, 1)
    # what went over the wire (MONITOR): only the changed rows, under their text ids
    assert written[store.key(result.version, "u")] == len(changed_users)
    assert written[store.key(result.version, "s")] == len(changed_users)
    assert written[store.key(result.version, "i")] == 2
    assert written[store.key(result.version, "d")] == 2

    # the incremental version holds byte for byte what a full refresh of the new data holds
    full = make_store()
    full.refresh(snapshot(t2, feature_version="fv2"))
    for suffix in ("u", "s", "i", "d", "pop", "hu", "hi"):
        a, b = store.key(result.version, suffix), full.key(full.current().version, suffix)
        if suffix in ("pop", "hu", "hi"):
            assert redis_client.get(a) == redis_client.get(b), suffix
        else:
            assert redis_client.hgetall(a) == redis_client.hgetall(b), suffix
    _assert_reads_equal(store, t2)
    assert store.read(None, [item_text(5024)]).item_found.tolist() == [False]


def test_a_change_of_id_kind_refreshes_in_full(make_store):
    store = make_store()
    store.refresh(snapshot(tables()))
    result = store.refresh(snapshot(as_string_ids(tables()), feature_version="fv2"), incremental=True)
    assert result.mode == "full" and "id kinds differ" in result.reason
    assert store.read(user_text(1000)).user_found and not store.read(1000).user_found


def test_unavailable_text_ids_apply_at_once_and_are_parsed_into_the_kind(make_store):
    store = make_store()
    t = as_string_ids(tables())
    store.refresh(snapshot(t))
    assert store.add_unavailable(["SKU-5001", "SKU-5002"]) == 2
    assert store.read(None, ["SKU-5000", "SKU-5001", "SKU-5002"]).unavailable.tolist() == [False, True, True]
    assert store.unavailable() == ["SKU-5001", "SKU-5002"]
    assert store.remove_unavailable(["SKU-5002", "SKU-9999"]) == 1
    assert store.unavailable() == ["SKU-5001"]
    with pytest.raises(ids.IdError, match="leading or trailing whitespace"):
        store.add_unavailable([" SKU-5003"])

    # an int version becomes current: typed ids are parsed into integers now, and the text member
    # left in the (unversioned) set can match no item, so listing skips it
    ints = make_store()
    ints.refresh(snapshot(tables(), feature_version="fv-int"))
    with pytest.raises(ids.IdError, match="item_id 'SKU-1' is not an integer id; this deployment's item ids are integers"):
        ints.add_unavailable(["SKU-1"])
    assert ints.add_unavailable(["5003", 5004]) == 2  # typed text or ints: the same member
    assert ints.unavailable() == [5003, 5004]


def test_bulk_reads_with_text_ids(make_store):
    store = make_store(batch_size=7)
    t = as_string_ids(tables())
    version = store.refresh(snapshot(t)).version
    store.add_unavailable(["SKU-5004"])
    wanted = [user_text(1003), "nobody", user_text(1000)]
    users = store.read_users(wanted, with_seen=True, unavailable_up_to=100)
    assert users.version == version and users.found.tolist() == [True, False, True]
    assert [s.tolist() for s in users.seen] == [sorted(seen_of(t, u)) for u in wanted]
    assert users.unavailable.tolist() == ["SKU-5004"]

    table = store.read_item_table(version, batch=4)
    assert table.kind == "string" and table.ids.tolist() == sorted(t["item_ids"].tolist())
    rows = table.rows_of(np.array(["SKU-5003", "SKU-404", table.ids[0]], dtype=object))
    assert rows.tolist() == [table.ids.tolist().index("SKU-5003"), -1, 0]
    assert table.rows_of([]).tolist() == []
    np.testing.assert_array_equal(table.popularity, store.popularity())
    np.testing.assert_array_equal(store.unavailable_flags(["SKU-5004", "SKU-5005"]), [True, False])
