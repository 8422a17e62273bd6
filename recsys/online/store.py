"""The online feature store's interface (what serving, the refresh DAG and the CLI call).

One backend per module: :mod:`recsys.online.redis_store` is the Redis one. The contract:

* a refresh writes a whole new *online version* from a :class:`~recsys.online.snapshot.Snapshot`
  and then makes it current with one atomic switch; a failed refresh leaves the current version
  untouched and removes what it wrote;
* every read resolves the current version once and reads only that version's data, so a reader
  never sees two versions mixed;
* a read given ``feature_version=F`` resolves the newest version written from feature version F
  instead of the current one: a served model reads rows encoded for the feature version it was
  trained on, whatever a newer refresh made current. Serving pins the feature versions it reads
  (:meth:`OnlineStore.pin`); garbage collection keeps their newest versions;
* the unavailable-items set is not versioned: operations change it live;
* ids are raw ids of the version's kinds (:mod:`recsys.data.ids`): arguments are ints or strs,
  looked up by their text; results are int64 arrays (int ids) or object arrays of str (text ids).
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from recsys.data.ids import IdValue
    from recsys.online.snapshot import Snapshot

BatchHook = Callable[[str, int], None]
"""Called after each written batch with (entity kind ``"users"``/``"items"``, rows written so far)."""


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

    @property
    def rows_written(self) -> int:
        return self.users_written + self.items_written

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_written"] = self.rows_written
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
    ) -> RefreshResult:
        """Write ``snapshot`` as a new version and make it current (no-op if already current)."""

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
