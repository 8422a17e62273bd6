"""Train both models on one feature version and write a run folder (docs/layouts.md section 4).

``train_models`` is the single entry point (the CLI and the training job call it). It runs in the
Merlin runtime; TensorFlow is imported inside it. One run:

1. the top-k protocol of the validation rows (whole catalogue, seen items excluded), the popularity
   baseline on it, and a probe of the same protocol over training rows (the train/validation gap);
2. optionally, a hyperparameter search (:mod:`recsys.training.tuning`, Optuna), whose trials are
   reported through ``on_trial`` (the training job makes them MLflow child runs);
3. each model fitted on the training rows with early stopping on its validation metric
   (recall@10 for retrieval, AUC for ranking), the best epoch's weights kept: these models' figures
   are the run's metrics, the ones the champion gate compares;
4. with ``refit`` (the default), each model fitted again from scratch on training and validation
   rows together, for the number of epochs that was best, so the published models have learned from
   the newest interactions; otherwise the early-stopped models are exported;
5. exports and ``metrics.json``, written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from recsys.layout import RunExports
from recsys.settings import get_settings

log = logging.getLogger(__name__)

METRIC_KEYS = (
    "recall_at_10", "recall_at_50", "recall_at_100", "ndcg_at_10",
    "popularity_recall_at_10", "popularity_recall_at_50", "popularity_recall_at_100", "popularity_ndcg_at_10",
    "auc", "logloss", "pipeline_recall_at_10", "pipeline_ndcg_at_10",
)
MODELS = ("retrieval", "ranking")
PROBE_USERS = 2000
"""Training-side probe of the gap: at most this many users (seeded sample), 20% of their training positives."""


def _setting(name: str):
    return field(default_factory=lambda: getattr(get_settings(), name))


@dataclass
class TrainParams:
    """Training hyper-parameters; defaults come from the settings (``RECSYS_EPOCHS`` etc.).

    ``overrides`` holds per-model values (``{"retrieval": {"learning_rate": ...}, "ranking": {...}}``),
    set by tuning or by hand; :meth:`for_model` applies them.
    """

    epochs: int = _setting("epochs")
    """At most this many epochs; early stopping usually ends sooner."""
    patience: int = _setting("patience")
    """Stop after this many epochs without a better validation metric (0: never stop early)."""
    batch_size: int = _setting("batch_size")
    """0: chosen from the number of training rows (about 200 steps per epoch, 256..8192)."""
    embedding_dim: int = _setting("embedding_dim")
    learning_rate: float = _setting("learning_rate")
    lr_patience: int = _setting("lr_patience")
    """Two-tower: halve the learning rate after this many epochs without improvement (0: constant)."""
    l2_reg: float = _setting("l2_reg")
    """L2 penalty on every embedding table."""
    dropout: float = _setting("dropout")
    """Dropout in the MLP blocks."""
    history_length: int = _setting("history_length")
    """The query tower reads the user's newest N items (0: no history input)."""
    negatives_per_positive: int = _setting("negatives_per_positive")
    refit: bool = _setting("refit")
    seed: int = _setting("seed")
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    TUNABLE = ("embedding_dim", "learning_rate", "l2_reg", "dropout", "batch_size")

    def for_model(self, model: str) -> "TrainParams":
        """These parameters with ``overrides[model]`` applied."""
        changes = dict(self.overrides.get(model, {}))
        unknown = set(changes) - set(self.TUNABLE)
        if unknown:
            raise ValueError(f"unknown {model} parameter(s) {sorted(unknown)}; per-model parameters: {self.TUNABLE}")
        return dataclasses.replace(self, overrides={}, **changes)

    def flat(self) -> dict[str, Any]:
        """Every value as one flat mapping (MLflow params): shared ones, then ``<model>.<name>`` overrides."""
        out = {k: v for k, v in asdict(self).items() if k != "overrides"}
        for model, values in sorted(self.overrides.items()):
            out.update({f"{model}.{k}": v for k, v in sorted(values.items())})
        return out


