"""Which interactions are validation: the one owner of the train / validation split (pure, no NVTabular).

Two kinds, and ``auto`` choosing between them per data version:

* ``time``: one global cutoff, the last ``days`` days (relative to the newest interaction) are validation.
  Honest about the future (no model sees a later interaction than the ones it is judged on) and what a
  shop with a steady stream of events wants; useless when the last days hold almost nothing, as in a
  public data set collected over twenty years (MovieLens' last 7 days hold 28 of 100k ratings).
* ``user``: each user's newest ``fraction`` of interactions (ties broken by item id), for users with at
  least ``MIN_USER_INTERACTIONS``; the others stay in training. Judges the model on what it is used for,
  the next items of known users, whatever the data's time profile; the price is that a user's validation
  rows may be older than another user's training rows.
* ``auto`` (the default): ``time`` when its window holds at least ``MIN_WINDOW_SHARE`` of the interactions
  and at least ``MIN_WARM_SHARE`` of the window's rows belong to users with earlier interactions (a model
  can only be judged on users it knows); otherwise ``user``. The choice and its reason are recorded in the
  feature version's manifest.

    split = ValidationSplit.from_settings(settings)
    plan = plan_split(split, user_ids, item_ids, unix_seconds)      # numpy arrays, one entry per interaction
    plan.kind, plan.reason, plan.cutoff (time) / plan.user_cutoffs (user)
    valid = plan.is_validation(user_ids, item_ids, unix_seconds)    # boolean mask, the same rule for any frame
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from recsys.errors import RecsysError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd

    from recsys.settings import Settings

KINDS = ("auto", "time", "user")
MIN_USER_INTERACTIONS = 5
"""A user needs this many interactions to lend some to validation (fewer: all stay in training)."""
MIN_WINDOW_SHARE = 0.05
MIN_WARM_SHARE = 0.5


class SplitError(RecsysError):
    """The split is misconfigured or leaves nothing to train or to validate on."""


@dataclass(frozen=True)
class ValidationSplit:
    """How to split (settings ``RECSYS_VALIDATION_SPLIT``, ``RECSYS_VALIDATION_DAYS``, ``RECSYS_VALIDATION_FRACTION``)."""

    kind: str = "auto"
    days: int = 7
    fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SplitError(f"validation split must be one of {KINDS}, got {self.kind!r}")
        if int(self.days) < 1:
            raise SplitError(f"validation_days must be >= 1, got {self.days}")
        if not 0.0 < float(self.fraction) < 1.0:
            raise SplitError(f"validation_fraction must be between 0 and 1, got {self.fraction}")

    @classmethod
    def from_settings(cls, settings: "Settings") -> "ValidationSplit":
        return cls(settings.validation_split, settings.validation_days, settings.validation_fraction)

    def config(self) -> dict[str, Any]:
        """What identifies the split in a feature version's hash."""
        return {"validation_split": self.kind, "validation_days": int(self.days), "validation_fraction": float(self.fraction)}


@dataclass
class SplitPlan:
    """The split chosen for one data version."""

    kind: str  # "time" | "user"
    reason: str
    split: ValidationSplit
    cutoff: Optional[int] = None
    """time: the first validation second (unix); rows at or after it are validation."""
    user_cutoffs: Optional["pd.DataFrame"] = None
    """user: ``user_id``, ``cutoff_ts``, ``cutoff_item``: a user's rows at or after (ts, item) are validation."""

    def is_validation(self, users: "np.ndarray", items: "np.ndarray", seconds: "np.ndarray") -> "np.ndarray":
        """The validation mask of interactions (the same rule whatever frame or partition they come in)."""
        import numpy as np
        import pandas as pd

        if self.kind == "time":
            return np.asarray(seconds) >= self.cutoff
        cut = self.user_cutoffs.set_index("user_id")
        index = cut.index.get_indexer(pd.Index(np.asarray(users)))
        has = index >= 0
        ts = np.where(has, cut["cutoff_ts"].to_numpy()[np.maximum(index, 0)], 0)
        item = cut["cutoff_item"].to_numpy()[np.maximum(index, 0)]
        seconds = np.asarray(seconds)
        items = np.asarray(items)
        later = seconds > ts
        tie = (seconds == ts) & (_sortable(items) >= _sortable(item))
        return has & (later | tie)

    def manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.split.config(), "kind": self.kind, "reason": self.reason}
        if self.kind == "time":
            out["cutoff"] = int(self.cutoff)
        else:
            out["users_with_validation"] = int(len(self.user_cutoffs))
        return out


