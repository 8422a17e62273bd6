"""The live applier: applies the event log to the live layer of the online store, each event exactly once.

    apply_pending(store)                          # apply everything accepted so far (tests, --once)
    LiveApplier(store, "worker-1").run(stop)      # the event worker's loop: wait on the log, apply, repeat

A consumer group (``LIVE_GROUP``) on the event log. Each step applies this consumer's own pending
entries first (what it read before a crash), then entries other appliers left pending longer than
``claim_idle_seconds`` (a dead applier's), then new ones, waiting on the log (``XREADGROUP BLOCK``)
so an accepted event is applied milliseconds later. Applying acknowledges in the same script
(:meth:`recsys.online.redis_store.RedisOnlineStore.apply_events`), so nothing is applied twice.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

from recsys.data import ids
from recsys.online.redis_store import LIVE_GROUP, as_text
from recsys.online.store import EventBatch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.online.redis_store import RedisOnlineStore

log = logging.getLogger(__name__)

BATCH = 5000
"""Entries read and applied per step."""


def entries_to_batch(entries: list) -> tuple[list[str], EventBatch]:
    """Log entries (``(id, {field: value})`` as redis-py returns them) as their ids and an
    :class:`~recsys.online.store.EventBatch` (id kinds of the first entry: the text columns do not
    depend on them; writers that type ids split by kinds first)."""
    entry_ids, users, items, types, stamps, requests = [], [], [], [], [], []
    code = "ii"
    for entry_id, fields in entries:
        f = {as_text(k): as_text(v) for k, v in fields.items()}
        entry_ids.append(as_text(entry_id))
        users.append(f["u"])
        items.append(f["i"])
        types.append(f["e"])
        stamps.append(int(f["t"]))
        requests.append(f.get("r", ""))
        code = f.get("k", code) if len(entry_ids) == 1 else code
    return entry_ids, EventBatch(users, items, types, stamps, requests, ids.IdKinds.from_code(code))


def entry_time(entry_id: str) -> float:
    """When an entry was appended (unix seconds): the millisecond part of its stream id."""
    return int(entry_id.split("-", 1)[0]) / 1000


class LiveApplier:
    """One consumer of the ``live`` group (see the module docstring). ``on_applied(n, lags)``: called
    after each applied step with the count and each entry's accept-to-applied seconds (metrics)."""

    def __init__(
        self,
        store: "RedisOnlineStore",
        consumer: str,
        *,
        batch: int = BATCH,
        claim_idle_seconds: float = 60.0,
        on_applied: Optional[Callable[[int, list[float]], None]] = None,
    ):
        self.store = store
        self.consumer = consumer
        self.batch = batch
        self.claim_idle_ms = int(1000 * claim_idle_seconds)
        self.on_applied = on_applied
        self._group_ready = False

    def _ensure_group(self) -> None:
        import redis

        if self._group_ready:
            return
        try:  # from the start of the log: events accepted before the first applier ran are applied too
            self.store.client.xgroup_create(self.store.key_events, LIVE_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def step(self, block_ms: Optional[int] = None) -> int:
        """Apply one batch: own pending entries, else idle ones claimed from others, else new ones
        (waiting up to ``block_ms`` for them; None: no wait). Returns how many were applied."""
        self._ensure_group()
        client, key = self.store.client, self.store.key_events
        entries = _entries(client.xreadgroup(LIVE_GROUP, self.consumer, {key: "0"}, count=self.batch))
        if not entries:
            claimed = client.xautoclaim(key, LIVE_GROUP, self.consumer, self.claim_idle_ms, "0-0", count=self.batch)
            entries = [e for e in claimed[1] if e[1]]  # entries trimmed meanwhile come back without fields
        if not entries:
            entries = _entries(client.xreadgroup(LIVE_GROUP, self.consumer, {key: ">"}, count=self.batch, block=block_ms))
        if not entries:
            return 0
        entry_ids, events = entries_to_batch(entries)
        applied = self.store.apply_events(entry_ids, events)
        if self.on_applied is not None:
            now = time.time()
            self.on_applied(applied, [now - entry_time(i) for i in entry_ids])
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


def _entries(reply) -> list:
    """The entries of an XREADGROUP reply for one stream (empty when none)."""
    return list(reply[0][1]) if reply else []
