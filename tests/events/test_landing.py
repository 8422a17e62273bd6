"""The landing consumer on the session's real Redis: accepted events land as live parts of the input
contract, exactly once, one part per id kinds; the log is trimmed only as far as every group got."""

from __future__ import annotations

import time
from collections import Counter

import pyarrow as pa
import pytest

from events_helpers import ITEMS, USERS, event_batch, hidden_files, landed, rows, text_id
from recsys.data import ids
from recsys.events.landing import LandingConsumer
from recsys.events.log import EVENTS, LANDING_GROUP

KINDS = {"int": ids.IdKinds(), "string": ids.IdKinds(ids.STRING, ids.STRING)}


def consumer(event_log, settings, name="lander", **overrides):
    return LandingConsumer.from_settings(event_log, settings, name, **overrides)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_accepted_events_land_as_live_parts_exactly_once(kind, store, event_log, settings):
    kinds = KINDS[kind]
    batches = [event_batch(7, kinds, 0), event_batch(12, kinds, 7), event_batch(6, kinds, 19)]
    for batch in batches:
        store.accept_events(batch)
    expected = [row for batch in batches for row in rows(batch)]

    parts = consumer(event_log, settings, part_max_rows=10).drain()

    got, files = landed(settings.landing)
    assert sorted(got) == sorted(expected) and len(got) == len(set(got)) == 25
    assert [p.rows for p in parts] == [10, 10, 5] and len(files) == 3
    id_type = pa.int64() if kind == "int" else pa.string()
    by_name = {file["path"].name: file for file in files}
    for part in parts:
        file = by_name[f"events-{part.first}-{part.rows}.parquet"]
        schema, table = file["schema"], file["table"]
        assert schema.names == ["user_id", "item_id", "timestamp", "event_type", "request_id"]
        types = [schema.field(c).type for c in schema.names]
        assert types == [id_type, id_type, pa.timestamp("ms"), pa.string(), pa.string()]
        assert schema.field("timestamp").type.tz is None
        meta = schema.metadata
        assert meta[b"recsys.source"] == b"events" and meta[b"recsys.events"] == str(table.num_rows).encode()
        assert meta[b"recsys.stream_first"].decode() == part.first and meta[b"recsys.stream_last"].decode() == part.last
        # request ids: the text where the event named one, null where it did not
        requests = table.column("request_id").to_pylist()
        assert None in requests and any(r and r.startswith("req-") for r in requests) and "" not in requests
    assert store.event_stats()["landed"] == 25
    assert event_log.parts() == [] and hidden_files(settings.landing) == []
    assert event_log.length(EVENTS) == 0  # the landing group is the only one, and it got everything

    # a second run finds nothing to do: no part is written twice
    assert consumer(event_log, settings).drain() == []
    assert len(landed(settings.landing)[0]) == 25 and store.event_stats()["landed"] == 25


def test_a_part_never_mixes_id_kinds(store, event_log, settings):
    """Events of another deployment's kinds (a switch of id kinds between batches) land in parts of their own."""
    string = KINDS["string"]
    batches = [event_batch(4, ids.IdKinds(), 0), event_batch(5, string, 4), event_batch(3, ids.IdKinds(), 9)]
    for batch in batches:
        store.accept_events(batch)
    parts = consumer(event_log, settings).drain()
    _, files = landed(settings.landing)
    kinds_of_parts = sorted(str(f["schema"].field("user_id").type) for f in files)
    assert kinds_of_parts == ["int64", "string"] and sorted(p.rows for p in parts) == [5, 7]
    got = landed(settings.landing)[0]
    assert sorted(got, key=repr) == sorted((r for b in batches for r in rows(b)), key=repr)


def test_a_part_is_written_when_the_oldest_event_waited_the_flush_interval(store, event_log, settings):
    lander = consumer(event_log, settings, flush_seconds=0.4, part_max_rows=1000)
    store.accept_events(event_batch(3))
    began = time.monotonic()
    written = []
    while not written and time.monotonic() - began < 5:
        written = lander.step(block_ms=100)
        if not written:
            assert time.monotonic() - began < 0.4 + 1.0, "no part although the flush interval passed"
    assert time.monotonic() - began >= 0.4 and [p.rows for p in written] == [3]


