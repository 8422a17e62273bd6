"""Validate interaction events: the one check of both ways in (the HTTP API and the Redis inbox).

    rules = EventRules.from_store(store, settings)          # the served catalogue's id kinds and items
    batch = validate_events([{"user_id": 7, "item_id": 12, "event_type": "purchase",
                              "timestamp": "2026-12-06T21:30:00Z"}], rules)
    store.accept_events(batch)

An event is a JSON object with exactly these fields:

- ``user_id``, ``item_id``: raw ids of the deployment's kinds (:mod:`recsys.data.ids`; integers or
  text, as ``recsys recommend`` takes them). The item must be in the served catalogue (the current
  online version): an event about an item the platform does not know cannot be used and is usually
  a wrong id. Any user may send events; one unknown to the batch data is a new user.
- ``event_type``: one of ``settings.event_types``.
- ``timestamp``: ISO-8601 text (an offset is converted to UTC; none means UTC) or a unix epoch
  number, seconds or milliseconds told apart by magnitude (below 1e11: seconds), as
  ``recsys data import`` detects them. No older than ``events_max_age_hours``, no further ahead than
  ``events_max_future_seconds``: late data goes through the landing folder.
- ``request_id`` (optional): the recommendation request the event answers (the API returns one with
  every answer), for attribution; at most 128 printable characters.

:func:`validate_events` collects EVERY problem, each with the event's index, the field and the
reason, and raises :class:`EventsRefused` with all of them: a batch is accepted whole or not at all.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from recsys.data import ids
from recsys.errors import RecsysError
from recsys.online.store import EventBatch

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from recsys.online.store import OnlineStore
    from recsys.settings import Settings

FIELDS = ("user_id", "item_id", "event_type", "timestamp", "request_id")
REQUIRED = FIELDS[:4]
MAX_REQUEST_ID = 128
EPOCH_MS_FROM = 1e11
"""A numeric timestamp at or above this is in milliseconds (1e11 seconds is the year 5138)."""
SHOWN_PROBLEMS = 20
"""Problems an error message spells out (all are kept in ``EventsRefused.problems``)."""


@dataclass(frozen=True)
class EventProblem:
    """What is wrong with one event: its index in the batch, the field, why."""

    index: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"event {self.index}: {self.field}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventsRefused(RecsysError):
    """A batch of events breaks the contract; ``problems`` lists every problem, by event index."""

    def __init__(self, problems: Sequence[EventProblem], total: int):
        self.problems = list(problems)
        self.total = total
        bad = len({p.index for p in self.problems})
        lines = [str(p) for p in self.problems[:SHOWN_PROBLEMS]]
        if len(self.problems) > SHOWN_PROBLEMS:
            lines.append(f"... and {len(self.problems) - SHOWN_PROBLEMS} more")
        super().__init__(f"{bad} of {total} event(s) refused; nothing was applied:\n" + "\n".join(f"  - {line}" for line in lines))


@dataclass(frozen=True)
class EventRules:
    """What an event is checked against: the deployment's id kinds and catalogue, the settings' limits."""

    id_kinds: ids.IdKinds
    event_types: tuple[str, ...]
    max_age_seconds: float = 86400.0
    max_future_seconds: float = 300.0
    max_batch: int = 10_000
    known_items: Optional[Callable[["np.ndarray"], "np.ndarray"]] = None
    """True for each raw item id (of the item kind) the served catalogue holds; None: no check."""
    catalogue: str = ""
    """How messages name the catalogue (e.g. ``online version 3f2a-7``)."""

    @classmethod
    def from_store(cls, store: "OnlineStore", settings: Optional["Settings"] = None) -> "EventRules":
        """Rules of the store's current online version (:class:`CatalogueCache` keeps them between calls)."""
        return CatalogueCache(store, settings).rules()


def validate_events(raw: Any, rules: EventRules, *, now: Optional[float] = None) -> EventBatch:
    """The events of ``raw`` (a list of JSON objects) as an :class:`~recsys.online.store.EventBatch`;
    :class:`EventsRefused` naming every problem otherwise. ``now``: unix seconds (tests)."""
    import numpy as np

    if not isinstance(raw, (list, tuple)):
        raise EventsRefused([EventProblem(-1, "events", f"must be a list of event objects, got {type(raw).__name__}")], 0)
    if not raw:
        raise EventsRefused([EventProblem(-1, "events", "the batch is empty")], 0)
    if len(raw) > rules.max_batch:
        raise EventsRefused(
            [EventProblem(-1, "events", f"{len(raw)} events in one batch; at most {rules.max_batch} (RECSYS_EVENTS_MAX_BATCH)")],
            len(raw),
        )
    now = time.time() if now is None else now
    oldest_ms, newest_ms = int(1000 * (now - rules.max_age_seconds)), int(1000 * (now + rules.max_future_seconds))
    types = frozenset(rules.event_types)
    problems: list[EventProblem] = []
    users, items, kinds, stamps, requests = [], [], [], [], []
    item_index: list[int] = []  # batch index of each parsed item id (for the catalogue check)
    for n, event in enumerate(raw):
        if not isinstance(event, dict):
            problems.append(EventProblem(n, "event", f"must be a JSON object, got {_show(event)}"))
            continue
        before = len(problems)
        unknown = sorted(str(k) for k in event if k not in FIELDS)
        if unknown:
            problems.append(EventProblem(n, unknown[0], f"unknown field (fields: {', '.join(FIELDS)})"))
        for name in REQUIRED:
            if event.get(name) is None:
                problems.append(EventProblem(n, name, "missing"))
        user = item = None
        if event.get("user_id") is not None:
            user = _parse_id(event["user_id"], rules.id_kinds.user_id, "user_id", n, problems)
        if event.get("item_id") is not None:
            item = _parse_id(event["item_id"], rules.id_kinds.item_id, "item_id", n, problems)
        kind = event.get("event_type")
        if kind is not None and kind not in types:
            problems.append(EventProblem(n, "event_type", f"{_show(kind)} is not one of {', '.join(rules.event_types)} (RECSYS_EVENT_TYPES)"))
        stamp = _parse_timestamp(event.get("timestamp"), n, problems, oldest_ms, newest_ms) if event.get("timestamp") is not None else None
        request = event.get("request_id")
        if request is not None and not _valid_request_id(request):
            problems.append(EventProblem(n, "request_id", f"{_show(request)} is not text of 1 to {MAX_REQUEST_ID} printable characters"))
        if item is not None:  # checked against the catalogue below, whatever else is wrong with the event
            items.append(item)
            item_index.append(n)
        if len(problems) > before:
            continue
        users.append(ids.to_text(user))
        kinds.append(kind)
        stamps.append(stamp)
        requests.append(request or "")
    if rules.known_items is not None and items:
        known = np.asarray(rules.known_items(ids.as_array(items, rules.id_kinds.item_id)), dtype=bool)
        where = f" ({rules.catalogue})" if rules.catalogue else ""
        for position in np.flatnonzero(~known).tolist():
            problems.append(EventProblem(item_index[position], "item_id", f"{ids.show(items[position])} is not in the served catalogue{where}"))
    if problems:
        problems.sort(key=lambda p: p.index)
        raise EventsRefused(problems, len(raw))
    return EventBatch(users, [ids.to_text(i) for i in items], kinds, stamps, requests, rules.id_kinds)  # all valid: items align


