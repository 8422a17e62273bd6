"""Helpers for the UI tests: drift check records written with the monitoring store's API, Airflow tokens."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPORT_TITLE = "recsys ui test drift report"


def write_drift_check(settings, checked_at: datetime, scores: dict[str, float], report_html: str, *, trigger: bool = False) -> str:
    """Record one drift check with the monitoring store's API (check folder first, then its history line).

    The check is what ``recsys.monitoring.check.run_drift_check`` records, without running Evidently
    on real data: the folder ``<monitoring_root>/checks/<id>/`` (report.html, summary.json), written
    atomically, then ``store.append_history``.
    """
    from recsys.data.versioning import atomic_directory, write_json_atomic
    from recsys.monitoring import store
    from recsys.monitoring.check import new_check_id

    check_id = new_check_id(checked_at)
    threshold = 0.1
    features = [
        {"feature": name, "score": score, "threshold": threshold, "method": "wasserstein", "drifted": score > threshold}
        for name, score in scores.items()
    ]
    n_drifted = sum(f["drifted"] for f in features)
    summary: dict[str, Any] = {
        "check_id": check_id,
        "checked_at": checked_at.isoformat(),
        "airflow_run": None,
        "features": features,
        "n_features": len(features),
        "n_drifted": n_drifted,
        "share": n_drifted / len(features),
        "share_threshold": 0.5,
        "drift": n_drifted / len(features) >= 0.5,
        "trigger": trigger,
        "reason": f"{n_drifted} of {len(features)} features drifted",
    }
    with atomic_directory(store.checks_root(settings) / check_id) as tmp:
        Path(tmp, store.REPORT).write_text(report_html, encoding="utf-8")
        write_json_atomic(Path(tmp) / store.SUMMARY, summary)
    store.append_history(store.history_entry(summary), settings)
    return check_id


def drift_times(n: int) -> list[datetime]:
    """``n`` check times, an hour apart, ending now."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return [now - timedelta(hours=n - 1 - i) for i in range(n)]


def airflow_token(settings) -> str:
    """A real access token from ``POST /auth/token`` with the stack's user and password."""
    from recsys.stack.airflow_client import AirflowClient

    with AirflowClient.from_settings(settings) as client:
        return client.token()


def airflow_jwt_secret(settings) -> str:
    """The embedded Airflow's JWT signing secret: the 64-byte file its components read through
    ``AIRFLOW__API_AUTH__JWT_SECRET_CMD`` (the 16-byte ``jwt_secret`` Airflow wrote into airflow.cfg is
    not used: the environment's option wins)."""
    from recsys import credentials

    credentials.ensure(settings, credentials.AIRFLOW_JWT_SECRET)
    # Byte for byte what `cat` prints to Airflow (its _CMD options keep the file's final newline).
    return credentials.AIRFLOW_JWT_SECRET.path(settings).read_text()


def decode_unverified(token: str) -> dict[str, Any]:
    import jwt

    return jwt.decode(token, options={"verify_signature": False})


def as_json(response) -> Any:
    try:
        return response.json()
    except json.JSONDecodeError:
        return response.text
