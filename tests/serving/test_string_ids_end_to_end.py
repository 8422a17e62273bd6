"""Text ids end to end: a shop whose users are ``u-6a7f3c`` and whose items are ``SKU-00042Q``.

Synthetic data with text ids (``recsys data generate --string-ids``, small) goes through the real
ingest, ETL and a short training (the project's CLI in the Merlin runtime), one MLflow run and the
champion gate, then ``publish`` onto a real Triton of this module's own; recommendations are asked
by text user id (client, ``recsys recommend``), exclusions and the unavailable set work by text id,
a bad id gets a clear error while the server keeps answering, and the offline top-N round-trips text
ids. Real Redis and MLflow of the session's stack.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest

from recsys.settings import replace
from shared_helpers import merlin_cli, patched_environ

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

TEXT_KINDS = {"user_id": "string", "item_id": "string"}


def _log_run(s, run_dir) -> str:
    """One MLflow run of the training folder (its metrics and exports) and the champion gate."""
    from recsys.tracking.registry import champion_gate
    from recsys.tracking.runs import TAG_DATA_VERSION, TAG_FEATURE_VERSION, log_training_run

    logged = json.loads((run_dir / "metrics.json").read_text())
    metrics = {k: float(v) for k, v in logged["metrics"].items() if isinstance(v, (int, float))}
    run_id = log_training_run(
        metrics=metrics, history={}, params={}, artifacts_dir=run_dir,
        tags={TAG_FEATURE_VERSION: logged["feature_version"], TAG_DATA_VERSION: logged["data_version"]},
        experiment=s.experiment_name, tracking_uri=s.mlflow_uri,
    )
    champion_gate(run_id, s)
    return run_id


@pytest.fixture(scope="module")
def deployment(stack_settings, tmp_path_factory):
    """Ingest -> ETL -> train -> MLflow champion -> online refresh -> publish, all with text ids."""
    from recsys import stack
    from recsys.online.refresh import refresh_online_store
    from recsys.serving.publish import publish
    from recsys.stack.service import free_port

    tag = uuid.uuid4().hex[:6]
    s = replace(
        stack_settings, home=tmp_path_factory.mktemp("text-ids-home"), triton_http_port=free_port(),
        triton_grpc_port=free_port(), triton_metrics_port=free_port(), triton_instances=1,
        online_key_prefix=f"text-ids-{tag}", retrieval_model_name=f"retrieval-text-{tag}",
        ranking_model_name=f"ranking-text-{tag}", batch_top_n=5, batch_concurrency=4,
    )
    source = s.home / "input"
    merlin_cli(s, "data", "generate", "--out", str(source), "--users", "300", "--items", "200",
               "--interactions", "6000", "--seed", "3", "--string-ids")
    merlin_cli(s, "data", "ingest", str(source))
    data_dir = next(p for p in s.data_root.iterdir() if not p.name.startswith("."))
    merlin_cli(s, "etl", "--data", str(data_dir))
    features_dir = next(p for p in s.features_root.iterdir() if not p.name.startswith("."))
    run_dir = s.runs_root / "run-text"
    merlin_cli(s, "train", "--features", str(features_dir), "--out", str(run_dir),
               "--epochs", "8", "--embedding-dim", "16", "--batch-size", "512",
               "--learning-rate", "0.005")  # enough to beat popularity on this tiny data
    _log_run(s, run_dir)
    refresh_online_store(str(features_dir), str(data_dir), settings=s)
    stack.up(s, only=["triton"])
    try:
        result = publish(settings=s, airflow_run="recsys_publish/text-ids")
        users = pd.read_parquet(data_dir / "users.parquet")["user_id"].tolist()
        items = pd.read_parquet(data_dir / "items.parquet")["item_id"].tolist()
        yield {"settings": s, "result": result, "users": users, "items": items, "data_dir": data_dir,
               "features_dir": features_dir, "run_dir": run_dir}
    finally:
        stack.down(s, only=["triton"])


@pytest.fixture(scope="module")
def client(deployment):
    from recsys.serving.client import RecommendClient

    with RecommendClient(deployment["settings"], "grpc") as c:
        yield c


@pytest.fixture(scope="module")
def store(deployment):
    from recsys.online.redis_store import RedisOnlineStore

    s = RedisOnlineStore.from_settings(deployment["settings"])
    yield s
    s.client.close()


def test_every_hop_keeps_the_text_ids(deployment):
    import pyarrow.parquet as pq

    data_manifest = json.loads((deployment["data_dir"] / "manifest.json").read_text())
    features_manifest = json.loads((deployment["features_dir"] / "manifest.json").read_text())
    assert data_manifest["ids"] == features_manifest["ids"] == TEXT_KINDS
    assert all(u.startswith("u-") for u in deployment["users"]) and all(i.startswith("SKU-") for i in deployment["items"])
    embeddings = pq.read_table(deployment["run_dir"] / "retrieval" / "item_embeddings.parquet")
    assert str(embeddings.schema.field("item_id_raw").type) == "string"
    assert set(embeddings.column("item_id_raw").to_pylist()) == set(deployment["items"])

    s, result = deployment["settings"], deployment["result"]
    assert result.published and result.version == 1
    smoke = result.smoke["recsys"]
    assert smoke["user_id"] == deployment["users"][0] and all(isinstance(i, str) for i in smoke["item_ids"])
    version_dir = s.triton_repo / "recsys" / "1"
    assert json.loads((version_dir / "pipeline.json").read_text())["ids"] == TEXT_KINDS
    config = (version_dir / "config.pbtxt").read_text()
    assert 'parameters: { key: "user_id_kind" value: { string_value: "string" } }' in config
    index_ids = np.load(version_dir / "index" / "item_ids.npy", allow_pickle=False)  # no pickle needed
    assert index_ids.dtype.kind == "U" and set(index_ids.tolist()) == set(deployment["items"])


def test_recommend_by_text_user_id_gives_text_item_ids(deployment, client, store):
    from recsys.serving.client import RecommendClient

    assert client.id_kinds.to_dict() == TEXT_KINDS
    catalogue = set(deployment["items"])
    with_history = 0
    for user in deployment["users"][:12]:
        pairs = client.recommend(user, 10)
        assert len(pairs) == 10 and all(type(item) is str and item in catalogue for item, _ in pairs), pairs
        seen = set(store.seen_items(user).tolist())
        assert not seen & {item for item, _ in pairs}  # seen items are filtered by text id
        with_history += bool(seen)
    assert with_history >= 6  # most users have a history (activity is skewed: not all)
    user = deployment["users"][1]
    with RecommendClient(deployment["settings"], "http") as http:
        assert http.recommend(user, 10) == client.recommend(user, 10)
    detailed = client.recommend_with_attributes(user, 3)
    assert [d["item_id"] for d in detailed] == [item for item, _ in client.recommend(user, 3)]
    assert "category" in detailed[0]  # display attributes by text id
    # an unknown text user: the popularity list, as text ids
    assert [item for item, _ in client.recommend("u-nobody", 10)] == store.popularity(10).tolist()


def test_exclusions_and_unavailable_items_by_text_id(deployment, client, store):
    user = deployment["users"][2]
    first = [item for item, _ in client.recommend(user, 6)]
    again = [item for item, _ in client.recommend(user, 6, context={"exclude_items": first[:2]})]
    assert not set(first[:2]) & set(again) and again[:4] == first[2:6]

    with patched_environ(deployment["settings"].as_env()):
        from recsys.cli import main

        assert main(["online", "unavailable", "add", first[0]]) == 0
        try:
            after = [item for item, _ in client.recommend(user, 6)]
            assert first[0] not in after and after[:5] == first[1:6]
        finally:
            assert main(["online", "unavailable", "remove", first[0]]) == 0
    assert [item for item, _ in client.recommend(user, 6)] == first


@pytest.mark.parametrize(
    "user_id, context, message",
    [
        (" u-padded", None, "user_id ' u-padded' has leading or trailing whitespace; not a valid text id"),
        ("", None, "user_id '' is empty"),
        ("u-\x07bell", None, "contains a control character"),
        (None, {"exclude_items": ["SKU-1 "]}, "exclude_items: item_id 'SKU-1 ' has leading or trailing whitespace"),
    ],
)
def test_a_bad_text_id_gets_a_clear_error_and_the_server_keeps_answering(deployment, client, user_id, context, message):
    from recsys.serving.control import ServingError

    with pytest.raises(ServingError, match=message):
        client.recommend(deployment["users"][3] if user_id is None else user_id, 5, context=context)
    assert len(client.recommend(deployment["users"][3], 5)) == 5


def test_the_cli_recommends_by_text_user_id(deployment, client, capsys):
    user = deployment["users"][4]
    with patched_environ(deployment["settings"].as_env()):
        from recsys.cli import main

        assert main(["recommend", "--user", user, "-k", "4", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["user_id"] == user
        assert [i["item_id"] for i in out["items"]] == [i for i, _ in client.recommend(user, 4)]
        assert main(["recommend", "--user", user, "-k", "4"]) == 0
        assert client.recommend(user, 4)[0][0] in capsys.readouterr().out


def test_the_offline_top_n_round_trips_text_ids(deployment, client, capsys):
    from recsys.serving.batch import current_batch, precompute, read_precomputed

    s = deployment["settings"]
    result = precompute(settings=s, airflow_run="recsys_batch_recommendations/text-ids")
    assert not result.skipped and result.users == len(deployment["users"])
    assert json.loads(current_batch(s)["ids"]) == TEXT_KINDS
    for user in deployment["users"][:5]:
        assert read_precomputed(user, settings=s) == client.recommend(user, 5)
    assert read_precomputed("u-nobody", settings=s) is None
    user = deployment["users"][0]
    with patched_environ(s.as_env()):
        from recsys.cli import main

        assert main(["recommend", "--precomputed", "--user", user, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [(i["item_id"], pytest.approx(i["score"])) for i in out["items"]] == client.recommend(user, 5)
        assert all("category" in i for i in out["items"])
        assert main(["serving", "precomputed", "--user", user]) == 0
        assert [i["item_id"] for i in json.loads(capsys.readouterr().out)] == [i for i, _ in client.recommend(user, 5)]
