"""The champion gate's evidence: the champion's exports scored on this run's new validation rows."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from recsys.layout import RunExports  # noqa: E402
from recsys.training.pipeline import TrainParams, load_training_data  # noqa: E402
from recsys.training.rescoring import ChampionExports, fresh_validation, gate_metrics  # noqa: E402

PARAMS = TrainParams(epochs=2, patience=3, batch_size=256, embedding_dim=16, learning_rate=0.01, l2_reg=1e-6, dropout=0.0,
                     history_length=20, negatives_per_positive=4, refit=False, seed=5)


@pytest.fixture(scope="module")
def fitted(grown_data, tmp_path_factory):
    """Both models fitted on the new feature version, and exported the way a run exports them."""
    from recsys.training.ranking import export_ranking, fit_dlrm, ranking_frames
    from recsys.training.retrieval import export_retrieval, fit_two_tower, positives_of, user_histories

    data_root, _old, _new, features = grown_data
    data = load_training_data(features, PARAMS.seed)
    fv = data.fv
    retrieval = fit_two_tower(fv, positives_of(fv, data.train, fv.path, PARAMS), PARAMS, epochs=PARAMS.epochs,
                              protocol=data.protocol, users=user_histories(fv, data.train, data.users, PARAMS), items=data.items)
    train_rows, valid_rows = ranking_frames(fv, data.train, data.valid, data.items, PARAMS)
    ranking = fit_dlrm(fv, train_rows, PARAMS, epochs=PARAMS.epochs, valid_rows=valid_rows)
    out = tmp_path_factory.mktemp("exports") / "run"
    export_retrieval(retrieval.model, fv, data.items, RunExports(out))
    export_ranking(ranking.model, fv, valid_rows, RunExports(out), PARAMS)
    shutil.copytree(fv.path / "workflows", out / "workflows")
    return data, retrieval.model, ranking.model, out


def test_fresh_rows_are_the_validation_rows_the_champions_data_lacks(grown_data, fitted):
    data_root, old, new, _features = grown_data
    data = fitted[0]
    assert len(fresh_validation(data, old.path)) == len(data.valid) > 0  # the old data ends before the window
    assert len(fresh_validation(data, new.path)) == 0  # a champion of the same data has seen them all


def test_a_champion_scored_through_its_exports_matches_the_same_model_in_memory(grown_data, fitted):
    """Score this run's own (not refitted) exports as if they were the champion: the serving path (its
    workflows on the raw data, its embeddings by raw id, its history in its item codes) must give the
    numbers of the model in memory."""
    data_root, old, _new, _features = grown_data
    data, retrieval, ranking, out = fitted
    champion = ChampionExports(out, "run-x", {"r": "1"}, old.version, "another-feature-version")
    gate = gate_metrics(data, retrieval, PARAMS, ranking, PARAMS, champion, data_root)
    assert gate["gate_users"] > 20 and gate["gate_rows"] > 50
    for key in ("recall_at_10", "recall_at_50", "ndcg_at_10"):
        assert gate[f"gate_champion_{key}"] == pytest.approx(gate[f"gate_{key}"], abs=2e-3), key
    assert gate["gate_champion_auc"] == pytest.approx(gate["gate_auc"], abs=1e-3)
    assert gate["gate_champion_unknown_items"] == 0
    assert 0 < gate["gate_popularity_recall_at_10"] < 1


def test_the_champion_cannot_retrieve_items_newer_than_itself(grown_data, fitted):
    import pandas as pd

    data_root, old, _new, _features = grown_data
    data, retrieval, ranking, out = fitted
    # Drop a popular item from the "champion's" embeddings: it then never appears in its lists.
    table = pd.read_parquet(out / "retrieval" / "item_embeddings.parquet")
    trimmed = out.parent / "trimmed"
    shutil.copytree(out, trimmed)
    popular = data.valid["item_id"].value_counts().index[0]
    raw = table.loc[table["item_id"] == popular, "item_id_raw"].iloc[0]
    table[table["item_id_raw"] != raw].to_parquet(trimmed / "retrieval" / "item_embeddings.parquet", index=False)
    gate = gate_metrics(data, retrieval, PARAMS, ranking, PARAMS, ChampionExports(trimmed, "r", {}, old.version, "x"), data_root)
    assert gate["gate_champion_unknown_items"] == 1
    assert gate["gate_champion_recall_at_50"] < gate["gate_recall_at_50"]
    assert np.isfinite(gate["gate_champion_ndcg_at_10"])
