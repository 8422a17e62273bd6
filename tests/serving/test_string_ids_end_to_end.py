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
import time
import uuid

import numpy as np
import pandas as pd
import pytest

from recsys.serving.control import ServingError
from recsys.settings import replace
from shared_helpers import log_trained_run, merlin_trained_run, patched_environ, running_triton, triton_ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

TEXT_KINDS = {"user_id": "string", "item_id": "string"}


@pytest.fixture(scope="module")
def deployment(stack_settings, tmp_path_factory):
    """Ingest -> ETL -> train -> MLflow champion -> online refresh -> publish, all with text ids."""
    from recsys.online.refresh import refresh_online_store
    from recsys.serving.publish import publish

    tag = uuid.uuid4().hex[:6]
    s = replace(
        stack_settings, home=tmp_path_factory.mktemp("text-ids-home"), **triton_ports(), triton_instances=1,
        online_key_prefix=f"text-ids-{tag}", retrieval_model_name=f"retrieval-text-{tag}",
        ranking_model_name=f"ranking-text-{tag}", batch_top_n=5, batch_concurrency=4,
    )
    trained = merlin_trained_run(s, "run-text", "--string-ids")
    data_dir, features_dir, run_dir = trained["data_dir"], trained["features_dir"], trained["run_dir"]
    log_trained_run(s, run_dir)  # one MLflow run of the training folder (its metrics and exports), gated
    refresh_online_store(str(features_dir), str(data_dir), settings=s)
    with running_triton(s):
        result = publish(settings=s, airflow_run="recsys_publish/text-ids")
        users = pd.read_parquet(data_dir / "users.parquet")["user_id"].tolist()
        items = pd.read_parquet(data_dir / "items.parquet")["item_id"].tolist()
        yield {"settings": s, "result": result, "users": users, "items": items, "data_dir": data_dir,
               "features_dir": features_dir, "run_dir": run_dir}


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
    from recsys.serving.repository import read_config

    config = read_config(version_dir / "config.pbtxt")
    assert config.parameters["user_id_kind"].string_value == "string"
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


def test_similar_items_and_live_events_by_text_id(deployment, client, store):
    from recsys.events.live import apply_pending
    from recsys.events.validation import EventRules, validate_events

    item = deployment["items"][4]
    similar = client.similar(item, 5)
    assert len(similar) == 5 and item not in [i for i, _ in similar]
    assert all(type(i) is str and i in set(deployment["items"]) for i, _ in similar)
    assert [s for _, s in similar] == sorted((s for _, s in similar), reverse=True)
    with pytest.raises(ServingError, match="item_id 'SKU-nothing' is unknown"):
        client.similar("SKU-nothing")
    # a text user's live event filters that item at once; an unknown text user with events is answered from them
    user, newcomer = deployment["users"][3], "u-newcomer"
    bought = client.recommend(user, 5)[0][0]
    rules = EventRules.from_store(store, deployment["settings"])
    store.accept_events(validate_events([
        {"user_id": user, "item_id": bought, "event_type": "purchase", "timestamp": time.time()},
        {"user_id": newcomer, "item_id": item, "event_type": "view", "timestamp": time.time()},
    ], rules))
    apply_pending(store)
    try:
        assert bought not in [i for i, _ in client.recommend(user, 5)]
        fresh = [i for i, _ in client.recommend(newcomer, 5)]
        assert item not in fresh and fresh != store.popularity(5).tolist()
        assert all(type(i) is str and i in set(deployment["items"]) for i in fresh)
    finally:
        for who in (user, newcomer):
            store.client.delete(f"{store.live_prefix}s:{who}")


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
