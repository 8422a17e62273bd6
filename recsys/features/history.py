"""A user's interaction history as a model input: the items they interacted with, newest first.

The query tower reads ``history`` (encoded item ids, at most ``max_length``) beside the user's id and
features, and pools their embeddings. Why: a user id embedding learns only from that user's few
interactions and is frozen until the next training, while the items in a history are learned from every
user who had them; the query is then as fresh as the history the online store holds (an interaction
that arrives while serving changes the next answer without a retrain).

The items are the user's interactions of every kind, which is what the online store's seen list holds
(shown-and-ignored impressions included when the data has labels): one list serves filtering and the
model, so what a model learned from is what it reads when serving. Training and serving build it with
the same rules, here:

* training rows (:func:`leave_one_out`): for an interaction (user u, item i), the user's *other* items,
  newest first; the item predicted is never part of its own input;
* serving and evaluation (:func:`truncate`): every item the user has, newest first.

A ragged column travels as ``values`` (the item codes back to back) and ``offsets`` (row ``r`` is
``values[offsets[r]:offsets[r + 1]]``), which is also how merlin-models' SavedModels take a list input
(``history__values``, ``history__offsets``, both int64). Pure numpy: both runtimes import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

HISTORY = "history"
"""The column name (and merlin-models input prefix) of the history."""


def leave_one_out(users: "np.ndarray", items: "np.ndarray", times: "np.ndarray", max_length: int) -> tuple["np.ndarray", "np.ndarray"]:
    """For each row (user, item, time): the user's other items of these rows, newest first, at most ``max_length``.

    Returns ``(values, offsets)`` aligned with the input rows. Ties in time are broken by row order.
    """
    import numpy as np

    users, items, times = np.asarray(users), np.asarray(items, dtype=np.int64), np.asarray(times)
    n = len(users)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    # newest first within each user (stable: the later row of a tie comes first)
    order = np.lexsort((-np.arange(n), -times.astype(np.int64), users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    ends = np.r_[starts[1:], n]
    position = np.arange(n) - np.repeat(starts, ends - starts)  # rank of each sorted row within its user
    size = np.repeat(ends - starts, ends - starts)
    length = np.minimum(size - 1, max_length)
    lengths = np.empty(n, np.int64)
    lengths[order] = length
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty(int(offsets[-1]), np.int64)
    sorted_items = items[order]
    group_start = np.repeat(starts, ends - starts)
    for k in range(int(length.max())):  # one vectorized step per history slot
        # slot k of a row = the user's k-th newest item, skipping the row itself
        rank = np.where(k < position, k, k + 1)
        take = k < length
        rows = order[take]
        values[offsets[rows] + k] = sorted_items[group_start[take] + rank[take]]
    return values, offsets


def truncate(lists: Sequence["np.ndarray"], max_length: int) -> tuple["np.ndarray", "np.ndarray"]:
    """``(values, offsets)`` of per-user item code arrays (each already newest first), each cut to ``max_length``."""
    import numpy as np

    cut = [np.asarray(items, dtype=np.int64)[:max_length] for items in lists]
    offsets = np.zeros(len(cut) + 1, np.int64)
    np.cumsum([len(c) for c in cut], out=offsets[1:])
    values = np.concatenate(cut) if cut else np.zeros(0, np.int64)
    return values.astype(np.int64, copy=False), offsets


def per_user(users: "np.ndarray", items: "np.ndarray", times: "np.ndarray") -> dict:
    """``{user: item codes newest first}`` of interaction rows (what :func:`truncate` takes)."""
    import numpy as np

    users, items, times = np.asarray(users), np.asarray(items, dtype=np.int64), np.asarray(times)
    order = np.lexsort((-np.arange(len(users)), -times.astype(np.int64), users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]]) if len(users) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(users)]
    sorted_items = items[order]
    return {sorted_users[s]: sorted_items[s:e] for s, e in zip(starts, ends)}
