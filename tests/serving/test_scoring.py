"""The scoring stage's fusion of the ranker's scores with retrieval's order (pure numpy)."""

import numpy as np

from recsys.serving.scoring import fuse


def _order(scores):
    return np.argsort(-scores, kind="stable").tolist()


def test_weight_one_is_the_ranker_and_zero_is_retrieval():
    ranker = np.array([[0.1, 0.9, 0.5, np.nan]])
    assert _order(fuse(ranker, 1.0)[0]) == [1, 2, 0, 3] and fuse(ranker, 1.0)[0, 3] == -np.inf
    assert _order(fuse(ranker, 0.0)[0]) == [0, 1, 2, 3] and fuse(ranker, 0.0)[0, 3] == -np.inf


def test_a_blend_weighs_the_probability_and_the_retrieval_place():
    ranker = np.array([[0.10, 0.11, 0.99, 0.12]])  # the ranker's favourite is retrieval's third
    half = fuse(ranker, 0.5)[0]
    np.testing.assert_allclose(half, [0.5 * 0.10 + 0.5, 0.5 * 0.11 + 0.375, 0.5 * 0.99 + 0.25, 0.5 * 0.12 + 0.125])
    assert _order(half) == [2, 0, 1, 3]


def test_filtering_a_candidate_out_never_reorders_the_others():
    rng = np.random.default_rng(0)
    ranker = rng.random((1, 50))
    before = _order(fuse(ranker, 0.4)[0])
    filtered = ranker.copy()
    filtered[0, before[0]] = np.nan  # the best one, filtered
    assert _order(fuse(filtered, 0.4)[0])[:-1] == before[1:]
