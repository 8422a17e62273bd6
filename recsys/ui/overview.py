"""What the UI page shows, gathered from the real sources: one function per section.

Each section is read on its own (:func:`gather`): when one source is down (MLflow, Redis), that
section shows the error and the others still render.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from recsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

# The DAGs the page can start, in the order shown, with what each does.
TRIGGERABLE_DAGS: dict[str, str] = {
    "recsys_drift": "check drift now",
    "recsys_train": "train and gate new models",
    "recsys_publish": "publish the champions to Triton",
    "recsys_feature_refresh": "refresh the Redis online store",
}

MODEL_VERSIONS_SHOWN = 5  # newest registered versions per model
PUBLISH_HISTORY_SHOWN = 8
UNAVAILABLE_SHOWN = 20  # raw item ids of the unavailable set listed on the page


def models_section(settings: Settings) -> list[dict[str, Any]]:
    """Per registered model: its newest versions with aliases, gate decision, metrics and lineage tags."""
    from mlflow.exceptions import MlflowException

    from recsys.tracking.registry import CHAMPION, model_specs
    from recsys.tracking.runs import TAG_FEATURE_VERSION, client

    c = client(settings.mlflow_uri)
    models = []
    for spec in model_specs(settings):
        try:
            # Aliases come with the registered model (search results leave them out).
            aliases = dict(c.get_registered_model(spec.name).aliases or {})
            found = c.search_model_versions(f"name = '{spec.name}'")
        except MlflowException:
            aliases, found = {}, []
        newest = sorted(found, key=lambda mv: int(mv.version), reverse=True)[:MODEL_VERSIONS_SHOWN]
        versions = []
        for mv in newest:
            tags = dict(mv.tags or {})
            metrics = dict(c.get_run(mv.run_id).data.metrics) if mv.run_id else {}
            own_aliases = sorted(alias for alias, version in aliases.items() if str(version) == str(mv.version))
            versions.append(
                {
                    "version": str(mv.version),
                    "aliases": own_aliases,
                    "champion": CHAMPION in own_aliases,
                    "run_id": mv.run_id,
                    "created": _from_millis(mv.creation_timestamp),
                    "gate": tags.get("gate.decision", ""),
                    "gate_reason": tags.get("gate.reason", ""),
                    "feature_version": tags.get(TAG_FEATURE_VERSION, ""),
                    "triton_version": tags.get("triton.version", ""),
                    "primary_metric": metrics.get(spec.primary_metric),
                    "metrics": {k: metrics[k] for k in sorted(metrics) if "/" not in k},
                }
            )
        models.append({"name": spec.name, "primary_metric": spec.primary_metric, "versions": versions})
    return models


def serving_section(settings: Settings) -> dict[str, Any]:
    """What Triton serves now (the last successful publish or rollback) and the recent history."""
    from recsys.serving.history import read_history, served

    repository = settings.triton_repo
    history = read_history(repository)
    return {
        "repository": str(repository),
        "served": served(repository),
        "history": list(reversed(history[-PUBLISH_HISTORY_SHOWN:])),
    }


def online_section(settings: Settings) -> dict[str, Any]:
    """The Redis online store: current version, its feature version, id kinds and age, pinned feature
    versions, and the first unavailable items by their raw ids (as the shop knows them)."""
    from recsys.data import ids
    from recsys.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore.from_settings(settings)
    try:
        status = store.status()
        unavailable = store.unavailable()[:UNAVAILABLE_SHOWN] if status["unavailable_items"] else []
    finally:
        store.client.close()
    status["unavailable_shown"] = [ids.to_text(item) for item in unavailable]
    current = status.get("current")
    if current and current.get("age_seconds") is not None:
        current["age"] = human_age(current["age_seconds"])
    return status


def freshness_section(settings: Settings) -> dict[str, Any]:
    """How fresh the platform is: the figures of :func:`recsys.events.freshness.freshness` (the same the
    API's and the event worker's ``/metrics`` show), each with its meaning, ages also in words."""
    from recsys.events.freshness import FIELDS, freshness
    from recsys.online.redis_store import RedisOnlineStore

    with RedisOnlineStore.from_settings(settings) as store:
        figures = freshness(store)
    rows = []
    for name, meaning in FIELDS.items():
        value = figures.get(name)
        shown = "never" if value is None and name.startswith("last_") else "none" if value is None else (
            human_age(value) if name.endswith("_age_seconds") else str(value))
        rows.append({"name": name, "value": value, "shown": shown, "meaning": meaning})
    return {"figures": figures, "rows": rows}


def drift_section(settings: Settings) -> dict[str, Any]:
    """The newest drift checks (with their report links) and whether the monitoring package exists."""
    from recsys.ui import drift

    return {"available": drift.monitoring() is not None, "checks": drift.list_checks(settings, limit=20)}


SECTIONS: dict[str, Callable[[Settings], Any]] = {
    "drift": drift_section,
    "models": models_section,
    "serving": serving_section,
    "online": online_section,
    "freshness": freshness_section,
}


def gather(settings: Optional[Settings] = None) -> dict[str, dict[str, Any]]:
    """``{section: {"data": ..., "error": None}}``, or ``{"data": None, "error": "<why>"}`` for a section
    whose source failed."""
    s = settings or get_settings()
    out: dict[str, dict[str, Any]] = {}
    for name, read in SECTIONS.items():
        started = time.monotonic()
        try:
            out[name] = {"data": read(s), "error": None}
        except Exception as exc:  # one source down must not take the page down
            log.warning("recsys UI: section %s failed: %s", name, exc, exc_info=True)
            out[name] = {"data": None, "error": f"{type(exc).__name__}: {exc}"}
        log.debug("recsys UI: section %s read in %.2f s", name, time.monotonic() - started)
    return out


def human_age(seconds: float) -> str:
    """``42 s``, ``5 min``, ``3.2 h``, ``2.0 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _from_millis(millis: Optional[int]) -> str:
    if not millis:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(millis / 1000))
