"""The HTTP API (recsys.api) in front of the real served model: the session's trained run served by the
session's Triton (tests/serving/conftest.py ``served``: the four stages), its online store, the API
service running as a process of its own (``ApiService``), and a live applier applying the event log
as the event worker does.

Here rather than in tests/api because it needs this folder's session fixtures (the trained run takes
minutes of ETL and training; the served Triton is shared); tests/api covers what the API does without
Triton. Users of its own (other modules ask about the first 40 and 60-80); their live state is removed
afterwards.
"""

from __future__ import annotations

import re
import threading
import time
import uuid

import httpx
import pytest

from recsys.settings import replace
from shared_helpers import patched_environ

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def api_served(served, store, tmp_path_factory):
    """The API service (a home of its own: token, log) in front of the served Triton, and a live applier."""
    from recsys.events.live import LiveApplier
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.stack.api import ApiService
    from recsys.stack.service import free_port

    s = replace(served["settings"], home=tmp_path_factory.mktemp("api-serving-home"), api_port=free_port(),
                api_url=None, api_token=None)
    applier_store = RedisOnlineStore.from_settings(s)
    stop = threading.Event()
    # the event worker's job: apply the event log to the live layer, milliseconds after each accept
    applier = threading.Thread(target=LiveApplier(applier_store, f"api-tests-{uuid.uuid4().hex[:6]}").run,
                               args=(stop, 100), daemon=True)
    with patched_environ({"RECSYS_API_URL": None, "RECSYS_API_TOKEN": None}):
        service = ApiService(s)
    service.up()
    applier.start()
    touched: set = set()
    try:
        yield {"settings": s, "service": service, "store": store, "touched": touched}
    finally:
        stop.set()
        applier.join(timeout=10)
        service.down()
        applier_store.client.close()
        for user in touched:
            store.client.delete(f"{store.live_prefix}s:{user}")


@pytest.fixture(scope="module")
def http(api_served):
    from recsys.api.token import token_file

    s = api_served["settings"]
    token = token_file(s).read_text().strip()
    with httpx.Client(base_url=s.api, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def users(trained_run):
    import pandas as pd

    return [int(u) for u in pd.read_parquet(trained_run["data_dir"] / "users.parquet")["user_id"].to_numpy()[80:100]]


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def test_recommendations_are_the_four_stages_with_attributes_and_a_request_id(http, api_served, users):
    from recsys.serving.client import RecommendClient

    response = http.get(f"/v1/recommendations/{users[0]}", params={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"]) and response.headers["x-request-id"] == body["request_id"]
    assert body["user_id"] == str(users[0]) and len(body["items"]) == 5
    with RecommendClient(api_served["settings"]) as client:  # the same answer as Triton's own client gets
        assert [(i["item_id"], pytest.approx(i["score"])) for i in body["items"]] == client.recommend(users[0], 5)
    assert all("category" in item["attributes"] for item in body["items"])  # display attributes from Redis
    assert set(body["timings_ms"]) == {"retrieval", "filtering", "scoring", "ordering"}
    again = http.get(f"/v1/recommendations/{users[0]}", params={"k": 5}).json()
    assert again["request_id"] != body["request_id"]
    log = api_served["service"].processes[0].log_file.read_text()
    assert f"request_id={body['request_id']} user={users[0]}" in log  # logged, to join with the events naming it

    metrics = httpx.get(f"{api_served['settings'].api}/metrics").text
    for stage in ("retrieval", "filtering", "scoring", "ordering"):
        found = re.search(rf'^recsys_serving_stage_duration_seconds_count\{{stage="{stage}"\}} (\S+)$', metrics, re.MULTILINE)
        assert found and float(found.group(1)) >= 2, stage


def test_exclusions_and_triton_bad_requests(http, users):
    first = [i["item_id"] for i in http.get(f"/v1/recommendations/{users[1]}", params={"k": 6}).json()["items"]]
    comma = http.get(f"/v1/recommendations/{users[1]}", params={"k": 6, "exclude": f"{first[0]},{first[1]}"}).json()
    repeated = http.get(f"/v1/recommendations/{users[1]}", params=[("k", 6), ("exclude", first[0]), ("exclude", first[1])]).json()
    for answer in (comma, repeated):
        got = [i["item_id"] for i in answer["items"]]
        assert len(got) == 6 and not {first[0], first[1]} & set(got) and got[:4] == first[2:]

    bad_user = http.get("/v1/recommendations/abc")
    assert bad_user.status_code == 400, bad_user.text
    assert "bad request" in bad_user.json()["detail"] and "is not an integer id" in bad_user.json()["detail"]
    bad_exclude = http.get(f"/v1/recommendations/{users[1]}", params={"exclude": "SKU-1"})
    assert bad_exclude.status_code == 400 and "exclude 'SKU-1' is not an integer id" in bad_exclude.json()["detail"]


def test_a_purchase_leaves_the_next_recommendations(http, api_served, users):
    user = users[2]
    api_served["touched"].add(user)
    before = http.get(f"/v1/recommendations/{user}", params={"k": 5}).json()
    bought = before["items"][0]["item_id"]
    event = {"user_id": user, "item_id": bought, "event_type": "purchase", "timestamp": now_iso(),
             "request_id": before["request_id"]}
    accepted = http.post("/v1/events", json={"events": [event]})
    assert accepted.status_code == 202 and accepted.json()["accepted"] == 1, accepted.text

    deadline = time.monotonic() + 10  # the applier applies it milliseconds after the accept
    while True:
        after = [i["item_id"] for i in http.get(f"/v1/recommendations/{user}", params={"k": 5}).json()["items"]]
        if bought not in after or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert bought not in after, f"item {bought} was purchased but is still recommended: {after}"
    assert len(after) == 5
    counts = http.get(f"/v1/items/{bought}/activity", params={"event_type": "purchase"}).json()["counts"]
    assert counts["purchase"]["1h"] >= 1


def test_similar_items(http, api_served):
    store = api_served["store"]
    item = int(store.popularity(1)[0])
    response = http.get(f"/v1/items/{item}/similar", params={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["item_id"] == item and len(body["items"]) == 5
    neighbours = [i["item_id"] for i in body["items"]]
    assert item not in neighbours and len(set(neighbours)) == 5
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["attributes"] for item in body["items"])

    store.add_unavailable([neighbours[0]])  # unavailable items leave the neighbours at once
    try:
        assert neighbours[0] not in [i["item_id"] for i in http.get(f"/v1/items/{item}/similar", params={"k": 5}).json()["items"]]
    finally:
        store.remove_unavailable([neighbours[0]])

    unknown = http.get("/v1/items/99999999/similar")
    assert unknown.status_code == 404 and "not in the served catalogue" in unknown.json()["detail"]
    assert http.get(f"/v1/items/{item}/similar", params={"k": 0}).status_code == 422


def test_health_when_everything_answers(api_served):
    s = api_served["settings"]
    health = httpx.get(f"{s.api}/healthz").json()
    assert health == {"status": "ok", "redis": True, "triton": True, "online_version": api_served["store"].current().version}
