"""The drift section of the UI: check records from ``recsys.monitoring`` and a server-side SVG plot.

The drift monitoring package provides ``list_checks(limit)``, ``get_check(check_id)``,
``history_frame()`` (the per-feature drift score over time) and ``report_path(check_id)``.
This module only reads them. While that package is absent (or has no checks yet) the page says
"no drift checks yet" instead of failing.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

log = logging.getLogger(__name__)

# What the UI calls in the monitoring package.
MONITORING_API = ("list_checks", "get_check", "history_frame", "report_path")


def monitoring() -> Optional[ModuleType]:
    """The monitoring package if it provides the whole API the UI reads, else None."""
    try:
        import recsys.monitoring as module
    except ImportError:
        return None
    if all(callable(getattr(module, name, None)) for name in MONITORING_API):
        return module
    return None


def _as_dict(record: Any) -> dict[str, Any]:
    """A check record as a plain dict (the monitoring package may return dataclasses or dicts)."""
    if isinstance(record, dict):
        return dict(record)
    to_dict = getattr(record, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    return dict(vars(record))


def _first(record: dict[str, Any], *names: str) -> Any:
    for name in names:
        if record.get(name) not in (None, ""):
            return record[name]
    return None


def check_row(record: Any) -> dict[str, Any]:
    """The fields the page shows for one check: id, when, decision, drifted features, report link."""
    raw = _as_dict(record)
    check_id = str(_first(raw, "check_id", "id"))
    drifted = _first(raw, "drifted_features", "drifted_columns")
    decision = _first(raw, "decision", "action")
    if decision is None and "drift_detected" in raw:
        decision = "drift" if raw["drift_detected"] else "no drift"
    return {
        "check_id": check_id,
        "at": _first(raw, "checked_at", "created_at", "at", "timestamp"),
        "decision": decision,
        "reason": _first(raw, "reason", "explanation"),
        "drift_share": _first(raw, "drift_share", "share_drifted", "drifted_share"),
        "drifted_features": list(drifted) if isinstance(drifted, (list, tuple)) else drifted,
        "dag_run": _first(raw, "airflow_run", "dag_run_id", "triggered_run"),
    }


def list_checks(limit: int = 20) -> list[dict[str, Any]]:
    """The newest drift checks as rows for the page (empty while there are none)."""
    module = monitoring()
    if module is None:
        return []
    rows = []
    for record in module.list_checks(limit):
        row = check_row(record)
        row["has_report"] = report_file(row["check_id"]) is not None
        rows.append(row)
    return rows


def report_file(check_id: str) -> Optional[Path]:
    """The HTML report of a check, or None when there is no such check or report."""
    module = monitoring()
    if module is None:
        return None
    try:
        path = module.report_path(check_id)
    except (KeyError, LookupError, FileNotFoundError, ValueError):
        return None
    if path is None:
        return None
    path = Path(path)
    return path if path.is_file() else None


def history_series() -> dict[str, list[tuple[Any, float]]]:
    """``{feature: [(time, score), ...]}`` from the monitoring package's ``history_frame()``.

    Accepts the long form (columns ``feature`` and ``score`` plus a time column) and the wide form
    (one row per check, a time index or column, one numeric column per feature).
    """
    module = monitoring()
    if module is None:
        return {}
    frame = module.history_frame()
    if frame is None or len(frame) == 0:
        return {}
    import pandas as pd

    frame = frame.copy()
    time_column = next((c for c in ("checked_at", "created_at", "at", "timestamp", "time") if c in frame.columns), None)
    if {"feature", "score"} <= set(frame.columns):
        if time_column is None:
            raise ValueError(f"drift history has no time column: {list(frame.columns)}")
        frame[time_column] = pd.to_datetime(frame[time_column], utc=True)
        series: dict[str, list[tuple[Any, float]]] = {}
        for feature, group in frame.sort_values(time_column).groupby("feature", sort=True):
            series[str(feature)] = list(zip(group[time_column], group["score"].astype(float)))
        return series
    if time_column is not None:
        frame = frame.set_index(time_column)
    frame.index = pd.to_datetime(frame.index, utc=True)
    frame = frame.sort_index()
    numeric = frame.select_dtypes("number")
    return {str(c): [(t, float(v)) for t, v in numeric[c].dropna().items()] for c in numeric.columns}


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
