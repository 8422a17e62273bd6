"""The consumer side of the event log: a few primitives the landing consumer and the inbox worker use.

    log = RedisEventLog(store)                                   # recsys.events.redis_log
    log.ensure_group(EVENTS, LANDING_GROUP)
    entries = log.read(EVENTS, LANDING_GROUP, "worker-1", count=1000, after=">", block_ms=1000)
    parts, rejected = part_columns(entries, max_rows=100_000)    # typed columns, one part per id kinds

Like the online store (:mod:`recsys.online.store`), a backend implements the primitives of
:class:`EventLog` and callers use nothing else. Two streams: :data:`EVENTS`, the event log of accepted
events (entry fields ``u, i, e, t, r, k``: :data:`recsys.online.redis_store.EVENT_FIELDS`), and
:data:`INBOX`, raw events producers append (fields as the event contract names them). Each is read
through consumer groups: an entry read by a consumer stays *pending* for it until acknowledged, so a
crashed consumer's entries are read again (by itself after a restart, or claimed by another once they
have been idle long enough).

Parts. The landing consumer writes a part exactly once through an *intent* kept beside the log
(:class:`PartIntent`: the part's file name, its consumer, its entry ids): :meth:`EventLog.begin_part`
records it, :meth:`EventLog.fence_part` checks just before the rename that it still stands,
:meth:`EventLog.commit_part` acknowledges the entries and removes it in one atomic step, and
:meth:`EventLog.drop_part` removes an intent whose file was never renamed into place
(:mod:`recsys.events.landing` explains the protocol). Every hold of entries (reading, :meth:`hold`,
beginning or fencing a part) resets their idle time, which is what keeps other consumers from
claiming them.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from recsys.data import ids
from recsys.data.contract import stream_id_key

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.online.store import EventBatch

EVENTS = "events"
"""The event log: events accepted by validation (the API or the inbox worker)."""
INBOX = "inbox"
"""Raw events from producers on Redis, waiting for validation."""
LANDING_GROUP = "landing"
"""The landing consumer's group on the event log."""


@dataclass(frozen=True)
class LogEntry:
    """One stream entry: its id (``"<unix ms>-<seq>"``) and fields as text (empty: the entry was deleted)."""

    id: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def time(self) -> float:
        """When the entry was appended (unix seconds): the millisecond part of its id."""
        return stream_id_key(self.id)[0] / 1000


@dataclass(frozen=True)
class PartIntent:
    """A landing part being written: file ``name`` in the landing folder, by ``consumer``, holding the
    entries ``ids``; ``tmp`` is the hidden temporary file it is written to before the rename."""

    name: str
    consumer: str
    ids: tuple[str, ...]
    tmp: str = ""

    @property
    def first(self) -> str:
        return min(self.ids, key=stream_id_key)

    @property
    def last(self) -> str:
        return max(self.ids, key=stream_id_key)

    def to_json(self) -> str:
        return json.dumps({"consumer": self.consumer, "ids": list(self.ids), "tmp": self.tmp}, separators=(",", ":"))

    @classmethod
    def from_json(cls, name: str, text: str) -> "PartIntent":
        raw = json.loads(text)
        return cls(name, str(raw["consumer"]), tuple(str(i) for i in raw["ids"]), str(raw.get("tmp", "")))


@dataclass(frozen=True)
class GroupState:
    """A consumer group on a stream: its consumers' pending counts, the newest entry delivered to it, and
    how many entries it has not been given yet (counted up to a cap: ``undelivered_capped``)."""

    name: str
    pending: int
    consumers: dict[str, int]
    last_delivered: str
    undelivered: int
    undelivered_capped: bool = False

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "pending": self.pending,
            "consumers": dict(self.consumers),
            "last_delivered": self.last_delivered,
            "undelivered": f"{self.undelivered}+" if self.undelivered_capped else self.undelivered,
        }


