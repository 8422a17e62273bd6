"""The kill test, for real: the worker as a child process, killed with SIGKILL at random moments while
events are accepted, restarted under its own name (it resumes its pending entries) and under another
one (which claims the dead consumer's entries); once it drains, every accepted event is in exactly one
part of the landing folder."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter

import pytest

from events_helpers import event_batch, hidden_files, landed, rows, start_worker, wait_for
from recsys.data import ids
from recsys.events.log import EVENTS, LANDING_GROUP

EVENTS_TOTAL = 2000
BATCH = 25
RESTARTS = ["main", "main", "other", "main", "main", "other", "main", "other"]
"""The name each restart after a kill takes: "main" resumes its own pending entries, "other" is another
consumer, which claims a dead one's entries once they are idle (the last one drains everything)."""


@pytest.mark.slow
def test_sigkilled_workers_neither_lose_nor_duplicate_an_event(store, event_log, settings, tmp_path):
    from recsys.settings import replace

    settings = replace(settings, events_flush_seconds=0.05, events_part_max_rows=37, events_claim_idle_seconds=1.0)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    worker_log = tmp_path / "worker.log"
    began = time.monotonic()
    expected: list[tuple] = []
    number = 0

    def accept_batch() -> None:
        nonlocal number
        # one batch in eight of text ids: parts are split by id kinds, through the kills too
        kinds = ids.IdKinds(ids.STRING, ids.STRING) if number // BATCH % 8 == 5 else ids.IdKinds()
        batch = event_batch(BATCH, kinds, number)
        store.accept_events(batch)
        expected.extend(rows(batch))
        number += BATCH

    # the moments of the kills, start-up included (a kill may come at any point); events arrive at an even
    # pace until the last one, so each kill finds the worker busy
    lives = [rng.uniform(0.4, 1.8) for _ in RESTARTS]
    pace = EVENTS_TOTAL / sum(lives)
    worker, running = start_worker(settings, "main", worker_log), "main"
    kills = []
    for restart, (name, life) in enumerate(zip(RESTARTS, lives), 1):
        kill_at = time.monotonic() + life
        while time.monotonic() < kill_at:
            if number < min(EVENTS_TOTAL, pace * (time.monotonic() - began)):
                accept_batch()
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        kills.append((round(time.monotonic() - began, 2), number, store.event_stats().get("landed", 0)))
        if restart == len(RESTARTS):
            # the dead consumer surely held entries when it died: the last worker must claim them
            accept_batch()
            event_log.ensure_group(EVENTS, LANDING_GROUP)
            assert event_log.read(EVENTS, LANDING_GROUP, running, count=BATCH)
        worker, running = start_worker(settings, name, worker_log), name
    while number < EVENTS_TOTAL:
        accept_batch()
    accepted_at = time.monotonic() - began
    try:
        wait_for(lambda: store.event_stats().get("landed", 0) >= len(expected) and not event_log.parts()
                 and all(g.pending == 0 for g in event_log.groups(EVENTS)), 40,
                 f"the worker to land all {len(expected)} events (seed {seed})", poll=0.1, log=worker_log, process=worker)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=20)
    drained_at = time.monotonic() - began
    print(f"kill test (seed {seed}): {len(kills)} kills at (s, accepted, landed) {kills}; all accepted at {accepted_at:.1f} s, "
          f"drained at {drained_at:.1f} s")

    got, parts = landed(settings.landing)
    duplicates = [row for row, n in Counter(got).items() if n > 1]
    assert not duplicates, f"seed {seed}: {len(duplicates)} events landed twice, e.g. {duplicates[:3]}"
    assert Counter(got) == Counter(expected), f"seed {seed}: {len(set(expected) - set(got))} events missing"
    assert store.event_stats()["landed"] == len(expected) == store.event_stats()["accepted"] >= EVENTS_TOTAL
    for part in parts:  # the footer counts its rows, and a part never mixes id kinds
        assert int(part["schema"].metadata[b"recsys.events"]) == part["table"].num_rows
        assert part["schema"].field("user_id").type == part["schema"].field("item_id").type
    assert hidden_files(settings.landing) == [], f"seed {seed}: temporary files left"
    assert event_log.length(EVENTS) == 0  # every group acknowledged everything: trimmed
    assert code == 0, worker_log.read_text()[-3000:]
    assert "landing consumer other: claimed" in worker_log.read_text()  # it took over the dead one's entries
    assert drained_at < 60