@dataclass
class TrainResult:
    """What a training run produced; ``metrics`` holds every key of :data:`METRIC_KEYS`."""

    metrics: dict[str, float]
    history: dict[str, dict[str, list[float]]]
    """``{"retrieval": {metric: [per epoch]}, "ranking": {...}}`` of the early-stopped fits."""
    paths: dict[str, Path]
    """Exports: query_tower, item_embeddings, dlrm, workflows, metrics (all inside ``out_dir``)."""
    samples_per_second: dict[str, float]
    """Training throughput per model (``retrieval``, ``ranking``)."""
    device: str
    feature_version: str
    data_version: str
    users_evaluated: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    stopping: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model: best_epoch, epochs_run, stop_reason, batch_size; ``refit_epochs`` when refitted."""
    params: dict[str, Any] = field(default_factory=dict)
    """:meth:`TrainParams.flat` of the parameters used (after tuning)."""
    tuning: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run_dir(cls, out_dir: Path) -> "TrainResult":
        """The result of a complete run folder written earlier (its ``metrics.json``), without retraining."""
        run = RunExports(Path(out_dir))
        saved = json.loads(run.metrics.read_text())
        candidates = {**run.exports(), "metrics": run.metrics}
        return cls(
            metrics=saved["metrics"],
            history=saved["history"],
            paths={name: path for name, path in candidates.items() if path.exists()},
            samples_per_second=saved["samples_per_second"],
            device=saved["device"],
            feature_version=saved["feature_version"],
            data_version=saved["data_version"],
            users_evaluated=saved.get("users_evaluated", 0),
            seconds=saved.get("seconds", {}),
            stopping=saved.get("stopping", {}),
            params=saved.get("params", {}),
            tuning=saved.get("tuning", {}),
        )


@dataclass
class TrainingData:
    """Everything a fit needs, loaded once per run (and shared by every tuning trial)."""

    fv: Any  # FeatureVersion
    train: Any
    valid: Any
    users: Any
    items: Any
    protocol: Any  # TopKProtocol over the validation rows
    probe: Any  # TopKProtocol over training rows (the gap)
    baseline: dict[str, float]


def load_training_data(feature_dir: Path, seed: int) -> TrainingData:
    """Read a feature version's frames and build the evaluation protocols and the popularity baseline."""
    import numpy as np

    from recsys.training.evaluation import build_protocol
    from recsys.layout import FeatureVersion
    from recsys.training.popularity import evaluate_popularity

    fv = FeatureVersion.open(Path(feature_dir))
    columns = list(dict.fromkeys(fv.user_columns + fv.item_columns + [fv.target, fv.columns.get("timestamp", "timestamp")]))
    train = fv.frame("train", columns)
    valid = fv.frame("valid", columns)
    users = fv.frame("users", fv.user_columns)
    items = fv.frame("items", fv.item_columns)
    log.info("loaded %d train rows, %d valid rows, %d users, %d items", len(train), len(valid), len(users), len(items))

    # Users and items without any interaction share the out-of-vocabulary code, so they cannot be told
    # apart: they leave the catalogue of the protocol. Validation users without a training interaction
    # are left out too: a model (or the baseline) is judged on users it could know.
    shared_items = items.loc[items[fv.item_id].duplicated(keep=False), fv.item_id].unique()
    catalogue = items.loc[~items[fv.item_id].isin(shared_items), fv.item_id].to_numpy()
    known = train.loc[train[fv.target] == 1, fv.user_id].unique()
    judged = valid[valid[fv.user_id].isin(known)]
    if len(judged) < len(valid):
        log.info("top-k evaluation leaves out %d validation rows of users without a training positive",
                 len(valid) - len(judged))
    protocol = build_protocol(train, judged, catalogue, fv.user_id, fv.item_id, fv.target)
    baseline = evaluate_popularity(protocol, train, fv.item_id, fv.target)
    log.info("popularity baseline: %s", _fmt(baseline))

    # The probe: for a sample of users, 20% of their training positives play "validation", the rest "seen".
    rng = np.random.default_rng(seed)
    positives = train[train[fv.target] == 1]
    sample_users = rng.permutation(positives[fv.user_id].unique())[:PROBE_USERS]
    sampled = positives[positives[fv.user_id].isin(sample_users)]
    held = rng.random(len(sampled)) < 0.2
    probe = build_protocol(sampled[~held], sampled[held], catalogue, fv.user_id, fv.item_id, fv.target)
    return TrainingData(fv, train, valid, users, items, protocol, probe, baseline)


