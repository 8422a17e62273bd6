"""One drift check: the champion's training window against the newest data, judged, kept and logged.

Steps: snapshot the landing folder as a data version (a no-op when unchanged) -> find the champion and
its training window (reference) -> the last ``drift_window_days`` of the newest data (current) ->
per-feature drift with Evidently -> the decision (share, hysteresis, cooldown) -> an MLflow run in
``monitoring_experiment_name`` tagged with the champion it judged -> the check folder (report.html,
summary.json), then one history line. Bad current data raises ``DriftDataError`` before anything is
written, so it can never trigger a retrain.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from recsys.monitoring import store
from recsys.monitoring.decision import decide
from recsys import layout
from recsys.monitoring.windows import DriftDataError, current_window, feature_columns_of, reference_window
from recsys.settings import Settings, get_settings
from recsys.tracking.champions import Champion, resolve_champion

log = logging.getLogger(__name__)

# Tags of a check's MLflow run (the champion it judged, and what it found).
TAG_CHECK_ID = "recsys.drift.check_id"
TAG_DECISION = "recsys.drift.decision"  # "trigger", "drift" (no retrain yet) or "no drift"
TAG_CHAMPION_RUN = "recsys.champion_run_id"
TAG_CHAMPION_VERSION = "recsys.champion.{model}"
TAG_REFERENCE_DATA_VERSION = "recsys.reference_data_version"


def new_check_id(now: datetime) -> str:
    """Sortable by time, unique: ``20260101T120000Z-1a2b3c``."""
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def current_data_dir(settings: Settings) -> Path:
    """The data version to judge: the landing folder's (ingested now if new), else the newest one."""
    from recsys.data.ingest import ingest
    from recsys.data.versioning import latest_version

    if settings.landing.is_dir() and any(settings.landing.iterdir()):
        # Raises DataValidationError (naming file, column, row) for a landing folder that breaks the contract.
        return ingest(settings.landing, settings.data_root).path
    newest = latest_version(settings.data_root)
    if newest is None:
        raise DriftDataError(f"no data: {settings.landing} is empty and {settings.data_root} holds no data version")
    return newest.path


def run_drift_check(
    settings: Optional[Settings] = None,
    *,
    airflow_run: Optional[str] = None,
    now: Optional[datetime] = None,
) -> dict[str, Any]:
    """Run one drift check and return its summary (also in ``summary.json`` and the history).

    Judges :func:`current_data_dir`: the landing folder's data version, validated and ingested here.

    ``airflow_run`` ("<dag_id>/<run_id>") makes it idempotent: a check already recorded for that run
    is returned instead of a second one (so a task retry cannot count twice towards hysteresis).
    Raises ``NoChampionError`` before the first champion, ``DriftDataError`` for bad current data.
    """
    s = settings or get_settings()
    started = time.monotonic()
    if airflow_run:
        done = next((e for e in store.list_checks(None, s) if e.get("airflow_run") == airflow_run), None)
        if done:
            log.info("drift check %s already recorded for %s", done["check_id"], airflow_run)
            return store.get_check(done["check_id"], s)

    data_dir = current_data_dir(s)
    champion = resolve_champion(s)
    columns = feature_columns_of(layout.data_dir(s, champion.data_version))
    reference = reference_window(champion, columns, s)
    current = current_window(data_dir, columns, s)

    from recsys.monitoring.drift import measure_drift, parse_overrides

    verdicts, snapshot = measure_drift(
        reference.frame,
        current.frame,
        columns,
        methods=parse_overrides(s.drift_methods, setting="RECSYS_DRIFT_METHODS"),
        thresholds=parse_overrides(s.drift_thresholds, setting="RECSYS_DRIFT_THRESHOLDS", numeric=True),
    )
    n_drifted = sum(v.drifted for v in verdicts)
    share = n_drifted / len(verdicts)
    drift = share >= s.drift_share

    now = now or datetime.now(timezone.utc)
    decision = decide(
        drift,
        store.read_history(s),
        champion_run_id=champion.run_id,
        data_version=current.data_version,
        now=now,
        required_consecutive=s.drift_consecutive_checks,
        cooldown_hours=s.drift_cooldown_hours,
    )
    check_id = new_check_id(now)
    summary = {
        "check_id": check_id,
        "checked_at": now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "airflow_run": airflow_run,
        "champion_run_id": champion.run_id,
        "champion_versions": champion.versions,
        "champion_feature_version": champion.feature_version,
        "reference_data_version": reference.data_version,
        "current_data_version": current.data_version,
        "reference": reference.describe(),
        "current": current.describe(),
        "features": [v.to_dict() for v in verdicts],
        "drifted_features": [v.feature for v in verdicts if v.drifted],
        "n_features": len(verdicts),
        "n_drifted": n_drifted,
        "share": share,
        "share_threshold": s.drift_share,
        "drift": drift,
        "trigger": decision.trigger,
        "reason": (
            f"{n_drifted} of {len(verdicts)} features drifted (share {share:.2f}, threshold {s.drift_share:.2f}); "
            f"{decision.reason}"
        ),
        "consecutive": decision.consecutive,
        "cooldown_until": decision.cooldown_until,
        "decision": decision.to_dict(),
        "window_days": s.drift_window_days,
    }
    _record(summary, snapshot, champion, s, started)
    log.info("drift check %s: %s", check_id, summary["reason"])
    return summary


