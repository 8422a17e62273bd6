"""The champion: the registered model versions that serve together, resolved once from MLflow.

The gate (:mod:`recsys.tracking.registry`) promotes a run's retrieval and ranking models together,
so the ``champion`` aliases name one set: both models of one training run, trained on one feature
version. :func:`resolve_champion` reads that set and everything its users need (publishing: the runs
and artifact sources; training: the champion to re-score; drift checks: the training window), and
refuses a set that could not be served together.

:class:`Champion` travels between Airflow tasks as :meth:`Champion.to_dict` (XCom) and comes back
with :meth:`Champion.from_dict`: a task acts on exactly the set its plan resolved, and
:meth:`Champion.check_still_current` says so when an alias moved in between.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from recsys.errors import RecsysError
from recsys.settings import Settings, get_settings


class ChampionError(RecsysError):
    """The champion aliases do not name a servable set (one model missing, or two feature versions)."""


class NoChampionError(ChampionError):
    """No registered model has a champion yet (none has beaten the popularity baseline)."""


class ChampionMovedError(ChampionError):
    """The ``champion`` aliases moved since a plan resolved them."""


@dataclass(frozen=True)
class ChampionModel:
    """One registered model version of the champion set."""

    role: str  # "retrieval" | "ranking": also the artifact folder inside the run (recsys.layout.RunExports)
    name: str
    version: str
    run_id: str
    source: str


@dataclass(frozen=True)
class Champion:
    """The champion set: its model versions by role and the lineage they share."""

    models: dict[str, ChampionModel]
    feature_version: str
    data_version: str
    ranker_weight: float = 1.0
    """The scoring stage's blend, as the champion's training run chose it (``pipeline_ranker_weight``)."""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict, compare=False)
    """The training run's logged metrics, by registered model name (for the demo and the UI)."""

    @property
    def run_id(self) -> str:
        """The training run (the retrieval model's; the gate promotes both models of one run)."""
        return self.models["retrieval"].run_id

    @property
    def versions(self) -> dict[str, str]:
        """``{registered model name: version}``: what identifies the set (a publish's no-op check)."""
        return {m.name: m.version for m in self.models.values()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Champion":
        models = {role: ChampionModel(**m) for role, m in data["models"].items()}
        return cls(models, data["feature_version"], data["data_version"], float(data.get("ranker_weight", 1.0)),
                   dict(data.get("metrics") or {}))

    def check_still_current(self, settings: Optional[Settings] = None, mlflow_client=None) -> None:
        """Raise :class:`ChampionMovedError` if the aliases now name another set than this one."""
        now = resolve_champion(settings, mlflow_client)
        if now.versions != self.versions:
            raise ChampionMovedError(
                f"the champion moved since it was planned: planned {self.versions}, now {now.versions} "
                f"(feature version {self.feature_version} -> {now.feature_version}); nothing was changed. "
                "Run again to act on the new champion."
            )


def aliased_versions(settings: Optional[Settings] = None, mlflow_client=None) -> dict[str, Any]:
    """``{registered model name: the MLflow ModelVersion its champion alias names, or None}``."""
    from recsys.tracking.registry import CHAMPION, alias_version, model_specs
    from recsys.tracking.runs import client

    s = settings or get_settings()
    c = mlflow_client or client(s.mlflow_uri)
    return {spec.name: alias_version(c, spec.name, CHAMPION) for spec in model_specs(s)}


def resolve_champion(settings: Optional[Settings] = None, mlflow_client=None) -> Champion:
    """The champion set; :class:`NoChampionError` before the first, :class:`ChampionError` when the aliases
    name a set that cannot serve together (a model missing, or two feature versions: their encoded ids
    would not agree)."""
    from recsys.tracking.registry import CHAMPION, model_specs
    from recsys.tracking.runs import TAG_DATA_VERSION, TAG_FEATURE_VERSION, client

    s = settings or get_settings()
    c = mlflow_client or client(s.mlflow_uri)
    aliases = aliased_versions(s, c)
    if all(mv is None for mv in aliases.values()):
        raise NoChampionError(f"no model has a '{CHAMPION}' version in MLflow ({s.mlflow_uri}): none has beaten the "
                              "popularity baseline yet (train one; until then serving answers with the popularity list)")
    models: dict[str, ChampionModel] = {}
    lineage: dict[str, tuple[str, str]] = {}
    metrics: dict[str, dict[str, float]] = {}
    runs: dict[str, Any] = {}
    for spec in model_specs(s):
        mv = aliases[spec.name]
        if mv is None:
            raise ChampionError(f"model {spec.name!r} has no '{CHAMPION}' version in MLflow ({s.mlflow_uri}): train first")
        if mv.run_id not in runs:
            runs[mv.run_id] = c.get_run(mv.run_id)
        tags = {**runs[mv.run_id].data.tags, **{k: v for k, v in (mv.tags or {}).items() if v}}
        models[spec.artifact_path] = ChampionModel(spec.artifact_path, spec.name, str(mv.version), mv.run_id, mv.source)
        lineage[spec.name] = (tags.get(TAG_FEATURE_VERSION, ""), tags.get(TAG_DATA_VERSION, ""))
        metrics[spec.name] = dict(runs[mv.run_id].data.metrics)
    feature_versions = {fv for fv, _ in lineage.values()}
    if len(feature_versions) != 1 or "" in feature_versions:
        detail = ", ".join(f"{m.name} v{m.version}: {lineage[m.name][0] or '(none)'}" for m in models.values())
        raise ChampionError(
            f"the champions were not trained on one feature version ({detail}); their encoded ids would not "
            "agree. Train both on the same feature version (one recsys_train run) and publish again."
        )
    retrieval = models["retrieval"]
    feature_version, data_version = lineage[retrieval.name]
    if not data_version:
        raise ChampionError(f"champion run {retrieval.run_id} has no {TAG_DATA_VERSION} tag: its training data is unknown")
    ranking = models.get("ranking")
    weight = float(metrics[ranking.name].get("pipeline_ranker_weight", 1.0)) if ranking else 1.0
    return Champion(models, feature_version, data_version, weight, metrics)
