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
from shared_helpers import log_trained_run, running_triton, triton_ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def publish_settings(serving_base, trained_run, tmp_path_factory):
    """A home of our own (features linked in), our own Triton, the online store refreshed under our prefix."""
    from recsys.online.refresh import refresh_online_store

    home = tmp_path_factory.mktemp("publish-home")
    (home / "features").mkdir()
    (home / "features" / trained_run["features_dir"].name).symlink_to(trained_run["features_dir"])
    tag = uuid.uuid4().hex[:6]
    s = replace(
        serving_base, home=home, **triton_ports(), triton_instances=1, online_key_prefix=f"publish-{tag}",
        retrieval_model_name=f"retrieval-{tag}", ranking_model_name=f"ranking-{tag}",
    )
    refresh_online_store(str(trained_run["features_dir"]), str(trained_run["data_dir"]), settings=s)
    with running_triton(s):
        yield s


def test_real_champions_publish_serve_and_a_corrupt_ranker_is_refused(publish_settings, trained_run, tmp_path):
    import pandas as pd
    from mlflow import MlflowClient

    from recsys.serving.client import RecommendClient
    from recsys.serving.history import read_history
    from recsys.serving.publish import PublishError, publish
    from recsys.serving.repository import model_versions
    from recsys.serving.repository import PUBLISHED_MODELS

    s = publish_settings
    run_id = log_trained_run(s, trained_run["run_dir"])
    result = publish(settings=s, airflow_run="recsys_publish/e2e")
    assert result.published and result.version == 1 and result.models == list(PUBLISHED_MODELS)
    assert result.smoke["recsys"]["item_ids"], result.smoke  # the smoke request got real items

    user = int(pd.read_parquet(trained_run["data_dir"] / "users.parquet")["user_id"].iloc[0])
    with RecommendClient(s, "http") as client:
        served_before = client.recommend(user, k=5)
    assert len(served_before) == 5
    lineage = json.loads((s.triton_repo / "recsys" / "1" / "lineage.json").read_text())
    assert lineage["champions"]["ranking"]["run_id"] == run_id and lineage["airflow_run"] == "recsys_publish/e2e"
    # whether the item vectors end with the popularity prior: from the champion's run metrics to index.json
    for model in ("recsys", "recsys_item_index"):
        index_meta = json.loads((s.triton_repo / model / "1" / "index" / "index.json").read_text())
        assert index_meta["prior_slot"] is trained_run["prior_slot"] is lineage["prior_slot"]
    assert MlflowClient(s.mlflow_uri).get_model_version(s.ranking_model_name, "1").tags["triton.version"] == "1"

    # A better-scored champion whose ranker SavedModel is corrupt bytes.
    broken_run = tmp_path / "broken-run"
    shutil.copytree(trained_run["run_dir"], broken_run)
    (broken_run / "ranking" / "dlrm" / "saved_model.pb").write_bytes(b"not a protobuf")
    log_trained_run(s, broken_run, quality_bonus=0.01)
    with pytest.raises(PublishError, match=r"version 2 failed.*previous version serves"):
        publish(settings=s, airflow_run="recsys_publish/e2e-broken")
    for model in PUBLISHED_MODELS:
        assert model_versions(s.triton_repo, model) == [1], model
    with RecommendClient(s, "http") as client:
        assert client.recommend(user, k=5) == served_before  # version 1 still answers, unchanged
    assert [h["status"] for h in read_history(s.triton_repo)] == ["serving", "failed"]
