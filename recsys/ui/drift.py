"""The drift section of the UI: check records from the monitoring package and a server-side SVG plot.

The monitoring package (``recsys.monitoring.store``) keeps the checks and provides the read API used
here: ``list_checks(limit, settings)``, ``get_check(check_id, settings)``,
``history_frame(settings)`` (per-feature drift score over time) and ``report_path(check_id, settings)``.
While that package is absent the page says "no drift checks yet" instead of failing.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from recsys.errors import RecsysError
from recsys.settings import Settings

log = logging.getLogger(__name__)

# What the UI calls in the monitoring package.
MONITORING_API = ("list_checks", "get_check", "history_frame", "report_path")


def monitoring() -> Optional[ModuleType]:
    """The monitoring package's check store if it provides the whole API the UI reads, else None."""
    try:
        from recsys.monitoring import store
    except ImportError:
        return None
    if all(callable(getattr(store, name, None)) for name in MONITORING_API):
        return store
    return None


def decision_text(check: dict[str, Any]) -> str:
    """What a check decided, in words: a retrain was triggered, drift seen (no retrain yet), or no drift."""
    if check.get("trigger"):
        return "drift: retrain triggered"
    if check.get("drift"):
        return "drift (no retrain yet)"
    return "no drift"


def check_row(check: dict[str, Any]) -> dict[str, Any]:
    """The fields the page shows for one check (a history line of the monitoring store)."""
    features = check.get("features") or []
    return {
        "check_id": str(check["check_id"]),
        "at": check.get("checked_at"),
        "decision": decision_text(check),
        "trigger": bool(check.get("trigger")),
        "drift": bool(check.get("drift")),
        "reason": check.get("reason"),
        "drift_share": check.get("share"),
        "drifted_features": [f["feature"] for f in features if f.get("drifted")],
        "n_features": check.get("n_features", len(features)),
        "dag_run": check.get("airflow_run"),
    }


def list_checks(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    """The newest drift checks as rows for the page, newest first (empty while there are none)."""
    store = monitoring()
    if store is None:
        return []
    rows = []
    for check in store.list_checks(limit, settings):
        row = check_row(check)
        row["has_report"] = report_file(row["check_id"], settings) is not None
        rows.append(row)
    return rows


def report_file(check_id: str, settings: Settings) -> Optional[Path]:
    """The HTML report of a check, or None when there is no such check or report.

    The store refuses ids that are not check ids, so a request cannot walk out of the checks folder.
    """
    store = monitoring()
    if store is None:
        return None
    try:
        path = Path(store.report_path(check_id, settings))
    except (RecsysError, LookupError, FileNotFoundError, ValueError):
        return None
    return path if path.is_file() else None


def history_series(settings: Settings) -> dict[str, list[tuple[Any, float]]]:
    """``{feature: [(checked_at, score), ...]}`` oldest first, from the store's ``history_frame``."""
    store = monitoring()
    if store is None:
        return {}
    frame = store.history_frame(settings)
    if frame is None or len(frame) == 0:
        return {}
    series: dict[str, list[tuple[Any, float]]] = {}
    for feature, group in frame.sort_values("checked_at").groupby("feature", sort=True):
        series[str(feature)] = list(zip(group["checked_at"], group["score"].astype(float)))
    return series


def plot_svg(series: dict[str, list[tuple[Any, float]]], max_features: int = 8) -> str:
    """Drift score over time per feature as an SVG document (matplotlib, no browser-side code).

    Only the ``max_features`` features with the highest latest score are drawn, so the plot stays
    readable when a model has many features.
    """
    from matplotlib.figure import Figure  # not pyplot: no global state, safe in a server thread

    figure = Figure(figsize=(7.5, 3.0), dpi=100)
    axes = figure.add_subplot()
    if not series:
        axes.text(0.5, 0.5, "no drift checks yet", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
    else:
        latest = sorted(series, key=lambda f: series[f][-1][1] if series[f] else 0.0, reverse=True)
        for feature in latest[:max_features]:
            points = series[feature]
            axes.plot([t for t, _ in points], [v for _, v in points], marker="o", markersize=3, label=feature)
        axes.set_ylabel("drift score")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        figure.autofmt_xdate()
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    return buffer.getvalue()