def train_models(
    feature_dir: Path,
    out_dir: Path,
    params: TrainParams | None = None,
    *,
    tune_trials: int = 0,
    tune_timeout_seconds: Optional[float] = None,
    on_trial: Optional[Callable[[dict[str, Any]], None]] = None,
    champion: Any = None,
    data_root: Optional[Path] = None,
) -> TrainResult:
    """Train the two-tower and DLRM models on ``feature_dir`` and write ``out_dir`` atomically.

    ``out_dir`` must not exist yet; the run is written to a temporary sibling and renamed into place
    only when complete, so a failure leaves nothing behind. ``tune_trials`` > 0: search the per-model
    parameters first (at most ``tune_timeout_seconds``); ``on_trial`` receives each finished trial.
    ``champion``: the serving champion's downloaded exports (:class:`recsys.training.rescoring.ChampionExports`);
    when it was trained on another feature version, both are scored on this run's validation rows that are
    new to it (``gate_*`` metrics, what the champion gate compares). ``data_root``: where data versions live.
    """
    from recsys.data.versioning import atomic_directory
    from recsys.training.keras_utils import configure_tensorflow, device_name
    from recsys.training.ranking import export_ranking, fit_dlrm, ranking_frames
    from recsys.training.retrieval import (
        candidate_pools, choose_prior_weight, export_retrieval, fit_two_tower, popularity_prior, positives_of,
        user_histories,
    )

    params = params or TrainParams()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; training never overwrites a run folder")
    data = load_training_data(Path(feature_dir), params.seed)
    fv = data.fv
    configure_tensorflow(params.seed)
    started = time.perf_counter()
    tuning: dict[str, Any] = {}
    if tune_trials:
        from recsys.training.tuning import tune

        params, tuning = tune(data, params, trials=tune_trials, timeout_seconds=tune_timeout_seconds, on_trial=on_trial)
    log.info("training on feature version %s (data %s) with %s", fv.feature_version, fv.data_version, params.flat())

    retrieval_params, ranking_params = params.for_model("retrieval"), params.for_model("ranking")
    train_positives = positives_of(fv, data.train, fv.path / "train", retrieval_params)
    train_users = user_histories(fv, data.train, data.users, retrieval_params)
    retrieval = fit_two_tower(
        fv, train_positives, retrieval_params, epochs=params.epochs, protocol=data.protocol,
        users=train_users, items=data.items, probe=data.probe,
    )
    prior_weight, with_prior = choose_prior_weight(data, retrieval.model, retrieval_params)
    retrieval.metrics.update(with_prior)
    # with labels the ranker learns from the rows as they are: no sampled negatives, so no candidates
    candidates = None if fv.has_labels else candidate_pools(
        retrieval.model, fv, retrieval_params, data.train, train_users, data.items, candidates_k(), prior_weight)
    train_rows, valid_rows = ranking_frames(fv, data.train, data.valid, data.items, ranking_params, candidates)
    ranking = fit_dlrm(fv, train_rows, ranking_params, epochs=params.epochs, valid_rows=valid_rows)
    stopping = {"retrieval": dict(retrieval.stopping), "ranking": dict(ranking.stopping)}
    two_stage = evaluate_two_stage(data, retrieval.model, retrieval_params, ranking.model, ranking_params, prior_weight)
    log.info("two-stage pipeline (retrieval's %d candidates ordered by the ranker): %s", candidates_k(), _fmt(two_stage))
    gate: dict[str, float] = {}
    if champion is not None and champion.feature_version != fv.feature_version:
        from recsys.training.rescoring import gate_metrics

        gate = gate_metrics(data, retrieval.model, retrieval_params, ranking.model, ranking_params, champion,
                            Path(data_root) if data_root else get_settings().data_root,
                            ranker_weight=two_stage.get("pipeline_ranker_weight", 1.0), candidates=candidates_k(),
                            prior_weight=prior_weight)

    import pandas as pd

    final_retrieval, final_ranking = retrieval.model, ranking.model
    everything = pd.concat([data.train, data.valid], ignore_index=True)
    if params.refit:
        # From scratch on everything, for the epochs that were best and with the same batch size (as many
        # steps per epoch, give or take the added rows): the newest interactions are learned too.
        configure_tensorflow(params.seed)
        same_batch = {"retrieval": retrieval.stopping["batch_size"], "ranking": ranking.stopping["batch_size"]}
        refit = fit_two_tower(fv, positives_of(fv, everything, fv.path / "valid", retrieval_params),
                              dataclasses.replace(retrieval_params, batch_size=same_batch["retrieval"]),
                              epochs=max(1, retrieval.stopping["best_epoch"]), name="retrieval refit",
                              learning_rates=retrieval.history.get("lr"))
        final_retrieval = refit.model
        stopping["retrieval"].update(refit_epochs=refit.stopping["epochs_run"], refit_seconds=refit.train_seconds)
        rows = pd.concat([train_rows, valid_rows], ignore_index=True)
        refit = fit_dlrm(fv, rows, dataclasses.replace(ranking_params, batch_size=same_batch["ranking"]),
                         epochs=max(1, ranking.stopping["best_epoch"]), name="ranking refit")
        final_ranking = refit.model
        stopping["ranking"].update(refit_epochs=refit.stopping["epochs_run"], refit_seconds=refit.train_seconds)

    # the prior of the published model counts every interaction: what serving's popularity looks like
    prior = prior_weight * popularity_prior(fv, everything, data.items) if prior_weight else None
    with atomic_directory(out_dir) as tmp:
        staged = RunExports(tmp)
        exports = {
            **export_retrieval(final_retrieval, fv, data.items, staged, prior=prior),
            **export_ranking(final_ranking, fv, valid_rows, staged, ranking_params),
        }
        if fv.workflows.is_dir():
            shutil.copytree(fv.workflows, staged.workflows)
            exports["workflows"] = staged.workflows
        exports["metrics"] = staged.metrics

        users_evaluated = int(retrieval.metrics.pop("users_evaluated", 0))
        metrics = {**retrieval.metrics, **data.baseline, **ranking.metrics, **two_stage, **gate}
        history = {"retrieval": retrieval.history, "ranking": ranking.history}
        samples_per_second = {"retrieval": retrieval.samples_per_second, "ranking": ranking.samples_per_second}
        seconds = {
            "retrieval": retrieval.train_seconds,
            "ranking": ranking.train_seconds,
            "total": time.perf_counter() - started,
        }
        device = device_name()
        staged.metrics.write_text(
            json.dumps(
                {
                    "metrics": metrics,
                    "history": history,
                    "samples_per_second": samples_per_second,
                    "seconds": seconds,
                    "stopping": stopping,
                    "users_evaluated": users_evaluated,
                    "device": device,
                    "feature_version": fv.feature_version,
                    "data_version": fv.data_version,
                    "split": fv.manifest.get("split", {}),
                    "params": params.flat(),
                    "tuning": tuning,
                    "gate_champion": champion.to_tags() if champion is not None else {},
                },
                indent=2,
                sort_keys=True,
                default=str,
            )
        )
        relative = {name: path.relative_to(tmp) for name, path in exports.items()}

    log.info("model metrics: %s", _fmt(metrics))
    log.info("run written to %s in %.0fs", out_dir, time.perf_counter() - started)
    return TrainResult(
        metrics=metrics,
        history=history,
        paths={k: out_dir / p for k, p in relative.items()},
        samples_per_second=samples_per_second,
        device=device,
        feature_version=fv.feature_version,
        data_version=fv.data_version,
        users_evaluated=users_evaluated,
        seconds=seconds,
        stopping=stopping,
        params=params.flat(),
        tuning=tuning,
    )


