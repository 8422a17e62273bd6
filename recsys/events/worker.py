"""The event worker: one process (``recsys events worker``; the stack's ``events`` service) running three loops.

    EventWorker(settings).run()        # until stop() (SIGTERM in the CLI); metrics on settings.host:events_metrics_port
    EventWorker(settings).drain()      # everything there is now, then return (``--once``: tests, an Airflow task)

- the inbox validator (:class:`InboxValidator`): consumer group ``validate`` on the inbox. Each inbox
  entry is one event, checked by the same :func:`~recsys.events.validation.validate_events` as the
  HTTP API's; a bad entry is refused alone (copied to the refused stream with the reason, acknowledged
  and counted, in one script), the good ones are accepted in one call that acknowledges their inbox
  entries in the same step (:meth:`~recsys.online.store.OnlineStore.accept_events`), so a crash
  between reading and accepting only means the entries are read again, and a claimed entry is never
  accepted twice. Idle entries of dead workers are claimed after ``events_claim_idle_seconds``.
- the live applier (:class:`recsys.events.live.LiveApplier`): applies the event log to the live layer.
- the landing consumer (:class:`recsys.events.landing.LandingConsumer`): writes the log as parquet parts.

Each loop runs in a thread of its own and uses the consumer name ``events_consumer_name`` (else the
host name) in its group. A loop that meets a Redis error logs it and starts over; any other error
stops the worker (an exit the stack or a supervisor sees, rather than a process doing half its job).

Metrics (Prometheus, :class:`WorkerMetrics`): this process's counters (inbox events accepted and
refused, events applied, landing parts and rows), the inbox's event-to-accepted lag and the log's
accepted-to-applied lag (histograms), and the freshness figures of :func:`recsys.events.freshness.freshness`
as gauges read from Redis at scrape time, the same whichever process asks.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from recsys.errors import ServiceError
from recsys.events.landing import LandingConsumer, PartWritten, consumer_name
from recsys.events.log import INBOX, EventLog, LogEntry
from recsys.online.redis_store import INBOX_GROUP

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.settings import Settings

log = logging.getLogger(__name__)

INBOX_BATCH = 500
"""Inbox entries read, validated and accepted per step."""
SOURCE = "inbox"
"""The ``source`` label of this worker's event metrics (the API's is ``"api"``)."""
TRIM_EVERY_SECONDS = 10.0
"""The validator deletes acknowledged inbox entries at most this often."""
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")


def inbox_event(fields: Mapping[str, str]) -> dict[str, Any]:
    """An inbox entry's fields as the event object :func:`~recsys.events.validation.validate_events`
    checks. Stream fields are text, so a numeric ``timestamp`` becomes the number (epoch seconds or ms,
    as the contract reads numbers) and an empty ``request_id`` means none; anything else is passed on
    as it is (an unknown field is refused by validation, naming it)."""
    event: dict[str, Any] = dict(fields)
    if event.get("request_id") == "":
        del event["request_id"]
    stamp = event.get("timestamp")
    if isinstance(stamp, str) and _NUMBER.fullmatch(stamp.strip()):
        number = float(stamp)
        event["timestamp"] = int(number) if number.is_integer() else number
    return event


class InboxValidator:
    """One consumer of the ``validate`` group on the inbox (see the module docstring).
    ``on_accepted(n, lags)``: after each accept, the count and each event's inbox-to-accepted seconds;
    ``on_refused(n)``: after each refusal."""

    def __init__(
        self,
        store: "RedisOnlineStore",
        event_log: EventLog,
        consumer: str,
        settings: "Settings",
        *,
        batch: int = INBOX_BATCH,
        on_accepted: Optional[Callable[[int, list[float]], None]] = None,
        on_refused: Optional[Callable[[int], None]] = None,
    ):
        from recsys.events.validation import CatalogueCache

        self.store = store
        self.log = event_log
        self.consumer = consumer
        self.catalogue = CatalogueCache(store, settings)
        self.batch = max(min(batch, settings.events_max_batch), 1)  # a batch-level refusal can never happen
        self.claim_idle_ms = int(1000 * settings.events_claim_idle_seconds)
        self.claim_every = max(min(settings.events_claim_idle_seconds / 2, 10.0), 0.05)
        self.on_accepted = on_accepted
        self.on_refused = on_refused
        self._cursor: Optional[str] = "0"  # own pending entries first (read before a restart)
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._group_ready = False

    def step(self, block_ms: Optional[int] = None) -> tuple[int, int]:
        """Validate one batch: own pending entries, else idle ones claimed when a claim is due, else new
        ones (waiting up to ``block_ms``). Returns (accepted, refused)."""
        self._ensure_group()
        now = time.monotonic()
        if self._cursor is not None:
            entries = self.log.read(INBOX, INBOX_GROUP, self.consumer, count=self.batch, after=self._cursor)
            self._cursor = entries[-1].id if entries else None
        elif now >= self._next_claim:
            self._next_claim = now + self.claim_every
            if self._claim():
                self._cursor = "0"
            return 0, 0
        else:
            entries = self.log.read(INBOX, INBOX_GROUP, self.consumer, count=self.batch, block_ms=block_ms)
        counts = self._process(entries)
        if entries and now >= self._next_trim:
            self._next_trim = now + TRIM_EVERY_SECONDS
            self.log.trim(INBOX)
        return counts

    def drain(self) -> tuple[int, int]:
        """Validate everything in the inbox now (own pending, idle ones of others, new); (accepted, refused)."""
        self._ensure_group()
        totals = [0, 0]

        def process(entries: list[LogEntry]) -> None:
            accepted, refused = self._process(entries)
            totals[0] += accepted
            totals[1] += refused

        for claim in (False, True):
            if claim and not self._claim():
                break
            cursor: Optional[str] = "0"
            while cursor is not None:
                entries = self.log.read(INBOX, INBOX_GROUP, self.consumer, count=self.batch, after=cursor)
                cursor = entries[-1].id if entries else None
                process(entries)
        while entries := self.log.read(INBOX, INBOX_GROUP, self.consumer, count=self.batch):
            process(entries)
        self.log.trim(INBOX)
        self._cursor = None
        return totals[0], totals[1]

    def _ensure_group(self) -> None:
        if not self._group_ready:
            self.log.ensure_group(INBOX, INBOX_GROUP)
            self._group_ready = True

    def _claim(self) -> list[str]:
        claimed = self.log.claim(INBOX, INBOX_GROUP, self.consumer, min_idle_ms=self.claim_idle_ms, count=self.batch)
        if claimed:
            log.info("inbox validator %s: claimed %d idle entries of other workers", self.consumer, len(claimed))
        return claimed

    def _process(self, entries: list[LogEntry]) -> tuple[int, int]:
        from recsys.events.validation import EventsRefused, validate_events

        deleted = [e.id for e in entries if not e.fields]  # trimmed or deleted by somebody: nothing to check
        if deleted:
            self.log.ack(INBOX, INBOX_GROUP, deleted)
        entries = [e for e in entries if e.fields]
        if not entries:
            return 0, 0
        rules = self.catalogue.rules()  # NoOnlineVersionError: the entries stay pending, read again later
        raws = [inbox_event(e.fields) for e in entries]
        refusals: list[tuple[LogEntry, str]] = []
        batch = None
        while entries:
            try:
                batch = validate_events(raws, rules)
                break
            except EventsRefused as exc:
                reasons: dict[int, list[str]] = defaultdict(list)
                for problem in exc.problems:
                    reasons[problem.index].append(f"{problem.field}: {problem.reason}")
                if not reasons or -1 in reasons:
                    raise  # a problem of the whole batch: the batch size is bounded, so a bug
                refusals += [(entries[i], "; ".join(r)) for i, r in sorted(reasons.items())]
                kept = [i for i in range(len(entries)) if i not in reasons]
                entries, raws = [entries[i] for i in kept], [raws[i] for i in kept]
        refused = self.log.refuse(INBOX_GROUP, refusals)
        if refused:
            log.info("inbox validator %s: refused %d entries, e.g. %s: %s", self.consumer, refused,
                     refusals[0][0].id, refusals[0][1])
            if self.on_refused is not None:
                self.on_refused(refused)
        accepted = 0
        if entries and batch is not None:
            result = self.store.accept_events(batch, inbox_ids=[e.id for e in entries])
            accepted = result.accepted
            if self.on_accepted is not None:
                now = time.time()
                self.on_accepted(accepted, [now - e.time for e in entries])
        return accepted, refused

    def run(self, stop: threading.Event, block_ms: int = 1000) -> None:
        """Validate until ``stop`` is set. Without an online version (no catalogue to check against) the
        entries wait, pending; a Redis error is logged and retried after a pause."""
        import redis

        from recsys.online.store import NoOnlineVersionError

        log.info("inbox validator %s: validating the inbox", self.consumer)
        waiting = False
        while not stop.is_set():
            try:
                self.step(block_ms)
                waiting = False
            except NoOnlineVersionError as exc:
                if not waiting:
                    log.warning("inbox validator %s: %s; inbox entries wait", self.consumer, exc)
                waiting = True
                self._cursor = "0"
                stop.wait(5.0)
            except redis.RedisError as exc:
                log.warning("inbox validator %s: %s: %s; retrying in 1 s", self.consumer, type(exc).__name__, exc)
                self._cursor, self._group_ready = "0", False
                stop.wait(1.0)


# --- metrics -----------------------------------------------------------------------------------------
class WorkerMetrics:
    """The event worker's Prometheus registry, named as the API's (:mod:`recsys.api.metrics`, :mod:`recsys.events.metrics`) so one
    dashboard adds both ways in up (``source="inbox"`` here, ``"api"`` there); :meth:`serve` exposes it.

    ``recsys_events_accepted_total`` / ``recsys_events_refused_total``: inbox events this worker
    accepted / refused; ``recsys_event_accept_lag_seconds``: from an inbox entry's append to the accept
    script's return; ``recsys_events_applied_total`` and ``recsys_event_apply_lag_seconds``: events
    this worker applied to the live layer, from their accept to their effect (visible to serving);
    ``recsys_landing_parts_total`` / ``recsys_landing_rows_total``: parts and events it landed; and the
    freshness figures read from Redis at scrape time (the API's collector: ``recsys_freshness_*``)."""

    def __init__(self, store: "RedisOnlineStore"):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        from recsys.events.metrics import LAG_BUCKETS, FreshnessCollector

        self.registry = r = CollectorRegistry()
        self.accepted_events = Counter("recsys_events_accepted", "events accepted into the event log", ["source"],
                                       registry=r).labels(SOURCE)
        self.refused_events = Counter("recsys_events_refused", "events refused by validation", ["source"],
                                      registry=r).labels(SOURCE)
        self.accept_lag = Histogram("recsys_event_accept_lag_seconds", "inbox entry appended -> its event appended to "
                                    "the event log (durable)", ["source"], buckets=LAG_BUCKETS, registry=r).labels(SOURCE)
        self.applied = Counter("recsys_events_applied", "events applied to the live layer", registry=r)
        self.apply_lag = Histogram("recsys_event_apply_lag_seconds", "event accepted -> applied to the live layer "
                                   "(visible to serving)", buckets=LAG_BUCKETS, registry=r)
        self.landing_parts = Counter("recsys_landing_parts", "landing parts written", registry=r)
        self.landing_rows = Counter("recsys_landing_rows", "events written to landing parts", registry=r)
        r.register(FreshnessCollector(lambda: store))

    def accepted(self, n: int, lags: Sequence[float]) -> None:
        self.accepted_events.inc(n)
        for lag in lags:
            self.accept_lag.observe(max(lag, 0.0))

    def refused(self, n: int) -> None:
        self.refused_events.inc(n)

    def applied_events(self, n: int, lags: Sequence[float]) -> None:
        self.applied.inc(n)
        for lag in lags:
            self.apply_lag.observe(max(lag, 0.0))

    def part(self, part: PartWritten) -> None:
        self.landing_parts.inc()
        self.landing_rows.inc(part.rows)

    def serve(self, host: str, port: int) -> Any:
        """Serve ``/metrics`` on ``host:port`` in a thread; returns the server (``shutdown()`` it)."""
        from prometheus_client import start_http_server

        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ServiceError(f"the event worker's metrics endpoint cannot listen on {host}:{port} ({exc}); "
                               "is another worker running? (RECSYS_EVENTS_METRICS_PORT)") from None
        return server


# --- the worker --------------------------------------------------------------------------------------
class EventWorker:
    """The three loops of the module docstring in one process, a thread and a Redis client each."""

    def __init__(
        self, settings: Optional["Settings"] = None, *, name: Optional[str] = None, store: Optional["RedisOnlineStore"] = None
    ):
        from recsys.events.live import LiveApplier
        from recsys.events.redis_log import RedisEventLog
        from recsys.online.redis_store import RedisOnlineStore
        from recsys.settings import get_settings

        self.settings = s = settings or get_settings()
        self.name = name or consumer_name(s)
        self.store = store or RedisOnlineStore.from_settings(s)
        # Each loop runs in a thread of its own with a client of its own: a Redis Cluster client that meets a
        # failover (or a cluster still forming) re-reads the layout by closing its connections, under the feet of
        # another thread reading on one (seen: hiredis' reader gone mid-XREADGROUP, the worker down). A store
        # given by the caller is shared (tests on one Redis).
        applier_store, landing_store = (store, store) if store else (RedisOnlineStore.from_settings(s) for _ in range(2))
        self.log = RedisEventLog(self.store)
        self.metrics = WorkerMetrics(self.store)
        self.validator = InboxValidator(self.store, self.log, self.name, s, on_accepted=self.metrics.accepted,
                                        on_refused=self.metrics.refused)
        self.applier = LiveApplier(applier_store, self.name, claim_idle_seconds=s.events_claim_idle_seconds,
                                   on_applied=self.metrics.applied_events)
        self.landing = LandingConsumer.from_settings(RedisEventLog(landing_store), s, self.name, on_part=self.metrics.part)
        self._stop = threading.Event()
        self._failed: list[str] = []

    def stop(self) -> None:
        """Ask every loop to stop (each finishes what it is doing: a part being written is completed)."""
        self._stop.set()

    def run(self, *, metrics: bool = True) -> None:
        """Run the loops (and the metrics endpoint) until :meth:`stop`; raises :class:`ServiceError` if
        a loop failed."""
        s = self.settings
        server = self.metrics.serve(s.host, s.events_metrics_port) if metrics else None
        loops = {"inbox validator": self.validator.run, "live applier": self.applier.run,
                 "landing consumer": self.landing.run}
        threads = [threading.Thread(target=self._guard, args=(name, loop), name=name) for name, loop in loops.items()]
        log.info("event worker %s: landing folder %s, metrics %s", self.name, self.landing.folder,
                 f"http://{s.host}:{s.events_metrics_port}/metrics" if server else "off")
        for thread in threads:
            thread.start()
        try:
            while not self._stop.wait(0.5):  # a timed wait lets signal handlers run in this thread
                pass
        finally:
            self._stop.set()
            for thread in threads:
                thread.join()
            if server is not None:
                server.shutdown()
                server.server_close()
        log.info("event worker %s: stopped", self.name)
        if self._failed:
            raise ServiceError(f"event worker {self.name}: {'; '.join(self._failed)} (see the log above)")

    def _guard(self, name: str, loop: Callable[[threading.Event], None]) -> None:
        try:
            loop(self._stop)
        except Exception as exc:
            log.exception("event worker %s: the %s failed; stopping", self.name, name)
            self._failed.append(f"the {name} failed: {type(exc).__name__}: {exc}")
            self._stop.set()

    def drain(self) -> dict[str, int]:
        """Validate the inbox, apply the log, land it; each until nothing is left. Returns the counts."""
        accepted, refused = self.validator.drain()
        applied = 0
        while n := self.applier.step():
            applied += n
        parts = self.landing.drain()
        summary = {"accepted": accepted, "refused": refused, "applied": applied, "parts": len(parts),
                   "landed": sum(p.rows for p in parts)}
        log.info("event worker %s: drained: %s", self.name, ", ".join(f"{k} {v}" for k, v in summary.items()))
        return summary
