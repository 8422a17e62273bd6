"""The top-k evaluation protocol, built once from a feature version and shared by every model.

The two-tower model, the two-stage pipeline (retrieval candidates ordered by the ranker) and the
popularity baseline are scored by the same :class:`TopKProtocol` (same catalogue, same users, same
excluded items), so their numbers are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from recsys.training.metrics import DEFAULT_KS, evaluate_top_k


@dataclass
class TopKProtocol:
    """Catalogue order, evaluated users and their seen / relevant item positions."""

    item_ids: np.ndarray
    """Encoded item ids; position ``j`` of a score row is item ``item_ids[j]``."""
    user_ids: np.ndarray
    """Encoded ids of the users to evaluate; row ``i`` of a score matrix is user ``user_ids[i]``."""
    seen: dict[int, np.ndarray]
    """User row -> item positions the user interacted with in training (excluded from ranking)."""
    relevant: dict[int, np.ndarray]
    """User row -> item positions of the user's validation positives."""

    def sample(self, users: int, seed: int = 0) -> "TopKProtocol":
        """The same protocol over at most ``users`` of its users (seeded), rows renumbered 0..n-1."""
        if len(self.user_ids) <= users:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.user_ids), users, replace=False))
        renumber = {int(old): new for new, old in enumerate(keep)}
        return TopKProtocol(
            item_ids=self.item_ids,
            user_ids=self.user_ids[keep],
            seen={renumber[u]: v for u, v in self.seen.items() if u in renumber},
            relevant={renumber[u]: v for u, v in self.relevant.items() if u in renumber},
        )

    def evaluate(
        self,
        scores: Callable[[np.ndarray], np.ndarray] | np.ndarray,
        ks: Sequence[int] = DEFAULT_KS,
        chunk_size: int = 1024,
    ) -> dict[str, float]:
        """Run :func:`recsys.training.metrics.evaluate_top_k` on this protocol."""
        return evaluate_top_k(scores, self.seen, self.relevant, ks=ks, ndcg_k=10, chunk_size=chunk_size)


def build_protocol(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    item_ids: np.ndarray,
    user_col: str,
    item_col: str,
    target: str,
) -> TopKProtocol:
    """Protocol from the training and validation interactions.

    Seen = every training row of the user (shown items too, when labels exist); relevant = the
    user's validation rows with ``target == 1``. Only users with a validation positive are kept.
    Items not in ``item_ids`` (the catalogue) are ignored.
    """
    position = pd.Series(np.arange(len(item_ids)), index=pd.Index(np.asarray(item_ids)))
    positives = valid[valid[target] == 1]
    positives = positives[positives[item_col].isin(position.index)]
    user_ids = np.sort(positives[user_col].unique())
    row_of_user = pd.Series(np.arange(len(user_ids)), index=user_ids)

    def grouped(frame: pd.DataFrame) -> dict[int, np.ndarray]:
        frame = frame[frame[user_col].isin(row_of_user.index) & frame[item_col].isin(position.index)]
        rows = row_of_user.loc[frame[user_col].values].values
        items = position.loc[frame[item_col].values].values
        out: dict[int, np.ndarray] = {}
        if len(rows) == 0:
            return out
        order = np.argsort(rows, kind="stable")
        rows, items = rows[order], items[order]
        bounds = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1], True])
        for start, end in zip(bounds[:-1], bounds[1:]):
            out[int(rows[start])] = np.unique(items[start:end])
        return out

    return TopKProtocol(
        item_ids=np.asarray(item_ids),
        user_ids=user_ids,
        seen=grouped(train),
        relevant=grouped(positives),
    )


@dataclass
class TwoStage:
    """Every evaluated user's candidates (retrieval's best, seen items excluded) and both stages' scores.

    ``candidates[i]``: item positions in retrieval order, ``-1`` where the catalogue ran out;
    ``ranker[i]``: the ranker's score of each candidate (NaN for ``-1``).
    """

    candidates: np.ndarray
    ranker: np.ndarray

    def scores(self, ranker_weight: float) -> Callable[[np.ndarray], np.ndarray]:
        """A score source for :meth:`TopKProtocol.evaluate`: the candidates ordered as serving's scoring stage
        orders them (:func:`recsys.serving.scoring.fuse`), every other item -inf."""
        from recsys.serving.scoring import fuse

        def scores(rows: np.ndarray) -> np.ndarray:
            cand, rank = self.candidates[rows], self.ranker[rows]
            fused = fuse(rank, ranker_weight)
            out = np.full((len(rows), self.n_items), -np.inf)
            owner, slot = np.nonzero(cand >= 0)
            out[owner, cand[owner, slot]] = fused[owner, slot]
            return out

        return scores

    n_items: int = 0


def best_unseen(scores: np.ndarray, excluded: Sequence[Optional[np.ndarray]], k: int) -> np.ndarray:
    """Each row's ``k`` best positions of ``scores`` (best first) once ``excluded[i]`` (positions, or None) are
    ruled out, ``-1`` where fewer than ``k`` are left. ``scores`` is overwritten (excluded set to -inf)."""
    for i, positions in enumerate(excluded):
        if positions is not None and len(positions):
            scores[i, positions] = -np.inf
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable"), axis=1)
    return np.where(np.isfinite(np.take_along_axis(scores, top, axis=1)), top, -1)


def two_stage(
    retrieval_scores: Callable[[np.ndarray], np.ndarray],
    rank: Callable[[np.ndarray, np.ndarray], np.ndarray],
    seen: dict[int, np.ndarray],
    user_rows: np.ndarray,
    candidates: int,
    chunk_size: int = 256,
) -> TwoStage:
    """Serving's first three stages for ``user_rows``: retrieval's ``candidates`` best items among those not
    ``seen`` (``retrieval_scores(rows)`` -> a (rows, items) matrix), then ``rank(user_rows, item_positions)``
    (aligned 1-d arrays -> scores) on every candidate."""
    all_candidates, all_scores, n_items = [], [], 0
    for start in range(0, len(user_rows), chunk_size):
        rows = np.asarray(user_rows[start:start + chunk_size])
        first = np.array(retrieval_scores(rows), dtype=np.float64)
        n_items = first.shape[1]
        top = best_unseen(first, [seen.get(int(row)) for row in rows], candidates)
        scores = np.full(top.shape, np.nan)
        owner, slot = np.nonzero(top >= 0)
        if len(owner):
            scores[owner, slot] = np.asarray(rank(rows[owner], top[owner, slot]), dtype=np.float64).ravel()
        all_candidates.append(top)
        all_scores.append(scores)
    return TwoStage(np.concatenate(all_candidates), np.concatenate(all_scores), n_items)
