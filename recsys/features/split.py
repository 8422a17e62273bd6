"""Which interactions are validation: the one owner of the train / validation split (pure, no NVTabular).

Two kinds, and ``auto`` choosing between them per data version:

* ``time``: one global cutoff, the last ``days`` days (relative to the newest interaction) are validation.
  Honest about the future (no model sees a later interaction than the ones it is judged on) and what a
  shop with a steady stream of events wants; useless when the last days hold almost nothing, as in a
  public data set collected over twenty years (MovieLens' last 7 days hold 28 of 100k ratings).
* ``user``: a seeded random ``fraction`` of each user's interactions, for users with at least
  ``MIN_USER_INTERACTIONS``; the others stay in training. The classic collaborative-filtering holdout
  (what EASE, Mult-VAE and the MovieLens benchmarks use): it judges the model on the items of known users
  whatever the data's time profile. The price: a validation row may be older than a training row. Not the
  user's *newest* items: where the time axis is too thin for a time split (bulk ratings entered years
  apart), "newest" measures the order a user happened to type them in, and early stopping on it stopped
  training after one epoch (measured on MovieLens-latest-small).
* ``auto`` (the default): ``time`` when its window holds at least ``MIN_WINDOW_SHARE`` of the interactions
  and at least ``MIN_WARM_SHARE`` of the window's rows belong to users with earlier interactions (a model
  can only be judged on users it knows); otherwise ``user``. The choice and its reason are recorded in the
  feature version's manifest.

    split = ValidationSplit.from_settings(settings)
    plan = plan_split(split, user_ids, item_ids, unix_seconds)      # numpy arrays, one entry per interaction
    plan.kind, plan.reason, plan.cutoff (time) / plan.user_cutoffs (user)
    valid = plan.is_validation(user_ids, item_ids, unix_seconds)    # boolean mask, the same rule for any frame
                                                                    # or partition (a hash of the row, seeded)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from recsys.errors import InputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd

    from recsys.settings import Settings

KINDS = ("auto", "time", "user")
MIN_USER_INTERACTIONS = 5
"""A user needs this many interactions to lend some to validation (fewer: all stay in training)."""
MIN_WINDOW_SHARE = 0.05
HASH_KEY = "recsys-split-v01"  # 16 characters, as pandas' hash wants; change it and every split changes
DEFINITION_VERSION = 2
"""Bump when the rules here change: it is part of the feature version's hash (2: per-user split is random)."""
MIN_WARM_SHARE = 0.5


class SplitError(InputError):
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
        return {"validation_split": self.kind, "validation_days": int(self.days), "validation_fraction": float(self.fraction),
                "split_definition_version": DEFINITION_VERSION}


@dataclass
class SplitPlan:
    """The split chosen for one data version."""

    kind: str  # "time" | "user"
    reason: str
    split: ValidationSplit
    cutoff: Optional[int] = None
    """time: the first validation second (unix); rows at or after it are validation."""
    eligible: Optional["np.ndarray"] = None
    """user: the users with enough interactions to lend some to validation."""

    def is_validation(self, users: "np.ndarray", items: "np.ndarray", seconds: "np.ndarray") -> "np.ndarray":
        """The validation mask of interactions (the same rule whatever frame or partition they come in)."""
        import numpy as np
        import pandas as pd

        if self.kind == "time":
            return np.asarray(seconds) >= self.cutoff
        keys = pd.DataFrame({"u": np.asarray(users), "i": np.asarray(items), "t": np.asarray(seconds, dtype=np.int64)})
        # A seeded hash of the interaction, not a random draw: any partition gives every row the same answer.
        draw = pd.util.hash_pandas_object(keys, index=False, hash_key=HASH_KEY).to_numpy() % np.uint64(1_000_000)
        return np.isin(keys["u"].to_numpy(), self.eligible) & (draw < np.uint64(round(self.split.fraction * 1_000_000)))

    def manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.split.config(), "kind": self.kind, "reason": self.reason}
        if self.kind == "time":
            out["cutoff"] = int(self.cutoff)
        else:
            out["users_with_validation"] = int(len(self.eligible))
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

    ids, counts = np.unique(np.asarray(users), return_counts=True)
    eligible = ids[counts >= MIN_USER_INTERACTIONS]
    if not len(eligible):
        raise SplitError(f"per-user split: no user has {MIN_USER_INTERACTIONS} or more interactions to validate on")
    plan = SplitPlan("user", "", split, eligible=eligible)
    rows = int(plan.is_validation(users, items, seconds).sum())
    plan.reason = (f"{reason}: a random {split.fraction:.0%} of each user's interactions ({len(eligible):,} users "
                   f"with {MIN_USER_INTERACTIONS}+, {rows:,} rows)")
    return plan
