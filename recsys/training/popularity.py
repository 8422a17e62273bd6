"""The popularity baseline: recommend the items with the most training positives to everyone.

Scored with the same :class:`~recsys.training.evaluation.TopKProtocol` as the two-tower model,
so a model that does not beat it has learned nothing useful.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.training.evaluation import TopKProtocol


def popularity_scores(train: pd.DataFrame, item_ids: np.ndarray, item_col: str, target: str) -> np.ndarray:
    """Count of training positives per item, in the order of ``item_ids`` (0 for unseen items)."""
    counts = train.loc[train[target] == 1, item_col].value_counts()
    return counts.reindex(np.asarray(item_ids), fill_value=0).to_numpy(dtype=np.float64)


def evaluate_popularity(
    protocol: TopKProtocol, train: pd.DataFrame, item_col: str, target: str
) -> dict[str, float]:
    """Baseline metrics, keys prefixed ``popularity_`` (e.g. ``popularity_recall_at_10``)."""
    scores = popularity_scores(train, protocol.item_ids, item_col, target)
    result = protocol.evaluate(lambda users: np.broadcast_to(scores, (len(users), len(scores))))
    return {f"popularity_{key}": value for key, value in result.items() if key != "users_evaluated"}
