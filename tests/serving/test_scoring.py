"""The scoring stage's fusion of the ranker's scores with retrieval's order (pure numpy)."""

import numpy as np

from recsys.serving.scoring import fuse


def _order(scores):
    return np.argsort(-scores, kind="stable").tolist()


def test_weight_one_is_the_ranker_and_zero_is_retrieval():
    ranker = np.array([[0.1, 0.9, 0.5, np.nan]])
    assert _order(fuse(ranker, 1.0)[0]) == [1, 2, 0, 3] and fuse(ranker, 1.0)[0, 3] == -np.inf
    assert _order(fuse(ranker, 0.0)[0]) == [0, 1, 2, 3] and fuse(ranker, 0.0)[0, 3] == -np.inf


def test_a_blend_weighs_both_orders_by_rank_not_by_raw_score():
    ranker = np.array([[0.10, 0.11, 0.99, 0.12]])  # the ranker's favourite is retrieval's third
    half = fuse(ranker, 0.5)[0]
    # candidate 2: ranker rank 0, retrieval rank 2 -> 0.5*(1) + 0.5*(1 - 2/4) = 0.75; candidate 0: 0.5*(1-3/4) + 0.5 = 0.625
    assert half[2] == 0.75 and half[0] == 0.625 and _order(half)[0] == 2
    # the same ranks with scores of another scale give the same fused scores
    np.testing.assert_allclose(fuse(ranker * 1000 - 3, 0.5), half[None, :])
