"""The train / validation split on its own (pure: arrays in, a plan out)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.features.split import SplitError, ValidationSplit, plan_split

DAY = 86_400


def _mask(plan, users, items, seconds):
    return plan.is_validation(np.asarray(users), np.asarray(items), np.asarray(seconds))


def test_time_split_cuts_the_last_days():
    seconds = np.arange(30) * DAY
    users = np.arange(30) % 3
    plan = plan_split(ValidationSplit("time", days=7), users, np.arange(30), seconds)
    assert plan.kind == "time" and plan.cutoff == 22 * DAY
    assert _mask(plan, users, np.arange(30), seconds).sum() == 8  # days 22..29, both ends inclusive


def test_per_user_split_holds_out_a_seeded_random_share_of_each_users_interactions():
    rng = np.random.default_rng(1)
    users = np.repeat(np.array([f"u{k}" for k in range(200)], dtype=object), 50)
    users[:3] = "rare"  # 3 interactions: too few to lend any to validation
    items = rng.integers(0, 5000, len(users))
    seconds = rng.integers(0, 30 * DAY, len(users))
    plan = plan_split(ValidationSplit("user", fraction=0.2), users, items, seconds)
    valid = _mask(plan, users, items, seconds)
    assert plan.kind == "user" and not valid[:3].any()
    assert 0.18 < valid.mean() < 0.22  # about the fraction overall ...
    shares = [valid[users == u].mean() for u in np.unique(users[3:])]
    assert 0.1 < np.median(shares) < 0.3 and max(shares) < 0.5  # ... and for each user
    # A hash of the row, not a draw: the same row is validation in any order and any partition.
    order = rng.permutation(len(users))
    assert (_mask(plan, users[order], items[order], seconds[order]) == valid[order]).all()
    assert (_mask(plan, users[:777], items[:777], seconds[:777]) == valid[:777]).all()


def test_auto_takes_the_time_split_only_when_its_window_judges_known_users():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 5000)
    seconds = rng.integers(0, 35 * DAY, 5000)
    items = rng.integers(0, 100, 5000)
    assert plan_split(ValidationSplit("auto", days=7), users, items, seconds).kind == "time"
    # the same volume in the last week, but only from users never seen before: nothing to judge a model on
    newcomers = np.where(seconds >= 28 * DAY, users + 1000, users)
    plan = plan_split(ValidationSplit("auto", days=7), newcomers, items, seconds)
    assert plan.kind == "user" and "0% of them by users seen before" in plan.reason


def test_refuses_what_leaves_nothing_to_train_or_validate():
    with pytest.raises(SplitError, match="covers every interaction"):
        plan_split(ValidationSplit("time", days=40), np.zeros(3), np.arange(3), np.array([0, DAY, 2 * DAY]))
    with pytest.raises(SplitError, match="no user has 5 or more interactions"):
        plan_split(ValidationSplit("user"), np.arange(4), np.arange(4), np.arange(4))
    with pytest.raises(SplitError, match="must be one of"):
        ValidationSplit("random")
