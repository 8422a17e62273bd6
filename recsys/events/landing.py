"""The landing consumer: writes the event log into the landing folder as parquet parts, each event exactly once.

    consumer = LandingConsumer.from_settings(RedisEventLog(store), settings)
    consumer.run(stop)            # the event worker's loop
    consumer.drain()              # land everything there is now, then return (``recsys events worker --once``)

A consumer of the group ``landing`` on the event log (:mod:`recsys.events.log`). It buffers the
entries it reads (its own pending ones first: what it read before a restart) and writes a part when
it holds ``events_part_max_rows`` events or the oldest has waited ``events_flush_seconds``: one part
per id kinds (a part never mixes them), ``<landing>/interactions/events-<first id>-<rows>.parquet``
with the live-part columns and metadata of :mod:`recsys.data.contract`.

Exactly once. A part is written in three steps, with its *intent* (part name, consumer, entry ids)
kept in Redis:

a. begin: record the intent, in the same script that checks every entry is still pending for this
   consumer (and resets their idle time);
b. write the parquet to a hidden temporary file in the same folder, fsync it; *fence* (the intent
   still stands and the entries are still ours); ``os.replace`` it into place; fsync the folder;
c. commit, one script: acknowledge the entries, remove the intent, count them landed.

Recovering an intent: if its file exists, (c) only (its events are in the folder); if not, the
intent is dropped and the entries, still pending, are written again. So a crash between any two
steps neither loses nor duplicates an event: before the rename there is no file and the entries are
pending; after it the file exists and the commit finds it. A consumer recovers its own intents when
it starts (a restart under the same name resumes its pending entries at once); another consumer
recovers them before claiming the dead one's entries, and only then: an intent whose entries were
held within ``events_claim_idle_seconds`` is left alone, as are its entries.

Fencing zombies. A consumer that stalls (a long pause, a network partition) while another takes its
entries over must not rename its part afterwards. Every hold resets the entries' idle time and every
takeover requires ``events_claim_idle_seconds`` of idleness, checked atomically with removing the
intent; the fence runs just before the rename. The window that remains: a consumer that passes the
fence and then stalls for longer than ``events_claim_idle_seconds`` before its rename (microseconds
of work) duplicates that part. Hence ``events_claim_idle_seconds`` must be far longer than a part
takes to write (and than any plausible pause); the entries buffered while a part fills are held
again every quarter of it, so a long ``events_flush_seconds`` is fine. A part that takes longer
than that to write is taken over and written by the other consumer instead (its own rename is then
fenced off): wasted work, never a duplicate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from recsys.data.contract import LIVE_PART_COLUMNS, live_part_metadata, live_part_name
from recsys.events.log import EVENTS, LANDING_GROUP, EventLog, LogEntry, PartColumns, PartIntent, part_columns

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

    from recsys.settings import Settings

log = logging.getLogger(__name__)

READ_BATCH = 1000
"""Entries read per call."""
TABLE = "interactions"
"""The landing folder's table the parts belong to."""


@dataclass(frozen=True)
class PartWritten:
    """One part in the landing folder: its file, rows, first/last entry ids, seconds it took."""

    path: Path
    rows: int
    first: str
    last: str
    seconds: float


def consumer_name(settings: "Settings") -> str:
    """This process's consumer name in the event groups: ``events_consumer_name``, else the host name."""
    import socket

    return settings.events_consumer_name or socket.gethostname()


