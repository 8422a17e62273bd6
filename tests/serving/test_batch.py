"""Offline mode against real services: a real Triton serving a ``recsys`` model, a real Redis online store.

The ``recsys`` model here is a tiny python-backend model with the served model's contract
(``user_id``, ``k`` -> ``item_ids``, ``scores``) whose answer is a known function of the user, so the
precomputed lists can be checked exactly; it refuses one user on demand (a request that fails).
"""

from __future__ import annotations

import pytest

from recsys.settings import replace

from shared_helpers import running_triton, toy_config, toy_source, triton_ports
from shared_helpers import toy_expected as expected  # noqa: F401  (the tests call it `expected`)


def serve_toy(s, version: int, refused: tuple[int, ...] = (), legacy: bool = False) -> None:
    from recsys.serving.control import load_model

    folder = s.triton_repo / "recsys"
    (folder / str(version)).mkdir(parents=True)
    (folder / str(version) / "model.py").write_text(toy_source(refused, legacy))
    (folder / "config.pbtxt").write_text(toy_config(instances=2, legacy=legacy))
    load_model(s, "recsys")


@pytest.fixture(scope="module")
def batch_settings(stack_settings, tmp_path_factory):
    """A home of our own with a feature version refreshed into Redis (200 users) and our own Triton."""
    from recsys.online.refresh import refresh_online_store
    from online_sample import write_sample_versions

    home = tmp_path_factory.mktemp("batch-home")
    s = replace(
        stack_settings, home=home, **triton_ports(), online_key_prefix="batch-tests", batch_top_n=5, batch_concurrency=4,
    )
    features = write_sample_versions(home, n_users=200, n_items=50)
    refresh_online_store(str(features), settings=s)
    with running_triton(s):
        yield s


def test_precompute_read_noop_force_and_refused_request(batch_settings):
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.serving.batch import BatchError, current_batch, precompute, read_precomputed

    s = batch_settings
    serve_toy(s, 1)
    first = precompute(settings=s, airflow_run="recsys_batch_recommendations/t1", chunk_size=64)
    assert not first.skipped and first.users == 200 and first.model_version == 1
    assert first.feature_version and first.online_version
    assert read_precomputed(1000, settings=s) == [(i, pytest.approx(1.0 - j / 100.0)) for j, i in enumerate(expected(1000, 5))]
    assert [i for i, _ in read_precomputed(1199, k=3, settings=s)] == expected(1199, 3)
    assert read_precomputed(99_999, settings=s) is None  # not a known user: the caller asks the online path
    meta = current_batch(s)
    assert meta["batch"] == first.batch and meta["users"] == "200" and meta["airflow_run"].endswith("/t1")

    # The same served version over the same online version: nothing to do.
    again = precompute(settings=s)
    assert again.skipped and again.batch == first.batch

    # Items taken off sale after the batch ran are filtered when read.
    store = RedisOnlineStore.from_settings(s)
    store.add_unavailable([expected(1000, 5)[0]])
    assert [i for i, _ in read_precomputed(1000, settings=s)] == expected(1000, 5)[1:]
    store.remove_unavailable([expected(1000, 5)[0]])
    store.client.close()

    # A new served version whose model refuses a user: the batch fails, nothing is switched or left.
    serve_toy(s, 2, refused=(1042,))
    with pytest.raises(BatchError, match="refused user 1042"):
        precompute(settings=s)
    store = RedisOnlineStore.from_settings(s)
    r = store.client
    assert current_batch(s)["batch"] == first.batch
    assert sorted(k.decode() for k in r.scan_iter(match=store.batch_prefix + "*:r")) == [store.batch_key(first.batch, "r")]

    # Forced on a good version 3: a new batch replaces the old one, whose keys are gone.
    serve_toy(s, 3)
    forced = precompute(settings=s, force=True)
    assert forced.model_version == 3 and forced.batch != first.batch and forced.removed_batches == 1
    assert sorted(k.decode() for k in r.scan_iter(match=store.batch_prefix + "*:r")) == [store.batch_key(forced.batch, "r")]
    assert [i for i, _ in read_precomputed(1000, settings=s)] == expected(1000, 5)
    r.close()


def test_a_version_published_before_ids_were_text_is_still_served(batch_settings):
    """A rollback can serve a version whose config has INT64 ids: callers follow the served config."""
    from recsys.serving.batch import precompute, read_precomputed
    from recsys.serving.client import RecommendClient

    s = batch_settings
    serve_toy(s, 4)
    with RecommendClient(s, "http") as client:
        assert client.recommend(1000, 5) == [(i, pytest.approx(1.0 - j / 100.0)) for j, i in enumerate(expected(1000, 5))]
        serve_toy(s, 5, legacy=True)  # the model reloads with the old contract under the client's feet
        pairs = client.recommend("1001", 5)
        assert [i for i, _ in pairs] == expected(1001, 5) and all(type(i) is int for i, _ in pairs)
    result = precompute(settings=s, force=True)
    assert result.model_version == 5 and read_precomputed(1002, k=3, settings=s) == [
        (i, pytest.approx(1.0 - j / 100.0)) for j, i in enumerate(expected(1002, 3))
    ]
