"""Publishing the real models: a real training run logged to MLflow -> the serving package's writer ->
the four published models loaded on a real Triton -> recommendations from the real online store.

Then a champion whose ranker SavedModel is corrupt: Triton refuses to load it, the models whose new
version did load go back to version 1, and version 1 keeps answering.

The training run comes from tests/serving/conftest.py (``trained_run``); this module runs its own
Triton in a home of its own (its own repository and PID files) and its own online key prefix.
"""

from __future__ import annotations

import json
import shutil
import uuid

import pytest

from recsys.settings import replace

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _log_run(s, run_dir, quality_bonus: float = 0.0) -> str:
    from recsys.tracking.registry import champion_gate
    from recsys.tracking.runs import TAG_DATA_VERSION, TAG_FEATURE_VERSION, log_training_run

    logged = json.loads((run_dir / "metrics.json").read_text())
    metrics = {k: float(v) + quality_bonus for k, v in logged["metrics"].items() if isinstance(v, (int, float))}
    run_id = log_training_run(
        metrics=metrics, history={}, params={}, artifacts_dir=run_dir,
        tags={TAG_FEATURE_VERSION: logged["feature_version"], TAG_DATA_VERSION: logged["data_version"]},
        experiment=s.experiment_name, tracking_uri=s.mlflow_uri,
    )
    champion_gate(run_id, s)
    return run_id


@pytest.fixture(scope="module")
def publish_settings(serving_base, trained_run, tmp_path_factory):
    """A home of our own (features linked in), our own Triton, the online store refreshed under our prefix."""
    from recsys import stack
    from recsys.online.refresh import refresh_online_store
    from recsys.stack.service import free_port

    home = tmp_path_factory.mktemp("publish-home")
    (home / "features").mkdir()
    (home / "features" / trained_run["features_dir"].name).symlink_to(trained_run["features_dir"])
    tag = uuid.uuid4().hex[:6]
    s = replace(
        serving_base, home=home, triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(), triton_instances=1, online_key_prefix=f"publish-{tag}",
        retrieval_model_name=f"retrieval-{tag}", ranking_model_name=f"ranking-{tag}",
    )
    refresh_online_store(str(trained_run["features_dir"]), str(trained_run["data_dir"]), settings=s)
    stack.up(s, only=["triton"])
    try:
        yield s
    finally:
        stack.down(s, only=["triton"])


def test_real_champions_publish_serve_and_a_corrupt_ranker_is_refused(publish_settings, trained_run, tmp_path):
    import pandas as pd
    from mlflow import MlflowClient

    from recsys.serving.client import RecommendClient
    from recsys.serving.publish import PublishError, model_versions, publish, read_history
    from recsys.serving.repository import PUBLISHED_MODELS

    s = publish_settings
    run_id = _log_run(s, trained_run["run_dir"])
    result = publish(settings=s, airflow_run="recsys_publish/e2e")
    assert result.published and result.version == 1 and result.models == list(PUBLISHED_MODELS)
    assert result.smoke["recsys"]["item_ids"], result.smoke  # the smoke request got real items

    user = int(pd.read_parquet(trained_run["data_dir"] / "users.parquet")["user_id"].iloc[0])
    with RecommendClient(s, "http") as client:
        served_before = client.recommend(user, k=5)
    assert len(served_before) == 5
    lineage = json.loads((s.triton_repo / "recsys" / "1" / "lineage.json").read_text())
    assert lineage["champions"]["ranking"]["run_id"] == run_id and lineage["airflow_run"] == "recsys_publish/e2e"
    assert MlflowClient(s.mlflow_uri).get_model_version(s.ranking_model_name, "1").tags["triton.version"] == "1"

    # A better-scored champion whose ranker SavedModel is corrupt bytes.
    broken_run = tmp_path / "broken-run"
    shutil.copytree(trained_run["run_dir"], broken_run)
    (broken_run / "ranking" / "dlrm" / "saved_model.pb").write_bytes(b"not a protobuf")
    _log_run(s, broken_run, quality_bonus=0.01)
    with pytest.raises(PublishError, match=r"version 2 failed.*previous version serves"):
        publish(settings=s, airflow_run="recsys_publish/e2e-broken")
    for model in PUBLISHED_MODELS:
        assert model_versions(s.triton_repo, model) == [1], model
    with RecommendClient(s, "http") as client:
        assert client.recommend(user, k=5) == served_before  # version 1 still answers, unchanged
    assert [h["status"] for h in read_history(s.triton_repo)] == ["serving", "failed"]
