"""Hyperparameter search: trials reported one by one, per-model parameters chosen, recorded on the run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("optuna")

from recsys.training.pipeline import TrainParams, train_models  # noqa: E402

BASE = TrainParams(epochs=2, patience=3, batch_size=256, embedding_dim=16, learning_rate=0.01, l2_reg=1e-6, dropout=0.1,
                   history_length=20, negatives_per_positive=4, refit=False, seed=3)


def test_search_reports_every_trial_and_records_the_chosen_parameters(feature_dir, tmp_path):
    trials = []
    result = train_models(feature_dir, tmp_path / "run", BASE, tune_trials=3, tune_timeout_seconds=600,
                          on_trial=trials.append)
    assert [t["number"] for t in trials] == [0, 1, 2]
    # the first trial is the settings' values, so tuning can only do better than training without it
    assert trials[0]["params"]["retrieval"]["learning_rate"] == BASE.learning_rate
    complete = [t for t in trials if t["state"] == "complete"]
    assert complete and all({"recall_at_10", "auc"} <= set(t["metrics"]) for t in complete)
    best_retrieval = max(complete, key=lambda t: t["metrics"]["recall_at_10"])
    best_ranking = max(complete, key=lambda t: t["metrics"]["auc"])
    assert result.tuning["chosen"] == {"retrieval": best_retrieval["params"]["retrieval"],
                                       "ranking": best_ranking["params"]["ranking"]}
    assert result.tuning["trials"] == 3 and result.tuning["completed"] == len(complete)
    # the chosen per-model values are the run's parameters, in metrics.json too
    for model in ("retrieval", "ranking"):
        for name, value in result.tuning["chosen"][model].items():
            assert result.params[f"{model}.{name}"] == value
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["tuning"]["chosen"] == result.tuning["chosen"]
