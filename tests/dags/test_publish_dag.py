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
from shared_helpers import patched_environ, toy_config, toy_source

pytestmark = pytest.mark.slow


def toy_writer(exports: Path, staging: Path, version: int, settings, lineage: dict) -> list[str]:
    assert (exports / "ranking" / "dlrm" / "saved_model.pb").is_file()
    (staging / "recsys" / str(version)).mkdir(parents=True)
    (staging / "recsys" / str(version) / "model.py").write_text(toy_source())
    (staging / "recsys" / "config.pbtxt").write_text(toy_config())
    return ["recsys"]


@pytest.fixture(scope="module")
def dagbag(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    from recsys.settings import PROJECT_ROOT

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


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
    from recsys import stack
    from online_sample import write_sample_versions
    from recsys.stack.service import free_port

    tag = uuid.uuid4().hex[:6]
    env = {
        "RECSYS_TRITON_HTTP_PORT": str(free_port()),
        "RECSYS_TRITON_GRPC_PORT": str(free_port()),
        "RECSYS_TRITON_METRICS_PORT": str(free_port()),
        "RECSYS_TRITON_REPOSITORY": str(tmp_path_factory.mktemp("dag-repository")),
        "RECSYS_ONLINE_KEY_PREFIX": f"dag-{tag}",
        "RECSYS_RETRIEVAL_MODEL_NAME": f"retrieval-{tag}",
        "RECSYS_RANKING_MODEL_NAME": f"ranking-{tag}",
    }
    with patched_environ(env):
        s = get_settings()
        features = write_sample_versions(s.home, n_users=120, n_items=50)
        stack.up(s, only=["triton"])
        try:
            yield s, features
        finally:
            stack.down(s, only=["triton"])


def _champion(s, feature_dir: Path, tmp: Path) -> None:
    import json

    from recsys.tracking.registry import champion_gate
    from recsys.tracking.runs import TAG_DATA_VERSION, TAG_FEATURE_VERSION, log_training_run

    for rel in ("retrieval/query_tower/saved_model.pb", "retrieval/item_embeddings.parquet", "ranking/dlrm/saved_model.pb"):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(rel.encode())
    manifest = json.loads((feature_dir / "manifest.json").read_text())
    run_id = log_training_run(
        metrics={"recall_at_10": 0.3, "pipeline_recall_at_10": 0.3, "auc": 0.7}, history={}, params={}, artifacts_dir=tmp,
        tags={TAG_FEATURE_VERSION: manifest["feature_version"], TAG_DATA_VERSION: manifest["data_version"]},
        experiment=s.experiment_name, tracking_uri=s.mlflow_uri,
    )
    champion_gate(run_id, s)


def _states(dag_run) -> dict:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def test_publish_then_precompute_with_dag_test(dagbag, publish_env, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from recsys.online.redis_store import RedisOnlineStore
    from recsys.serving import publish as publishing
    from recsys.serving.batch import read_precomputed

    s, features = publish_env
    _champion(s, features, tmp_path)
    monkeypatch.setattr(publishing, "four_stage_writer", toy_writer)

    first = dagbag.dags["recsys_publish"].test()
    assert first.state == "success", _states(first)
    assert _states(first)["announce_serving"] == "success"
    store = RedisOnlineStore.from_settings(s)
    assert store.current().feature_version == features.name  # the DAG refreshed the online store first
    store.client.close()
    served = publishing.served(s.triton_repo)
    assert served["version"] == 1 and served["airflow_run"] == f"recsys_publish/{first.run_id}"
    assert served["smoke"]["recsys"]["item_ids"]  # the default smoke test asked the served model
    tags = MlflowClient(s.mlflow_uri).get_model_version(s.ranking_model_name, "1").tags
    assert tags["airflow.run"] == f"recsys_publish/{first.run_id}" and tags["triton.version"] == "1"

    again = dagbag.dags["recsys_publish"].test()
    assert again.state == "success", _states(again)
    assert _states(again)["announce_serving"] == "skipped"  # same champions: nothing new serves

    batch = dagbag.dags["recsys_batch_recommendations"].test(run_conf={"top_n": 5})
    assert batch.state == "success", _states(batch)
    assert _states(batch)["announce_batch"] == "success"
    assert [i for i, _ in read_precomputed(1000, settings=s)] == [5000 + (1000 + j) % 50 for j in range(5)]
