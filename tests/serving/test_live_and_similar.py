"""Online effects within a second, and similar items, through the real Triton and the real Redis.

The session's served version 1 (tests/serving/conftest.py ``served``: the real trained run) answers;
events go the way the API sends them: validated (``recsys.events.validation``), accepted into the
event log, applied to the live layer (``recsys.events.live.apply_pending``: the event worker's job).

- a purchase of the top item: the very next answer no longer holds it;
- an unknown user with a few events: answered by the models from those events, not the popularity list;
- similar items: cosine over the exported vectors without the prior slot, the item itself,
  unavailable items left out, k respected, clear errors for bad requests;
- a user without live items: exactly the answer of the engine that does not read the live layer
  (the Merlin interpreter runs the engine itself, beside the served one).

Each test uses users of its own and removes their live state afterwards (other modules share the
served version and the online key prefix).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest

from recsys.serving.control import ServingError
from shared_helpers import ready_model_versions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def users(trained_run):
    """Known users no other module asks about (they take the first 40)."""
    import pandas as pd

    ids = pd.read_parquet(trained_run["data_dir"] / "users.parquet")["user_id"].to_numpy()
    return [int(u) for u in ids[60:80]]


@pytest.fixture(scope="module")
def vectors(trained_run):
    """``{raw item id: exported vector without the prior slot}`` (float64), what similarity is over."""
    import pyarrow.parquet as pq

    table = pq.read_table(trained_run["run_dir"] / "retrieval" / "item_embeddings.parquet")
    raw = table.column("item_id_raw").to_pylist()
    full = np.array(table.column("embedding").to_pylist(), dtype=np.float64)
    return {"ids": np.array(raw), "full": full, "plain": full[:, :-1] if trained_run["prior_slot"] else full}


@pytest.fixture
def live(served, store):
    """``live(events)``: validate, accept and apply events (dicts as the API takes them); the users
    they name lose their live state when the test ends."""
    from recsys.events.live import apply_pending
    from recsys.events.validation import EventRules, validate_events

    rules = EventRules.from_store(store, served["settings"])
    touched: set = set()

    def send(events: list[dict]) -> None:
        now = time.time()
        for n, event in enumerate(events):
            event.setdefault("timestamp", now - (len(events) - n) * 0.01)  # in order, the last newest
        store.accept_events(validate_events(events, rules))
        apply_pending(store)
        touched.update(e["user_id"] for e in events)

    yield send
    for user in touched:
        store.client.delete(f"{store.live_prefix}s:{user}")


def items_of(pairs) -> list:
    return [item for item, _ in pairs]


def cosines(vectors, of: np.ndarray) -> np.ndarray:
    """Cosine of ``of`` (a vector without the slot) with every exported item."""
    plain = vectors["plain"]
    return plain @ of / (np.linalg.norm(plain, axis=1) * np.linalg.norm(of))


def test_a_purchase_leaves_the_very_next_answer(client, users, live, store):
    user, other = users[0], users[1]
    before, other_before = client.recommend(user, 10), client.recommend(other, 10)
    bought = before[0][0]
    live([{"user_id": user, "item_id": bought, "event_type": "purchase"}])
    assert bought in store.live_items(user).tolist()
    after = items_of(client.recommend(user, 10))
    assert bought not in after and len(after) == 10
    assert not set(store.seen_items(user).tolist()) & set(after)  # the batch seen list still filters
    assert client.recommend(other, 10) == other_before  # nobody else's answer moves


def test_an_unknown_user_with_events_is_answered_by_the_models_from_them(client, live, vectors):
    popular = client.recommend(987_654_321, 10)  # unknown, no events: the popularity list
    viewed = [int(i) for i in vectors["ids"][[3, 17, 42]]]
    others = [int(i) for i in vectors["ids"][[7, 99, 150]]]
    live([{"user_id": 990_000_001, "item_id": item, "event_type": "view"} for item in viewed])
    live([{"user_id": 990_000_003, "item_id": item, "event_type": "view"} for item in viewed])
    live([{"user_id": 990_000_004, "item_id": item, "event_type": "view"} for item in others])
    got = client.recommend(990_000_001, 10)
    assert len(got) == 10 and items_of(got) != items_of(popular) and not set(viewed) & set(items_of(got))
    # the models' answer (fused ranker scores), not the cold start's rank placeholders 1, 0.99, ...
    cold_scores = [score for _, score in popular]
    assert [score for _, score in got] != pytest.approx(cold_scores)
    # a function of the events: the same events, the same answer; other events, another answer
    assert client.recommend(990_000_003, 10) == got
    assert items_of(client.recommend(990_000_004, 10)) != items_of(got)
    # another unknown user without events still gets the popularity list
    assert client.recommend(990_000_002, 10) == popular


def test_similar_items_are_the_nearest_by_cosine_without_the_item_and_what_is_off_sale(
    client, store, vectors, trained_run
):
    item = int(vectors["ids"][5])
    got = client.similar(item, 8)
    assert len(got) == 8 and item not in items_of(got)
    scores = [score for _, score in got]
    assert scores == sorted(scores, reverse=True)
    position = {i: n for n, i in enumerate(vectors["ids"].tolist())}
    similarity = cosines(vectors, vectors["plain"][position[item]])
    # the scores are the cosines over the vectors without the prior slot, and no nearer item is missing
    assert np.allclose(scores, [similarity[position[i]] for i in items_of(got)], atol=1e-4)
    similarity[position[item]] = -np.inf
    assert scores[-1] >= np.sort(similarity)[::-1][7] - 1e-5
    if trained_run["prior_slot"]:  # with the slot, the cosines would be others
        full = vectors["full"]
        with_slot = full @ full[position[item]] / (np.linalg.norm(full, axis=1) * np.linalg.norm(full[position[item]]))
        assert not np.allclose(scores, [with_slot[position[i]] for i in items_of(got)], atol=1e-4)
    assert len(client.similar(item)) == 10  # the model's default k
    assert items_of(client.similar(str(item), 3)) == items_of(got)[:3]  # the id as text: the same item

    nearest = got[0][0]
    store.add_unavailable([nearest])
    try:
        after = client.similar(item, 8)
        assert nearest not in items_of(after)
        assert after[:7] == got[1:]  # the others keep their places and scores; one more joins at the end
    finally:
        store.remove_unavailable([nearest])
    assert client.similar(item, 8) == got


def test_similar_items_through_the_cli(served, client, vectors, capsys):
    from recsys.cli import main
    from shared_helpers import patched_environ

    item = int(vectors["ids"][7])
    with patched_environ(served["settings"].as_env()):
        assert main(["similar", "--item", str(item), "-k", "4", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["item_id"] == item and [i["item_id"] for i in out["items"]] == items_of(client.similar(item, 4))
        assert "category" in out["items"][0]  # display attributes from the online store
        assert main(["similar", "--item", "99999999"]) == 2
        assert "item_id 99999999 is unknown" in capsys.readouterr().err


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"user_id": b"7", "item_id": b"12"}, "give exactly one of 'user_id' .* and 'item_id' .* got both"),
        ({"k": 5}, "give exactly one of 'user_id' .* and 'item_id' .* got neither"),
        ({"item_id": b"99999999"}, "item_id 99999999 is unknown: the served model's index does not hold it"),
        ({"item_id": b"SKU-1"}, "item_id 'SKU-1' is not an integer id"),
        ({"item_id": b"12", "k": 0}, "k must be between 1 and"),
    ],
)
def test_bad_similar_requests_get_clear_errors(served, client, vectors, inputs, message):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from recsys.serving.triton_client import grpc_client

    serving_before = ready_model_versions(served["settings"])
    assert "recsys" in dict(serving_before)  # what "unchanged" is checked on: the served model is among them
    raw = grpc_client(served["settings"])
    batched = served["pipeline"]["batch_delay_us"] is not None
    request = []
    for name, value in inputs.items():
        array = np.array([value], dtype=object if isinstance(value, bytes) else np.int32)
        array = array.reshape(1, -1) if batched else array
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "INT32")
        tensor.set_data_from_numpy(array)
        request.append(tensor)
    try:
        with pytest.raises(InferenceServerException, match=message):
            raw.infer("recsys", request)
    finally:
        raw.close()
    with pytest.raises(ServingError, match="is unknown"):
        client.similar(99_999_999)
    assert len(client.similar(int(vectors["ids"][0]), 3)) == 3  # the server keeps serving
    assert ready_model_versions(served["settings"]) == serving_before  # the same versions


ENGINE_SIDE_BY_SIDE = """
import json, sys
from pathlib import Path
from recsys.online.redis_store import RedisOnlineStore
from recsys.serving.engine import FourStageRecommender, Query, configure_tensorflow_threads