def _parse_id(value: Any, kind: str, column: str, n: int, problems: list[EventProblem]) -> Optional[ids.IdValue]:
    if isinstance(value, float) and kind == ids.INT and value.is_integer():
        value = int(value)  # JSON numbers may arrive as 12.0
    try:
        parsed = ids.parse(value, kind, column)
    except ids.IdError as exc:
        problems.append(EventProblem(n, column, str(exc)))
        return None
    if kind == ids.INT and parsed < 0:
        problems.append(EventProblem(n, column, f"{parsed} is negative; integer ids are >= 0"))
        return None
    return parsed


def _parse_timestamp(value: Any, n: int, problems: list[EventProblem], oldest_ms: int, newest_ms: int) -> Optional[int]:
    """Unix milliseconds of an ISO-8601 text or an epoch number (see the module docstring)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        problems.append(EventProblem(n, "timestamp", f"{_show(value)} is neither ISO-8601 text nor a unix epoch number"))
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            problems.append(EventProblem(n, "timestamp", f"{_show(value)} is not ISO-8601 (e.g. 2026-12-06T21:30:00Z)"))
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        millis = int(round(parsed.timestamp() * 1000))
    else:
        if not math.isfinite(value):
            problems.append(EventProblem(n, "timestamp", f"{value} is not a finite number"))
            return None
        millis = int(round(value if abs(value) >= EPOCH_MS_FROM else value * 1000))
    if millis < oldest_ms:
        problems.append(EventProblem(n, "timestamp", f"{_show(value)} ({_iso(millis)}) is older than {_iso(oldest_ms)}, "
                                     "the oldest a live event may be (RECSYS_EVENTS_MAX_AGE_HOURS; older data goes "
                                     "through the landing folder)"))
        return None
    if millis > newest_ms:
        problems.append(EventProblem(n, "timestamp", f"{_show(value)} ({_iso(millis)}) is in the future (more than "
                                     f"the allowed clock skew, RECSYS_EVENTS_MAX_FUTURE_SECONDS, ahead of {_iso(newest_ms)})"))
        return None
    return millis


def _valid_request_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID and value.isprintable()


def _iso(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class CatalogueCache:
    """:class:`EventRules` of the store's current online version, refreshed when the version changes.

    The current version is asked for at most every ``check_seconds`` (one round trip); a new version's
    item ids are read once (HSCAN). Without a current version there is no catalogue to check events
    against: :class:`~recsys.online.store.NoOnlineVersionError` (the API answers 503)."""

    def __init__(self, store: "OnlineStore", settings: Optional["Settings"] = None, check_seconds: float = 1.0):
        from recsys.settings import get_settings

        self.store = store
        self.settings = settings or get_settings()
        self.check_seconds = check_seconds
        self._rules: Optional[EventRules] = None
        self._version = ""
        self._checked = 0.0

    def rules(self) -> EventRules:
        from recsys.online.store import NoOnlineVersionError

        now = time.monotonic()
        if self._rules is not None and now - self._checked < self.check_seconds:
            return self._rules
        current = self.store.current()
        if current is None:
            raise NoOnlineVersionError("the online store has no current version yet, so events cannot be checked "
                                       "against a catalogue: run the pipeline (recsys_etl, recsys_feature_refresh) first")
        if current.version != self._version or self._rules is None:
            kinds = ids.IdKinds.from_dict(current.ids)
            catalogue = self.store.entity_ids(current.version, "items")
            s = self.settings
            self._rules = EventRules(
                id_kinds=kinds,
                event_types=s.event_type_list,
                max_age_seconds=s.events_max_age_hours * 3600,
                max_future_seconds=s.events_max_future_seconds,
                max_batch=s.events_max_batch,
                known_items=_membership(catalogue, kinds.item_id),
                catalogue=f"online version {current.version}",
            )
            self._version = current.version
        self._checked = now
        return self._rules


def _membership(catalogue: "np.ndarray", kind: str) -> Callable[["np.ndarray"], "np.ndarray"]:
    """A test of membership in ``catalogue``."""
    positions = ids.Positions(catalogue, kind)
    return lambda values: positions(values) >= 0
