"""The scoring stage's rule: how the ranker's scores and retrieval's order make one order of the candidates.

``ranker_weight`` is chosen by each training run on its validation rows (``pipeline_ranker_weight``, the
best of a few blends) and frozen in ``pipeline.json`` at publish time; the training run's two-stage metric
and the served model order candidates with this one function, so what was measured is what serves.

    score = w * ranker probability + (1 - w) * (1 - retrieval rank / candidates)

* ``w`` = 1 (the default when a run has no measurement): the ranker's probability, as it is;
* ``w`` = 0: retrieval's order (the ranker is not used);
* in between, a blend of two numbers in [0, 1]. Each candidate's score depends on itself only (its own
  probability, its own place in retrieval's list), so filtering a candidate out (seen, excluded,
  unavailable) never reorders the others.

Pure numpy: training (both runtimes' numpy) and the Triton model import it.
"""

from __future__ import annotations

import numpy as np


def fuse(ranker: np.ndarray, ranker_weight: float) -> np.ndarray:
    """Scores ordering each row's candidates; ``ranker``: (requests, candidates) probabilities, columns in
    retrieval order, NaN where there is no candidate (those get -inf)."""
    ranker = np.asarray(ranker, dtype=np.float64)
    missing = np.isnan(ranker)
    if ranker_weight >= 1.0:
        return np.where(missing, -np.inf, ranker)
    retrieval = 1.0 - np.arange(ranker.shape[1]) / ranker.shape[1]
    fused = ranker_weight * ranker + (1.0 - ranker_weight) * retrieval[None, :]
    return np.where(missing, -np.inf, fused)
