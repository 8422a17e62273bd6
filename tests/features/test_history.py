"""The history input: built the same way for training rows and for serving (pure numpy)."""

from __future__ import annotations

import numpy as np

from recsys.features.history import leave_one_out, per_user, truncate


def _rows(values, offsets):
    return [values[offsets[r]:offsets[r + 1]].tolist() for r in range(len(offsets) - 1)]


def test_leave_one_out_gives_each_row_the_users_other_items_newest_first():
    users = np.array([7, 7, 7, 9, 7])
    items = np.array([10, 11, 12, 20, 13])
    times = np.array([1, 2, 3, 5, 4])
    values, offsets = leave_one_out(users, items, times, max_length=10)
    assert _rows(values, offsets) == [[13, 12, 11], [13, 12, 10], [13, 11, 10], [], [12, 11, 10]]
    # at most max_length: the newest others
    values, offsets = leave_one_out(users, items, times, max_length=2)
    assert _rows(values, offsets) == [[13, 12], [13, 12], [13, 11], [], [12, 11]]


def test_leave_one_out_matches_a_plain_loop_on_random_rows():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 20, 400)
    items = rng.integers(0, 1000, 400)
    times = rng.integers(0, 50, 400)
    values, offsets = leave_one_out(users, items, times, max_length=5)
    got = _rows(values, offsets)
    for r in range(400):
        others = [j for j in range(400) if users[j] == users[r] and j != r]
        others.sort(key=lambda j: (-times[j], -j))  # newest first, the later row of a tie first
        assert got[r] == [int(items[j]) for j in others[:5]]


def test_serving_side_history_is_every_item_newest_first_cut_to_length():
    lists = per_user(np.array([1, 1, 2, 1]), np.array([5, 6, 7, 8]), np.array([3, 1, 2, 2]))
    assert {u: v.tolist() for u, v in lists.items()} == {1: [5, 8, 6], 2: [7]}
    values, offsets = truncate([lists[1], lists[2], np.zeros(0)], max_length=2)
    assert _rows(values, offsets) == [[5, 8], [7], []] and values.dtype == np.int64
