"""The HTTP API through a real HTTP client, against the real service (uvicorn in its own process) on a
real Redis: auth, events accepted or refused whole, live counters, metrics, OpenAPI, errors."""

from __future__ import annotations

import re

import httpx
import pytest
from api_helpers import API_ENV_CLEARED, ITEMS, USERS, event, log_length

from recsys.events.live import apply_pending

V1_ROUTES = [
    ("POST", "/v1/events"),
    ("GET", "/v1/recommendations/1001"),
    ("GET", "/v1/items/5001/similar"),
    ("GET", "/v1/items/5001/activity"),
    ("GET", "/v1/users/1001/activity"),
]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus exposition text (labels matched exactly)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "") + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"no sample {name}{{{wanted}}} in /metrics"
    return float(found.group(1))


def test_every_v1_route_needs_the_token(api, token):
    with httpx.Client(base_url=api.url, timeout=30) as anonymous:
        for method, path in V1_ROUTES:
            missing = anonymous.request(method, path, json={"events": [event()]})
            assert missing.status_code == 401, (path, missing.text)
            assert missing.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in missing.json()["detail"]
            basic = anonymous.request(method, path, headers={"Authorization": f"Basic {token}"})
            assert basic.status_code == 401, path  # not a bearer token: as good as none
            wrong = anonymous.request(method, path, headers={"Authorization": f"Bearer {token}x"})
            assert wrong.status_code == 403, (path, wrong.text)
        right = anonymous.get("/v1/users/1001/activity", headers={"Authorization": f"Bearer {token}"})
        assert right.status_code == 200, right.text
        # operations routes answer without a token
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/metrics").status_code == 200


def test_the_generated_token_is_kept_0600_and_never_logged(api, api_settings, token):
    from recsys.api.token import ensure_token, token_file

    path = token_file(api_settings)
    assert path == api_settings.home / "services" / "api" / "token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(token) >= 40 and ensure_token(api_settings) == token  # kept, not regenerated
    status = api.status()
    assert status["token_file"] == str(path) and status["url"] == api_settings.api and status["answering"]
    log = api.processes[0].log_file
    assert log == api_settings.home / "services" / "api" / "api.log" and log.exists()
    assert token not in log.read_text()


def test_a_bad_batch_is_refused_whole_naming_each_event(http, store):
    user = int(USERS[5])
    before_log, before_live = log_length(store), store.live_items(user).tolist()
    batch = [
        event(user, int(ITEMS[1])),  # fine on its own
        event(user, int(ITEMS[2]), event_type="like"),
        event(user, 999_999),  # not in the catalogue
        event(user, int(ITEMS[3]), timestamp="2001-01-01T00:00:00Z"),
        event("abc", int(ITEMS[3]), extra="x"),
    ]
    response = http.post("/v1/events", json={"events": batch})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"].startswith("4 of 5 event(s) refused; nothing was applied")
    problems = {(p["index"], p["field"]): p["reason"] for p in body["problems"]}
    assert set(problems) == {(1, "event_type"), (2, "item_id"), (3, "timestamp"), (4, "extra"), (4, "user_id")}
    assert "'like' is not one of" in problems[(1, "event_type")] and "RECSYS_EVENT_TYPES" in problems[(1, "event_type")]
    assert "999999 is not in the served catalogue" in problems[(2, "item_id")]
    assert "older than" in problems[(3, "timestamp")]
    assert "not an integer id" in problems[(4, "user_id")]
    # nothing accepted: not even the good first event
    assert log_length(store) == before_log
    apply_pending(store)
    assert store.live_items(user).tolist() == before_live


def test_a_good_batch_is_accepted_and_applied_by_the_live_applier(http, store):
    user, item = int(USERS[6]), int(ITEMS[7])
    before = log_length(store)
    response = http.post("/v1/events", json={"events": [event(user, item), event(str(user), str(ITEMS[8]), "view",
                                                                                   request_id="req-1")]})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 2 and body["first_id"] and body["last_id"] and body["first_id"] != body["last_id"]
    assert log_length(store) == before + 2  # durable at once
    apply_pending(store)  # what the event worker's live applier does, milliseconds later
    assert store.live_items(user).tolist() == [int(ITEMS[8]), item]  # newest first

    activity = http.get(f"/v1/items/{item}/activity", params={"event_type": "purchase"}).json()
    assert activity == {"id": item, "counts": {"purchase": {"1h": 1, "24h": 1}}, "windows": {"1h": 3600, "24h": 86400}}
    mine = http.get(f"/v1/users/{user}/activity").json()
    assert mine["counts"] == {"view": {"1h": 1, "24h": 1}, "purchase": {"1h": 1, "24h": 1}}


