"""The online feature store's interface (what serving, the refresh DAG and the CLI call).

One backend per module: :mod:`recsys.online.redis_store` is the Redis one. The contract:

* a refresh writes a whole new *online version* from a :class:`~recsys.online.snapshot.Snapshot`
  and then makes it current with one atomic switch; a failed refresh leaves the current version
  untouched and removes what it wrote; given a read budget, it paces its writes so readers' p99
  latency stays within that many times its idle value (:mod:`recsys.online.pacing`);
* every read resolves the current version once and reads only that version's data, so a reader
  never sees two versions mixed;
* a read given ``feature_version=F`` resolves the newest version written from feature version F
  instead of the current one: a served model reads rows encoded for the feature version it was
  trained on, whatever a newer refresh made current. Serving pins the feature versions it reads
  (:meth:`OnlineStore.pin`); garbage collection keeps their newest versions;
* the unavailable-items set is not versioned: operations change it live;
* the live layer is not versioned either: :meth:`OnlineStore.accept_events` appends events to the
  event log, :meth:`OnlineStore.apply_events` (the live applier) applies them to each user's live
  items and the live counters; readers compose a user's live items with the version they read, so a
  refresh never wipes them;
* ids are raw ids of the version's kinds (:mod:`recsys.data.ids`): arguments are ints or strs,
  looked up by their text; results are int64 arrays (int ids) or object arrays of str (text ids).

Like Feast's ``OnlineStore``, a backend implements a few primitives and callers use nothing else:
serving (:mod:`recsys.serving.engine`) reads through the *bulk reads* (a batch of users in one
round trip, a version's whole item table, live unavailable flags), the batch job
(:mod:`recsys.serving.batch`) through the *precomputed lists*; key names, scripts and row packing
stay inside the backend's module. The result types and errors are declared here, beside the
interface, so every backend returns and raises the same ones.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

from recsys.data import ids
from recsys.errors import RecsysError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from recsys.data.ids import IdValue
    from recsys.online.snapshot import Snapshot

BatchHook = Callable[[str, int], None]
"""Called after each written batch with (entity kind ``"users"``/``"items"``, rows written so far)."""


class OnlineStoreError(RecsysError):
    """The online store cannot do what was asked (no current version, concurrent refresh, ...)."""


class VersionGoneError(OnlineStoreError):
    """An online version's metadata is gone (the version was collected)."""


class NoOnlineVersionError(OnlineStoreError):
    """No online version holds the feature version a reader asked for (or none is current at all)."""


class ConcurrentRefreshError(OnlineStoreError):
    """Another refresh switched ``current`` while this one was writing."""