configure_tensorflow_threads()
version_dir, users, item, newcomer = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
store = RedisOnlineStore.from_settings()
pipeline = json.loads((version_dir / "pipeline.json").read_text())
assert "live" in pipeline
without = {key: value for key, value in pipeline.items() if key != "live"}  # a version that reads no live layer
answers = {}
for name, settings in (("live", pipeline), ("no_live", without)):
    engine = FourStageRecommender(version_dir, store, settings)
    answers[name] = [[r.item_ids.tolist(), r.scores.tolist()] for r in engine.recommend_many([Query(u, 20) for u in users])]
# a model without a history input answers a newcomer with the cosine neighbours of their events' session
historyless = FourStageRecommender(version_dir, store, {**pipeline, "history_length": 0})
answers["newcomer"] = historyless.recommend(newcomer, 10).item_ids.tolist()
popular = FourStageRecommender(version_dir, store, {**pipeline, "mode": "popularity"})
try:
    popular.similar(item, 5)
except Exception as exc:
    answers["popularity_similar"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(answers))
"""


def test_users_without_live_items_get_exactly_the_answer_of_the_old_path(served, client, users, live, trained_run,
                                                                          vectors):
    """The engine with the live layer and the engine without it (a version published before it), side by
    side in the Merlin interpreter on the same online store; and the served answers. And a model without
    a history input answers a newcomer with their session's cosine neighbours."""
    s = served["settings"]
    with_events = users[5]
    clicked = items_of(client.recommend(with_events, 3))
    live([{"user_id": with_events, "item_id": item, "event_type": "click"} for item in clicked])
    newcomer = 990_000_009
    live([{"user_id": newcomer, "item_id": item, "event_type": "view"} for item in clicked])
    asked = [*users[2:5], with_events, 987_654_321]  # three warm users, one with events, one unknown
    done = subprocess.run(
        [str(s.merlin_python), "-c", ENGINE_SIDE_BY_SIDE, str(s.triton_repo / "recsys" / "1"), json.dumps(asked),
         json.dumps(int(users[0])), json.dumps(newcomer)],
        env={**os.environ, **s.as_env()}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    for n, user in enumerate(asked):
        with_live, without = answers["live"][n], answers["no_live"][n]
        if user == with_events:
            assert with_live != without  # the live path is on: its events changed this user's answer
            continue
        assert with_live == without, user  # same items, same scores (bit for bit)
        served_now = client.recommend(user, 20)
        assert items_of(served_now) == without[0] and np.allclose([sc for _, sc in served_now], without[1], atol=1e-7)
    assert "BadRequest: similar items need a trained model" in answers["popularity_similar"]
    # a history-less model's newcomer: the nearest items of their session (recency weights 1, 1/2, 1/3, newest first)
    got = answers["newcomer"]
    position = {item: n for n, item in enumerate(vectors["ids"].tolist())}
    unit = vectors["plain"] / np.linalg.norm(vectors["plain"], axis=1, keepdims=True)
    session = sum(unit[position[item]] / (j + 1) for j, item in enumerate(clicked[::-1]))
    similarity = cosines(vectors, session)
    similarity[[position[i] for i in clicked]] = -np.inf
    tenth = np.sort(similarity)[::-1][9]
    assert len(got) == 10 and not set(clicked) & set(got)
    assert all(similarity[position[item]] >= tenth - 1e-5 for item in got), "not the session's nearest items"
