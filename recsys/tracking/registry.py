"""Model registry: register a training run's models, and the champion gate.

A new model version always gets the alias ``challenger``. The models of one training run are served
together (the ranker scores the retrieval model's candidates, both read features encoded by one feature
version), so the gate promotes them **together**: the run's versions take ``champion`` when there is no
champion yet, or when the run's retrieval model beats the champion on its primary metric and, on the same
validation window, the ranker is not worse than the champion ranker by more than a small tolerance.
Across feature versions (new data, e.g. after drift) AUCs of different windows do not compare, so there
the retrieval model's lift over each window's popularity baseline decides alone. The decision is written
where people look: tags on the model versions and on the run, and ``gate/<model>.json`` run artifacts.
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
    baseline_metric: Optional[str] = None
    """Same metric of a baseline on the same validation window: makes runs on different windows comparable."""


def model_specs(settings: Optional[Settings] = None) -> list[RegisteredModelSpec]:
    s = settings or get_settings()
    return [
        RegisteredModelSpec(
            s.retrieval_model_name, "retrieval", s.retrieval_primary_metric, f"popularity_{s.retrieval_primary_metric}"
        ),
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


RANKING_TOLERANCE = 0.005
"""How much lower the ranker's primary metric may be (same window) when the retrieval model improves."""


def champion_gate(run_id: str, settings: Optional[Settings] = None) -> list[GateDecision]:
    """Register the run's models, mark them ``challenger``, and promote them together when the run wins."""
    c = client(settings.mlflow_uri if settings else None)
    versions = register_run(run_id, settings)
    metrics = run_metrics(c, run_id)
    run_tags = c.get_run(run_id).data.tags
    specs = model_specs(settings)
    compared = []  # (spec, version, champion, metric, value, champion_value, same_window)
    for spec in specs:
        if spec.primary_metric not in metrics:
            raise KeyError(f"run {run_id} has no metric {spec.primary_metric!r} to gate {spec.name} on")
        champion = _alias_version(c, spec.name, CHAMPION)
        champion_metrics = run_metrics(c, champion.run_id) if champion is not None else {}
        metric, value, champion_value, same_window = _comparable(spec, metrics, champion_metrics, run_tags, champion, c)
        compared.append((spec, versions[spec.name], champion, metric, value, champion_value, same_window))

    promote, reason = _joint_decision(compared)
    decisions = []
    for spec, version, champion, metric, value, champion_value, _ in compared:
        already_champion = champion is not None and str(champion.version) == version
        promoted = promote and not already_champion
        why = "this version is already the champion" if already_champion else reason
        decision = GateDecision(
            model=spec.name,
            version=version,
            metric=metric,
            value=value,
            champion_version=str(champion.version) if champion is not None else None,
            champion_value=champion_value,
            promoted=promoted,
            reason=why,
        )
        if not already_champion:
            c.set_registered_model_alias(spec.name, CHALLENGER, version)
        if promoted:
            c.set_registered_model_alias(spec.name, CHAMPION, version)
        c.set_model_version_tag(spec.name, version, "gate.decision", "promoted" if promoted else "rejected")
        c.set_model_version_tag(spec.name, version, "gate.reason", why)
        c.set_tag(run_id, f"gate.{spec.name}", "promoted" if promoted else "rejected")
        c.log_text(run_id, json.dumps(decision.to_dict(), indent=2), f"gate/{spec.name}.json")
        log.info("champion gate %s v%s: %s (%s)", spec.name, version, "PROMOTED" if promoted else "kept champion", why)
        decisions.append(decision)
    return decisions


def _joint_decision(compared: list) -> tuple[bool, str]:
    """Whether the run's models replace the champions, and why (the first entry is the retrieval model)."""
    (_, _, champion, metric, value, champion_value, _), *rankers = compared
    if all(entry[2] is None for entry in compared):
        return True, "no champion yet"
    if champion_value is not None and value <= champion_value:
        return False, f"retrieval {metric} {value:.4f} does not beat the champion's {_fmt(champion_value)}"
    reason = f"retrieval {metric} {value:.4f} beats the champion's {_fmt(champion_value)}"
    for _, _, r_champion, r_metric, r_value, r_champion_value, same_window in rankers:
        if r_champion is None or r_champion_value is None:
            continue
        if not same_window:
            reason += f"; ranker {r_metric} {r_value:.4f} vs {r_champion_value:.4f} not compared (other window)"
        elif r_value < r_champion_value - RANKING_TOLERANCE:
            return False, reason + f", but the ranker's {r_metric} {r_value:.4f} is below the champion's {r_champion_value:.4f}"
        else:
            reason += f"; ranker {r_metric} {r_value:.4f} holds (champion {r_champion_value:.4f})"
    return True, reason


def _fmt(value: Optional[float]) -> str:
    return "none" if value is None else f"{value:.4f}"


def _comparable(spec: RegisteredModelSpec, metrics: dict, champion_metrics: dict, run_tags: dict, champion, c):
    """(metric name, challenger value, champion value, same validation window) on a common footing.

    Runs on the same feature version were evaluated on the same validation window: their primary metric
    compares directly. Across feature versions (new data, e.g. after drift) the windows differ, and the
    same model scores differently on an easier or harder window; the lift over the popularity baseline
    of each run's own window is what compares then (for models that have such a baseline).
    """
    value = float(metrics[spec.primary_metric])
    champion_value = champion_metrics.get(spec.primary_metric)
    if champion is None or champion_value is None:
        return spec.primary_metric, value, champion_value, True
    champion_fv = c.get_run(champion.run_id).data.tags.get(TAG_FEATURE_VERSION)
    same_window = champion_fv == run_tags.get(TAG_FEATURE_VERSION)
    baseline = spec.baseline_metric
    if same_window or not baseline or not metrics.get(baseline) or not champion_metrics.get(baseline):
        return spec.primary_metric, value, float(champion_value), same_window
    lift = value / float(metrics[baseline])
    champion_lift = float(champion_value) / float(champion_metrics[baseline])
    return f"{spec.primary_metric} lift over {baseline} (different validation windows)", lift, champion_lift, False


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
