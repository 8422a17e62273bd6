"""The champion gate against a real MLflow server (the embedded one the stack starts)."""

import json
import uuid

import pytest

from recsys.settings import replace
from recsys.tracking import registry, runs
from shared_helpers import fake_exports, log_training


def _log_fake_training(
    settings, tmp_path, recall: float, auc: float, airflow_run: str, feature_version: str = "fv1", popularity: float = 0.01
) -> str:
    """Log a run shaped like a training run (metrics + an artifacts folder with both model folders); not gated."""
    return log_training(
        settings,
        {"recall_at_10": recall, "pipeline_recall_at_10": recall, "ndcg_at_10": recall / 2, "auc": auc,
         "popularity_recall_at_10": popularity},
        history={"retrieval": {"loss": [3.0, 2.0, 1.5]}, "ranking": {"auc": [0.6, 0.7, auc]}},
        params={"epochs": 3},
        artifacts_dir=fake_exports(tmp_path / airflow_run.replace("/", "_")),
        tags={runs.TAG_AIRFLOW_RUN: airflow_run},
        feature_version=feature_version,
        data_version="dv1",
        gate=False,
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


def test_tuning_trials_are_child_runs_of_the_training_run(settings):
    c = runs.client(settings.mlflow_uri)
    parent = runs.start_training_run(tags={runs.TAG_AIRFLOW_RUN: "recsys_train/tuned"}, experiment=settings.experiment_name,
                                     tracking_uri=settings.mlflow_uri)
    trial = {"number": 4, "state": "pruned", "reason": "pruned at epoch 3", "seconds": 12.5, "epochs": {"retrieval": 2},
             "params": {"retrieval": {"learning_rate": 0.003}, "ranking": {"dropout": 0.2}},
             "metrics": {"recall_at_10": 0.21}}
    child = c.get_run(runs.log_trial(parent, trial, tracking_uri=settings.mlflow_uri))
    assert child.data.tags["mlflow.parentRunId"] == parent and child.data.tags["recsys.trial_state"] == "pruned"
    assert child.data.params == {"retrieval.learning_rate": "0.003", "ranking.dropout": "0.2"}
    assert child.data.metrics["recall_at_10"] == pytest.approx(0.21) and child.data.metrics["retrieval.best_epoch"] == 2
    assert child.info.status == "KILLED" and c.get_run(parent).info.status == "RUNNING"
    # a retry of the same Airflow run marks the dead try's RUNNING run FAILED before starting its own
    again = runs.start_training_run(tags={runs.TAG_AIRFLOW_RUN: "recsys_train/tuned"}, experiment=settings.experiment_name,
                                    tracking_uri=settings.mlflow_uri)
    assert c.get_run(parent).info.status == "FAILED" and c.get_run(again).info.status == "RUNNING"


def test_first_version_becomes_champion_then_only_a_better_one_replaces_it(settings, tmp_path):
    c = runs.client(settings.mlflow_uri)
    first = _log_fake_training(settings, tmp_path, 0.20, 0.70, "r/1")
    d1 = {d.model: d for d in registry.champion_gate(first, settings)}
    assert all(d.promoted for d in d1.values())
    assert d1[settings.retrieval_model_name].reason == "no champion yet; above popularity (0.2000 vs 0.0100)"
    assert d1[settings.retrieval_model_name].metric == "pipeline_recall_at_10"  # the served pipeline decides

    # Better ranking but worse retrieval: the run's models are served together, so neither is promoted.
    second = _log_fake_training(settings, tmp_path, 0.10, 0.80, "r/2")
    d2 = {d.model: d for d in registry.champion_gate(second, settings)}
    assert not d2[settings.retrieval_model_name].promoted and not d2[settings.ranking_model_name].promoted
    assert d2[settings.retrieval_model_name].champion_value == pytest.approx(0.20)
    assert "pipeline_recall_at_10 0.1000 does not beat" in d2[settings.ranking_model_name].reason

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


def test_a_run_below_popularity_is_never_promoted_not_even_the_first(settings, tmp_path):
    c = runs.client(settings.mlflow_uri)
    weak = _log_fake_training(settings, tmp_path, 0.05, 0.70, "r/1", popularity=0.065)
    decisions = registry.champion_gate(weak, settings)
    assert not any(d.promoted for d in decisions)
    assert "does not beat the popularity baseline's 0.0650" in decisions[0].reason
    for spec in registry.model_specs(settings):
        with pytest.raises(Exception):
            c.get_model_version_by_alias(spec.name, "champion")
    assert registry.champions(settings) == {spec.name: None for spec in registry.model_specs(settings)}
    # The first run above the floor is the first champion.
    good = _log_fake_training(settings, tmp_path, 0.08, 0.70, "r/2", popularity=0.065)
    assert all(d.promoted for d in registry.champion_gate(good, settings))


def _log_new_data_run(settings, tmp_path, airflow_run, champion_run, *, gate, gate_champion, gate_auc=0.7,
                      gate_champion_auc=0.7, users=50):
    """A run on another feature version whose training job scored the champion on its new validation rows."""
    run_id = _log_fake_training(settings, tmp_path, 0.25, 0.72, airflow_run, feature_version=f"fv-{airflow_run[-1]}")
    c = runs.client(settings.mlflow_uri)
    for key, value in {"gate_pipeline_recall_at_10": gate, "gate_champion_pipeline_recall_at_10": gate_champion, "gate_auc": gate_auc,
                       "gate_champion_auc": gate_champion_auc, "gate_users": users, "gate_rows": 4 * users}.items():
        c.log_metric(run_id, key, value)
    if champion_run:
        c.set_tag(run_id, "gate.champion_run", champion_run)
    return run_id


def test_across_feature_versions_the_champion_rescored_on_the_challengers_rows_decides(settings, tmp_path):
    """New data means another window: the logged metrics are not compared, the gate metrics of the same rows are."""
    first = _log_fake_training(settings, tmp_path, 0.30, 0.70, "r/1", feature_version="fv-old", popularity=0.20)
    registry.champion_gate(first, settings)
    # Lower raw recall than the champion logged on its own window, but better on the same (new) rows: promoted.
    second = _log_new_data_run(settings, tmp_path, "r/2", first, gate=0.21, gate_champion=0.18)
    decisions = {x.model: x for x in registry.champion_gate(second, settings)}
    d = decisions[settings.retrieval_model_name]
    assert d.promoted and decisions[settings.ranking_model_name].promoted
    assert d.metric == "gate_pipeline_recall_at_10" and d.value == pytest.approx(0.21) and d.champion_value == pytest.approx(0.18)
    assert "new to the champion (50 users)" in d.reason
    # Worse than the champion on the same rows: rejected, whatever its own window said.
    third = _log_new_data_run(settings, tmp_path, "r/3", second, gate=0.19, gate_champion=0.20)
    assert not any(x.promoted for x in registry.champion_gate(third, settings))
    # Scored against a champion that is no longer the champion: not compared, not promoted.
    stale = _log_new_data_run(settings, tmp_path, "r/4", first, gate=0.5, gate_champion=0.1)
    d4 = registry.champion_gate(stale, settings)[0]
    assert not d4.promoted and "not scored against the current champion" in d4.reason
    # Better retrieval, but a ranker clearly worse on the same rows: rejected together.
    fifth = _log_new_data_run(settings, tmp_path, "r/5", second, gate=0.30, gate_champion=0.20, gate_auc=0.6)
    d5 = registry.champion_gate(fifth, settings)[0]
    assert not d5.promoted and "the ranker's gate_auc 0.6000 is below" in d5.reason
    # Nothing new to compare on (a retrain on the champion's own data, under other settings): the champion stays.
    empty = _log_new_data_run(settings, tmp_path, "r/6", second, gate=0.0, gate_champion=0.0, users=0)
    d6 = registry.champion_gate(empty, settings)[0]
    assert not d6.promoted and "nothing to compare on" in d6.reason
