"""Exactly once across crashes, in-process: a consumer stopped between any two steps of writing a part
(intent recorded, file renamed, entries acknowledged) is recovered by itself after a restart or by
another consumer claiming its entries, and every event lands once; a consumer whose entries were taken
over while it stalled writes nothing (real Redis; the settings' claim idle time is 0.5 s)."""

from __future__ import annotations

import os
import time

import pytest

from events_helpers import event_batch, hidden_files, landed, rows
from recsys.data.contract import live_part_name
from recsys.events.landing import LandingConsumer, write_part_file
from recsys.events.log import EVENTS, LANDING_GROUP, PartIntent, part_columns

N = 6


def begin_part(event_log, settings, name: str) -> PartIntent:
    """What consumer ``name`` does up to step (a): read the entries, record the intent."""
    event_log.ensure_group(EVENTS, LANDING_GROUP)
    entries = event_log.read(EVENTS, LANDING_GROUP, name, count=100)
    (columns,), rejected = part_columns(entries)
    assert not rejected and len(columns) == N
    part = live_part_name(columns.first, len(columns))
    intent = PartIntent(part, name, tuple(columns.entry_ids), f".{part}.crashed.tmp")
    assert event_log.begin_part(intent) == []
    folder = settings.landing / "interactions"
    folder.mkdir(parents=True, exist_ok=True)
    return intent, columns, folder


def crash_after_intent(event_log, settings, redis_client):
    intent, columns, folder = begin_part(event_log, settings, "crashed")
    write_part_file(folder / intent.tmp, columns)  # written, fsynced, not renamed


def crash_after_rename(event_log, settings, redis_client):
    intent, columns, folder = begin_part(event_log, settings, "crashed")
    write_part_file(folder / intent.tmp, columns)
    os.replace(folder / intent.tmp, folder / intent.name)


def crash_after_commit_with_intent_left(event_log, settings, redis_client):
    """The commit ran (entries acknowledged, counted landed), yet the intent is there again."""
    intent, columns, folder = begin_part(event_log, settings, "crashed")
    write_part_file(folder / intent.tmp, columns)
    os.replace(folder / intent.tmp, folder / intent.name)
    assert event_log.commit_part(intent, int(time.time() * 1000)) == N
    redis_client.hset(event_log.store.key_parts, intent.name, intent.to_json())


CRASHES = {
    "intent recorded, file not renamed": crash_after_intent,
    "file renamed, entries not acknowledged": crash_after_rename,
    "entries acknowledged, intent left": crash_after_commit_with_intent_left,
}


@pytest.mark.parametrize("recovered_by", ["itself after a restart", "another consumer"])
@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_every_crash_point_resolves_to_exactly_once(crash, recovered_by, store, event_log, settings, redis_client):
    batch = event_batch(N)
    store.accept_events(batch)
    CRASHES[crash](event_log, settings, redis_client)
    assert len(event_log.parts()) == 1
    # more events behind the crashed part: a part written again would hold them too, under another name
    later = event_batch(4, start=N)
    store.accept_events(later)

    if recovered_by == "another consumer":
        time.sleep(settings.events_claim_idle_seconds + 0.1)  # the crashed consumer's entries are idle long enough
        LandingConsumer.from_settings(event_log, settings, "rescuer").drain()
    else:
        LandingConsumer.from_settings(event_log, settings, "crashed").drain()

    got, files = landed(settings.landing)
    assert len(got) == len(set(got)) and sorted(got) == sorted(rows(batch) + rows(later))
    assert store.event_stats()["landed"] == N + 4
    assert event_log.parts() == [] and hidden_files(settings.landing) == []
    assert sum(g.pending for g in event_log.groups(EVENTS)) == 0


def test_an_intent_held_recently_is_left_alone_and_its_owner_finishes(store, event_log, settings):
    """Its owner fenced the part a moment ago (it is alive): another consumer neither drops the intent
    nor claims the entries, and the owner's rename and commit land the events once."""
    store.accept_events(event_batch(N))
    intent, columns, folder = begin_part(event_log, settings, "slow")
    write_part_file(folder / intent.tmp, columns)
    time.sleep(settings.events_claim_idle_seconds * 0.7)
    assert event_log.fence_part(intent)  # holds the entries again
    time.sleep(settings.events_claim_idle_seconds * 0.7)  # idle since the intent > claim idle, since the fence <
    assert LandingConsumer.from_settings(event_log, settings, "eager").drain() == []
    assert [p.name for p in event_log.parts()] == [intent.name]
    os.replace(folder / intent.tmp, folder / intent.name)
    assert event_log.commit_part(intent, int(time.time() * 1000)) == N
    assert len(landed(settings.landing)[0]) == N and store.event_stats()["landed"] == N


def test_a_stalled_consumer_whose_part_was_taken_over_is_fenced_off(store, event_log, settings):
    batch = event_batch(N)
    store.accept_events(batch)
    intent, columns, folder = begin_part(event_log, settings, "zombie")
    write_part_file(folder / intent.tmp, columns)
    time.sleep(settings.events_claim_idle_seconds + 0.1)  # the zombie stalls before its fence
    written = LandingConsumer.from_settings(event_log, settings, "rescuer").drain()
    assert [p.rows for p in written] == [N]
    assert not event_log.fence_part(intent)  # the zombie wakes up: it must not rename its file
    assert sorted(landed(settings.landing)[0]) == sorted(rows(batch)) and store.event_stats()["landed"] == N


def test_buffered_entries_are_held_while_a_part_fills_and_taken_over_only_when_their_consumer_stalls(
    store, event_log, settings
):
    batch = event_batch(N)
    store.accept_events(batch)
    idle = settings.events_claim_idle_seconds
    patient = LandingConsumer.from_settings(event_log, settings, "patient", flush_seconds=60.0)
    began = time.monotonic()
    while time.monotonic() - began < 2.5 * idle:  # keeps reading (and holding its buffer every idle / 4)
        assert patient.step(block_ms=50) == []
    assert LandingConsumer.from_settings(event_log, settings, "eager").drain() == []  # nothing idle to claim

    time.sleep(idle + 0.1)  # now the patient consumer stalls
    assert [p.rows for p in LandingConsumer.from_settings(event_log, settings, "eager").drain()] == [N]
    assert patient.flush() == []  # its entries were claimed: it writes none of them
    got = landed(settings.landing)[0]
    assert sorted(got) == sorted(rows(batch)) and store.event_stats()["landed"] == N and event_log.parts() == []