@dataclass(frozen=True)
class VersionInfo:
    """An online version: which feature/data version it holds and since when it is current."""

    version: str
    feature_version: str
    data_version: str
    created_at: float  # unix seconds, when its writing started
    switched_at: Optional[float]  # unix seconds, when it became current
    mode: str  # "full" or "incremental"
    users: int
    items: int
    age_seconds: Optional[float] = None  # since it became current
    ids: dict[str, str] = field(default_factory=lambda: {"user_id": "int", "item_id": "int"})
    """The kinds of its raw ids (recsys.data.ids.IdKinds.to_dict)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RefreshResult:
    """What a refresh did. ``skipped``: that feature version was already current (no ``force``)."""

    version: str
    feature_version: str
    mode: str
    skipped: bool = False
    users_written: int = 0
    items_written: int = 0
    users_copied: int = 0  # incremental: unchanged entities copied server-side from the base version
    items_copied: int = 0
    users_deleted: int = 0  # incremental: in the base version, gone from the new one
    items_deleted: int = 0
    base_version: Optional[str] = None
    seconds: float = 0.0
    reason: str = ""
    removed_versions: list[str] = field(default_factory=list)
    pacing: dict[str, Any] = field(default_factory=dict)
    """How the refresh paced itself against readers (:meth:`recsys.online.pacing.RefreshPacer.report`):
    the budget, the probes' limit and latencies, seconds spent writing and paused, the unit (entities
    per round trip) and duty it ended at and the slowest it went."""

    @property
    def rows_written(self) -> int:
        return self.users_written + self.items_written

    @property
    def rows(self) -> int:
        """Rows of the new version: written plus copied server-side."""
        return self.rows_written + self.users_copied + self.items_copied

    @property
    def rows_per_second(self) -> Optional[float]:
        """Rows of the new version per second of the whole refresh (None when skipped)."""
        return round(self.rows / self.seconds, 1) if self.seconds > 0 and not self.skipped else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_written"] = self.rows_written
        out["rows"] = self.rows
        out["rows_per_second"] = self.rows_per_second
        return out


@dataclass
class FeatureRows:
    """One read: a user's features and candidate items' features from ONE online version.

    Arrays are in the models' column order (the feature version's ``users/`` and ``items/``),
    categorical columns int64, continuous float32. ``user`` arrays have shape (1,), ``items``
    arrays shape (n,). Entities the version does not hold are filled with the out-of-vocabulary
    code (categorical) / 0.0 (continuous) and flagged False in ``user_found`` / ``item_found``.
    """

    version: str
    user_found: bool
    user: dict[str, "np.ndarray"]
    items: dict[str, "np.ndarray"]
    item_found: "np.ndarray"
    unavailable: "np.ndarray"  # bool per item: in the unavailable set now
    seen: Optional["np.ndarray"] = None  # raw item ids the user has seen (when asked for), in their kind


@dataclass
class UserRows:
    """Features of several users from ONE online version (arrays of shape (n,), the models' dtypes)."""

    version: str
    found: "np.ndarray"  # bool per user
    columns: dict[str, "np.ndarray"]  # unknown users hold the OOV code / 0.0
    seen: Optional[list["np.ndarray"]]  # raw item ids per user (when asked for)
    unavailable: Optional["np.ndarray"] = None  # the whole unavailable set (raw ids), when asked for and small
    live: Optional[list["np.ndarray"]] = None
    """Per user, the raw item ids of their live events (not yet in any online version's batch data),
    newest first, distinct (when asked for)."""


@dataclass
class ItemTable:
    """Every item row of one online version: ``columns[name][row]``, rows sorted by raw item id."""

    version: str
    ids: "np.ndarray"  # raw item ids, sorted: int64, or an object array of str
    columns: dict[str, "np.ndarray"]
    popularity: "np.ndarray"  # raw item ids, most popular first
    kind: str = ids.INT  # of the raw item ids
    _row_of: Optional[ids.Positions] = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, raw_ids: "np.ndarray") -> "np.ndarray":
        """Row of each raw item id in this table (int64), -1 for ids the version does not hold."""
        if self._row_of is None:
            self._row_of = ids.Positions(self.ids, self.kind)
        return self._row_of(raw_ids)


@dataclass
class EventBatch:
    """Validated interaction events, column by column (:func:`recsys.events.validation.validate_events`
    makes them). Ids travel as their text, in the kinds they were validated against (``id_kinds``)."""

    user_ids: list[str]
    item_ids: list[str]
    event_types: list[str]
    timestamps_ms: list[int]  # unix milliseconds, UTC
    request_ids: list[str]  # "" where the event names no recommendation request
    id_kinds: ids.IdKinds = field(default_factory=ids.IdKinds)

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class AcceptResult:
    """What :meth:`OnlineStore.accept_events` did: how many events, their ids in the event log."""

    accepted: int
    first_id: str = ""
    last_id: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LIVE_WINDOWS = {"1h": 3600, "24h": 86400}
"""The sliding windows of the live counters: name -> seconds."""


@dataclass(frozen=True)
class PrecomputedList:
    """One user's read of the current batch of precomputed lists (:mod:`recsys.serving.batch`)."""

    batch: str
    packed: Optional[bytes]  # the user's list as the batch job packed it; None: the user is not in the batch
    id_kinds: ids.IdKinds  # the batch's id kinds (int/int for a batch written before kinds were recorded)
    unavailable: frozenset[str]  # the unavailable set now (its members: the ids' text)


