"""Drift checks end to end against real MLflow, with Evidently for real, on small synthetic data."""

from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pandas as pd
import pytest

from recsys.monitoring import store
from recsys.monitoring.check import run_drift_check
from recsys.monitoring.windows import DriftDataError

FEATURES = {"age_bucket", "gender", "region", "device", "category", "brand", "price_band", "item_age_days"}
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def test_same_distribution_does_not_trigger_and_the_check_is_kept(monitored):
    from mlflow import MlflowClient

    s = monitored("same")
    summary = run_drift_check(s, now=T0)

    assert {f["feature"] for f in summary["features"]} == FEATURES
    assert summary["drift"] is False and summary["trigger"] is False, summary["features"]
    assert summary["reason"].endswith("no drift")
    assert summary["reference"]["data_version"] != summary["current"]["data_version"]  # the landing became a new version
    assert summary["reference"]["end"] <= summary["current"]["start"]

    # files, history and the read API
    check_id = summary["check_id"]
    assert store.get_check(check_id, s) == summary
    assert [c["check_id"] for c in store.list_checks(10, s)] == [check_id]
    _assert_report_shows(store.report_path(check_id, s), summary)
    frame = store.history_frame(s)
    assert set(frame["feature"]) == FEATURES and len(frame) == len(FEATURES)
    assert pd.api.types.is_datetime64_any_dtype(frame["checked_at"])

    # the MLflow run is linked to the champion it judged
    run = MlflowClient(s.mlflow_uri).get_run(summary["mlflow_run_id"])
    assert run.data.tags["recsys.drift.check_id"] == check_id
    assert run.data.tags["recsys.champion_run_id"] == monitored.champion_run_id
    assert run.data.tags[f"recsys.champion.{s.retrieval_model_name}"] == "1"
    assert run.data.tags["recsys.drift.decision"] == "no drift"
    assert run.data.metrics["drift_share"] == pytest.approx(summary["share"])
    artifacts = {a.path for a in MlflowClient(s.mlflow_uri).list_artifacts(run.info.run_id)}
    assert artifacts == {"report.html", "summary.json"}


def test_drifted_data_triggers(monitored):
    s = monitored("drifted")
    summary = run_drift_check(s, now=T0, airflow_run="recsys_drift/manual_1")
    assert summary["drift"] is True and summary["trigger"] is True, summary["features"]
    _assert_report_shows(store.report_path(summary["check_id"], s), summary)
    assert {"age_bucket", "device", "category", "price_band"} <= set(summary["drifted_features"])
    assert "gender" not in summary["drifted_features"]  # the drifted batch keeps the gender mix
    assert summary["share"] >= s.drift_share
    # the same Airflow run again (a retry) returns the recorded check instead of counting twice
    again = run_drift_check(s, now=T0 + timedelta(minutes=5), airflow_run="recsys_drift/manual_1")
    assert again["check_id"] == summary["check_id"]
    assert len(store.list_checks(None, s)) == 1


class _Scripts(HTMLParser):
    """The text of every ``<script>`` element of a page, and whether the page's ``</html>`` came."""

    def __init__(self):
        super().__init__()
        self.scripts: list[str] = []
        self.closed = False
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"
        self.closed = self.closed or tag == "html"

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def _assert_report_shows(path, summary) -> None:
    """The HTML report is a whole page showing this check: Evidently's dashboard data (the JSON its page
    script draws) holds every feature with the method, score and verdict of the summary."""
    import json
    import re

    page = _Scripts()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.closed, f"{path}: no </html>"
    data = next(script for script in page.scripts if re.search(r"var metric_\w+ = ", script))
    name = re.search(r"var (metric_\w+) = ", data)
    dashboard, _end = json.JSONDecoder().raw_decode(data, name.end())
    assert any(f"drawDashboard({name.group(1)}," in script for script in page.scripts)  # the page draws it

    def widgets(items):
        for widget in items:
            yield widget
            yield from widgets(widget.get("widgets", []))

    (table,) = [w for w in widgets(dashboard["widgets"]) if w["type"] == "big_table"]
    rows = {row["column_name"]: row for row in table["params"]["data"]}
    assert set(rows) == FEATURES
    for feature in summary["features"]:
        row = rows[feature["feature"]]
        assert row["stattest_name"] == feature["method"], feature
        assert row["drift_score"] == pytest.approx(feature["score"], abs=1e-5), feature
        assert row["data_drift"] == ("Detected" if feature["drifted"] else "Not Detected"), feature


