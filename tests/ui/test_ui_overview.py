"""The page's sections read the real sources (MLflow, Redis, the publish history, the drift store).

Each test uses names of its own (model names, a Redis key prefix, a home), so nothing here can
disturb other tests sharing the session's MLflow and Redis. Rendering is checked on the page's real
template.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest
from ui_helpers import drift_times, write_drift_check

from recsys.settings import replace


@pytest.fixture()
def own(stack_settings, tmp_path):
    """Settings of the shared stack with model names, key prefix and home of this test only."""
    suffix = uuid.uuid4().hex[:8]
    return replace(
        stack_settings,
        home=tmp_path / "home",
        retrieval_model_name=f"ui-retrieval-{suffix}",
        ranking_model_name=f"ui-ranking-{suffix}",
        online_key_prefix=f"ui-{suffix}",
    )


def _register(s, name: str, metrics: dict[str, float], aliases: list[str]) -> str:
    from recsys.tracking.runs import client

    c = client(s.mlflow_uri)
    experiment = c.get_experiment_by_name("ui-tests") or c.get_experiment(c.create_experiment("ui-tests"))
    run = c.create_run(experiment.experiment_id)
    for key, value in metrics.items():
        c.log_metric(run.info.run_id, key, value)
    c.set_terminated(run.info.run_id)
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name)
    mv = c.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                tags={"gate.decision": "promoted" if "champion" in aliases else "rejected"})
    for alias in aliases:
        c.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def test_models_section_lists_versions_with_metrics_and_the_champion(own):
    from recsys.ui.overview import models_section

    _register(own, own.retrieval_model_name, {"pipeline_recall_at_10": 0.31, "ndcg_at_10": 0.2}, ["champion"])
    _register(own, own.retrieval_model_name, {"pipeline_recall_at_10": 0.25, "ndcg_at_10": 0.1}, ["challenger"])

    models = {m["name"]: m for m in models_section(own)}
    retrieval = models[own.retrieval_model_name]
    assert [v["version"] for v in retrieval["versions"]] == ["2", "1"]  # newest first
    v2, v1 = retrieval["versions"]
    assert v1["champion"] and v1["aliases"] == ["champion"] and v1["gate"] == "promoted"
    assert not v2["champion"] and v2["aliases"] == ["challenger"] and v2["gate"] == "rejected"
    assert v1["primary_metric"] == pytest.approx(0.31)
    assert v1["metrics"] == {"ndcg_at_10": pytest.approx(0.2), "pipeline_recall_at_10": pytest.approx(0.31)}
    assert models[own.ranking_model_name]["versions"] == []  # not registered: shown as such, no error


def test_serving_section_shows_what_serves_and_the_history(own):
    from recsys.ui.overview import serving_section

    repository = own.triton_repo
    repository.mkdir(parents=True)
    entries = [
        {"action": "publish", "version": 1, "status": "serving", "models": ["recsys"], "champions": {"r": "1"},
         "feature_version": "fv1", "airflow_run": "recsys_publish/a", "at": "2026-01-01T00:00:00Z"},
        {"action": "publish", "version": 2, "status": "failed", "models": ["recsys"], "champions": {"r": "2"},
         "feature_version": "fv2", "airflow_run": "recsys_publish/b", "at": "2026-01-02T00:00:00Z", "error": "smoke"},
    ]
    (repository / "publish_history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))

    section = serving_section(own)
    assert section["served"]["version"] == 1  # the failed attempt does not serve
    assert [e["version"] for e in section["history"]] == [2, 1]  # newest first


def test_online_section_shows_the_current_version_and_its_age(own):
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.snapshot import snapshot_from_frames
    from recsys.ui.overview import online_section

    assert online_section(own)["current"] is None  # nothing written under this prefix yet
    ids = np.arange(3, 6, dtype=np.int64)
    snapshot = snapshot_from_frames(
        "fv-ui", "dv-ui",
        pd.DataFrame({"user_id": ids, "segment": ids}), np.array([11, 12, 13]),
        pd.DataFrame({"item_id": ids, "price": np.ones(3, np.float32)}), np.array([21, 22, 23]),
        pd.DataFrame({"user_id": [11, 12], "item_id": [21, 22], "label": np.ones(2, np.int8)}),
        pd.DataFrame({"item_id": [21, 22, 23], "title": ["a", "b", "c"]}),
        popularity_size=2,
    )
    store = RedisOnlineStore.from_settings(own)
    try:
        store.refresh(snapshot)
        current = online_section(own)["current"]
        assert current["feature_version"] == "fv-ui" and current["users"] == 3 and current["items"] == 3
        assert 0 <= current["age_seconds"] < 60 and current["age"].endswith(" s")
    finally:
        for key in store.client.scan_iter(match=f"{{{own.online_key_prefix}}}:*"):
            store.client.delete(key)
        store.client.close()


def test_the_page_shows_raw_text_ids_as_the_shop_knows_them(own):
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.snapshot import snapshot_from_frames
    from recsys.ui.app import templates
    from recsys.ui.overview import TRIGGERABLE_DAGS, gather, online_section

    encoded = np.arange(3, 6, dtype=np.int64)
    items = np.array(["85123A", "SKU-<b>", "SKU-9"], dtype=object)
    snapshot = snapshot_from_frames(
        "fv-ui-text", "dv-ui-text",
        pd.DataFrame({"user_id": encoded, "segment": encoded}), np.array(["u-7f3a", "u-0001a2", "u-9"], dtype=object),
        pd.DataFrame({"item_id": encoded, "price": np.ones(3, np.float32)}), items,
        pd.DataFrame({"user_id": ["u-7f3a", "u-9"], "item_id": ["85123A", "SKU-9"], "label": np.ones(2, np.int8)}),
        pd.DataFrame({"item_id": items, "title": ["a", "b", "c"]}),
    )
    repository = own.triton_repo
    repository.mkdir(parents=True)
    entry = {"action": "publish", "version": 1, "status": "serving", "models": ["recsys"], "champions": {"r": "1"},
             "feature_version": "fv-ui-text", "at": "2026-01-01T00:00:00Z",
             "smoke": {"recsys": {"user_id": "u-7f3a", "item_ids": ["85123A", "SKU-9"]}}}
    (repository / "publish_history.jsonl").write_text(json.dumps(entry) + "\n")
    store = RedisOnlineStore.from_settings(own)
    try:
        store.refresh(snapshot)
        store.add_unavailable(["SKU-<b>", "85123A"])
        section = online_section(own)
        assert section["current"]["ids"] == {"user_id": "string", "item_id": "string"}
        assert section["unavailable_shown"] == ["85123A", "SKU-<b>"]
        html = templates.get_template("overview.html").render(
            user="u", sections=gather(own), dags=TRIGGERABLE_DAGS, triggered=None, run_id=None, error=None
        )
    finally:
        for key in store.client.scan_iter(match=f"{{{own.online_key_prefix}}}:*"):
            store.client.delete(key)
        store.client.close()
    assert "user ids: string, item ids: string" in html
    assert "2 items marked unavailable:" in html and "<code>85123A</code>, <code>SKU-&lt;b&gt;</code>" in html
    assert "user <code>u-7f3a</code> got" in html and "<code>85123A</code>, <code>SKU-9</code>" in html


def test_drift_rows_plot_and_report_come_from_the_monitoring_store(own):
    from recsys.ui import drift

    assert drift.list_checks(own) == []  # an empty store: the page says "no drift checks yet"
    assert "no drift checks yet" in drift.plot_svg(drift.history_series(own))

    first, second = drift_times(2)
    old = write_drift_check(own, first, {"age": 0.02, "price": 0.05}, "<html>old</html>")
    new = write_drift_check(own, second, {"age": 0.4, "price": 0.3}, "<html>new</html>", trigger=True)

    rows = drift.list_checks(own)
    assert [r["check_id"] for r in rows] == [new, old]  # newest first
    assert rows[0]["decision"] == "drift: retrain triggered" and rows[0]["drifted_features"] == ["age", "price"]
    assert rows[1]["decision"] == "no drift" and rows[1]["drifted_features"] == []
    assert all(r["has_report"] for r in rows)
    assert drift.report_file(new, own).read_text() == "<html>new</html>"
    assert drift.report_file("../../etc/passwd", own) is None  # not a check id: never a path outside the store

    series = drift.history_series(own)
    assert {f: [v for _, v in points] for f, points in series.items()} == {"age": [0.02, 0.4], "price": [0.05, 0.3]}
    svg = drift.plot_svg(series)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "age" in svg and "price" in svg


def test_page_template_marks_the_champion_and_escapes_values(own):
    from recsys.ui.app import templates
    from recsys.ui.overview import TRIGGERABLE_DAGS, gather

    _register(own, own.retrieval_model_name, {"pipeline_recall_at_10": 0.31}, ["champion"])
    sections = gather(own)
    assert all(section["error"] is None for section in sections.values()), sections
    html = templates.get_template("overview.html").render(
        user="<script>x</script>", sections=sections, dags=TRIGGERABLE_DAGS, triggered=None, run_id=None, error=None
    )
    assert '<tr class="champion">' in html and '<span class="alias champion">champion</span>' in html
    assert "0.3100" in html
    assert "no drift checks yet" in html and "nothing published yet" in html and "no online version yet" in html
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    for dag_id in TRIGGERABLE_DAGS:
        assert f'action="trigger/{dag_id}"' in html
