"""Where drift checks are kept, and the read API the UI and the CLI use.

    <home>/monitoring/checks/<check_id>/report.html    Evidently's HTML report
    <home>/monitoring/checks/<check_id>/summary.json   the check: windows, per-feature verdicts, decision
    <home>/monitoring/history.jsonl                    one line per check, oldest first, append-only

A check folder appears complete or not at all (written under a temporary name, then renamed), and its
history line is appended only afterwards, so a reader that finds a check in the history finds its files.
Check ids sort by time (``20260101T120000Z-1a2b3c``).

Read API (no MLflow, no Evidently: cheap enough for a web request):
:func:`list_checks`, :func:`get_check`, :func:`history_frame`, :func:`report_path`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from recsys.errors import RecsysError
from recsys.settings import Settings, get_settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
REPORT = "report.html"
HISTORY = "history.jsonl"
_CHECK_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")

# Keys of a history line (a summary holds them too, plus the windows and the MLflow run).
HISTORY_KEYS = (
    "check_id", "checked_at", "airflow_run", "champion_run_id", "champion_versions", "reference_data_version",
    "current_data_version", "features", "n_features", "n_drifted", "share", "share_threshold", "drift",
    "trigger", "reason", "consecutive", "cooldown_until", "mlflow_run_id",
)


class CheckNotFoundError(RecsysError):
    """No drift check with that id."""


def checks_root(settings: Optional[Settings] = None) -> Path:
    return (settings or get_settings()).monitoring_root / "checks"


def history_path(settings: Optional[Settings] = None) -> Path:
    return (settings or get_settings()).monitoring_root / HISTORY


def _check_dir(check_id: str, settings: Optional[Settings]) -> Path:
    if not _CHECK_ID.match(check_id or ""):  # also keeps a request's id from walking out of the folder
        raise CheckNotFoundError(f"{check_id!r} is not a drift check id (e.g. 20260101T120000Z-1a2b3c)")
    return checks_root(settings) / check_id


def read_history(settings: Optional[Settings] = None) -> list[dict[str, Any]]:
    """Every check's history line, oldest first (a torn last line from a crash is skipped with a warning)."""
    path = history_path(settings)
    if not path.exists():
        return []
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is not JSON; skipped", path, number)
    return entries


def append_history(entry: dict[str, Any], settings: Optional[Settings] = None) -> None:
    """Append one line (one ``write`` on an O_APPEND file: lines of concurrent writers never interleave)."""
    path = history_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def history_entry(summary: dict[str, Any]) -> dict[str, Any]:
    """The history line of a check summary."""
    return {key: summary.get(key) for key in HISTORY_KEYS}


# --- read API ------------------------------------------------------------------------------------
def list_checks(limit: Optional[int] = 50, settings: Optional[Settings] = None) -> list[dict[str, Any]]:
    """The latest checks' history lines, newest first (``limit=None``: all).

    Each has ``check_id``, ``checked_at``, ``drift``, ``trigger``, ``reason``, ``share``, ``n_drifted``,
    ``n_features``, ``features`` (per-feature ``score``/``threshold``/``method``/``drifted``), the
    champion judged (``champion_versions``, ``champion_run_id``) and ``mlflow_run_id``.
    """
    entries = list(reversed(read_history(settings)))
    return entries if limit is None else entries[: max(0, int(limit))]


def get_check(check_id: str, settings: Optional[Settings] = None) -> dict[str, Any]:
    """A check's full summary (``summary.json``): the history fields plus ``reference`` and ``current``
    windows (data version, time range, rows), ``decision`` and ``seconds``."""
    path = _check_dir(check_id, settings) / SUMMARY
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckNotFoundError(f"no drift check {check_id} under {checks_root(settings)}") from None


def report_path(check_id: str, settings: Optional[Settings] = None) -> Path:
    """The check's Evidently HTML report (a complete, self-contained page)."""
    path = _check_dir(check_id, settings) / REPORT
    if not path.exists():
        raise CheckNotFoundError(f"no report for drift check {check_id} under {checks_root(settings)}")
    return path


def history_frame(settings: Optional[Settings] = None) -> "pd.DataFrame":
    """Per-feature drift over time, one row per (check, feature), oldest first, ready to plot.

    Columns: ``check_id``, ``checked_at`` (UTC datetime), ``feature``, ``score``, ``threshold``,
    ``method``, ``drifted``, and the check's ``share``, ``drift``, ``trigger``. E.g.
    ``history_frame().pivot(index="checked_at", columns="feature", values="score")``.
    """
    import pandas as pd

    rows = [
        {
            "check_id": entry["check_id"],
            "checked_at": entry["checked_at"],
            "feature": feature["feature"],
            "score": feature["score"],
            "threshold": feature["threshold"],
            "method": feature["method"],
            "drifted": feature["drifted"],
            "share": entry.get("share"),
            "drift": entry.get("drift"),
            "trigger": entry.get("trigger"),
        }
        for entry in read_history(settings)
        for feature in entry.get("features") or []
    ]
    columns = ["check_id", "checked_at", "feature", "score", "threshold", "method", "drifted", "share", "drift", "trigger"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["checked_at"] = pd.to_datetime(frame["checked_at"], utc=True)
    return frame
