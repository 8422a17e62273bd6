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


def test_per_user_split_takes_each_users_newest_share_and_breaks_ties_by_item():
    # user "a": 10 interactions, two of them at the newest second; user "b": 3 (too few to lend any)
    users = np.array(["a"] * 10 + ["b"] * 3, dtype=object)
    items = np.array(["i%02d" % k for k in range(10)] + ["x", "y", "z"], dtype=object)
    seconds = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 1, 2, 3]) * DAY
    plan = plan_split(ValidationSplit("user", fraction=0.2), users, items, seconds)
    valid = _mask(plan, users, items, seconds)
    assert plan.kind == "user" and valid.tolist() == [False] * 8 + [True, True] + [False] * 3
    one = plan_split(ValidationSplit("user", fraction=0.1), users, items, seconds)  # one of the two at second 9
    assert _mask(one, users, items, seconds).tolist() == [False] * 9 + [True] + [False] * 3


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
