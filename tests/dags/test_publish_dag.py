"""The publishing and offline-recommendation DAGs: wiring, and ``dag.test()`` runs against real services.

Real MLflow, Redis and Triton; a sample feature version (tests/online_sample.py) that the online store
is refreshed to by the DAG itself. The champions' artifacts are tiny files and the repository writer
is a test writer that serves a small ``recsys`` model with the served model's contract (the real
writer and models are covered in tests/serving/test_publish_four_stage.py). ``dag.test()`` runs the
tasks in this process, so the test writer is put in place of the default one for these runs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from recsys.settings import get_settings
from shared_helpers import (fake_exports, log_training, patched_environ, running_triton, toy_config, toy_source,
                            triton_ports_env)

pytestmark = pytest.mark.slow


def toy_writer(exports: Path, staging: Path, version: int, settings, lineage: dict) -> list[str]:
    assert (exports / "ranking" / "dlrm" / "saved_model.pb").is_file()
    (staging / "recsys" / str(version)).mkdir(parents=True)
    (staging / "recsys" / str(version) / "model.py").write_text(toy_source())
    (staging / "recsys" / "config.pbtxt").write_text(toy_config())
    return ["recsys"]


def test_wiring(dagbag):
    from recsys.assets import CHAMPION, PRECOMPUTED, SERVING

    publish = dagbag.dags["recsys_publish"]
    assert CHAMPION.name in {a.name for a in publish.timetable.asset_condition.objects}
    assert SERVING in publish.get_task("announce_serving").outlets
    assert publish.get_task("publish").upstream_task_ids == {"plan", "online_store"}
    batch = dagbag.dags["recsys_batch_recommendations"]
    assert SERVING.name in {a.name for a in batch.timetable.asset_condition.objects}
    assert PRECOMPUTED in batch.get_task("announce_batch").outlets
    for dag in (publish, batch):
        assert "recsys" in dag.tags and dag.doc_md
        assert all(t.retries >= 1 for t in dag.tasks)


@pytest.fixture(scope="module")
def publish_env(stack_settings, airflow_db, tmp_path_factory):
    """Environment for the tasks: our Triton, our repository, our online prefix, our model names."""
    from online_sample import write_sample_versions

    tag = uuid.uuid4().hex[:6]
    env = {
        **triton_ports_env(),
        "RECSYS_TRITON_REPOSITORY": str(tmp_path_factory.mktemp("dag-repository")),
        "RECSYS_ONLINE_KEY_PREFIX": f"dag-{tag}",
        "RECSYS_RETRIEVAL_MODEL_NAME": f"retrieval-{tag}",
        "RECSYS_RANKING_MODEL_NAME": f"ranking-{tag}",
    }
    with patched_environ(env):
        s = get_settings()
        features = write_sample_versions(s.home, n_users=120, n_items=50)
        with running_triton(s):
            yield s, features


def _champion(s, feature_dir: Path, tmp: Path) -> None:
    import json

    manifest = json.loads((feature_dir / "manifest.json").read_text())
    log_training(s, {"recall_at_10": 0.3, "pipeline_recall_at_10": 0.3, "auc": 0.7}, artifacts_dir=fake_exports(tmp),
                 feature_version=manifest["feature_version"], data_version=manifest["data_version"])


def test_publish_then_precompute_with_dag_test(dagbag, states, publish_env, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from recsys.online.redis_store import RedisOnlineStore
    from recsys.serving import history
    from recsys.serving import publish as publishing
    from recsys.serving.batch import read_precomputed

    s, features = publish_env
    _champion(s, features, tmp_path)
    monkeypatch.setattr(publishing, "four_stage_writer", toy_writer)

    first = dagbag.dags["recsys_publish"].test()
    assert first.state == "success", states(first)
    assert states(first)["announce_serving"] == "success"
    store = RedisOnlineStore.from_settings(s)
    assert store.current().feature_version == features.name  # the DAG refreshed the online store first
    store.client.close()
    served = history.served(s.triton_repo)
    assert served["version"] == 1 and served["airflow_run"] == f"recsys_publish/{first.run_id}"
    assert served["smoke"]["recsys"]["item_ids"]  # the default smoke test asked the served model
    tags = MlflowClient(s.mlflow_uri).get_model_version(s.ranking_model_name, "1").tags
    assert tags["airflow.run"] == f"recsys_publish/{first.run_id}" and tags["triton.version"] == "1"

    again = dagbag.dags["recsys_publish"].test()
    assert again.state == "success", states(again)
    assert states(again)["announce_serving"] == "skipped"  # same champions: nothing new serves

    batch = dagbag.dags["recsys_batch_recommendations"].test(run_conf={"top_n": 5})
    assert batch.state == "success", states(batch)
    assert states(batch)["announce_batch"] == "success"
    assert [i for i, _ in read_precomputed(1000, settings=s)] == [5000 + (1000 + j) % 50 for j in range(5)]
