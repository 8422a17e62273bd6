"""recsys_drift with ``dag.test()`` on tiny data, and a drift-triggered recsys_train run.

Real MLflow, real Evidently, real ETL and (one epoch of) real training in the Merlin runtime. The
module works in a home of its own with its own model names, so other DAG tests' versions and
champions are not mixed into its windows.
"""

import uuid

import pytest

from recsys.settings import get_settings
from shared_helpers import log_training, patched_environ

pytestmark = pytest.mark.slow

# strong tastes and enough rows that a short training beats popularity (the gate's floor)
TINY = dict(n_users=300, n_items=120, n_interactions=20_000, days=14, seed=3, temperature=0.3)


@pytest.fixture(scope="module")
def drift_env(stack_settings, airflow_db, tmp_path_factory):
    tag = uuid.uuid4().hex[:6]
    env = {
        "RECSYS_HOME": str(tmp_path_factory.mktemp("drift-dag-home")),
        "RECSYS_RETRIEVAL_MODEL_NAME": f"drift-retrieval-{tag}",
        "RECSYS_RANKING_MODEL_NAME": f"drift-ranking-{tag}",
        "RECSYS_EXPERIMENT_NAME": f"drift-dag-{tag}",
        "RECSYS_MONITORING_EXPERIMENT_NAME": f"drift-dag-monitoring-{tag}",
        "RECSYS_DRIFT_CONSECUTIVE_CHECKS": "1",
        "RECSYS_DRIFT_COOLDOWN_HOURS": "0",
        "RECSYS_EMBEDDING_DIM": "16",
        "RECSYS_BATCH_SIZE": "512",
        "RECSYS_LEARNING_RATE": "0.005",  # faster than the default (tuned on real data): tiny models, few epochs
        "RECSYS_EPOCHS": "15",  # early stopping ends sooner; enough to beat popularity
    }
    with patched_environ(env):
        yield get_settings()


def test_drift_dag_wiring(dagbag):
    from recsys.assets import DRIFT, FEATURES

    drift = dagbag.dags["recsys_drift"]
    assert "recsys" in drift.tags and drift.doc_md
    assert all(t.retries >= 1 for t in drift.tasks)
    assert DRIFT in drift.get_task("announce_drift").outlets
    train = dagbag.dags["recsys_train"]
    assert {FEATURES.name, DRIFT.name} <= {a.name for a in train.timetable.asset_condition.objects}
    assert train.get_task("features").python == str(get_settings().merlin_python)


def _fake_champion(s) -> str:
    """A champion on the current feature version without training (the drift check reads only its lineage)."""
    from recsys import jobs

    features = jobs.resolve_features()
    # any trained model beats it
    return log_training(s, {s.retrieval_primary_metric: 0.0, s.ranking_primary_metric: 0.0},
                        feature_version=features["feature_version"], data_version=features["data_version"])


def test_drift_triggers_a_retrain_on_the_judged_data(drift_env, dagbag, states):
    from mlflow import MlflowClient

    from recsys import jobs
    from recsys.data.synthetic import SyntheticConfig, write_synthetic
    from recsys.monitoring.store import get_check, list_checks

    s = drift_env
    write_synthetic(s.landing, SyntheticConfig(**TINY), overwrite=True)
    etl = dagbag.dags["recsys_etl"].test()
    assert etl.state == "success", states(etl)
    champion_run = _fake_champion(s)

    # the same data: no drift, announce_drift skipped (no Asset event)
    calm = dagbag.dags["recsys_drift"].test()
    assert calm.state == "success", states(calm)
    assert states(calm)["announce_drift"] == "skipped"
    (first,) = list_checks(None, s)
    assert not first["trigger"] and first["champion_run_id"] == champion_run

    # a drifted batch lands: drift, announce_drift succeeds
    write_synthetic(s.landing, SyntheticConfig(**{**TINY, "start": "2024-01-15", "drift": 1.0}), overwrite=True)
    drifted = dagbag.dags["recsys_drift"].test()
    assert drifted.state == "success", states(drifted)
    assert states(drifted)["announce_drift"] == "success"
    check = list_checks(1, s)[0]
    assert check["trigger"] and check["current_data_version"] != first["current_data_version"]
    judged = check["current_data_version"]
    assert get_check(check["check_id"], s)["drift"] is True
    assert judged not in {_data_version_of(p) for p in _feature_versions(s)}  # no features for it yet

    # the plan the DRIFT Asset event leads to: the judged data version, and the trigger tag
    plan = jobs.training_plan("recsys_train/x", drift_events=[{"check_id": check["check_id"], "data_version": judged}])
    assert plan["features"] is None and plan["data_dir"].endswith(judged)
    assert plan["tags"] == {"recsys.trigger": f"drift:{check['check_id']}"}

    # the drift-triggered training: ETL of the judged data version first, then training, tagged
    train = dagbag.dags["recsys_train"].test(run_conf={"drift_check": check["check_id"], "epochs": 15})
    assert train.state == "success", states(train)
    assert judged in {_data_version_of(p) for p in _feature_versions(s)}  # the ETL ran for the judged data
    runs = MlflowClient(s.mlflow_uri).search_runs(
        [MlflowClient(s.mlflow_uri).get_experiment_by_name(s.experiment_name).experiment_id],
        filter_string=f"tags.`recsys.trigger` = 'drift:{check['check_id']}'",
    )
    assert len(runs) == 1 and runs[0].data.tags["recsys.data_version"] == judged
    # it beat the untrained champion through the same gate, so it is published like any champion
    assert states(train)["announce_champion"] == "success"


def _feature_versions(s) -> list:
    return [p for p in s.features_root.iterdir() if (p / "manifest.json").exists()]


def _data_version_of(feature_dir) -> str:
    import json

    return json.loads((feature_dir / "manifest.json").read_text())["data_version"]