class EventLog(abc.ABC):
    """The event log and the inbox, as consumer groups see them (see the module docstring)."""

    # --- consuming ----------------------------------------------------------------------------
    @abc.abstractmethod
    def ensure_group(self, stream: str, group: str) -> None:
        """Create ``group`` on ``stream`` (and the stream) if missing, reading from the stream's start."""

    @abc.abstractmethod
    def read(
        self, stream: str, group: str, consumer: str, *, count: int, after: str = ">", block_ms: Optional[int] = None
    ) -> list[LogEntry]:
        """Up to ``count`` entries for ``consumer``: new ones (``after=">"``, waiting up to ``block_ms``
        for them; None: no wait), or the consumer's own pending entries with ids after ``after``
        (``"0"``: from the first). A pending entry deleted from the stream comes back without fields."""

    @abc.abstractmethod
    def claim(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int, exclude: Iterable[str] = ()
    ) -> list[str]:
        """Take over up to ``count`` entries other consumers left pending for at least ``min_idle_ms``
        (except the ids in ``exclude``); returns their ids (read them with ``after="0"``)."""

    @abc.abstractmethod
    def hold(self, stream: str, group: str, consumer: str, entry_ids: Sequence[str]) -> list[str]:
        """Reset the idle time of those of ``entry_ids`` still pending for ``consumer`` (nobody claims
        them for another ``min_idle_ms``); returns the others (lost to a claim, or acknowledged)."""

    @abc.abstractmethod
    def ack(self, stream: str, group: str, entry_ids: Sequence[str]) -> int:
        """Acknowledge entries without doing anything with them (entries that are not events); returns how many."""

    # --- landing parts (on EVENTS, group LANDING_GROUP) ---------------------------------------------
    @abc.abstractmethod
    def begin_part(self, intent: PartIntent) -> list[str]:
        """Record ``intent`` if every one of its entries is pending for its consumer (and hold them);
        otherwise record nothing and return the ids that are not (drop them and try again)."""

    @abc.abstractmethod
    def fence_part(self, intent: PartIntent) -> bool:
        """True (and its entries held) if ``intent`` is still recorded as written and every entry is
        still pending for its consumer: only then may its file be renamed into place."""

    @abc.abstractmethod
    def commit_part(self, intent: PartIntent, now_ms: int) -> int:
        """In one atomic step: acknowledge the part's entries, remove the intent, add the entries
        acknowledged now to the ``landed`` total (and set ``last_landed_ms``). Returns that number
        (0 when somebody committed the same part before)."""

    @abc.abstractmethod
    def drop_part(self, intent: PartIntent, *, min_idle_ms: int = 0) -> bool:
        """Remove ``intent`` (its file was never renamed into place) if it is still recorded as written
        and each of its entries is either acknowledged or pending for its consumer, idle for at least
        ``min_idle_ms``; True if removed. The entries stay pending: they are written again."""

    @abc.abstractmethod
    def parts(self) -> list[PartIntent]:
        """Every part in progress (intents recorded and neither committed nor dropped)."""

    @abc.abstractmethod
    def request_flush(self) -> tuple[int, str]:
        """Ask every landing consumer to write what it holds now; returns the request's time (unix ms)
        and the newest entry of the event log then ("" when the log is empty)."""

    @abc.abstractmethod
    def flush_requested(self) -> int:
        """The time (unix ms) of the newest flush request (0: none)."""

    @abc.abstractmethod
    def landed_through(self, entry_id: str) -> bool:
        """True if every event log entry up to ``entry_id`` is landed: the landing group was given all of
        them and acknowledged each (False while no landing consumer ever created the group)."""

    # --- housekeeping and figures -------------------------------------------------------------------
    @abc.abstractmethod
    def trim(self, stream: str) -> int:
        """Delete the entries every consumer group of ``stream`` has acknowledged (none without any
        group); returns how many."""

    @abc.abstractmethod
    def groups(self, stream: str) -> list[GroupState]:
        """The consumer groups of ``stream`` (all of them, users' own too)."""

    @abc.abstractmethod
    def length(self, stream: str) -> int:
        """Entries in ``stream`` now."""

    @abc.abstractmethod
    def backlog(self) -> int:
        """Accepted events not yet landed (the event log's totals: accepted - landed)."""

    # --- the inbox's refusals ----------------------------------------------------------------------
    @abc.abstractmethod
    def refuse(self, group: str, refusals: Sequence[tuple[LogEntry, str]]) -> int:
        """For each (inbox entry, reason), in one atomic step: acknowledge it in ``group`` and, if that
        acknowledged it now, copy its fields and the reason to the refused stream and count it refused.
        Returns how many were refused now (an entry another worker handled is skipped)."""

    @abc.abstractmethod
    def refused(self, count: int = 20) -> list[LogEntry]:
        """The newest refused inbox entries, newest first: their fields, ``reason`` and ``inbox_id``."""


