"""Model registry: register a training run's models, and the champion gate.

A new model version always gets the alias ``challenger``. It takes ``champion`` only when it beats the
current champion on the model's primary metric (or there is no champion yet). The decision is written
where people look: tags on the model version and on the run, and a ``gate/<model>.json`` run artifact.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Optional

from recsys.settings import Settings, get_settings
from recsys.tracking.runs import TAG_DATA_VERSION, TAG_FEATURE_VERSION, client, run_metrics

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class RegisteredModelSpec:
    name: str
    artifact_path: str  # folder inside the run's artifacts
    primary_metric: str


def model_specs(settings: Optional[Settings] = None) -> list[RegisteredModelSpec]:
    s = settings or get_settings()
    return [
        RegisteredModelSpec(s.retrieval_model_name, "retrieval", s.retrieval_primary_metric),
        RegisteredModelSpec(s.ranking_model_name, "ranking", s.ranking_primary_metric),
    ]


@dataclass(frozen=True)
class GateDecision:
    model: str
    version: str
    metric: str
    value: float
    champion_version: Optional[str]  # the champion before the decision
    champion_value: Optional[float]
    promoted: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _version_for_run(c, name: str, run_id: str):
    """The version already registered from this run, if any (makes registration idempotent)."""
    found = c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return found[0] if found else None


def _alias_version(c, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register_run(run_id: str, settings: Optional[Settings] = None) -> dict[str, str]:
    """Create (once) a version of each registered model from run ``run_id``; returns {model: version}."""
    from mlflow.exceptions import MlflowException

    c = client(settings.mlflow_uri if settings else None)
    run = c.get_run(run_id)
    versions = {}
    for spec in model_specs(settings):
        try:
            c.get_registered_model(spec.name)
        except MlflowException:
            c.create_registered_model(spec.name, description=f"recsys {spec.artifact_path} model")
        existing = _version_for_run(c, spec.name, run_id)
        if existing is None:
            existing = c.create_model_version(
                spec.name,
                source=f"{run.info.artifact_uri}/{spec.artifact_path}",
                run_id=run_id,
                tags={
                    TAG_DATA_VERSION: run.data.tags.get(TAG_DATA_VERSION, ""),
                    TAG_FEATURE_VERSION: run.data.tags.get(TAG_FEATURE_VERSION, ""),
                    spec.primary_metric: str(run.data.metrics.get(spec.primary_metric, "")),
                },
            )
            log.info("registered %s version %s from run %s", spec.name, existing.version, run_id)
        versions[spec.name] = str(existing.version)
    return versions


def champion_gate(run_id: str, settings: Optional[Settings] = None) -> list[GateDecision]:
    """Register the run's models, mark them ``challenger``, and promote each one that beats its champion."""
    c = client(settings.mlflow_uri if settings else None)
    versions = register_run(run_id, settings)
    metrics = run_metrics(c, run_id)
    decisions = []
    for spec in model_specs(settings):
        version = versions[spec.name]
        if spec.primary_metric not in metrics:
            raise KeyError(f"run {run_id} has no metric {spec.primary_metric!r} to gate {spec.name} on")
        value = float(metrics[spec.primary_metric])
        champion = _alias_version(c, spec.name, CHAMPION)
        champion_value = None
        already_champion = champion is not None and str(champion.version) == version
        if champion is None:
            promoted, reason = True, "no champion yet"
        elif already_champion:
            promoted, reason = False, "this version is already the champion"
        else:
            champion_value = run_metrics(c, champion.run_id).get(spec.primary_metric)
            if champion_value is None or value > champion_value:
                promoted = True
                reason = f"{spec.primary_metric} {value:.4f} beats the champion's {champion_value}"
            else:
                promoted = False
                reason = f"{spec.primary_metric} {value:.4f} does not beat the champion's {champion_value:.4f}"
        decision = GateDecision(
            model=spec.name,
            version=version,
            metric=spec.primary_metric,
            value=value,
            champion_version=str(champion.version) if champion is not None else None,
            champion_value=champion_value,
            promoted=promoted,
            reason=reason,
        )
        if not already_champion:
            c.set_registered_model_alias(spec.name, CHALLENGER, version)
        if promoted:
            c.set_registered_model_alias(spec.name, CHAMPION, version)
        c.set_model_version_tag(spec.name, version, "gate.decision", "promoted" if promoted else "rejected")
        c.set_model_version_tag(spec.name, version, "gate.reason", reason)
        c.set_tag(run_id, f"gate.{spec.name}", "promoted" if promoted else "rejected")
        c.log_text(run_id, json.dumps(decision.to_dict(), indent=2), f"gate/{spec.name}.json")
        log.info("champion gate %s v%s: %s (%s)", spec.name, version, "PROMOTED" if promoted else "kept champion", reason)
        decisions.append(decision)
    return decisions


def champions(settings: Optional[Settings] = None) -> dict[str, Optional[dict]]:
    """The current champion of each registered model with its primary metric (for the demo and the UI)."""
    c = client(settings.mlflow_uri if settings else None)
    out: dict[str, Optional[dict]] = {}
    for spec in model_specs(settings):
        mv = _alias_version(c, spec.name, CHAMPION)
        if mv is None:
            out[spec.name] = None
            continue
        out[spec.name] = {
            "version": str(mv.version),
            "run_id": mv.run_id,
            "source": mv.source,
            "metrics": run_metrics(c, mv.run_id),
        }
    return out
