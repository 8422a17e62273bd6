"""The ETL and training DAGs run end to end with ``dag.test()`` on tiny data, against real MLflow.

Heavy tasks really run in the Merlin runtime's interpreter (``@task.external_python``).
"""

import pytest

from recsys.settings import get_settings
from shared_helpers import patched_environ

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_settings(stack_settings, airflow_db, tmp_path_factory):
    """Small models and tiny data, in the stack's home (tasks read the settings from the environment)."""
    from recsys.data.synthetic import SyntheticConfig, write_synthetic

    # a faster learning rate than the default (tuned on real data): these tiny models learn in a few epochs
    with patched_environ({"RECSYS_EMBEDDING_DIM": "16", "RECSYS_BATCH_SIZE": "512", "RECSYS_EPOCHS": "15",
                          "RECSYS_LEARNING_RATE": "0.005"}):
        s = get_settings()
        # strong tastes and enough rows that a short training beats popularity (the gate's floor)
        write_synthetic(s.landing, SyntheticConfig(n_users=300, n_items=120, n_interactions=20_000, days=14, seed=3,
                                                   temperature=0.3), overwrite=True)
        yield s


def test_etl_then_train_then_rerun_is_idempotent(pipeline_settings, dagbag, states):
    from mlflow import MlflowClient

    s = pipeline_settings
    etl = dagbag.dags["recsys_etl"].test()
    assert etl.state == "success", states(etl)
    versions = [p for p in s.features_root.iterdir() if not p.name.startswith(".")]
    assert len(versions) == 1 and (versions[0] / "manifest.json").exists()
    assert states(etl)["announce_features"] == "success"

    train = dagbag.dags["recsys_train"].test(run_conf={"epochs": 12})
    assert train.state == "success", states(train)
    assert states(train)["announce_champion"] == "success"  # first models: champions by definition

    client = MlflowClient(s.mlflow_uri)
    champion = client.get_model_version_by_alias(s.retrieval_model_name, "champion")
    run = client.get_run(champion.run_id)
    for metric in ("recall_at_10", "ndcg_at_10", "popularity_recall_at_10", "auc", "logloss"):
        assert metric in run.data.metrics, metric
    assert run.data.params["epochs"] == "12"
    assert run.data.tags["recsys.feature_version"] == versions[0].name
    assert client.get_model_version_by_alias(s.ranking_model_name, "champion").run_id == champion.run_id
    # one point per epoch run; early stopping says where it stopped and why
    epochs_run = int(run.data.metrics["retrieval.epochs_run"])
    assert len(client.get_metric_history(champion.run_id, "retrieval.loss")) == epochs_run <= 12
    assert 1 <= run.data.metrics["retrieval.best_epoch"] <= epochs_run
    assert run.data.tags["recsys.retrieval.stop_reason"]
    assert run.data.metrics["recall_at_10"] > run.data.metrics["popularity_recall_at_10"]
    # Every exported file has its sha256 recorded, for publishing to verify before Triton loads it.
    import hashlib
    import json

    checksums = json.load(open(client.download_artifacts(champion.run_id, "checksums.json", str(s.home / "dl"))))
    assert "ranking/dlrm/saved_model.pb" in checksums
    pb = client.download_artifacts(champion.run_id, "ranking/dlrm/saved_model.pb", str(s.home / "dl"))
    assert hashlib.sha256(open(pb, "rb").read()).hexdigest() == checksums["ranking/dlrm/saved_model.pb"]

    # The same data again: same versions, no new feature version, no Asset event (announce skipped).
    again = dagbag.dags["recsys_etl"].test()
    assert again.state == "success", states(again)
    assert states(again)["announce_features"] == "skipped"
    assert [p for p in s.features_root.iterdir() if not p.name.startswith(".")] == versions