def _record(summary: dict[str, Any], snapshot: Any, champion: Champion, s: Settings, started: float) -> None:
    """MLflow run + check folder + history line, in that order: a failure leaves no history line."""
    from recsys.data.versioning import atomic_directory, write_json_atomic
    from recsys.tracking import runs

    check_id = summary["check_id"]
    c = runs.client(s.mlflow_uri)
    decision = "trigger" if summary["trigger"] else ("drift" if summary["drift"] else "no drift")
    tags = {
        TAG_CHECK_ID: check_id,
        TAG_DECISION: decision,
        TAG_CHAMPION_RUN: champion.run_id,
        TAG_REFERENCE_DATA_VERSION: champion.data_version,
        runs.TAG_DATA_VERSION: summary["current_data_version"],
        runs.TAG_FEATURE_VERSION: champion.feature_version,
        **{TAG_CHAMPION_VERSION.format(model=m): v for m, v in champion.versions.items()},
    }
    if summary["airflow_run"]:
        tags[runs.TAG_AIRFLOW_RUN] = summary["airflow_run"]
    run = c.create_run(runs.experiment_id(c, s.monitoring_experiment_name), run_name=f"drift-{check_id}", tags=tags)
    summary["mlflow_run_id"] = run.info.run_id
    try:
        from mlflow.entities import Metric, Param

        params = {
            "window_days": s.drift_window_days,
            "share_threshold": s.drift_share,
            "consecutive_checks": s.drift_consecutive_checks,
            "cooldown_hours": s.drift_cooldown_hours,
            "max_rows": s.drift_max_rows,
            "methods": s.drift_methods or "evidently defaults",
            "thresholds": s.drift_thresholds or "method defaults",
        }
        metrics = {"drift_share": summary["share"], "drifted_features": summary["n_drifted"],
                   "trigger": float(summary["trigger"])}
        metrics.update({f"drift.{f['feature']}": f["score"] for f in summary["features"]})
        c.log_batch(
            run.info.run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
            metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()],
        )
        summary["seconds"] = round(time.monotonic() - started, 3)
        with atomic_directory(store.checks_root(s) / check_id) as tmp:
            snapshot.save_html(str(tmp / store.REPORT))
            write_json_atomic(tmp / store.SUMMARY, summary)
            c.log_artifacts(run.info.run_id, str(tmp))
        for model, version in champion.versions.items():
            # Visible on the model version in the registry: the last check that judged it.
            c.set_model_version_tag(model, version, "drift.last_check", f"{check_id}: {decision}")
    except BaseException:
        c.set_terminated(run.info.run_id, status="FAILED")
        raise
    c.set_terminated(run.info.run_id, status="FINISHED")
    store.append_history(store.history_entry(summary), s)
