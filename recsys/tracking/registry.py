"""Model registry: register a training run's models, and the champion gate.

A new model version always gets the alias ``challenger``. The models of one training run are served
together (the ranker scores the retrieval model's candidates, both read features encoded by one feature
version), so the gate promotes them **together**, in this order of rules:

1. **The popularity floor.** A run whose served pipeline does not beat the popularity baseline on its own
   validation window (the primary metric, ``pipeline_recall_at_10``: retrieval's candidates ordered by the
   scoring stage, ``RECSYS_RETRIEVAL_PRIMARY_METRIC``) is never promoted, the first one included: serving
   then keeps answering with the champion, or with the popularity list while there is none.
2. **No champion yet**: the run is promoted.
3. **Like with like.** The challenger and the champion are compared on the same rows, the challenger's
   (newest) validation rows:

   * same feature version (a retrain on the same data): both runs' logged validation metrics were measured
     on exactly these rows by their early-stopped models: they compare as they are;
   * another feature version (new data): the training job scored the champion's exported models on the
     challenger's validation rows that are new to the champion (:mod:`recsys.training.rescoring`), beside
     the challenger's; those ``gate_*`` metrics compare. A run scored against another champion than the
     current one (promoted meanwhile), or with no new row to compare on, is not promoted.

   The retrieval metric decides; the ranker may not be worse than the champion's (AUC on the same rows) by
   more than :data:`RANKING_TOLERANCE`. A champion whose exports could not be downloaded or verified for
   scoring (``gate.champion_unscorable``) cannot serve again either: the floor alone decides then.

The decision is written where people look: tags on the model versions and on the run, and
``gate/<model>.json`` run artifacts.
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
            # the baseline of a pipeline metric is popularity's same metric (it has one stage)
            s.retrieval_model_name, "retrieval", s.retrieval_primary_metric,
            "popularity_" + s.retrieval_primary_metric.removeprefix("pipeline_"),
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


def alias_version(c, name: str, alias: str):
    """The version of registered model ``name`` that ``alias`` points at, or ``None`` (no such alias or model)."""
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
    for spec in specs:
        if spec.primary_metric not in metrics:
            raise KeyError(f"run {run_id} has no metric {spec.primary_metric!r} to gate {spec.name} on")
    champions = [alias_version(c, spec.name, CHAMPION) for spec in specs]
    comparison = compare_with_champion(specs, metrics, run_tags, champions, c)
    decisions = []
    for spec, champion, (metric, value, champion_value) in zip(specs, champions, comparison.values):
        version = versions[spec.name]
        already_champion = champion is not None and str(champion.version) == version
        promoted = comparison.promote and not already_champion
        why = "this version is already the champion" if already_champion else comparison.reason
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


@dataclass
class Comparison:
    """The gate's verdict for a run: promote or not, why, and per model (metric, value, champion's value)."""

    promote: bool
    reason: str
    values: list[tuple[str, float, Optional[float]]]


def compare_with_champion(specs: list[RegisteredModelSpec], metrics: dict, run_tags: dict, champions: list, c) -> Comparison:
    """Apply the gate's rules (see the module docstring) to a run's logged metrics and the current champions."""
    retrieval, ranker = specs[0], specs[1:]
    primary = retrieval.primary_metric
    own = [(spec.primary_metric, float(metrics[spec.primary_metric]), None) for spec in specs]

    baseline = metrics.get(retrieval.baseline_metric) if retrieval.baseline_metric else None
    if baseline is not None and float(metrics[primary]) <= float(baseline):
        return Comparison(False, f"{primary} {metrics[primary]:.4f} does not beat the popularity baseline's "
                                 f"{float(baseline):.4f} on its validation window (the floor: never promoted)", own)
    floor = f"above popularity ({metrics[primary]:.4f} vs {float(baseline):.4f})" if baseline is not None else "no baseline logged"
    champion = champions[0]
    if all(ch is None for ch in champions):
        return Comparison(True, f"no champion yet; {floor}", own)

    champion_run = c.get_run(champion.run_id)
    same_window = champion_run.data.tags.get(TAG_FEATURE_VERSION) == run_tags.get(TAG_FEATURE_VERSION)
    if same_window:
        theirs = dict(champion_run.data.metrics)
        where = "same validation rows (same feature version)"
        pairs = [(spec.primary_metric, float(metrics[spec.primary_metric]),
                  _float(theirs.get(spec.primary_metric))) for spec in specs]
    else:
        scored_against = run_tags.get("gate.champion_run")
        unscorable = run_tags.get("gate.champion_unscorable")
        if unscorable and scored_against in (champion.run_id, None):
            return Comparison(True, f"the champion (run {champion.run_id}) could not be scored on this run's rows "
                                    f"({unscorable}); the popularity floor alone decides: {floor}", own)
        if scored_against != champion.run_id:
            why = ("was not scored against the current champion" if scored_against else "has no gate metrics")
            return Comparison(False, f"this run {why} (champion run {champion.run_id}, trained on other data): "
                                     "retrain to compare on the same rows", own)
        users = int(metrics.get("gate_users", 0))
        if users == 0:
            return Comparison(False, "no validation row of this run is new to the champion: nothing to compare on, "
                                     "the champion stays", own)
        where = f"this run's {int(metrics.get('gate_rows', 0))} validation rows new to the champion ({users} users)"
        pairs = [(f"gate_{spec.primary_metric}", _float(metrics.get(f"gate_{spec.primary_metric}")),
                  _float(metrics.get(f"gate_champion_{spec.primary_metric}"))) for spec in specs]
    (metric, value, champion_value), *ranker_pairs = pairs
    if value is None:
        return Comparison(False, f"this run logged no {metric}", own)
    if champion_value is not None and value <= champion_value:
        return Comparison(False, f"{metric} {value:.4f} does not beat the champion's {champion_value:.4f} "
                                 f"on {where}", pairs)
    reason = f"{metric} {value:.4f} beats the champion's {_fmt(champion_value)} on {where}; {floor}"
    for r_metric, r_value, r_champion in ranker_pairs:
        if r_value is None or r_champion is None:
            reason += f"; ranker {r_metric} not compared (not measured on these rows)"
        elif r_value < r_champion - RANKING_TOLERANCE:
            return Comparison(False, reason + f", but the ranker's {r_metric} {r_value:.4f} is below the champion's "
                                              f"{r_champion:.4f}", pairs)
        else:
            reason += f"; ranker {r_metric} {r_value:.4f} holds (champion {r_champion:.4f})"
    return Comparison(True, reason, pairs)


def _float(value) -> Optional[float]:
    return None if value is None else float(value)


def _fmt(value: Optional[float]) -> str:
    return "none" if value is None else f"{value:.4f}"


def champions(settings: Optional[Settings] = None) -> dict[str, Optional[dict]]:
    """What each ``champion`` alias names, with its run's metrics, None where there is none (the demo, the UI).

    A view for people; code that acts on the champion uses :func:`recsys.tracking.champions.resolve_champion`.
    """
    from recsys.tracking.champions import aliased_versions

    c = client(settings.mlflow_uri if settings else None)
    return {
        name: None if mv is None else
        {"version": str(mv.version), "run_id": mv.run_id, "source": mv.source, "metrics": run_metrics(c, mv.run_id)}
        for name, mv in aliased_versions(settings, c).items()
    }
