"""End to end on the structured fixture: train both models once, then check metrics and exports."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.settings import PROJECT_ROOT
from recsys.layout import FeatureVersion, FeatureVersionError
from recsys.training.pipeline import METRIC_KEYS, TrainParams, train_models

PARAMS = TrainParams(epochs=2, batch_size=256, embedding_dim=16, learning_rate=0.01, negatives_per_positive=4, seed=42,
                     patience=3, l2_reg=1e-6, dropout=0.1, history_length=20, refit=True)


@pytest.fixture(scope="module")
def run(feature_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run1"
    return train_models(feature_dir, out, PARAMS), out


def test_run_folder_layout_and_no_temporary_leftovers(run, feature_dir):
    result, out = run
    for relative in ("retrieval/query_tower", "retrieval/item_embeddings.parquet", "ranking/dlrm",
                     "workflows/user", "workflows/item", "metrics.json"):
        assert (out / relative).exists(), relative
    assert [p.name for p in out.parent.iterdir()] == ["run1"]  # the temporary sibling was renamed away
    assert result.paths["dlrm"] == out / "ranking" / "dlrm"
    assert result.device == "CPU"
    manifest = json.loads((feature_dir / "manifest.json").read_text())
    assert (result.feature_version, result.data_version) == (manifest["feature_version"], manifest["data_version"])


def test_metrics_json_holds_every_metric_and_the_history(run):
    result, out = run
    written = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(written["metrics"])
    assert all(isinstance(written["metrics"][k], float) for k in METRIC_KEYS)
    assert written["metrics"] == pytest.approx(result.metrics)
    # per-epoch series: whole-catalogue recall for retrieval, validation AUC for ranking
    assert len(written["history"]["retrieval"]["val_recall_at_10"]) == PARAMS.epochs
    assert len(written["history"]["ranking"]["val_auc"]) == PARAMS.epochs
    assert len(written["history"]["ranking"]["loss"]) == PARAMS.epochs
    assert written["samples_per_second"]["retrieval"] > 0 and written["samples_per_second"]["ranking"] > 0
    # the final retrieval metric is the best epoch's whole-catalogue value (its weights were kept)
    curve = written["history"]["retrieval"]["val_recall_at_10"]
    best = written["stopping"]["retrieval"]["best_epoch"]
    assert curve[best - 1] == pytest.approx(max(curve)) == pytest.approx(result.metrics["recall_at_10"])
    # where and why each model stopped, and the refit on training + validation for that many epochs
    for model in ("retrieval", "ranking"):
        info = written["stopping"][model]
        assert info["epochs_run"] == PARAMS.epochs and info["stop_reason"].startswith("reached the last epoch")
        assert info["refit_epochs"] == info["best_epoch"] >= 1
    # the train / validation gap of both models, and the served two-stage figure
    # (the gap is the model's own: without the popularity prior retrieval may add, recall_at_10's chosen weight)
    assert result.metrics["gap_recall_at_10"] == pytest.approx(result.metrics["train_recall_at_10"] - result.metrics["recall_at_10_no_prior"])
    assert result.metrics["retrieval_prior_weight"] in (0.0, 0.1, 0.25, 0.5, 1.0)
    assert result.metrics["recall_at_10"] >= result.metrics["recall_at_10_no_prior"]  # the weight 0 was among the tried
    assert result.metrics["gap_auc"] == pytest.approx(result.metrics["train_auc"] - result.metrics["auc"])
    assert 0 < result.metrics["pipeline_recall_at_10"] <= 1


def test_two_tower_beats_popularity(run, feature_dir):
    metrics = run[0].metrics
    assert metrics["recall_at_10"] > metrics["popularity_recall_at_10"]
    assert metrics["ndcg_at_10"] > metrics["popularity_ndcg_at_10"]
    # ... over every user it can be judged on: each user with a training positive and a validation positive
    # among items they did not have in training; the cold users (validation rows only) are left out
    fv = FeatureVersion.open(feature_dir)
    user, item, target = fv.user_id, fv.item_id, fv.target
    train, valid = (fv.frame(split, [user, item, target]) for split in ("train", "valid"))
    had = train.groupby(user)[item].agg(set)
    known = set(train.loc[train[target] == 1, user])
    new_positives = valid[(valid[target] == 1) & valid[user].isin(known)].groupby(user)[item].agg(set)
    judged = sum(bool(items - had.get(u, set())) for u, items in new_positives.items())
    cold = set(valid[user]) - set(train[user])
    assert len(cold) == 5 and 250 < judged <= 300  # the fixture: 300 warm users, 5 cold ones
    assert run[0].users_evaluated == judged


def test_ranking_auc_on_sampled_negatives(run):
    metrics = run[0].metrics
    assert metrics["auc"] > 0.6
    assert 0 < metrics["logloss"] < 0.69  # better than a coin


def test_query_tower_reloads_and_embeds_users(run, feature_dir):
    import tensorflow as tf

    from recsys.training.keras_utils import batched_call

    from recsys.training.retrieval import query_columns, user_histories

    _result, out = run
    fv = FeatureVersion.open(feature_dir)
    train = fv.frame("train", fv.user_columns + fv.item_columns + ["click", "timestamp"])
    users = user_histories(fv, train, fv.frame("users", fv.user_columns), PARAMS).head(7)
    assert "history" in query_columns(fv, PARAMS) and max(len(h) for h in users["history"]) > 0
    signature = tf.saved_model.load(str(out / "retrieval" / "query_tower")).signatures["serving_default"]
    assert {"history__values", "history__offsets"} <= set(signature.structured_input_signature[1])
    vectors = batched_call(lambda inputs: signature(**inputs), users, query_columns(fv, PARAMS))
    prior_slot = _result.metrics["retrieval_prior_weight"] > 0  # a constant 1 the items' popularity prior meets
    assert vectors.shape == (7, PARAMS.embedding_dim + prior_slot)
    assert np.isfinite(vectors).all()
    # the history is an input: another history gives another query
    other = users.assign(history=[h[:1] for h in users["history"]])
    assert not np.allclose(batched_call(lambda inputs: signature(**inputs), other, query_columns(fv, PARAMS)), vectors)


def test_item_embeddings_cover_every_item_with_raw_ids(run, feature_dir):
    _result, out = run
    table = pd.read_parquet(out / "retrieval" / "item_embeddings.parquet")
    fv = FeatureVersion.open(feature_dir)
    items = fv.frame("items", fv.item_columns)
    assert list(table.columns) == ["item_id", "item_id_raw", "embedding"]
    assert len(table) == len(items)
    assert table.item_id_raw.is_unique
    id_map = fv.item_id_map().set_index("item_id_raw")["item_id"]
    assert (id_map.loc[table.item_id_raw].to_numpy() == table.item_id.to_numpy()).all()
    assert {len(v) for v in table.embedding} == {PARAMS.embedding_dim + (_result.metrics["retrieval_prior_weight"] > 0)}


def test_dlrm_reloads_with_the_same_predictions(run, feature_dir):
    import tensorflow as tf

    from recsys.training.keras_utils import batched_call

    from recsys.training.ranking import ranker_columns

    _result, out = run
    fv = FeatureVersion.open(feature_dir)
    columns = ranker_columns(fv, PARAMS)
    batch = fv.frame("valid", fv.user_columns + fv.item_columns).head(64)
    batch["history"] = [np.array([5, 6, 7][: i % 4], dtype=np.int64) for i in range(len(batch))]
    reloaded = tf.keras.models.load_model(str(out / "ranking" / "dlrm"))
    served = batched_call(lambda inputs: reloaded.signatures["serving_default"](**inputs), batch, columns).ravel()
    again = batched_call(reloaded, batch, columns).ravel()
    assert served.shape == (64,)
    assert ((served > 0) & (served < 1)).all()
    np.testing.assert_allclose(served, again, atol=1e-6)


def test_existing_run_folder_is_never_overwritten(run, feature_dir):
    _result, out = run
    with pytest.raises(FileExistsError):
        train_models(feature_dir, out, PARAMS)


def test_bad_feature_folder_names_the_problem_and_writes_nothing(tmp_path):
    (tmp_path / "fv").mkdir()
    (tmp_path / "fv" / "manifest.json").write_text(json.dumps({"feature_version": "x"}))
    with pytest.raises(FeatureVersionError, match="manifest.json: key 'data_version' missing"):
        train_models(tmp_path / "fv", tmp_path / "out", PARAMS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fv"]


def test_cli_from_the_control_plane_reexecs_in_merlin_and_trains_on_labels(labelled_feature_dir, tmp_path):
    """`recsys train` typed in the control-plane environment runs in the Merlin runtime."""
    control_python = PROJECT_ROOT / ".envs" / "control" / "bin" / "python"
    if not control_python.exists():
        pytest.skip("control-plane environment not built")
    out = tmp_path / "cli_run"
    # The Merlin interpreter the control plane re-executes with (RECSYS_MERLIN_PYTHON): this runtime's own,
    # behind a wrapper that records each call, so the re-execution shows.
    calls, merlin = tmp_path / "merlin-calls.txt", tmp_path / "merlin-python"
    merlin.write_text(f'#!/bin/sh\necho "$RECSYS_IN_MERLIN_RUNTIME $*" >> {shlex.quote(str(calls))}\n'
                      f'exec {shlex.quote(sys.executable)} "$@"\n')
    merlin.chmod(0o755)
    env = {**os.environ, "RECSYS_HOME": str(tmp_path / "home"), "RECSYS_MERLIN_PYTHON": str(merlin)}
    env.pop("RECSYS_IN_MERLIN_RUNTIME", None)
    proc = subprocess.run(
        [str(control_python), "-m", "recsys.cli", "train", "--features", str(labelled_feature_dir),
         "--out", str(out), "--epochs", "5", "--batch-size", "256", "--embedding-dim", "16",
         "--learning-rate", "0.01"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "popularity" in proc.stdout and "recall_at_10" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["epochs"] == 5
    assert "train vs validation: DLRM auc" in proc.stdout and "retrieval: " in proc.stdout
    assert metrics["metrics"]["auc"] > 0.6  # real shown-but-ignored labels, no sampled negatives
    # the control plane ran the very same command once in the Merlin interpreter, marked as re-executed
    (call,) = calls.read_text().splitlines()
    assert call.startswith(f"1 -m recsys.cli train --features {labelled_feature_dir} --out {out} --epochs 5 "), call