def candidates_k() -> int:
    """Retrieval's candidates per request: the served depth (``RECSYS_CANDIDATES_K``)."""
    return int(get_settings().candidates_k)


RANKER_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The blends of the ranker's order with retrieval's that a run tries on validation (1: the ranker alone)."""
TWO_STAGE_USERS = 3000
"""The two-stage figures score at most this many validation users (a seeded sample): the ranker runs on
every candidate of every user, and 20k users x 200 candidates took longer than the model's epoch."""


def evaluate_two_stage(data: TrainingData, retrieval_model, retrieval_params: TrainParams, ranking_model,
                       ranking_params: TrainParams, prior_weight: float = 0.0) -> dict[str, float]:
    """``pipeline_*`` metrics: the validation protocol scored the way serving answers (before business rules).

    Retrieval's ``candidates_k`` best items (seen ones excluded), ordered by the ranker's probability blended
    with retrieval's order (:func:`recsys.serving.scoring.fuse`); the blend (``pipeline_ranker_weight``, one
    of :data:`RANKER_WEIGHTS`) is the one with the best recall@10 here, and serving uses it. A ranker trained on sampled negatives can order the
    candidates worse than retrieval did (it never saw real impressions); the blend keeps it from making the
    served list worse than retrieval's own, and says so in a number.
    """
    from recsys.training.evaluation import two_stage
    from recsys.training.keras_utils import batched_call
    from recsys.training.ranking import ranker_columns
    from recsys.training.retrieval import embed, items_in_order, popularity_prior, protocol_users

    fv = data.fv
    protocol = data.protocol.sample(TWO_STAGE_USERS, seed=retrieval_params.seed)
    if not len(protocol.user_ids):
        return {}
    users = protocol_users(fv, data.train, data.users, retrieval_params, protocol.user_ids)
    catalogue = items_in_order(data.items, fv.item_id, protocol.item_ids)
    query_vectors, item_vectors = embed(retrieval_model, fv, retrieval_params, users, catalogue,
                                        prior_weight * popularity_prior(fv, data.train, catalogue) if prior_weight else None)
    ranker_users = users if ranking_params.history_length == retrieval_params.history_length else \
        protocol_users(fv, data.train, data.users, ranking_params, protocol.user_ids)
    user_part = [c for c in ranker_columns(fv, ranking_params) if c not in fv.item_columns]

    def rank(user_rows, item_positions):
        import pandas as pd

        frame = pd.concat([ranker_users[user_part].iloc[user_rows].reset_index(drop=True),
                           catalogue[fv.item_columns].iloc[item_positions].reset_index(drop=True)], axis=1)
        return batched_call(ranking_model, frame, ranker_columns(fv, ranking_params)).ravel()

    import numpy as np

    stages = two_stage(lambda rows: query_vectors[rows] @ item_vectors.T, rank, protocol.seen,
                       np.arange(len(protocol.user_ids)), candidates_k())
    tried = {w: protocol.evaluate(stages.scores(w), chunk_size=256) for w in RANKER_WEIGHTS}
    best = max(RANKER_WEIGHTS, key=lambda w: (tried[w]["recall_at_10"], tried[w]["ndcg_at_10"], w))
    out = {f"pipeline_{k}": v for k, v in tried[best].items() if k != "users_evaluated"}
    out["pipeline_ranker_weight"] = float(best)
    out["pipeline_ranker_alone_recall_at_10"] = tried[1.0]["recall_at_10"]
    log.info("ranker weight on validation (recall@10): %s -> %s",
             ", ".join(f"{w}: {tried[w]['recall_at_10']:.4f}" for w in RANKER_WEIGHTS), best)
    return out


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