def plan_split(split: ValidationSplit, users: "np.ndarray", items: "np.ndarray", seconds: "np.ndarray") -> SplitPlan:
    """Choose the split for interactions given as aligned arrays (raw user id, raw item id, unix seconds)."""
    import numpy as np

    seconds = np.asarray(seconds, dtype=np.int64)
    total = len(seconds)
    if total == 0:
        raise SplitError("no interactions to split")
    cutoff = int(seconds.max()) - int(split.days) * 86_400
    in_window = seconds >= cutoff
    window_rows = int(in_window.sum())
    window_text = f"the last {split.days} days hold {window_rows:,} of {total:,} interactions ({window_rows / total:.1%})"
    if split.kind in ("auto", "time"):
        earlier_users = np.unique(np.asarray(users)[~in_window])
        warm = float(np.isin(np.asarray(users)[in_window], earlier_users).mean()) if window_rows else 0.0
        if split.kind == "time":
            if window_rows == total:
                raise SplitError(f"validation_days={split.days} covers every interaction: no training window left")
            if window_rows == 0:
                raise SplitError(f"validation_days={split.days}: {window_text}: nothing to validate on")
            return SplitPlan("time", f"time split as configured: {window_text}", split, cutoff=cutoff)
        if window_rows < total and window_rows / total >= MIN_WINDOW_SHARE and warm >= MIN_WARM_SHARE:
            return SplitPlan(
                "time", f"auto: {window_text}, {warm:.0%} of them by users seen before", split, cutoff=cutoff
            )
        why = (f"{window_text}, {warm:.0%} of them by users seen before; a window needs "
               f">= {MIN_WINDOW_SHARE:.0%} of the interactions, >= {MIN_WARM_SHARE:.0%} by known users")
        plan = _user_plan(split, users, items, seconds, f"auto: per-user split, because {why}")
    else:
        plan = _user_plan(split, users, items, seconds, "per-user split as configured")
    return plan


def _user_plan(split: ValidationSplit, users, items, seconds, reason: str) -> SplitPlan:
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"user_id": np.asarray(users), "item": _sortable(np.asarray(items)), "ts": seconds,
                          "item_id": np.asarray(items)})
    counts = frame.groupby("user_id", sort=False)["ts"].transform("size").to_numpy()
    frame = frame[counts >= MIN_USER_INTERACTIONS]
    if frame.empty:
        raise SplitError(f"per-user split: no user has {MIN_USER_INTERACTIONS} or more interactions to validate on")
    # newest first within each user; the k-th newest row is the user's cutoff
    frame = frame.sort_values(["user_id", "ts", "item"], ascending=[True, False, False], kind="mergesort")
    rank = frame.groupby("user_id", sort=False).cumcount().to_numpy()
    size = frame.groupby("user_id", sort=False)["ts"].transform("size").to_numpy()
    keep = np.maximum(1, np.round(size * float(split.fraction)).astype(np.int64))
    last = frame[rank == keep - 1]
    cutoffs = pd.DataFrame({"user_id": last["user_id"].to_numpy(), "cutoff_ts": last["ts"].to_numpy(),
                            "cutoff_item": last["item_id"].to_numpy()})
    rows = int(keep[rank == 0].sum())
    return SplitPlan("user", f"{reason}: each user's newest {split.fraction:.0%} of interactions "
                     f"({len(cutoffs):,} users, {rows:,} rows)", split, user_cutoffs=cutoffs)


def _sortable(values: "np.ndarray") -> "np.ndarray":
    """Item ids as an array that compares the same way for integer and string ids."""
    import numpy as np

    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values
