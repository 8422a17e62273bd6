"""Sampled negatives for the ranker when the feature version holds only positives (has_labels false).

For every positive row, ``negatives_per_positive`` items the user never interacted with are drawn
(uniformly, or proportionally to popularity), and the row is copied with the sampled item's
features and ``target = 0``. Seeded: the same inputs give the same negatives.
"""

from __future__ import annotations

import logging
from typing import Literal, Optional

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

Strategy = Literal["uniform", "popularity", "candidates"]
_MAX_ROUNDS = 50


def sample_negatives(
    positives: pd.DataFrame,
    items: pd.DataFrame,
    *,
    user_col: str,
    item_col: str,
    target: str,
    negatives_per_positive: int,
    seed: int,
    strategy: Strategy = "uniform",
    known_positives: Optional[pd.DataFrame] = None,
    candidates: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> pd.DataFrame:
    """Negative rows for ``positives`` (same columns, ``target`` 0).

    ``strategy="candidates"``: drawn uniformly from the user's row of ``candidates`` ((sorted user ids,
    a (users, k) matrix of item ids): what retrieval proposes to them, the items the ranker has to
    order at serving time); users without a row fall back to popularity.

    ``items``: one row per item (the feature version's items/), its columns replace the item
    columns of the copied rows. ``known_positives``: more (user, item) pairs a negative must avoid,
    e.g. the training positives when sampling for validation. A user who interacted with every
    item gets no negatives (logged).
    """
    if negatives_per_positive < 1 or len(positives) == 0:
        return positives.iloc[0:0].copy()
    if strategy not in ("uniform", "popularity", "candidates"):
        raise ValueError(f"unknown negative sampling strategy {strategy!r}; use 'uniform', 'popularity' or 'candidates'")
    if strategy == "candidates" and candidates is None:
        raise ValueError("strategy 'candidates' needs the candidates")
    rng = np.random.default_rng(seed)
    catalogue = items[item_col].to_numpy()
    n_items = len(catalogue)
    if strategy in ("popularity", "candidates"):
        counts = positives[item_col].value_counts().reindex(catalogue, fill_value=0).to_numpy()
        weights = (counts + 1.0) / (counts + 1.0).sum()  # +1: items never seen can still be drawn
    else:
        weights = None

    # (user, item) pairs to avoid, as one int64 key each, sorted for searchsorted look-ups.
    pairs = positives[[user_col, item_col]]
    if known_positives is not None:
        pairs = pd.concat([pairs, known_positives[[user_col, item_col]]], ignore_index=True)
    stride = int(max(catalogue.max(), pairs[item_col].max())) + 1
    forbidden = np.unique(pairs[user_col].to_numpy(np.int64) * stride + pairs[item_col].to_numpy(np.int64))

    source_rows = np.repeat(np.arange(len(positives)), negatives_per_positive)
    users = positives[user_col].to_numpy(np.int64)[source_rows]
    pool, pool_row = None, None
    if strategy == "candidates":
        pool_users, pool_items = candidates
        first_rows = pd.Series(np.arange(n_items), index=catalogue).groupby(level=0).first()  # shared codes: one row
        pool = first_rows.reindex(pool_items.ravel()).fillna(-1).to_numpy(np.int64).reshape(pool_items.shape)
        at = np.minimum(np.searchsorted(pool_users, users), max(len(pool_users) - 1, 0))
        pool_row = np.where((len(pool_users) > 0) & (pool_users[at] == users), at, -1)
    sampled = np.empty(len(source_rows), dtype=np.int64)
    pending = np.arange(len(source_rows))
    for _ in range(_MAX_ROUNDS):
        sampled[pending] = rng.choice(n_items, size=len(pending), p=weights)
        if pool is not None:
            has = pending[pool_row[pending] >= 0]
            drawn = pool[pool_row[has], rng.integers(0, pool.shape[1], len(has))]
            sampled[has] = np.where(drawn >= 0, drawn, sampled[has])
        keys = users[pending] * stride + catalogue[sampled[pending]].astype(np.int64)
        hit = np.searchsorted(forbidden, keys)
        clash = (hit < len(forbidden)) & (forbidden[np.minimum(hit, len(forbidden) - 1)] == keys)
        pending = pending[clash]
        if len(pending) == 0:
            break
    keep = np.ones(len(source_rows), dtype=bool)
    keep[pending] = False
    if len(pending):
        log.warning("dropped %d negatives of users who interacted with (almost) every item", len(pending))

    negatives = positives.iloc[source_rows[keep]].reset_index(drop=True)
    item_rows = items.iloc[sampled[keep]].reset_index(drop=True)
    for column in items.columns:
        if column in negatives.columns:
            negatives[column] = item_rows[column].to_numpy().astype(negatives[column].dtype, copy=False)
    negatives[target] = np.zeros(len(negatives), dtype=positives[target].dtype)
    return negatives


def with_negatives(
    positives: pd.DataFrame, items: pd.DataFrame, *, candidate_negatives: int = 0,
    candidates: Optional[tuple[np.ndarray, np.ndarray]] = None, **kwargs
) -> pd.DataFrame:
    """``positives`` (target forced to 1) followed by their sampled negatives; see :func:`sample_negatives`.

    With ``candidates``, ``candidate_negatives`` of each positive's ``negatives_per_positive`` are drawn
    from the user's retrieval candidates, the rest with ``strategy``."""
    target = kwargs["target"]
    positives = positives.assign(**{target: np.ones(len(positives), dtype=positives[target].dtype)})
    hard = min(candidate_negatives, kwargs["negatives_per_positive"]) if candidates is not None else 0
    parts = [positives, sample_negatives(positives, items, **{**kwargs, "negatives_per_positive": kwargs["negatives_per_positive"] - hard})]
    if hard:
        parts.append(sample_negatives(positives, items, **{**kwargs, "negatives_per_positive": hard, "strategy": "candidates",
                                                         "seed": kwargs["seed"] + 7919}, candidates=candidates))
    log.info("sampled %d negatives for %d positives (%d per positive from retrieval's candidates)",
             sum(len(p) for p in parts[1:]), len(positives), hard)
    return pd.concat(parts, ignore_index=True)