def test_hysteresis_and_cooldown_over_real_checks(monitored):
    s = monitored("drifted", drift_consecutive_checks=2, drift_cooldown_hours=24.0)
    later = monitored("drifted-later", drift_consecutive_checks=2, drift_cooldown_hours=24.0)
    same = monitored("same", drift_consecutive_checks=2, drift_cooldown_hours=24.0)
    first = run_drift_check(same, now=T0)
    assert not first["drift"]
    second = run_drift_check(s, now=T0 + timedelta(hours=1))
    assert second["drift"] and not second["trigger"]
    assert "drift in 1 of 2 required consecutive checks" in second["reason"]
    # the same data checked again is the same evidence: the streak does not grow, and the reason says so
    repeat = run_drift_check(s, now=T0 + timedelta(hours=1, minutes=1))
    assert repeat["drift"] and not repeat["trigger"] and repeat["consecutive"] == 1
    assert f"data version {second['current_data_version']} was judged by the previous check" in repeat["reason"]
    third = run_drift_check(later, now=T0 + timedelta(hours=2))
    assert third["current_data_version"] != second["current_data_version"]
    assert third["trigger"] and "drift in 2 of 2 required consecutive checks: retrain" in third["reason"]
    fourth = run_drift_check(s, now=T0 + timedelta(hours=3))
    assert fourth["drift"] and not fourth["trigger"]
    assert "cooling down until 2026-03-02T14:00:00Z" in fourth["reason"]
    fifth = run_drift_check(later, now=T0 + timedelta(hours=27))
    assert fifth["trigger"]
    history = store.list_checks(None, s)
    assert [c["trigger"] for c in history] == [True, False, True, False, False, False]  # newest first
    assert [c["reason"] for c in history] == [c["reason"] for c in (fifth, fourth, third, repeat, second, first)]


def test_missing_feature_column_in_current_data_is_a_clear_error_and_no_trigger(monitored, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    source = monitored("drifted").landing
    for table in ("interactions", "items"):
        (landing / f"{table}.parquet").write_bytes((source / f"{table}.parquet").read_bytes())
    pd.read_parquet(source / "users.parquet").drop(columns=["device"]).to_parquet(landing / "users.parquet", index=False)
    s = monitored("same")
    from recsys.settings import replace

    s = replace(s, landing_dir=landing)
    with pytest.raises(DriftDataError, match=r"users\.parquet.*'device'"):
        run_drift_check(s, now=T0)
    assert store.list_checks(None, s) == []
    assert not store.checks_root(s).exists() or not any(store.checks_root(s).iterdir())


def test_an_empty_window_or_a_null_column_is_refused(monitored):
    from recsys.monitoring.drift import measure_drift
    from recsys.monitoring.windows import FeatureColumns

    columns = FeatureColumns(["device"], ["item_age_days"])
    reference = pd.DataFrame({"device": ["ios", "web"] * 50, "item_age_days": [1.0, 2.0] * 50})
    with pytest.raises(DriftDataError, match="no rows"):
        measure_drift(reference, reference.iloc[:0], columns)
    nulls = reference.assign(device=None)
    with pytest.raises(DriftDataError, match=r"\['device'\] hold only nulls"):
        measure_drift(reference, nulls, columns)


def test_method_and_threshold_overrides(monitored):
    s = monitored("drifted", drift_methods="price_band=psi,item_age_days=wasserstein", drift_thresholds="gender=0.5")
    summary = run_drift_check(s, now=T0)
    by_feature = {f["feature"]: f for f in summary["features"]}
    assert by_feature["price_band"]["method"] == "psi"
    assert by_feature["item_age_days"]["method"].lower().startswith("wasserstein")
    assert by_feature["gender"]["threshold"] == 0.5
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown method"):
        run_drift_check(monitored("drifted", drift_methods="price_band=nonsense"), now=T0)
    with pytest.raises(ConfigError, match="unknown feature"):
        run_drift_check(monitored("drifted", drift_methods="colour=psi"), now=T0)


def test_cli_lists_shows_and_prints_the_history(monitored, monkeypatch, capsys):
    from recsys.cli import main
    from recsys.settings import get_settings

    s = monitored("drifted")
    summary = run_drift_check(s, now=T0)
    monkeypatch.setenv("RECSYS_HOME", str(s.home))
    get_settings.cache_clear()
    try:
        assert main(["drift", "list"]) == 0
        assert summary["check_id"] in capsys.readouterr().out
        assert main(["drift", "show", summary["check_id"]]) == 0
        shown = capsys.readouterr().out
        assert "age_bucket" in shown and "DRIFT" in shown and "report.html" in shown
        assert main(["drift", "history"]) == 0
        assert "price_band" in capsys.readouterr().out
        assert main(["drift", "show", "20990101T000000Z-000000"]) == 2  # a clear error, no traceback
        assert "no drift check" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
