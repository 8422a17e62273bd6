"""The scoring stage's rule: how the ranker's scores and retrieval's order make one order of the candidates.

``ranker_weight`` is chosen by each training run on its validation rows (``pipeline_ranker_weight``, the
best of a few blends) and frozen in ``pipeline.json`` at publish time; the training run's two-stage metric
and the served model order candidates with this one function, so what was measured is what serves.

* 1 (the default when a run has no measurement): the ranker's scores, as they are;
* 0: retrieval's order (the ranker is not used);
* in between: a weighted mean of both orders' normalized ranks (1 for the first of ``n`` candidates,
  1/n for the last). Ranks rather than raw scores: a refitted model's scores are on another scale than the
  validated one's, its order is not.

Pure numpy: training (both runtimes' numpy) and the Triton model import it.
"""

from __future__ import annotations

import numpy as np


def fuse(ranker: np.ndarray, ranker_weight: float) -> np.ndarray:
    """Scores ordering each row's candidates; ``ranker``: (requests, candidates) in retrieval order, NaN where
    there is no candidate (those get -inf)."""
    ranker = np.asarray(ranker, dtype=np.float64)
    missing = np.isnan(ranker)
    if ranker_weight >= 1.0:
        return np.where(missing, -np.inf, ranker)
    n = ranker.shape[1]
    order = np.argsort(np.where(missing, np.inf, -ranker), axis=1, kind="stable")
    ranker_rank = np.empty_like(order)
    np.put_along_axis(ranker_rank, order, np.broadcast_to(np.arange(n), ranker.shape).copy(), axis=1)
    retrieval_rank = np.arange(n)[None, :]
    fused = ranker_weight * (1.0 - ranker_rank / n) + (1.0 - ranker_weight) * (1.0 - retrieval_rank / n)
    return np.where(missing, -np.inf, fused)
