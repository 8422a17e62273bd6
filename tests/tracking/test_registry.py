"""The champion gate against a real MLflow server (the embedded one the stack starts)."""

import json
import uuid

import pytest

from recsys.settings import replace
from recsys.tracking import registry, runs


def _log_fake_training(
    settings, tmp_path, recall: float, auc: float, airflow_run: str, feature_version: str = "fv1", popularity: float = 0.01
) -> str:
    """Log a run shaped like a training run (metrics + an artifacts folder with both model folders)."""
    out = tmp_path / airflow_run.replace("/", "_")
    for part in ("retrieval", "ranking"):
        (out / part).mkdir(parents=True)
        (out / part / "README").write_text(part)
    return runs.log_training_run(
        metrics={"recall_at_10": recall, "ndcg_at_10": recall / 2, "auc": auc, "popularity_recall_at_10": popularity},
        history={"retrieval": {"loss": [3.0, 2.0, 1.5]}, "ranking": {"auc": [0.6, 0.7, auc]}},
        params={"epochs": 3},
        artifacts_dir=out,
        tags={runs.TAG_AIRFLOW_RUN: airflow_run, runs.TAG_FEATURE_VERSION: feature_version, runs.TAG_DATA_VERSION: "dv1"},
        experiment=settings.experiment_name,
        tracking_uri=settings.mlflow_uri,
    )


@pytest.fixture()
def settings(stack_settings, request):
    # Fresh registered-model names per test, so tests don't see each other's champions.
    suffix = f"{request.node.name.replace('_', '-')[:40]}-{uuid.uuid4().hex[:6]}"
    return replace(
        stack_settings,
        retrieval_model_name=f"retrieval-{suffix}",
        ranking_model_name=f"ranking-{suffix}",
        experiment_name=f"exp-{suffix}",
    )


def test_run_logs_params_epoch_curves_metrics_and_artifacts(settings, tmp_path):
    run_id = _log_fake_training(settings, tmp_path, 0.2, 0.7, "recsys_train/manual_1")
    c = runs.client(settings.mlflow_uri)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3"
    assert run.data.metrics["recall_at_10"] == pytest.approx(0.2)
    curve = c.get_metric_history(run_id, "retrieval.loss")
    assert [m.value for m in sorted(curve, key=lambda m: m.step)] == [3.0, 2.0, 1.5]
    assert {a.path for a in c.list_artifacts(run_id)} >= {"retrieval", "ranking", "metrics.json"}
    assert runs.find_finished_run(c, settings.experiment_name, "recsys_train/manual_1") == run_id
    assert runs.find_finished_run(c, settings.experiment_name, "recsys_train/other") is None


def test_first_version_becomes_champion_then_only_a_better_one_replaces_it(settings, tmp_path):
    c = runs.client(settings.mlflow_uri)
    first = _log_fake_training(settings, tmp_path, 0.20, 0.70, "r/1")
    d1 = {d.model: d for d in registry.champion_gate(first, settings)}
    assert all(d.promoted for d in d1.values())
    assert d1[settings.retrieval_model_name].reason == "no champion yet"

    # Better ranking but worse retrieval: the run's models are served together, so neither is promoted.
    second = _log_fake_training(settings, tmp_path, 0.10, 0.80, "r/2")
    d2 = {d.model: d for d in registry.champion_gate(second, settings)}
    assert not d2[settings.retrieval_model_name].promoted and not d2[settings.ranking_model_name].promoted
    assert d2[settings.retrieval_model_name].champion_value == pytest.approx(0.20)
    assert "retrieval recall_at_10 0.1000 does not beat" in d2[settings.ranking_model_name].reason

    # Better retrieval, but a ranker clearly worse on the same window: rejected together too.
    third = _log_fake_training(settings, tmp_path, 0.30, 0.60, "r/3")
    d3 = {d.model: d for d in registry.champion_gate(third, settings)}
    assert not any(d.promoted for d in d3.values())
    assert "the ranker's auc 0.6000 is below" in d3[settings.retrieval_model_name].reason

    # Better retrieval and a ranker that holds: both promoted, from the same run.
    fourth = _log_fake_training(settings, tmp_path, 0.30, 0.698, "r/4")
    assert all(d.promoted for d in registry.champion_gate(fourth, settings))
    retrieval = c.get_model_version_by_alias(settings.retrieval_model_name, "champion")
    ranking = c.get_model_version_by_alias(settings.ranking_model_name, "champion")
    assert retrieval.run_id == ranking.run_id == fourth
    challenger = c.get_model_version_by_alias(settings.retrieval_model_name, "challenger")
    assert challenger.run_id == fourth
    rejected = c.search_model_versions(f"name = '{settings.retrieval_model_name}' and run_id = '{second}'")[0]
    assert rejected.tags["gate.decision"] == "rejected" and "does not beat" in rejected.tags["gate.reason"]
    gate_file = c.download_artifacts(second, f"gate/{settings.retrieval_model_name}.json", str(tmp_path))
    assert json.load(open(gate_file))["promoted"] is False

    champions = registry.champions(settings)
    assert champions[settings.ranking_model_name]["metrics"]["auc"] == pytest.approx(0.698)


def test_gating_the_same_run_twice_registers_no_duplicate(settings, tmp_path):
    c = runs.client(settings.mlflow_uri)
    run_id = _log_fake_training(settings, tmp_path, 0.3, 0.75, "r/1")
    registry.champion_gate(run_id, settings)
    again = registry.champion_gate(run_id, settings)
    assert not any(d.promoted for d in again)
    assert all(d.reason == "this version is already the champion" for d in again)
    versions = c.search_model_versions(f"name = '{settings.retrieval_model_name}'")
    assert len(versions) == 1


def test_across_feature_versions_the_lift_over_popularity_decides(settings, tmp_path):
    """New data (e.g. after drift) means another validation window: raw recall is not comparable, lift is."""
    first = _log_fake_training(settings, tmp_path, 0.30, 0.70, "r/1", feature_version="fv-old", popularity=0.20)
    registry.champion_gate(first, settings)
    # Lower raw recall on a harder window, but 2.5x popularity instead of 1.5x: the better model.
    second = _log_fake_training(settings, tmp_path, 0.25, 0.72, "r/2", feature_version="fv-new", popularity=0.10)
    decisions = {x.model: x for x in registry.champion_gate(second, settings)}
    d = decisions[settings.retrieval_model_name]
    assert d.promoted and decisions[settings.ranking_model_name].promoted  # the ranker's AUC (other window) does not veto
    assert "lift" in d.metric and d.value == pytest.approx(2.5) and d.champion_value == pytest.approx(1.5)
    # And the other way round: a higher raw recall that is a smaller lift is rejected.
    third = _log_fake_training(settings, tmp_path, 0.40, 0.73, "r/3", feature_version="fv-newer", popularity=0.20)
    d3 = {x.model: x for x in registry.champion_gate(third, settings)}[settings.retrieval_model_name]
    assert not d3.promoted and d3.value == pytest.approx(2.0)
