"""The live applier: applies the event log to the live layer of the online store, each event exactly once.

    apply_pending(store)                          # apply everything accepted so far (tests, --once)
    LiveApplier(store, "worker-1").run(stop)      # the event worker's loop: wait on the log, apply, repeat

A consumer group (``LIVE_GROUP``) on the event log, read through :class:`recsys.events.log.EventLog`.
Each step applies this consumer's own pending entries first (what it read before a crash), then
entries other appliers left pending longer than ``claim_idle_seconds`` (a dead applier's), then new
ones, waiting on the log so an accepted event is applied milliseconds later. Applying acknowledges
in the same script (:meth:`recsys.online.redis_store.RedisOnlineStore.apply_events`), so nothing
is applied twice, whoever else read the entry.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

from recsys.events.log import EVENTS, part_columns
from recsys.online.redis_store import LIVE_GROUP

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.events.log import EventLog
    from recsys.online.redis_store import RedisOnlineStore

log = logging.getLogger(__name__)

BATCH = 5000
"""Entries read and applied per step."""


class LiveApplier:
    """One consumer of the ``live`` group (see the module docstring). ``on_applied(n, lags)``: called
    after each step that applied events, with the count and each entry's accept-to-applied seconds."""

    def __init__(
        self,
        store: "RedisOnlineStore",
        consumer: str,
        *,
        event_log: Optional["EventLog"] = None,
        batch: int = BATCH,
        claim_idle_seconds: float = 60.0,
        on_applied: Optional[Callable[[int, list[float]], None]] = None,
    ):
        from recsys.events.redis_log import RedisEventLog

        self.store = store
        self.log = event_log or RedisEventLog(store)
        self.consumer = consumer
        self.batch = batch
        self.claim_idle_ms = int(1000 * claim_idle_seconds)
        self.on_applied = on_applied
        self._group_ready = False

    def step(self, block_ms: Optional[int] = None) -> int:
        """Apply one batch: own pending entries, else idle ones claimed from others, else new ones
        (waiting up to ``block_ms`` for them; None: no wait). Returns how many were applied."""
        events_log = self.log
        if not self._group_ready:
            events_log.ensure_group(EVENTS, LIVE_GROUP)  # from the log's start: nothing accepted earlier is skipped
            self._group_ready = True
        read = lambda after, wait=None: events_log.read(  # noqa: E731
            EVENTS, LIVE_GROUP, self.consumer, count=self.batch, after=after, block_ms=wait)
        entries = read("0")
        if not entries and events_log.claim(EVENTS, LIVE_GROUP, self.consumer, min_idle_ms=self.claim_idle_ms, count=self.batch):
            entries = read("0")
        if not entries:
            entries = read(">", block_ms)
        if not entries:
            return 0
        parts, rejected = part_columns(entries)
        if rejected:  # not events (nothing but the accept step appends to the log): nothing to apply
            events_log.ack(EVENTS, LIVE_GROUP, [entry.id for entry, _ in rejected])
            log.warning("live applier %s: %d log entries are not events, e.g. %s (%s); acknowledged",
                        self.consumer, len(rejected), rejected[0][0].id, rejected[0][1])
        applied = sum(self.store.apply_events(part.entry_ids, part.to_batch()) for part in parts)
        if self.on_applied is not None and applied:
            now = time.time()
            self.on_applied(applied, [now - entry.time for entry in entries if entry.fields])
        return applied

    def run(self, stop: threading.Event, block_ms: int = 1000) -> None:
        """Apply until ``stop`` is set (a Redis error is logged and retried after a pause)."""
        import redis

        log.info("live applier %s: applying the event log to the live layer", self.consumer)
        while not stop.is_set():
            try:
                self.step(block_ms)
            except redis.RedisError as exc:
                log.warning("live applier %s: %s: %s; retrying in 1 s", self.consumer, type(exc).__name__, exc)
                stop.wait(1.0)
                self._group_ready = False


def apply_pending(store: "RedisOnlineStore", consumer: str = "apply-pending") -> int:
    """Apply everything accepted so far and not yet applied (no waiting); returns how many."""
    applier = LiveApplier(store, consumer, claim_idle_seconds=0)
    total = 0
    while applied := applier.step():
        total += applied
    return total