class LandingConsumer:
    """One consumer of the ``landing`` group (see the module docstring). ``on_part(part)`` is called
    after each part is committed (metrics)."""

    def __init__(
        self,
        event_log: EventLog,
        folder: Path,
        consumer: str,
        *,
        part_max_rows: int = 100_000,
        flush_seconds: float = 60.0,
        claim_idle_seconds: float = 60.0,
        on_part: Optional[Callable[[PartWritten], None]] = None,
    ):
        self.log = event_log
        self.folder = Path(folder)
        self.consumer = consumer
        self.part_max_rows = max(int(part_max_rows), 1)
        self.flush_seconds = flush_seconds
        self.claim_idle_ms = int(1000 * claim_idle_seconds)
        self.on_part = on_part
        # a claim pass costs a few round trips: often enough that a dead consumer's entries wait little
        # longer than the idle time itself
        self.claim_every = max(min(claim_idle_seconds / 2, 10.0), 0.05)
        self._buffer: dict[str, LogEntry] = {}
        self._oldest = 0.0  # monotonic time the oldest buffered entry arrived
        self._held = 0.0  # monotonic time the buffer was last held
        self._cursor: Optional[str] = None  # reading own pending entries after this id; None: new ones
        self._next_claim = 0.0
        self._started = False
        self._flush_handled = 0  # the newest flush request (unix ms) this consumer answered

    @classmethod
    def from_settings(
        cls, event_log: EventLog, settings: "Settings", consumer: Optional[str] = None, **overrides: Any
    ) -> "LandingConsumer":
        """A consumer of the settings' landing folder, sizes and times (``overrides``: keyword arguments)."""
        options: dict[str, Any] = {
            "part_max_rows": settings.events_part_max_rows,
            "flush_seconds": settings.events_flush_seconds,
            "claim_idle_seconds": settings.events_claim_idle_seconds,
        }
        return cls(event_log, settings.landing / TABLE, consumer or consumer_name(settings), **{**options, **overrides})

    # --- the loop -----------------------------------------------------------------------------
    def start(self) -> None:
        """Create the group, recover this consumer's intents, read its pending entries next."""
        import pyarrow.parquet  # noqa: F401  (now rather than in the first part: it takes half a second)

        self.log.ensure_group(EVENTS, LANDING_GROUP)
        for intent in self.log.parts():
            if intent.consumer == self.consumer:
                self._recover(intent, min_idle_ms=0)
        self._sweep()
        self._buffer.clear()
        self._cursor = "0"
        self._started = True

    def step(self, block_ms: Optional[int] = None) -> list[PartWritten]:
        """Read once (own pending entries, else a claim pass when due, else new entries waiting up to
        ``block_ms``, at most until the flush is due); write the parts that are due."""
        if not self._started:
            self.start()
        now = time.monotonic()
        if self._cursor is not None:
            entries = self._read(self._cursor)
            self._cursor = entries[-1].id if entries else None
        elif now >= self._next_claim:
            self._next_claim = now + self.claim_every
            if self._claim():
                self._cursor = "0"
        else:
            if block_ms is not None and self._buffer:
                block_ms = min(block_ms, max(int(1000 * (self._oldest + self.flush_seconds - now)), 1))
            self._read(">", block_ms)
        written = self.flush() if self._due() else []
        requested = self.log.flush_requested()
        if requested > self._flush_handled and self._cursor is None:
            # asked to write what it holds (an ETL is about to ingest): read what is there, write it all
            while self._read(">"):
                if len(self._buffer) >= self.part_max_rows:
                    written += self.flush()
            written += self.flush()
            self._flush_handled = requested
        self._hold_buffer()
        return written

    def run(self, stop: threading.Event, block_ms: int = 1000) -> None:
        """Land until ``stop`` is set; the part being written is finished first. A Redis error is logged
        and the consumer starts over after a pause (recovering its intents: nothing is lost)."""
        import redis

        log.info("landing consumer %s: writing the event log to %s", self.consumer, self.folder)
        while not stop.is_set():
            try:
                self.step(block_ms)
            except (redis.RedisError, OSError) as exc:
                log.warning("landing consumer %s: %s: %s; starting over in 1 s", self.consumer, type(exc).__name__, exc)
                self._started = False
                stop.wait(1.0)

    def drain(self) -> list[PartWritten]:
        """Land everything there is now (own pending entries, idle ones claimed from others, new ones),
        flushing whatever is left at the end; returns the parts written."""
        self.start()
        written: list[PartWritten] = []
        claimed = False
        while True:
            if self._cursor is not None:
                entries = self._read(self._cursor)
                self._cursor = entries[-1].id if entries else None
            elif not claimed:
                claimed = True
                if self._claim():
                    self._cursor = "0"
            elif not self._read(">"):
                written += self.flush()
                if self._cursor is None:  # else entries were lost to a claim half-way: read what is left
                    return written
            if len(self._buffer) >= self.part_max_rows:
                written += self.flush()

    # --- reading ------------------------------------------------------------------------------
    def _read(self, after: str, block_ms: Optional[int] = None) -> list[LogEntry]:
        room = max(min(READ_BATCH, self.part_max_rows - len(self._buffer)), 1)
        entries = self.log.read(EVENTS, LANDING_GROUP, self.consumer, count=room, after=after, block_ms=block_ms)
        if entries and not self._buffer:
            self._oldest = self._held = time.monotonic()
        for entry in entries:
            self._buffer[entry.id] = entry
        return entries

    def _claim(self) -> list[str]:
        """Recover other consumers' intents, then claim their idle entries (except those of intents left alone)."""
        keep: set[str] = set()
        for intent in self.log.parts():
            if intent.consumer != self.consumer and not self._recover(intent, min_idle_ms=self.claim_idle_ms):
                keep.update(intent.ids)
        claimed = self.log.claim(EVENTS, LANDING_GROUP, self.consumer, min_idle_ms=self.claim_idle_ms,
                                 count=READ_BATCH, exclude=keep)
        if claimed:
            log.info("landing consumer %s: claimed %d idle entries of other consumers", self.consumer, len(claimed))
        return claimed

    def _recover(self, intent: PartIntent, *, min_idle_ms: int) -> bool:
        """Resolve an intent: commit it if its file exists, else drop it (if its entries are idle enough);
        True if it is resolved."""
        if (self.folder / intent.name).exists():
            landed = self.log.commit_part(intent, _now_ms())
            log.info("landing consumer %s: recovered part %s of %s (%d events acknowledged now)",
                     self.consumer, intent.name, intent.consumer, landed)
            self.log.trim(EVENTS)
            return True
        if not self.log.drop_part(intent, min_idle_ms=min_idle_ms):
            return False
        if intent.tmp:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / intent.tmp).unlink()
        log.info("landing consumer %s: dropped unfinished part %s of %s (%d events, written again)",
                 self.consumer, intent.name, intent.consumer, len(intent.ids))
        return True

    def _sweep(self) -> None:
        """Delete temporary files no intent names (left by a consumer killed between dropping an intent and
        deleting its file). Files are listed before intents: an intent is recorded before its file is
        created, so a file listed first whose intent is missing afterwards was abandoned (or renamed)."""
        temporary = list(self.folder.glob(".events-*.tmp"))
        if not temporary:
            return
        named = {intent.tmp for intent in self.log.parts()}
        for path in temporary:
            if path.name not in named:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    log.info("landing consumer %s: deleted the abandoned temporary file %s", self.consumer, path.name)

    def _hold_buffer(self) -> None:
        """Reset the buffered entries' idle time every quarter of the claim idle time (no claim takes them)."""
        if not self._buffer or time.monotonic() - self._held < self.claim_idle_ms / 4000:
            return
        lost = self.log.hold(EVENTS, LANDING_GROUP, self.consumer, list(self._buffer))
        self._held = time.monotonic()
        for entry_id in lost:
            self._buffer.pop(entry_id, None)
        if lost:
            log.warning("landing consumer %s: %d buffered entries were claimed by another consumer",
                        self.consumer, len(lost))

    # --- writing ------------------------------------------------------------------------------
    def _due(self) -> bool:
        return bool(self._buffer) and (
            len(self._buffer) >= self.part_max_rows or time.monotonic() - self._oldest >= self.flush_seconds
        )

    def flush(self) -> list[PartWritten]:
        """Write every buffered entry as parts (one per id kinds, at most ``part_max_rows`` rows each)."""
        parts, rejected = part_columns(self._buffer.values(), self.part_max_rows)
        if rejected:
            for entry, reason in rejected:
                log.warning("landing consumer %s: entry %s of the event log is not an event (%s); acknowledged "
                            "without landing it", self.consumer, entry.id, reason)
            self.log.ack(EVENTS, LANDING_GROUP, [entry.id for entry, _ in rejected])
            for entry, _ in rejected:
                self._buffer.pop(entry.id, None)
        written = []
        for columns in parts:
            part = self._write(columns)
            if part is not None:
                written.append(part)
        if written:
            self.log.trim(EVENTS)
        if self._buffer:  # entries lost to a claim half-way: what is left is read again from the pending list
            self._buffer.clear()
            self._cursor = "0"
        return written

    def _write(self, columns: PartColumns) -> Optional[PartWritten]:
        """Steps (a) to (c) of the module docstring for one part; None if its entries were taken over."""
        began = time.perf_counter()
        name = live_part_name(columns.first, len(columns))
        intent = PartIntent(name, self.consumer, tuple(columns.entry_ids), f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        lost = self.log.begin_part(intent)
        if lost:
            log.warning("landing consumer %s: %d entries of part %s were claimed by another consumer; "
                        "the others are read again", self.consumer, len(lost), name)
            for entry_id in lost:
                self._buffer.pop(entry_id, None)
            return None
        tmp, path = self.folder / intent.tmp, self.folder / name
        try:
            # made with the first part, not at start: an empty folder would look like a table to the demo
            self.folder.mkdir(parents=True, exist_ok=True)
            write_part_file(tmp, columns)
            if not self.log.fence_part(intent):
                log.warning("landing consumer %s: part %s was taken over by another consumer; not renaming it",
                            self.consumer, name)
                tmp.unlink()
                for entry_id in intent.ids:
                    self._buffer.pop(entry_id, None)
                return None
            os.replace(tmp, path)
            fsync_folder(self.folder)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not path.exists():
                with contextlib.suppress(Exception):  # best effort: a restart drops it anyway
                    self.log.drop_part(intent)
            raise
        self.log.commit_part(intent, _now_ms())
        for entry_id in intent.ids:
            self._buffer.pop(entry_id, None)
        part = PartWritten(path, len(columns), columns.first, columns.last, round(time.perf_counter() - began, 3))
        log.info("landed %s: %d rows (%s), entries %s..%s, %.3f s, backlog %d", name, part.rows,
                 columns.id_kinds.to_code(), part.first, part.last, part.seconds, self.log.backlog())
        if self.on_part is not None:
            self.on_part(part)
        return part


def land_accepted_events(event_log: EventLog, timeout_seconds: float) -> dict[str, Any]:
    """Ask the landing consumers to write what they hold and wait (up to ``timeout_seconds``) until every
    event accepted before the request is in the landing folder: what an ETL or a drift check calls
    before ingesting, so its data version holds every event accepted before it started. No running
    consumer is no error (the events land in a later data version): the answer says what happened."""
    if timeout_seconds <= 0:
        return {"requested": False}
    began = time.monotonic()
    requested_ms, newest = event_log.request_flush()
    if not newest:
        return {"requested": True, "landed": True, "through": None, "seconds": 0.0}
    while not event_log.landed_through(newest):
        if time.monotonic() - began > timeout_seconds:
            log.warning("events accepted up to %s are not all in the landing folder after %.0f s (is the event "
                        "worker running? `recsys stack status`); this data version goes without the rest, the "
                        "next one takes them", newest, timeout_seconds)
            return {"requested": True, "landed": False, "through": newest, "seconds": round(time.monotonic() - began, 3)}
        time.sleep(0.1)
    seconds = round(time.monotonic() - began, 3)
    log.info("every event accepted up to %s is in the landing folder (%.2f s after asking)", newest, seconds)
    return {"requested": True, "landed": True, "through": newest, "seconds": seconds}


# --- the part file ---------------------------------------------------------------------------------
def part_table(columns: PartColumns) -> "pa.Table":
    """The arrow table of a live part (:data:`recsys.data.contract.LIVE_PART_COLUMNS`, its metadata):
    ids int64 or string per the part's id kinds, ``timestamp`` timestamp[ms] (UTC, no zone),
    ``request_id`` null where the event named none."""
    import pyarrow as pa

    from recsys.data import ids

    id_type = {ids.INT: pa.int64(), ids.STRING: pa.string()}
    arrays = {
        "user_id": pa.array(columns.user_ids, id_type[columns.id_kinds.user_id]),
        "item_id": pa.array(columns.item_ids, id_type[columns.id_kinds.item_id]),
        "timestamp": pa.array(columns.timestamps_ms, pa.timestamp("ms")),
        "event_type": pa.array(columns.event_types, pa.string()),
        "request_id": pa.array(columns.request_ids, pa.string()),
    }
    table = pa.table([arrays[c] for c in LIVE_PART_COLUMNS], names=list(LIVE_PART_COLUMNS))
    return table.replace_schema_metadata(live_part_metadata(columns.first, columns.last, len(columns)))


def write_part_file(path: Path, columns: PartColumns) -> None:
    """Write the part's parquet to ``path`` and fsync it (the caller renames it into place)."""
    import pyarrow.parquet as pq

    with open(path, "wb") as handle:
        pq.write_table(part_table(columns), handle)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the folder's entry list reaches the disk)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now_ms() -> int:
    return int(time.time() * 1000)
