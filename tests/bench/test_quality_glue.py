"""The glue of bench/quality.py that its figures rest on: the per-user holdout, EASE's closed form as
computed there (through the users x users inverse), and scoring top-10 lists with the training
metrics' definitions. (The benchmark itself, end to end, is `bench/quality.py --quick`.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

_PATH = Path(__file__).resolve().parents[2] / "bench" / "quality.py"
_spec = importlib.util.spec_from_file_location("bench_quality", _PATH)
quality = importlib.util.module_from_spec(_spec)
sys.modules["bench_quality"] = quality  # dataclasses look their module up there
_spec.loader.exec_module(quality)


def test_per_user_holdout_takes_a_rounded_quarter_of_each_user_and_is_seeded():
    users = np.repeat(np.arange(4), [20, 18, 6, 1])  # 25%: 5, 4.5 -> 5 (half up), 1.5 -> 2, 0.25 -> 0
    held = quality.per_user_holdout(users, 0.25, np.random.default_rng(7))
    assert [int(held[users == u].sum()) for u in range(4)] == [5, 5, 2, 0]
    again = quality.per_user_holdout(users, 0.25, np.random.default_rng(7))
    other = quality.per_user_holdout(users, 0.25, np.random.default_rng(8))
    assert (held == again).all() and (held != other).any()


def _primal_ease(x: np.ndarray, lam: float) -> np.ndarray:
    """EASE as written in the paper: B = I - P / diag(P), P = (X^T X + lam I)^-1, diag(B) = 0; scores X B."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return x @ b


@pytest.mark.parametrize("n_users, n_items", [(12, 40), (40, 12)])  # fewer users than items: the dual path
def test_ease_scores_equal_the_papers_closed_form(n_users, n_items):
    rng = np.random.default_rng(0)
    x = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    for lam in (0.5, 10.0):
        got = quality.ease_scores(sp.csr_matrix(x), lam)
        np.testing.assert_allclose(got, _primal_ease(x.astype(np.float64), lam), rtol=1e-7, atol=1e-9)


def test_scored_lists_exclude_training_items_and_count_coverage():
    fit = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    split = quality.Split(fit, {0: {1, 2}, 1: {3}})
    scores = np.array([[9.0, 1.0, 2.0, 0.0], [0.0, 9.0, 1.0, 2.0]])
    lists = quality.rank_unseen(scores, split, k=2)
    assert lists == {0: [2, 1], 1: [3, 2]}  # item 0 / item 1 were seen in training
    metrics = quality.evaluate_lists(lists, split.relevant, n_items=4, k=2)
    assert metrics["recall_at_2"] == 1.0 and metrics["coverage"] == 0.75  # items 1, 2, 3 of 4 shown
    with pytest.raises(ValueError, match="1 test users have no recommendations"):
        quality.evaluate_lists({0: [2, 1]}, split.relevant, n_items=4, k=2)