def test_the_log_is_trimmed_only_as_far_as_every_group_acknowledged(store, event_log, settings, redis_client):
    """A group of the user's own (here one that read nothing yet) keeps the entries it has not acknowledged."""
    store.accept_events(event_batch(8))
    redis_client.xgroup_create(store.key_events, "analytics", id="0")
    consumer(event_log, settings).drain()
    assert store.event_stats()["landed"] == 8 and event_log.length(EVENTS) == 8
    # the user's group reads and acknowledges 5: those 5 may go, not the other 3
    read = redis_client.xreadgroup("analytics", "a1", {store.key_events: ">"}, count=5)[0][1]
    redis_client.xack(store.key_events, "analytics", *[entry_id for entry_id, _ in read])
    assert event_log.trim(EVENTS) == 5 and event_log.length(EVENTS) == 3
    groups = {g.name: g for g in event_log.groups(EVENTS)}
    assert set(groups) == {"analytics", LANDING_GROUP} and groups["analytics"].undelivered == 3


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_validate_input_accepts_the_live_parts(kind, store, event_log, settings):
    """The ingest's own validation reads the landing folder with the parts (new users allowed)."""
    import pandas as pd

    from recsys.data.validation import validate_input

    kinds = KINDS[kind]
    batches = [event_batch(20, kinds, 0), event_batch(15, kinds, 20)]
    for batch in batches:
        store.accept_events(batch)
    parts = consumer(event_log, settings, part_max_rows=16).drain()
    landing = settings.landing
    user_ids = [ids.parse(text_id(kinds.user_id, u, "u"), kinds.user_id) for u in USERS]
    item_ids = [ids.parse(text_id(kinds.item_id, i, "SKU"), kinds.item_id) for i in ITEMS]
    pd.DataFrame({"user_id": user_ids, "age": [30.0] * len(USERS)}).to_parquet(landing / "users.parquet")
    pd.DataFrame({"item_id": item_ids, "category": ["c"] * len(ITEMS)}).to_parquet(landing / "items.parquet")

    tables = validate_input(landing)

    assert len(tables.interactions) == 35 and tables.live.parts == len(parts) == 3 and tables.live.rows == 35
    assert tables.id_kinds == kinds
    new = sorted(Counter(r[0] for b in batches for r in rows(b) if r[0] not in set(user_ids)))
    assert tables.new_users == new and tables.live.new_users == len(new) > 0
    assert tables.live.newest_stream_id == max((p.last for p in parts), key=lambda i: tuple(map(int, i.split("-"))))


def test_an_etl_about_to_ingest_gets_every_event_accepted_before_it(store, event_log, settings, tmp_path):
    """A worker holding events for a long flush interval writes them when asked (what `recsys_etl` and the
    drift check do before ingesting); without a running consumer the ask times out, saying so."""
    from events_helpers import event_batch, landed, rows, start_worker, wait_for
    from recsys.events.landing import land_accepted_events
    from recsys.settings import replace

    patient = replace(settings, events_flush_seconds=3600, events_part_max_rows=100_000)
    assert land_accepted_events(event_log, 1.0) == {"requested": True, "landed": True, "through": None, "seconds": 0.0}
    batch = event_batch(40)
    store.accept_events(batch)
    lonely = land_accepted_events(event_log, 0.5)  # nobody consumes yet
    assert lonely["requested"] and lonely["landed"] is False
    log = tmp_path / "worker.log"
    worker = start_worker(patient, "patient", log)
    try:
        wait_for(lambda: event_log.groups(EVENTS) and event_log.groups(EVENTS)[0].pending, 30, "the worker reading",
                 log=log, process=worker)
        assert landed(patient.landing)[0] == []  # held for the hour-long flush interval
        answer = land_accepted_events(event_log, 30)
        assert answer["landed"] is True and answer["through"]
        assert sorted(landed(patient.landing)[0]) == sorted(rows(batch))
        assert land_accepted_events(event_log, 0) == {"requested": False}
    finally:
        worker.terminate()
        worker.wait(30)