def test_malformed_and_oversized_bodies(http, api_settings, store):
    before = log_length(store)
    not_json = http.post("/v1/events", content=b"{not json", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["problems"][0]["field"] == "body"
    no_events = http.post("/v1/events", json={"event": [event()]})
    assert no_events.status_code == 422 and no_events.json()["problems"][0]["field"] == "events"
    not_a_list = http.post("/v1/events", json={"events": event()})
    assert not_a_list.status_code == 422 and "must be a list" in not_a_list.json()["problems"][0]["reason"]
    empty = http.post("/v1/events", json={"events": []})
    assert empty.status_code == 422 and "empty" in empty.json()["problems"][0]["reason"]
    too_many = http.post("/v1/events", json={"events": [event()] * (api_settings.events_max_batch + 1)})
    assert too_many.status_code == 413, too_many.text
    problem = too_many.json()["problems"][0]
    assert problem["index"] == -1 and "at most 50 (RECSYS_EVENTS_MAX_BATCH)" in problem["reason"]
    assert log_length(store) == before


# (method, path, keyword arguments of the request, headers instead of the right token's (None: the right
# token)) -> (status, what the answer must name);
# docs/bad-inputs.md lists these cases
BAD_REQUESTS = {
    "no_token": ("POST", "/v1/events", {"json": {"events": [event()]}}, {},
                 (401, ["missing bearer token: send 'Authorization: Bearer <token>'"])),
    "wrong_token": ("POST", "/v1/events", {"json": {"events": [event()]}}, {"Authorization": "Bearer nope"},
                    (403, ["invalid API token"])),
    "user_id_an_object": ("POST", "/v1/events", {"json": {"events": [event(user={"id": 1})]}}, None,
                          (422, ["user_id: user_id {'id': 1} is not an integer id"])),
    "item_id_a_fraction": ("POST", "/v1/events", {"json": {"events": [event(item=5007.5)]}}, None,
                           (422, ["item_id: item_id 5007.5 is not an integer id"])),
    "timestamp_a_list": ("POST", "/v1/events", {"json": {"events": [event(timestamp=[1, 2])]}}, None,
                         (422, ["timestamp: [1, 2] is neither ISO-8601 text nor a unix epoch number"])),
    "event_type_a_number": ("POST", "/v1/events", {"json": {"events": [event(event_type=3)]}}, None,
                            (422, ["event_type: 3 is not one of impression", "(RECSYS_EVENT_TYPES)"])),
    "k_not_a_number": ("GET", "/v1/recommendations/1001", {"params": {"k": "ten"}}, None,
                       (422, ["['query', 'k']", "'input': 'ten'"])),
    "k_zero": ("GET", "/v1/recommendations/1001", {"params": {"k": 0}}, None,
               (422, ["['query', 'k']", "greater than or equal to 1"])),
    "text_item_id_in_an_integer_deployment": ("GET", "/v1/items/SKU-1/activity", {}, None,
                                              (400, ["item_id 'SKU-1' is not an integer id"])),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_name_what_is_wrong_and_nothing_is_accepted(case, http, store):
    method, path, request, headers, (status, fragments) = BAD_REQUESTS[case]
    user = 1001  # the events' user (event()'s default)
    apply_pending(store)  # what earlier tests accepted is applied before the "before"
    before_log, before_live, before_version = log_length(store), store.live_items(user).tolist(), store.current().version
    if headers is None:
        response = http.request(method, path, **request)
    else:
        response = httpx.request(method, str(http.base_url.join(path)), headers=headers, timeout=30, **request)
    assert response.status_code == status, response.text
    body = response.json()
    named = " ".join([str(body.get("detail"))] + [f"{p['field']}: {p['reason']}" for p in body.get("problems", [])])
    assert all(fragment in named for fragment in fragments), body
    assert log_length(store) == before_log  # no event accepted ...
    apply_pending(store)
    assert store.live_items(user).tolist() == before_live  # ... nor applied
    assert store.current().version == before_version


def test_activity_of_an_unknown_item_or_event_type(http):
    assert http.get("/v1/items/999999/activity").status_code == 404
    assert "not in the served catalogue" in http.get("/v1/items/999999/activity").json()["detail"]
    assert http.get("/v1/items/SKU-1/activity").status_code == 400  # an integer deployment
    bad_type = http.get("/v1/items/5001/activity", params={"event_type": "like"})
    assert bad_type.status_code == 422 and "RECSYS_EVENT_TYPES" in bad_type.json()["detail"]


def test_triton_not_answering_is_503_and_health_says_so(http, api_settings, store):
    down = http.get("/v1/recommendations/1001", params={"k": 3})
    assert down.status_code == 503, down.text
    assert f"Triton at {api_settings.triton_grpc} (gRPC) is not answering" in down.json()["detail"]
    assert http.get("/v1/items/5001/similar").status_code == 503
    too_many = http.get("/v1/recommendations/1001", params={"k": api_settings.recommend_max_k + 1})
    assert too_many.status_code == 422  # k is bounded before Triton is asked
    health = http.get("/healthz").json()
    assert health == {"status": "degraded", "redis": True, "triton": False, "online_version": store.current().version}


def test_metrics_count_events_and_show_freshness(api, http, store):
    from recsys.events.freshness import freshness

    http.post("/v1/events", json={"events": [event(int(USERS[7]), int(ITEMS[9]))]})
    assert http.get("/v1/users/1001/activity").status_code == 200
    http.post("/v1/events", json={"events": [event(int(USERS[7]), 999_999), event()]})  # 2 refused
    text = httpx.get(f"{api.url}/metrics", timeout=30).text  # no token needed
    accepted = metric(text, "recsys_events_accepted_total", source="api")
    refused = metric(text, "recsys_events_refused_total", source="api")
    assert accepted >= 1 and refused >= 2
    assert metric(text, "recsys_event_accept_lag_seconds_count", source="api") >= 1
    assert metric(text, "recsys_api_request_duration_seconds_count", method="POST", route="/v1/events", status="202") >= 1
    assert metric(text, "recsys_api_request_duration_seconds_count", method="POST", route="/v1/events", status="422") >= 1
    assert 'route="/v1/users/{user_id}/activity"' in text and "/v1/users/1001" not in text  # templates, never ids
    figures = freshness(store)
    assert metric(text, "recsys_freshness_up") == 1
    assert metric(text, "recsys_freshness_events_accepted") == figures["events_accepted"] >= accepted
    assert metric(text, "recsys_freshness_events_backlog") == figures["events_backlog"]
    assert metric(text, "recsys_freshness_online_version_info", version=figures["online_version"]) == 1
    assert 0 <= metric(text, "recsys_freshness_last_event_age_seconds") < 60
    assert metric(text, "recsys_freshness_online_version_age_seconds") >= 0


def test_openapi_lists_the_routes_and_documents_the_event_body(api):
    schema = httpx.get(f"{api.url}/openapi.json", timeout=30).json()
    paths = schema["paths"]
    for method, path in V1_ROUTES:
        template = re.sub(r"/\d+", lambda m: "/{item_id}" if "/items" in path else "/{user_id}", path)
        assert method.lower() in paths[template], template
    assert {"/healthz", "/metrics"} <= set(paths)
    events = paths["/v1/events"]["post"]
    assert events["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/EventsRequest"
    assert {"202", "401", "403", "413", "422", "503"} <= set(events["responses"])
    components = schema["components"]["schemas"]
    assert components["EventsRequest"]["examples"][0]["events"][0]["event_type"] == "purchase"
    assert set(components["EventIn"]["required"]) == {"user_id", "item_id", "event_type", "timestamp"}
    assert paths["/v1/recommendations/{user_id}"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "swagger" in httpx.get(f"{api.url}/docs", timeout=30).text.lower()


def test_no_online_version_yet_is_503(api_settings, store):
    """A store without an online version: events cannot be checked against a catalogue."""
    from api_helpers import app_in_thread

    from recsys.api.app import create_app
    from recsys.settings import replace
    from recsys.stack.service import free_port

    empty = replace(api_settings, online_key_prefix=f"{api_settings.online_key_prefix}-empty", api_token="t" * 32)
    with app_in_thread(create_app(empty), free_port()) as url:
        response = httpx.post(f"{url}/v1/events", json={"events": [event()]}, headers={"Authorization": "Bearer " + "t" * 32})
        assert response.status_code == 503, response.text
        assert "no current version yet" in response.json()["detail"]
        assert httpx.get(f"{url}/healthz").json()["online_version"] is None


def test_the_service_starts_and_stops_with_several_workers(api_settings, store, tmp_path):
    """A second service in a home of its own, with two uvicorn workers summing their metrics."""
    from recsys.api.token import token_file
    from recsys.settings import replace
    from recsys.stack.api import ApiService
    from recsys.stack.service import free_port
    from shared_helpers import patched_environ

    s = replace(api_settings, home=tmp_path / "home", api_port=free_port(), api_workers=2)
    with patched_environ(API_ENV_CLEARED):
        service = ApiService(s)
    try:
        service.up()
        status = service.status()
        assert status["answering"] and status["pid"] and status["url"] == s.api
        assert status["token_file"] == str(token_file(s)) and token_file(s).stat().st_mode & 0o777 == 0o600
        headers = {"Authorization": f"Bearer {token_file(s).read_text().strip()}"}
        for _ in range(6):  # requests spread over both workers; the scrape sums them
            assert httpx.post(f"{s.api}/v1/events", json={"events": [event()]}, headers=headers).status_code == 202
        text = httpx.get(f"{s.api}/metrics").text
        assert metric(text, "recsys_events_accepted_total", source="api") == 6
    finally:
        service.down()
    assert not service.answering() and service.processes[0].pid() is None
    assert service.processes[0].log_file.exists()
    assert "Application startup complete" in service.processes[0].log_file.read_text()
