"""Metrics on tiny hand-computed cases (the expected numbers are worked out in the comments)."""

import math

import numpy as np
import pytest

from recsys.training.metrics import (
    auc,
    evaluate_top_k,
    logloss,
    ndcg_at_k,
    recall_at_k,
    top_k_items,
)


def test_recall_at_k_counts_hits_over_relevant():
    # ranked [3, 1, 4, 0], relevant {1, 0, 9}: top-2 holds 1 -> 1/3; top-4 holds 1 and 0 -> 2/3
    assert recall_at_k([3, 1, 4, 0], {1, 0, 9}, 2) == pytest.approx(1 / 3)
    assert recall_at_k([3, 1, 4, 0], {1, 0, 9}, 4) == pytest.approx(2 / 3)


def test_recall_and_ndcg_of_empty_relevance_are_zero():
    assert recall_at_k([1, 2], set(), 2) == 0.0
    assert ndcg_at_k([1, 2], set(), 2) == 0.0


def test_ndcg_binary_with_ideal_over_min_k_relevant():
    # ranked [5, 7, 8], relevant {7, 8, 1, 2}, k=3:
    # DCG = 0/log2(2) + 1/log2(3) + 1/log2(4) = 0.63093 + 0.5 = 1.13093
    # ideal has min(3, 4) = 3 hits: 1 + 0.63093 + 0.5 = 2.13093 -> 0.53072
    expected = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert ndcg_at_k([5, 7, 8], {7, 8, 1, 2}, 3) == pytest.approx(expected)
    # one relevant item at rank 1 is perfect
    assert ndcg_at_k([7, 5], {7}, 10) == pytest.approx(1.0)
    # one relevant item at rank 2: 1/log2(3) / 1 = 0.63093
    assert ndcg_at_k([5, 7], {7}, 10) == pytest.approx(1 / math.log2(3))


def test_top_k_breaks_ties_by_lower_position_and_excludes():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1])
    # order by score desc, ties by position: 1, 3, 0, 2, 4
    assert top_k_items(scores, 3).tolist() == [1, 3, 0]
    # excluding 1 and 0: 3, 2, 4
    assert top_k_items(scores, 3, exclude=np.array([1, 0])).tolist() == [3, 2, 4]
    # k larger than the catalogue returns every allowed item
    assert top_k_items(scores, 50, exclude=np.array([4])).tolist() == [1, 3, 0, 2]


def test_evaluate_top_k_excludes_seen_and_skips_users_without_positives():
    # 3 users x 5 items.
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # user 0 ranks 0,1,2,3,4; saw item 0 -> ranking 1,2,3,4
            [0.1, 0.2, 0.3, 0.4, 0.5],  # user 1 ranks 4,3,2,1,0
            [0.5, 0.5, 0.5, 0.5, 0.5],  # user 2: no validation positive, skipped
        ]
    )
    seen = {0: np.array([0]), 1: np.array([], dtype=int)}
    # user 0: relevant {0, 2}; 0 was seen in training so only {2} counts.
    # user 1: relevant {0}.
    relevant = {0: np.array([0, 2]), 1: np.array([0]), 2: np.array([], dtype=int)}
    result = evaluate_top_k(scores, seen, relevant, ks=(1, 2, 10), ndcg_k=2, chunk_size=1)
    # user 0 ranking 1,2,3,4: recall@1 0, recall@2 1, recall@10 1; ndcg@2 = (1/log2 3)/1
    # user 1 ranking 4,3,2,1,0: recall@1 0, @2 0, @10 (k > catalogue) 1; ndcg@2 = 0
    assert result["users_evaluated"] == 2
    assert result["recall_at_1"] == pytest.approx(0.0)
    assert result["recall_at_2"] == pytest.approx(0.5)
    assert result["recall_at_10"] == pytest.approx(1.0)
    assert result["ndcg_at_2"] == pytest.approx((1 / math.log2(3)) / 2)


def test_evaluate_top_k_callable_matches_matrix():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 20))
    seen = {u: rng.choice(20, 3, replace=False) for u in range(7)}
    relevant = {u: rng.choice(20, 4, replace=False) for u in range(7)}
    calls = []

    def score_fn(users):
        calls.append(len(users))
        return scores[users]

    from_matrix = evaluate_top_k(scores, seen, relevant, ks=(5,), ndcg_k=5)
    from_callable = evaluate_top_k(score_fn, seen, relevant, ks=(5,), ndcg_k=5, chunk_size=3)
    assert from_matrix == pytest.approx(from_callable)
    assert max(calls) <= 3  # chunked


def test_evaluate_top_k_with_no_evaluable_users():
    result = evaluate_top_k(np.zeros((1, 3)), {0: np.array([1])}, {0: np.array([1])}, ks=(10,))
    assert result == {"recall_at_10": 0.0, "ndcg_at_10": 0.0, "users_evaluated": 0}


def test_auc_hand_computed_with_ties():
    # labels 1,0,1,0 with scores 0.8,0.8,0.3,0.1.
    # Pairs (pos, neg): (0.8 vs 0.8) tie = 0.5, (0.8 vs 0.1) = 1, (0.3 vs 0.8) = 0, (0.3 vs 0.1) = 1
    # AUC = 2.5 / 4 = 0.625
    assert auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.8, 0.3, 0.1])) == pytest.approx(0.625)
    # perfect and inverted separations
    assert auc(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.3])) == pytest.approx(1.0)
    assert auc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3])) == pytest.approx(0.0)
    # all scores equal: every pair is a tie -> 0.5
    assert auc(np.array([1, 0, 0, 1]), np.full(4, 0.3)) == pytest.approx(0.5)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        auc(np.array([1, 1]), np.array([0.2, 0.4]))


def test_logloss_hand_computed_and_clipped():
    # -(log 0.9 + log(1 - 0.2)) / 2 = (0.10536 + 0.22314) / 2 = 0.16425
    assert logloss(np.array([1, 0]), np.array([0.9, 0.2])) == pytest.approx(
        -(math.log(0.9) + math.log(0.8)) / 2
    )
    # a confident mistake is clipped to eps=1e-7 instead of inf: -log(1e-7) = 16.118
    assert logloss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))
