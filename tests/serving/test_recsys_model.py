"""The four-stage ``recsys`` model on a real Triton, reading a real Redis online store.

Exports come from the real ETL and training on tiny synthetic data (tests/serving/conftest.py);
version 1 is the session's ``served`` fixture. Version 1 serves the default rules; version 2 (max 2 per category, a boost) is published and
loaded later, then rolled back to 1.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from recsys.serving import control, repository
from recsys.serving.client import RecommendClient, model_uses_batching
from recsys.serving.control import ServingError
from recsys.serving.triton_client import grpc_client, http_client
from recsys.settings import replace
from shared_helpers import patched_environ, ready_model_versions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def users(store, trained_run):
    import pandas as pd

    ids = pd.read_parquet(trained_run["data_dir"] / "users.parquet")["user_id"].to_numpy()
    return [int(u) for u in ids[:40]]


def _ask(s, model: str, columns: dict) -> dict:
    """One request to version 1 of ``model`` over gRPC: ``columns`` typed as its config.pbtxt says (an
    optional input left out when absent); its outputs by name."""
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import model_config_pb2 as pb
    from tritonclient.utils import np_to_triton_dtype

    config = repository.read_config(s.triton_repo / model / "1" / "config.pbtxt")
    dtypes = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32}
    tensors = []
    for spec in config.input:
        if spec.name not in columns:
            assert spec.optional, f"{model} needs {spec.name}"
            continue
        value = np.ascontiguousarray(columns[spec.name], dtype=dtypes[pb.DataType.Name(spec.data_type)])
        tensor = grpcclient.InferInput(spec.name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    client = grpc_client(s)
    try:
        result = client.infer(model, tensors, model_version="1")
    finally:
        client.close()
    return {spec.name: result.as_numpy(spec.name) for spec in config.output}


def test_every_model_is_ready_and_answers(served, store, users, trained_run, client):
    import json

    import pyarrow.parquet as pq

    from recsys.features.history import truncate

    s = served["settings"]
    index = {m["name"]: m for m in control.repository_index(s)}
    for model in ("recsys_floor", *repository.PUBLISHED_MODELS):
        assert index[model]["state"] == "READY", index[model]
        assert control.model_ready(s, model, 1 if model != "recsys_floor" else None)
    # The version folders are complete: model code, config, lineage; the four-stage one also its parts.
    stages = s.triton_repo / "recsys" / "1"
    for part in ("model.py", "config.pbtxt", "lineage.json", "pipeline.json", "query_tower", "ranker", "index/items.faiss"):
        assert (stages / part).exists(), part
    assert repository.served_version(s.triton_repo, "recsys") == 1

    # Each stage model answers a request of its own, built from the online store's rows as the four-stage
    # model builds its own: the users' features and histories (their seen items, newest first, as encoded ids).
    pipeline = json.loads((stages / "pipeline.json").read_text())
    asked = users[:3]
    rows = store.read_users(asked, with_seen=True, with_live=True, feature_version=pipeline["feature_version"])
    assert rows.found.all() and not any(len(items) for items in rows.live)  # known users, no live events
    table = store.read_item_table(rows.version)
    item_code = table.columns[pipeline["item_columns"][0]]
    seen_rows = [table.rows_of(seen) for seen in rows.seen]
    history = truncate([item_code[r[r >= 0]] for r in seen_rows], pipeline["history_length"])
    assert len(history[0]) > 0  # the histories are not empty

    # recsys_query_tower: one query vector per user; with the popularity prior slot its last value is 1
    user_columns = {name: rows.columns[name] for name in pipeline["user_columns"]}
    (queries,) = _ask(s, "recsys_query_tower", {**user_columns, "history__values": history[0],
                                                 "history__offsets": history[1]}).values()
    dim = repository.read_config(s.triton_repo / "recsys_item_index" / "1" / "config.pbtxt").input[0].dims[-1]
    assert queries.shape == (len(asked), dim) and queries.dtype == np.float32 and np.isfinite(queries).all()
    if trained_run["prior_slot"]:
        np.testing.assert_allclose(queries[:, -1], 1.0)
    assert len({tuple(np.round(q, 5)) for q in queries}) == len(asked)  # another user, another query

    # recsys_item_index: the candidates_k best items by inner product with the first user's query, exactly
    # what the exported item vectors give (a flat index: exact search)
    embeddings = pq.read_table(trained_run["run_dir"] / "retrieval" / "item_embeddings.parquet")
    exact = dict(zip(embeddings.column("item_id_raw").to_pylist(),
                     np.array(embeddings.column("embedding").to_pylist(), dtype=np.float64) @ queries[0]))
    k = pipeline["candidates_k"]
    answer = _ask(s, "recsys_item_index", {"query": queries[:1], "k": np.array([k], np.int32)})
    found, scores = np.array([int(i) for i in answer["item_ids"]]), answer["scores"]
    assert len(found) == len(set(found.tolist())) == min(k, len(exact)) and set(found.tolist()) <= set(exact)
    np.testing.assert_allclose(scores, [exact[i] for i in found], rtol=1e-4, atol=1e-4)  # each item's own score
    np.testing.assert_allclose(scores, sorted(exact.values(), reverse=True)[: len(found)], rtol=1e-4, atol=1e-4)

    # recsys_ranker: a click probability for each of the first user's unseen candidates ...
    candidates = table.rows_of(found)
    candidates = candidates[(candidates >= 0) & ~np.isin(candidates, seen_rows[0])]
    n = len(candidates)
    values = history[0][: history[1][1]]
    ranker_columns = {
        **{name: np.repeat(column[:1], n) for name, column in user_columns.items()},
        **{name: table.columns[name][candidates] for name in pipeline["item_columns"]},
        "history__values": np.tile(values, n), "history__offsets": np.arange(n + 1) * len(values),
    }
    (clicks,) = _ask(s, "recsys_ranker", ranker_columns).values()
    assert clicks.shape == (n, 1) and ((clicks > 0) & (clicks < 1)).all()
    assert np.ptp(clicks) > 0.01  # the items' features move it
    # ... and the four-stage model's answer is the ranker's best ten of them, with the ranker's probabilities
    # (this version blends nothing in: ranker_weight 1, no ordering rules)
    assert pipeline["scoring"]["ranker_weight"] == 1.0 and not pipeline["ordering"]["boosts"]
    probability = dict(zip(table.ids[candidates].tolist(), clicks[:, 0].tolist()))
    served_pairs = client.recommend(asked[0], 10)
    np.testing.assert_allclose([score for _, score in served_pairs], [probability[item] for item, _ in served_pairs],
                               atol=1e-5)
    left_out = [p for item, p in probability.items() if item not in {i for i, _ in served_pairs}]
    assert served_pairs[-1][1] >= max(left_out) - 1e-5


def test_recommend_end_to_end_over_grpc_and_http(served, client, users, store):
    pairs = client.recommend(users[0], 10, timings=True)
    assert len(pairs) == 10
    # an integer deployment: ids travel as text but the client gives ints back
    assert client.id_kinds.to_dict() == {"user_id": "int", "item_id": "int"}
    assert all(type(item) is int for item, _ in pairs) and client.recommend(str(users[0]), 10) == pairs
    scores = [score for _, score in pairs]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)  # DLRM click probabilities
    assert len({item for item, _ in pairs}) == 10
    assert set(client.last_timings_ms) == {"retrieval", "filtering", "scoring", "ordering"}
    with RecommendClient(served["settings"], "http") as http:
        assert http.recommend(users[0], 10) == pairs
    detailed = client.recommend_with_attributes(users[0], 3)
    assert [d["item_id"] for d in detailed] == [item for item, _ in pairs[:3]]
    assert "category" in detailed[0]  # display attributes from the online store


def test_default_k_and_the_cli(served, client, users, capsys):
    assert len(client.recommend(users[1])) == served["pipeline"]["default_k"]
    import json
    from unittest.mock import patch

    from recsys.cli import main

    with patched_environ(served["settings"].as_env()):
        assert main(["recommend", "--user", str(users[1]), "-k", "4", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [i["item_id"] for i in out["items"]] == [i for i, _ in client.recommend(users[1], 4)]
        assert main(["recommend", "--user", str(users[1]), "-k", "500"]) == 2
        assert "k must be between 1 and" in capsys.readouterr().err
        # --timings: the timings of the one request that gave the answer (not of a second one)
        asked = []
        infer = RecommendClient._infer
        with patch.object(RecommendClient, "_infer", lambda self, *a: asked.append(a) or infer(self, *a)):
            assert main(["recommend", "--user", str(users[1]), "-k", "4", "--json", "--timings"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert len(asked) == 1 and asked[0][-1] is True
        assert set(out["timings_ms"]) == {"retrieval", "filtering", "scoring", "ordering"} and len(out["items"]) == 4


def test_seen_items_never_come_back(client, users, store):
    checked = 0
    for user in users[:15]:
        seen = set(store.seen_items(user).tolist())
        got = [item for item, _ in client.recommend(user, 50)]
        assert got and not (seen & set(got)), (user, seen & set(got))
        checked += bool(seen)
    assert checked >= 10  # the data gives most users a history


def test_context_exclusions(client, users):
    first = [item for item, _ in client.recommend(users[2], 5)]
    again = [item for item, _ in client.recommend(users[2], 5, context={"exclude_items": first[:2]})]
    assert not set(first[:2]) & set(again)
    assert again[:3] == first[2:5]


def test_unavailable_items_never_come_back_and_return_when_available(client, users, store):
    user = users[3]
    before = [item for item, _ in client.recommend(user, 10)]
    cold_before = [item for item, _ in client.recommend(-1, 10)]
    taken = {before[0], before[5], cold_before[0]}
    store.add_unavailable(taken)
    try:
        after = [item for item, _ in client.recommend(user, 10)]
        assert not taken & set(after)
        assert after[:4] == [item for item in before if item not in taken][:4]  # the rest keeps its order
        assert not taken & {item for item, _ in client.recommend(-1, 10)}  # cold start filtered the same way
    finally:
        store.remove_unavailable(taken)
    assert [item for item, _ in client.recommend(user, 10)] == before


def test_unknown_user_gets_the_popularity_list(client, store):
    got = client.recommend(987654321, 10)
    popular = store.popularity(10).tolist()
    assert [item for item, _ in got] == popular
    assert [score for _, score in got] == sorted((score for _, score in got), reverse=True)


def test_deterministic_with_exploration_off(client, users):
    for user in users[:5]:
        assert client.recommend(user, 20) == client.recommend(user, 20)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"k": np.array([0], np.int32)}, "k must be between 1 and"),
        ({"k": np.array([101], np.int32)}, "k must be between 1 and"),
        ({"context": np.array([b"{not json"], dtype=object)}, "context is not valid JSON"),
        ({"context": np.array([b'{"exclude_items": "abc"}'], dtype=object)}, "exclude_items must be a list"),
        ({"context": np.array([b'{"exclude_items": ["SKU-1"]}'], dtype=object)}, "exclude_items: item_id 'SKU-1' is not an integer id"),
        ({"user_id": np.array([1.5], np.float32)}, "expects 'BYTES'"),  # wrong dtype: Triton refuses it
        ({"user_id": np.array([7], np.int64)}, "expects 'BYTES'"),  # ids are text on the wire, integers too
        ({"user_id": None}, "request has 0 inputs"),  # nothing at all: Triton refuses it
        ({"user_id": None, "k": np.array([5], np.int32)}, "give exactly one of 'user_id'"),  # missing
        ({"user_id": np.zeros(0, object)}, "shape"),  # empty
        # a text id sent to an integer deployment: the model's own error, the instance keeps serving
        ({"user_id": np.array([b"abc"], dtype=object)}, "user_id 'abc' is not an integer id; this deployment's user ids are integers"),
        ({"user_id": np.array([b"\xff"], dtype=object)}, "not valid UTF-8"),
    ],
)
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(served, users, inputs, message):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    tensors = {"user_id": np.array([str(users[0]).encode()], dtype=object), **inputs}
    serving_before = ready_model_versions(served["settings"])
    assert "recsys" in dict(serving_before)  # what "unchanged" is checked on: the served model is among them
    client = grpc_client(served["settings"])
    batched = model_uses_batching(client, "recsys")  # on by default: tensors carry the batch dimension
    assert batched == (served["pipeline"]["batch_delay_us"] is not None)
    request = []
    for name, value in tensors.items():
        if value is None:
            continue
        value = value.reshape(1, -1) if batched else value
        tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        request.append(tensor)
    try:
        with pytest.raises(InferenceServerException, match=message):
            client.infer("recsys", request)
    finally:
        client.close()
    with RecommendClient(served["settings"]) as good:
        assert len(good.recommend(users[0], 5)) == 5
    assert ready_model_versions(served["settings"]) == serving_before


def test_ordering_rules_of_a_new_version_then_rollback(served, client, users, store, trained_run):
    s = served["settings"]
    user = users[4]
    v1 = client.recommend(user, 20)
    promoted = v1[-1][0]  # the weakest of the 20 gets a large boost
    # Version 2 also turns dynamic batching off (a negative delay): the client, which last saw a
    # batched config, must follow the new request shape ([1] instead of [1, 1]) by itself.
    rules = replace(s, max_per_category=2, boosts=f"{promoted}=100", triton_batch_delay_us=-1)
    pipeline = repository.pipeline_from_settings(rules, trained_run["manifest"])
    assert pipeline["batch_delay_us"] is None
    repository.write_model_versions(repository.exports_from_run(trained_run["run_dir"]), s.triton_repo, 2, pipeline,
                                    prior_slot=trained_run["prior_slot"])
    assert repository.read_config(s.triton_repo / "recsys" / "2" / "config.pbtxt").max_batch_size == 0
    control.load_model(s, "recsys")
    assert control.model_ready(s, "recsys", 2) and not control.model_ready(s, "recsys", 1)

    v2 = client.recommend(user, 20)
    assert v2[0][0] == promoted
    categories = [d["category"] for d in store.display([item for item, _ in v2])]
    assert max(collections.Counter(categories).values()) <= 2
    assert len(set(categories)) >= 5
    assert client.recommend(user, 20) == v2  # still deterministic (no exploration)

    # rollback: serve version 1 again
    repository.activate_version(s.triton_repo, "recsys", 1)
    control.load_model(s, "recsys")
    assert control.model_ready(s, "recsys", 1)
    assert client.recommend(user, 20) == v1


def test_floor_model_echoes(served):
    import tritonclient.http as httpclient

    s = served["settings"]
    client = http_client(s)
    tensor = httpclient.InferInput("user_id", [1], "BYTES")  # the recsys model's tensor: like-for-like
    tensor.set_data_from_numpy(np.array([b"u-42"], dtype=object))
    assert client.infer("recsys_floor", [tensor]).as_numpy("item_ids").tolist() == [b"u-42"]
    client.close()


def test_loading_a_missing_model_is_a_clear_error(served):
    with pytest.raises(ServingError, match="no-such-model"):
        control.load_model(served["settings"], "no-such-model")


def _reencoded(snapshot, feature_version: str, seed: int = 7):
    """The same entities as if NVTabular had refit on a new data version: every user and item gets
    another one's encoded row, the popularity order changes (what a new feature version looks like
    to the online store; cheaper than a second ETL)."""
    import dataclasses

    from recsys.online.snapshot import content_hashes

    rng = np.random.default_rng(seed)

    def scrambled(rows):
        order = rng.permutation(len(rows.ids))
        features = [rows.features[i] for i in order]
        return dataclasses.replace(rows, features=features, hashes=content_hashes(features, rows.extra))

    return dataclasses.replace(
        snapshot, feature_version=feature_version, users=scrambled(snapshot.users), items=scrambled(snapshot.items),
        popularity=snapshot.popularity[::-1].copy(),
    )


def test_a_refresh_to_another_feature_version_does_not_change_what_the_served_model_answers(
    served, client, users, store, trained_run
):
    """The bug pinning fixes, end to end: the ETL's new feature version is refreshed into Redis (and made
    current) long before a model trained on it serves; the served model must keep reading its own."""
    from recsys.online.snapshot import build_snapshot

    s = served["settings"]
    trained_fv = trained_run["manifest"]["feature_version"]
    asked = [*users[:8], 987654321]  # warm users and a cold one (popularity list)
    before = [client.recommend(user, 10) for user in asked]
    snapshot = build_snapshot(trained_run["features_dir"], trained_run["data_dir"], popularity_size=s.online_popularity_size)
    store.refresh(_reencoded(snapshot, f"{trained_fv}-next"))
    try:
        assert store.current().feature_version == f"{trained_fv}-next"
        # the precondition of the bug: a reader of `current` now gets other rows than the trained version's
        items = [int(i) for i in snapshot.items.ids[:20]]
        unpinned, pinned = store.read(None, items), store.read(None, items, feature_version=trained_fv)
        assert any(not np.array_equal(unpinned.items[c], pinned.items[c]) for c in pinned.items)
        assert [client.recommend(user, 10) for user in asked] == before
    finally:
        store.refresh(snapshot, force=True)  # the trained feature version current again for later tests