class OnlineStore(abc.ABC):
    """The online feature store (see the module docstring)."""

    # --- writing ------------------------------------------------------------------------------
    @abc.abstractmethod
    def refresh(
        self,
        snapshot: "Snapshot",
        *,
        incremental: bool = False,
        force: bool = False,
        on_batch: Optional[BatchHook] = None,
        read_budget: float = 0.0,
    ) -> RefreshResult:
        """Write ``snapshot`` as a new version and make it current (no-op if already current).

        ``read_budget`` > 0: pace the writes so that readers' p99 latency while the refresh runs stays
        within that many times its idle value (:mod:`recsys.online.pacing`; the refresh job passes
        ``settings.online_refresh_read_budget``); 0: write at full speed."""

    @abc.abstractmethod
    def collect_garbage(self, now: Optional[float] = None) -> list[str]:
        """Delete versions retired longer than the grace period (and stale partial writes), except
        the newest version of every pinned feature version."""

    # --- pins (the feature versions served models read) ---------------------------------------
    @abc.abstractmethod
    def pin(self, feature_version: str, reason: str) -> bool:
        """Keep the newest version of ``feature_version`` from garbage collection; True if newly pinned."""

    @abc.abstractmethod
    def unpin(self, feature_version: str) -> bool:
        """Release a pin (its version then gets the grace period); True if it was pinned."""

    @abc.abstractmethod
    def pins(self) -> dict[str, str]:
        """``{feature version: reason}`` of every pin."""

    # --- reading (``feature_version``: read its newest version instead of the current one) -----
    @abc.abstractmethod
    def current(self, feature_version: Optional[str] = None) -> Optional[VersionInfo]:
        """The current version (or the newest of ``feature_version``) and its age, or None if there is none."""

    @abc.abstractmethod
    def read(
        self,
        user_id: Optional["IdValue"],
        item_ids: Iterable["IdValue"] = (),
        *,
        with_seen: bool = False,
        feature_version: Optional[str] = None,
    ) -> FeatureRows:
        """User features + the items' features (+ seen items), in one round trip."""

    @abc.abstractmethod
    def seen_items(self, user_id: "IdValue", *, feature_version: Optional[str] = None) -> "np.ndarray":
        """Raw ids of the items the user has seen (empty for an unknown user)."""

    @abc.abstractmethod
    def popularity(self, k: Optional[int] = None, *, feature_version: Optional[str] = None) -> "np.ndarray":
        """Raw item ids, most popular first (the first ``k``)."""

    @abc.abstractmethod
    def display(self, item_ids: Iterable["IdValue"], *, feature_version: Optional[str] = None) -> list[Optional[dict[str, Any]]]:
        """Raw display attributes of the items (None for an unknown item)."""

    # --- unavailable items (not versioned) ----------------------------------------------------
    @abc.abstractmethod
    def add_unavailable(self, item_ids: Iterable["IdValue"]) -> int:
        """Mark items unavailable (ids parsed into the item id kind); returns how many were not already."""

    @abc.abstractmethod
    def remove_unavailable(self, item_ids: Iterable["IdValue"]) -> int:
        """Make items available again; returns how many were unavailable."""

    @abc.abstractmethod
    def unavailable(self) -> list["IdValue"]:
        """All unavailable raw item ids, sorted, in the item id kind."""

    # --- bulk reads (the serving engine: a batch of requests at once) ---------------------------
    @abc.abstractmethod
    def read_users(
        self,
        user_ids: Iterable["IdValue"],
        *,
        with_seen: bool = False,
        with_live: bool = False,
        unavailable_up_to: int = 0,
        feature_version: Optional[str] = None,
    ) -> UserRows:
        """Features (and seen items) of ``user_ids`` from ONE version, in one round trip.

        ``with_live``: the same trip also returns each user's live items (``UserRows.live``).
        ``unavailable_up_to`` > 0: the same trip also returns the whole unavailable set when it holds
        at most that many items (``UserRows.unavailable``; None when larger: ask
        :meth:`unavailable_flags`)."""

    @abc.abstractmethod
    def read_item_table(self, version: str, *, batch: int = 5000) -> ItemTable:
        """Every item row (and the popularity list) of the named ``version`` (immutable: pair it with
        ``UserRows.version`` to keep a request on one version). Raises :class:`VersionGoneError` if the
        version is collected before the read ends."""

    @abc.abstractmethod
    def unavailable_flags(self, item_ids: Iterable["IdValue"]) -> "np.ndarray":
        """True for each raw item id that is in the unavailable set now (one round trip)."""

    @abc.abstractmethod
    def entity_ids(self, version: str, entity: str = "users") -> "np.ndarray":
        """Raw ids of every user (``entity="users"``) or item (``"items"``) of ``version``, sorted, in their kind."""

    # --- the live layer: events take effect at once (not versioned) ------------------------------
    @abc.abstractmethod
    def accept_events(self, events: EventBatch, *, inbox_ids: Iterable[str] = ()) -> AcceptResult:
        """Append validated ``events`` to the event log (durable once this returns; visible once the live
        applier applied them, :meth:`apply_events`). ``inbox_ids``: the raw inbox entry of each event,
        acknowledged in the same step, so a crashed or overtaken worker neither loses nor repeats one."""

    @abc.abstractmethod
    def apply_events(self, entry_ids: list[str], events: EventBatch) -> int:
        """Apply logged events (``entry_ids``: their log ids) to the live state (each user's live items,
        the live counters), each exactly once: an entry is applied in the same step that acknowledges it
        for the live applier. Returns how many were applied (already applied ones are skipped)."""

    @abc.abstractmethod
    def live_items(self, user_id: "IdValue", kind: str = ids.INT) -> "np.ndarray":
        """Raw ids (of ``kind``) of the items of the user's live events, newest first, distinct."""

    @abc.abstractmethod
    def live_counts(
        self, entity: str, entity_ids: Iterable["IdValue"], event_types: Iterable[str] = (), *, now: Optional[float] = None
    ) -> list[dict[str, dict[str, int]]]:
        """Per id (``entity``: ``"users"`` or ``"items"``), ``{event type: {window: count}}`` over the
        sliding windows :data:`LIVE_WINDOWS` ending ``now`` (default: the settings' event types; types
        without events are left out)."""

    @abc.abstractmethod
    def event_stats(self) -> dict[str, int]:
        """Totals of the event log (``accepted``, ``applied``, ``refused``, ``landed``) and
        ``last_accept_ms``, ``last_applied_ms``, ``last_landed_ms`` (unix ms; absent until it happened)."""

    # --- precomputed lists (offline mode): batches of per-user lists, one of them current --------
    @abc.abstractmethod
    def new_batch(self, label: str) -> str:
        """A batch id unique in this store: ``<label>-<n>``."""

    @abc.abstractmethod
    def write_batch_rows(self, batch: str, rows: Mapping[str, bytes]) -> None:
        """Store packed lists of ``batch``: user id text -> the user's packed list (one round trip)."""

    @abc.abstractmethod
    def write_batch_meta(self, batch: str, meta: Mapping[str, Any], id_kinds: ids.IdKinds) -> None:
        """Store ``batch``'s metadata (values as text) and the id kinds of its lists (meta ``ids``)."""

    @abc.abstractmethod
    def switch_batch(self, batch: str) -> list[str]:
        """Make ``batch`` current, then delete every other batch (readers resolve the current batch
        and read it in one atomic step, so none is mid-read); returns the deleted batch ids."""

    @abc.abstractmethod
    def discard_batch(self, batch: str) -> None:
        """Delete a batch that never became current (a failed batch job)."""

    @abc.abstractmethod
    def current_batch(self) -> Optional[dict[str, str]]:
        """The current batch's metadata with its id as ``batch`` (None: no batch)."""

    @abc.abstractmethod
    def read_precomputed(self, user_field: str) -> Optional[PrecomputedList]:
        """The current batch's list of the user whose id text is ``user_field``, with the batch's id
        kinds and the unavailable set, in one atomic round trip (None: no batch)."""

    # --- connections --------------------------------------------------------------------------
    def close(self) -> None:
        """Release the store's connections (nothing, unless a backend holds some)."""

    def __enter__(self) -> "OnlineStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
