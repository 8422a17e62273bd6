"""Offline evaluation metrics, in plain numpy (no TensorFlow), shared by every model and the baseline.

Top-k protocol (retrieval and the popularity baseline use exactly this function):
- every item of the catalogue is a candidate, except the items the user saw in training;
- a user's relevant set is their validation positives that they had not already seen in training
  (an item excluded from ranking could never be retrieved);
- users with an empty relevant set are skipped; metrics are means over the remaining users.
Ties in scores are broken by the lower item position, so results are deterministic.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

ScoreSource = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]
"""Either a (n_users, n_items) score matrix, or a callable that, given an array of user positions,
returns their (len(positions), n_items) score rows."""

DEFAULT_KS: tuple[int, ...] = (10, 50, 100)


def recall_at_k(ranked: Sequence[int], relevant: Union[set, frozenset], k: int) -> float:
    """Share of the relevant items found in the first ``k`` ranked items (0.0 when nothing is relevant)."""
    if not relevant:
        return 0.0
    hits = sum(1 for item in list(ranked)[:k] if item in relevant)
    return hits / len(relevant)


def ndcg_at_k(ranked: Sequence[int], relevant: Union[set, frozenset], k: int) -> float:
    """Binary-relevance NDCG@k; the ideal DCG puts ``min(k, |relevant|)`` hits on top."""
    if not relevant:
        return 0.0
    top = list(ranked)[:k]
    gains = np.array([1.0 if item in relevant else 0.0 for item in top])
    discounts = 1.0 / np.log2(np.arange(2, len(top) + 2))
    dcg = float((gains * discounts).sum())
    n_ideal = min(k, len(relevant))
    idcg = float((1.0 / np.log2(np.arange(2, n_ideal + 2))).sum())
    return dcg / idcg


def top_k_items(scores: np.ndarray, k: int, exclude: Optional[np.ndarray] = None) -> np.ndarray:
    """Positions of the ``k`` highest scores (highest first, ties by lower position), ``exclude`` removed.

    Returns fewer than ``k`` positions when the catalogue minus ``exclude`` is smaller than ``k``.
    """
    scores = np.asarray(scores, dtype=np.float64).copy()
    allowed = np.ones(scores.shape[0], dtype=bool)
    if exclude is not None and len(exclude):
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    candidates = np.flatnonzero(allowed)
    if len(candidates) == 0:
        return candidates
    cand_scores = scores[candidates]
    k = min(k, len(candidates))
    if k < len(candidates):
        # Partition first (cheap on big catalogues), then keep every candidate tied with the k-th
        # score so that the tie-break below sees all of them.
        kth_value = np.partition(cand_scores, len(cand_scores) - k)[len(cand_scores) - k]
        keep = cand_scores >= kth_value
        candidates, cand_scores = candidates[keep], cand_scores[keep]
    order = np.lexsort((candidates, -cand_scores))  # last key is primary: score desc, then position
    return candidates[order][:k]


def evaluate_top_k(
    scores: ScoreSource,
    seen: Mapping[int, np.ndarray],
    relevant: Mapping[int, np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_k: int = 10,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Mean recall@k for each k and NDCG@``ndcg_k`` over users with a validation positive.

    ``scores``: a (n_users, n_items) matrix or a callable scoring a batch of user positions against
    all items (called in chunks of ``chunk_size`` users to bound memory). ``seen`` and ``relevant``
    map a user position to an array of item positions (train-seen items, validation positives).
    Returns ``{"recall_at_<k>": ..., "ndcg_at_<ndcg_k>": ..., "users_evaluated": n}``.
    """
    users = []
    relevant_sets = {}
    for user, items in relevant.items():
        rel = set(np.asarray(items, dtype=np.int64).tolist())
        rel -= set(np.asarray(seen.get(user, ()), dtype=np.int64).tolist())
        if rel:
            users.append(int(user))
            relevant_sets[int(user)] = rel
    users_arr = np.array(sorted(users), dtype=np.int64)
    keys = [f"recall_at_{k}" for k in ks] + [f"ndcg_at_{ndcg_k}"]
    if len(users_arr) == 0:
        return {**{key: 0.0 for key in keys}, "users_evaluated": 0}

    score_fn: Callable[[np.ndarray], np.ndarray]
    if callable(scores):
        score_fn = scores
    else:
        matrix = np.asarray(scores)
        score_fn = lambda positions: matrix[positions]  # noqa: E731

    depth = max(max(ks), ndcg_k)
    sums = {key: 0.0 for key in keys}
    for start in range(0, len(users_arr), chunk_size):
        chunk = users_arr[start : start + chunk_size]
        chunk_scores = np.asarray(score_fn(chunk))
        if chunk_scores.ndim != 2 or chunk_scores.shape[0] != len(chunk):
            raise ValueError(
                f"score function returned shape {chunk_scores.shape} for {len(chunk)} users; "
                "expected (users, items)"
            )
        for row, user in zip(chunk_scores, chunk):
            ranked = top_k_items(row, depth, exclude=seen.get(int(user))).tolist()
            rel = relevant_sets[int(user)]
            for k in ks:
                sums[f"recall_at_{k}"] += recall_at_k(ranked, rel, k)
            sums[f"ndcg_at_{ndcg_k}"] += ndcg_at_k(ranked, rel, ndcg_k)
    n = len(users_arr)
    return {**{key: value / n for key, value in sums.items()}, "users_evaluated": n}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC from ranks (Mann-Whitney U); tied scores share their average rank.

    Raises ValueError when ``labels`` hold only one class (AUC is undefined).
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    ranks = _average_ranks(scores)
    u_statistic = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties replaced by the mean rank of their group."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks_sorted = np.repeat(mean_rank, ends - starts)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in shape")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))