# --- the columns of a part -------------------------------------------------------------------------
@dataclass
class PartColumns:
    """The rows of one landing part, column by column, in stream order; ids typed by ``id_kinds``
    (int or str), timestamps unix ms, request ids None where the event named none."""

    id_kinds: ids.IdKinds
    entry_ids: list[str] = field(default_factory=list)
    user_ids: list[ids.IdValue] = field(default_factory=list)
    item_ids: list[ids.IdValue] = field(default_factory=list)
    timestamps_ms: list[int] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    request_ids: list[Optional[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entry_ids)

    @property
    def first(self) -> str:
        return self.entry_ids[0]

    @property
    def last(self) -> str:
        return self.entry_ids[-1]

    def to_batch(self) -> "EventBatch":
        """The same events as an :class:`~recsys.online.store.EventBatch` (ids as text): what the live
        applier applies."""
        from recsys.online.store import EventBatch

        return EventBatch([ids.to_text(u) for u in self.user_ids], [ids.to_text(i) for i in self.item_ids],
                          list(self.event_types), list(self.timestamps_ms), [r or "" for r in self.request_ids],
                          self.id_kinds)


def part_columns(
    entries: Iterable[LogEntry], max_rows: Optional[int] = None
) -> tuple[list[PartColumns], list[tuple[LogEntry, str]]]:
    """The parts holding ``entries`` (event log entries): one per id kinds (a part never mixes them; the
    entry's ``k`` field decides), in stream order, at most ``max_rows`` rows each; and the entries that
    are not well-formed events, each with the reason (nothing but the accept script should append to
    the log, so these are somebody else's writes)."""
    from recsys.online.redis_store import EVENT_FIELDS

    user, item, event_type, stamp, request, kinds_field = EVENT_FIELDS
    by_kinds: dict[str, PartColumns] = {}
    rejected: list[tuple[LogEntry, str]] = []
    for entry in sorted(entries, key=lambda e: stream_id_key(e.id)):
        f = entry.fields
        missing = [name for name in (user, item, event_type, stamp, kinds_field) if name not in f]
        if missing:
            rejected.append((entry, f"no field {missing[0]!r}" if f else "deleted from the stream"))
            continue
        try:
            kinds = ids.IdKinds.from_code(f[kinds_field])
            typed_user = ids.parse(f[user], kinds.user_id, "user_id")
            typed_item = ids.parse(f[item], kinds.item_id, "item_id")
            millis = int(f[stamp])
        except (ids.IdError, ValueError) as exc:
            rejected.append((entry, str(exc)))
            continue
        part = by_kinds.setdefault(kinds.to_code(), PartColumns(kinds))
        part.entry_ids.append(entry.id)
        part.user_ids.append(typed_user)
        part.item_ids.append(typed_item)
        part.timestamps_ms.append(millis)
        part.event_types.append(f[event_type])
        part.request_ids.append(f.get(request) or None)
    parts = []
    for whole in by_kinds.values():
        step = max_rows or len(whole) or 1
        for start in range(0, len(whole), step):
            window = slice(start, start + step)
            parts.append(PartColumns(
                whole.id_kinds, whole.entry_ids[window], whole.user_ids[window], whole.item_ids[window],
                whole.timestamps_ms[window], whole.event_types[window], whole.request_ids[window],
            ))
    return parts, rejected
