"""The ``recsys`` model with Triton's dynamic batching: many requests answered in one pass of the stages.

Its own home and Triton (one instance, a 20 ms queue delay so concurrent requests surely meet in one
batch), the real exports of tests/serving/conftest.py, the real Redis online store. Answers given in
batches must equal the answers to the same requests sent one by one; a bad request in a batch fails
alone; a new online version with other items (refresh) is picked up by the in-memory item table.
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from recsys.settings import replace
from shared_helpers import running_triton, triton_ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def batched(serving_base, trained_run, tmp_path_factory):
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.refresh import refresh_online_store
    from recsys.serving import control, repository

    s = replace(
        serving_base, home=tmp_path_factory.mktemp("batching-home"), **triton_ports(), triton_instances=1,
        triton_batch_delay_us=20_000, online_key_prefix=f"batching-{uuid.uuid4().hex[:6]}",
    )
    refresh_online_store(str(trained_run["features_dir"]), str(trained_run["data_dir"]), settings=s)
    with running_triton(s):
        store = RedisOnlineStore.from_settings(s)
        try:
            pipeline = repository.pipeline_from_settings(s, trained_run["manifest"])
            assert pipeline["batch_delay_us"] == 20_000
            repository.write_model_versions(repository.exports_from_run(trained_run["run_dir"]), s.triton_repo, 1, pipeline,
                                            prior_slot=trained_run["prior_slot"])
            config = repository.read_config(s.triton_repo / "recsys" / "config.pbtxt")
            assert config.dynamic_batching.max_queue_delay_microseconds == 20000 and config.max_batch_size == 64
            control.load_model(s, "recsys")
            yield s, store
        finally:
            store.client.close()


@pytest.fixture(scope="module")
def users(trained_run):
    import pandas as pd

    ids = pd.read_parquet(trained_run["data_dir"] / "users.parquet")["user_id"].to_numpy()
    return [int(u) for u in ids[:12]]


def _executions(s) -> tuple[int, int]:
    """(requests, model executions) of ``recsys`` so far, from Triton's metrics."""
    text = urllib.request.urlopen(f"http://{s.host}:{s.triton_metrics_port}/metrics", timeout=10).read().decode()

    def total(metric: str) -> int:
        return int(sum(float(v) for v in re.findall(rf'^{metric}{{model="recsys".*}} (\S+)$', text, re.M)))

    return total("nv_inference_request_success"), total("nv_inference_exec_count")


def test_batched_answers_equal_one_by_one_answers(batched, users):
    from recsys.serving.client import RecommendClient

    s, _store = batched
    asks = [(u, 10, None) for u in users] + [(987654321, 5, None), (users[0], 5, {"exclude_items": []})]
    with RecommendClient(s) as client:
        alone = [client.recommend(u, k, c) for u, k, c in asks]  # one request at a time: batches of 1
    requests_before, executions_before = _executions(s)

    def ask(args):
        with RecommendClient(s) as client:
            return client.recommend(*args, timings=True), client.last_timings_ms

    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(ask, asks))
    assert [answer for answer, _ in together] == alone
    assert all(set(timings) == {"retrieval", "filtering", "scoring", "ordering"} for _, timings in together)
    requests_after, executions_after = _executions(s)
    assert requests_after - requests_before == len(asks)
    assert executions_after - executions_before < len(asks)  # some requests shared one model call
    assert len(alone[-2]) == 5 and alone[-2] == sorted(alone[-2], key=lambda p: -p[1])  # cold start


def test_a_bad_request_in_a_batch_fails_alone(batched, users):
    from recsys.serving.client import RecommendClient
    from recsys.serving.control import ServingError

    s, _store = batched

    def ask(k):
        with RecommendClient(s) as client:
            try:
                return client.recommend(users[1], k)
            except ServingError as exc:
                return str(exc)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, [5, 500, 5, 0, 5, 5]))
    assert "k must be between 1 and" in answers[1] and "k must be between 1 and" in answers[3]
    good = [a for i, a in enumerate(answers) if i not in (1, 3)]
    assert all(a == good[0] for a in good) and len(good[0]) == 5


def test_a_new_online_version_and_unavailable_items_are_seen(batched, users, trained_run):
    """The model keeps each online version's items in memory; a refresh to a version with other items
    (one item gone) must change the very next answer, and a refresh back must bring it back."""
    import dataclasses

    from recsys.online.snapshot import build_snapshot
    from recsys.serving.client import RecommendClient

    s, store = batched
    snapshot = build_snapshot(trained_run["features_dir"], trained_run["data_dir"], popularity_size=s.online_popularity_size)
    with RecommendClient(s) as client:
        before = client.recommend(users[2], 10)
        gone = before[0][0]
        # a new version of the same feature version without the user's top item: the model reads it
        # (items the version does not hold are filtered) only if it reloaded its item table
        keep = snapshot.items.ids != gone
        items = dataclasses.replace(
            snapshot.items, ids=snapshot.items.ids[keep], hashes=snapshot.items.hashes[keep],
            features=[f for f, k in zip(snapshot.items.features, keep) if k],
            extra=[e for e, k in zip(snapshot.items.extra, keep) if k],
        )
        old = store.current().version
        store.refresh(dataclasses.replace(snapshot, items=items, popularity=snapshot.popularity[snapshot.popularity != gone]),
                      force=True)
        assert store.current().version != old and store.current().feature_version == snapshot.feature_version
        without = client.recommend(users[2], 10)
        assert gone not in {item for item, _ in without}
        assert [item for item, _ in without[:9]] == [item for item, _ in before[1:]]  # the rest keeps its order
        np.testing.assert_allclose([sc for _, sc in without[:9]], [sc for _, sc in before[1:]], atol=1e-6)
        # back to every item: a third version, the first answer again
        store.refresh(snapshot, force=True)
        assert client.recommend(users[2], 10) == before
        taken = [item for item, _ in before[:2]]
        store.add_unavailable(taken)
        try:
            after = [item for item, _ in client.recommend(users[2], 10)]
            assert not set(taken) & set(after)
            assert after[:8] == [item for item, _ in before[2:]]
        finally:
            store.remove_unavailable(taken)
        assert np.allclose([sc for _, sc in client.recommend(users[2], 10)], [sc for _, sc in before])


def test_the_offline_batch_and_the_publish_smoke_test_send_the_batched_shape(batched, users):
    from recsys.serving.batch import precompute, read_precomputed
    from recsys.serving.client import RecommendClient
    from recsys.serving.smoke import default_smoke_test

    s, _store = batched
    smoke = default_smoke_test(s, {"recsys": 1}, {"smoke_user_id": users[0]})
    result = precompute(top_n=5, force=True, settings=s)
    assert result.users >= len(users)
    with RecommendClient(s) as client:
        assert smoke["recsys"]["item_ids"] == [item for item, _ in client.recommend(users[0], 5)]
        for user in users[:3]:
            assert [i for i, _ in read_precomputed(user, settings=s)] == [i for i, _ in client.recommend(user, 5)]
