"""The recsys plugin inside a real running Airflow 3 (fixture ``airflow_settings``).

- Authentication: every endpoint refuses a caller without a token (401), with a forged or malformed
  token (403) and with an expired one (401); a real token from ``POST /auth/token`` (bearer or the
  UI's ``_token`` cookie) gets 200.
- DAG buttons: a run is created through Airflow's REST API as the caller; a caller Airflow does not
  allow to trigger (viewer role) is refused by Airflow itself; a cookie-authenticated POST from
  another origin is refused.
- A real headless Chromium (Debian's ``chromium``) logs in with the simple auth manager's form, opens
  the "Recsys" view from Airflow's navigation, sees the drift checks, and opens a drift report.

Screenshots of the run are kept as artifacts in ``$RECSYS_TEST_ARTIFACTS`` (default
``tests/artifacts/``, gitignored): ``ui-recsys-view.png`` (the view inside Airflow) and
``ui-drift-report.png`` (a drift report opened from it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import jwt
import pytest
from browser import Chromium
from ui_helpers import (
    REPORT_TITLE,
    airflow_jwt_secret,
    airflow_token,
    decode_unverified,
    drift_times,
    write_drift_check,
)

from recsys.settings import PROJECT_ROOT

ENDPOINTS = [
    ("GET", "/recsys/"),
    ("GET", "/recsys/api/overview"),
    ("GET", "/recsys/drift/plot.svg"),
    ("GET", "/recsys/drift/reports/20260101T000000Z-abcdef"),
    ("POST", "/recsys/trigger/recsys_feature_refresh"),
]
# A DAG that stays paused in the test Airflow (DAGs are paused at creation): a run is only queued.
TRIGGERED_DAG = "recsys_feature_refresh"


def artifacts_dir() -> Path:
    path = Path(os.environ.get("RECSYS_TEST_ARTIFACTS") or PROJECT_ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def airflow(airflow_settings):
    """(settings, httpx client on the Airflow base URL, a valid token)."""
    with httpx.Client(base_url=airflow_settings.airflow, timeout=60) as client:
        yield airflow_settings, client, airflow_token(airflow_settings)


def _signed(claims: dict, secret: str) -> str:
    return jwt.encode(claims, secret, algorithm="HS512", headers={"kid": "not-used"})


def test_the_plugin_is_registered_with_a_view_in_the_navigation(airflow):
    _, client, token = airflow
    plugins = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token}"}).json()["plugins"]
    plugin = next(p for p in plugins if p["name"] == "recsys_ui")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/recsys"
    view = plugin["external_views"][0]
    assert (view["href"], view["destination"], view["url_route"]) == ("/recsys/", "nav", "recsys")


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_no_token_is_refused(airflow, method, path):
    _, client, _ = airflow
    response = client.request(method, path)
    assert response.status_code == 401, response.text


def test_forged_malformed_and_expired_tokens_are_refused_a_real_one_accepted(airflow):
    settings, client, token = airflow
    claims = decode_unverified(token)
    forged = _signed(claims, "not-the-airflow-secret")
    now = int(time.time())
    expired = _signed({**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}, airflow_jwt_secret(settings))

    for method, path in ENDPOINTS[:3]:
        assert client.request(method, path, headers={"Authorization": f"Bearer {forged}"}).status_code == 403
        assert client.request(method, path, headers={"Authorization": "Bearer not.a.jwt"}).status_code == 403
        refused = client.request(method, path, headers={"Authorization": f"Bearer {expired}"})
        assert refused.status_code == 401 and refused.json()["detail"] == "Token Expired"
        assert client.request(method, path, headers={"Cookie": f"_token={forged}"}).status_code in (401, 403)

        ok = client.request(method, path, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200, ok.text
        assert client.request(method, path, headers={"Cookie": f"_token={token}"}).status_code == 200

    page = client.get("/recsys/", headers={"Authorization": f"Bearer {token}"}).text
    assert "signed in to Airflow as admin" in page and "Registered models (MLflow)" in page
    assert client.get("/recsys/drift/reports/..%2F..%2Fpasswords.json", headers={"Authorization": f"Bearer {token}"}).status_code == 404


def test_trigger_goes_through_airflow_as_the_caller(airflow):
    from recsys.stack.airflow_client import AirflowClient

    settings, client, token = airflow
    airflow_client = AirflowClient.from_settings(settings)
    airflow_client.wait_for_dag(TRIGGERED_DAG)
    bearer = {"Authorization": f"Bearer {token}"}

    response = client.post(f"/recsys/trigger/{TRIGGERED_DAG}", headers=bearer)
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    try:
        run = airflow_client.dag_run(TRIGGERED_DAG, run_id)
        assert run["dag_id"] == TRIGGERED_DAG and run["run_type"] == "manual"
        assert run["triggered_by"] == "rest_api"

        # The browser's form: cookie + same Origin -> a redirect back to the page naming the run.
        origin = settings.airflow
        form = client.post(f"/recsys/trigger/{TRIGGERED_DAG}", headers={"Cookie": f"_token={token}", "Origin": origin})
        assert form.status_code == 303 and form.headers["location"].startswith("../?triggered=" + TRIGGERED_DAG)
    finally:
        for dag_run in client.get(f"/api/v2/dags/{TRIGGERED_DAG}/dagRuns", headers=bearer).json()["dag_runs"]:
            client.delete(f"/api/v2/dags/{TRIGGERED_DAG}/dagRuns/{dag_run['dag_run_id']}", headers=bearer)

    # Another site's page posting the user's cookie: refused before Airflow is asked.
    cross = client.post(f"/recsys/trigger/{TRIGGERED_DAG}", headers={"Cookie": f"_token={token}", "Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert client.post(f"/recsys/trigger/{TRIGGERED_DAG}", headers={"Cookie": f"_token={token}"}).status_code == 403  # no Origin
    # Not one of the recsys DAGs.
    assert client.post("/recsys/trigger/some_other_dag", headers=bearer).status_code == 404
    # A valid token of a viewer: the plugin lets them see the page, Airflow refuses the trigger.
    viewer = _signed({**decode_unverified(token), "role": "viewer"}, airflow_jwt_secret(settings))
    assert client.get("/recsys/", headers={"Authorization": f"Bearer {viewer}"}).status_code == 200
    refused = client.post(f"/recsys/trigger/{TRIGGERED_DAG}", headers={"Authorization": f"Bearer {viewer}"})
    assert refused.status_code == 403 and "Airflow refused" in refused.json()["detail"]
    assert client.get(f"/api/v2/dags/{TRIGGERED_DAG}/dagRuns", headers=bearer).json()["total_entries"] == 0


def test_browser_logs_in_opens_the_view_and_a_drift_report(airflow, evidently_report_html, tmp_path):
    """Chromium: the login form, Airflow's navigation entry, the page in its iframe, a report."""
    from recsys.stack.airflow import airflow_password

    settings, client, token = airflow
    times = drift_times(3)
    checks = [
        write_drift_check(settings, times[0], {"age": 0.02, "price": 0.03}, evidently_report_html),
        write_drift_check(settings, times[1], {"age": 0.15, "price": 0.04}, evidently_report_html),
        write_drift_check(settings, times[2], {"age": 0.31, "price": 0.12}, evidently_report_html, trigger=True),
    ]
    base = settings.airflow
    frame_text = "document.querySelector('iframe')?.contentDocument?.body?.innerText ?? ''"
    with Chromium(tmp_path / "chromium-profile") as browser:
        browser.open(f"{base}/plugin/recsys")  # not logged in: Airflow sends the browser to its login form
        browser.wait_for("!!document.querySelector('input[type=password]')", what="Airflow's login form")
        browser.type_into("input[name=username]", settings.airflow_user)
        browser.type_into("input[name=password]", airflow_password(settings))
        browser.evaluate("document.querySelector('button[type=submit]').click()")

        browser.wait_for("location.pathname === '/plugin/recsys'", what="the Recsys view after login")
        nav = browser.wait_for(
            "[...document.querySelectorAll('a')].map(a => a.innerText.trim()).includes('Recsys')", what="Recsys in the navigation"
        )
        assert nav
        browser.wait_for(f"{frame_text}.includes({checks[-1]!r})", what="the newest drift check in the view")
        browser.wait_for(
            "(() => { const img = document.querySelector('iframe').contentDocument.querySelector('img.plot');"
            " return !!img && img.complete && img.naturalWidth > 0; })()",
            what="the drift plot drawn",
        )
        text = browser.evaluate(frame_text)
        assert "drift: retrain triggered" in text and "Registered models (MLflow)" in text and "Triton serves" in text
        assert "Online feature store (Redis)" in text
        links = browser.evaluate(
            "[...document.querySelector('iframe').contentDocument.querySelectorAll('a.report')].map(a => a.href)"
        )
        assert [link.rsplit("/", 1)[-1] for link in links] == list(reversed(checks))
        time.sleep(0.5)  # let the layout settle before the picture
        browser.screenshot(artifacts_dir() / "ui-recsys-view.png")

        browser.open(links[0])  # the report, as the link opens it (the login cookie authenticates)
        browser.wait_for(f"document.title === {REPORT_TITLE!r}", what="the drift report page")
        browser.wait_for("document.body.innerText.includes('age')", timeout=60, what="the report drawn")
        browser.screenshot(artifacts_dir() / "ui-drift-report.png")

    # The same report is refused without the login.
    assert client.get(f"/recsys/drift/reports/{checks[-1]}").status_code == 401
    assert (artifacts_dir() / "ui-recsys-view.png").stat().st_size > 10_000
