"""Train both models on one feature version and write a run folder (docs/layouts.md section 4).

``train_models`` is the single entry point (the CLI and the training job call it). It runs in the
Merlin runtime; TensorFlow is imported inside it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recsys.settings import get_settings

log = logging.getLogger(__name__)

METRIC_KEYS = (
    "recall_at_10", "recall_at_50", "recall_at_100", "ndcg_at_10",
    "popularity_recall_at_10", "popularity_recall_at_50", "popularity_recall_at_100", "popularity_ndcg_at_10",
    "auc", "logloss",
)


def _setting(name: str):
    return field(default_factory=lambda: getattr(get_settings(), name))


@dataclass
class TrainParams:
    """Training hyper-parameters; defaults come from the settings (``RECSYS_EPOCHS`` etc.)."""

    epochs: int = _setting("epochs")
    batch_size: int = _setting("batch_size")
    embedding_dim: int = _setting("embedding_dim")
    learning_rate: float = _setting("learning_rate")
    negatives_per_positive: int = _setting("negatives_per_positive")
    seed: int = _setting("seed")


@dataclass
class TrainResult:
    """What a training run produced; ``metrics`` holds every key of :data:`METRIC_KEYS`."""

    metrics: dict[str, float]
    history: dict[str, dict[str, list[float]]]
    """``{"retrieval": {metric: [per epoch]}, "ranking": {...}}``"""
    paths: dict[str, Path]
    """Exports: query_tower, item_embeddings, dlrm, workflows, metrics (all inside ``out_dir``)."""
    samples_per_second: dict[str, float]
    """Training throughput per model (``retrieval``, ``ranking``)."""
    device: str
    feature_version: str
    data_version: str
    users_evaluated: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_run_dir(cls, out_dir: Path) -> "TrainResult":
        """The result of a complete run folder written earlier (its ``metrics.json``), without retraining."""
        out_dir = Path(out_dir)
        saved = json.loads((out_dir / "metrics.json").read_text())
        candidates = {
            "query_tower": out_dir / "retrieval" / "query_tower",
            "item_embeddings": out_dir / "retrieval" / "item_embeddings.parquet",
            "dlrm": out_dir / "ranking" / "dlrm",
            "workflows": out_dir / "workflows",
            "metrics": out_dir / "metrics.json",
        }
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
        )


def train_models(feature_dir: Path, out_dir: Path, params: TrainParams | None = None) -> TrainResult:
    """Train the two-tower and DLRM models on ``feature_dir`` and write ``out_dir`` atomically.

    ``out_dir`` must not exist yet; the run is written to a temporary sibling and renamed into place
    only when complete, so a failure leaves nothing behind.
    """
    from recsys.data.versioning import atomic_directory
    from recsys.training.evaluation import build_protocol
    from recsys.training.feature_version import FeatureVersion
    from recsys.training.keras_utils import configure_tensorflow, device_name
    from recsys.training.popularity import evaluate_popularity
    from recsys.training.ranking import ranking_frames, train_ranking
    from recsys.training.retrieval import train_retrieval

    params = params or TrainParams()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; training never overwrites a run folder")
    fv = FeatureVersion.open(Path(feature_dir))
    configure_tensorflow(params.seed)
    started = time.perf_counter()
    log.info("training on feature version %s (data %s) with %s", fv.feature_version, fv.data_version, asdict(params))

    columns = list(dict.fromkeys(fv.user_columns + fv.item_columns + [fv.target]))
    train = fv.frame("train", columns)
    valid = fv.frame("valid", columns)
    users = fv.frame("users", fv.user_columns)
    items = fv.frame("items", fv.item_columns)
    log.info("loaded %d train rows, %d valid rows, %d users, %d items", len(train), len(valid), len(users), len(items))

    # Users/items absent from the training window share the out-of-vocabulary code, so valid/ cannot
    # tell them apart: the top-k protocol leaves them out (for the model and the baseline alike).
    shared_users = users.loc[users[fv.user_id].duplicated(keep=False), fv.user_id].unique()
    shared_items = items.loc[items[fv.item_id].duplicated(keep=False), fv.item_id].unique()
    if len(shared_users) or len(shared_items):
        log.info(
            "top-k evaluation leaves out %d users and %d items whose encoded id is shared (not in the training window)",
            int(users[fv.user_id].isin(shared_users).sum()), int(items[fv.item_id].isin(shared_items).sum()),
        )
    catalogue = items.loc[~items[fv.item_id].isin(shared_items), fv.item_id].to_numpy()
    protocol = build_protocol(
        train, valid[~valid[fv.user_id].isin(shared_users)], catalogue, fv.user_id, fv.item_id, fv.target
    )
    baseline = evaluate_popularity(protocol, train, fv.item_id, fv.target)
    log.info("popularity baseline: %s", _fmt(baseline))

    with atomic_directory(out_dir) as tmp:
        retrieval = train_retrieval(
            fv, train, users, items, protocol, tmp,
            epochs=params.epochs, batch_size=params.batch_size,
            embedding_dim=params.embedding_dim, learning_rate=params.learning_rate,
        )
        train_rows, valid_rows = ranking_frames(
            fv, train, valid, items, negatives_per_positive=params.negatives_per_positive, seed=params.seed
        )
        ranking = train_ranking(
            fv, train_rows, valid_rows, tmp,
            epochs=params.epochs, batch_size=params.batch_size,
            embedding_dim=params.embedding_dim, learning_rate=params.learning_rate,
        )
        exports = {**retrieval.exports, **ranking.exports}
        if (fv.path / "workflows").is_dir():
            shutil.copytree(fv.path / "workflows", tmp / "workflows")
            exports["workflows"] = tmp / "workflows"
        exports["metrics"] = tmp / "metrics.json"

        users_evaluated = int(retrieval.metrics.pop("users_evaluated", 0))
        metrics = {**retrieval.metrics, **baseline, **ranking.metrics}
        history = {"retrieval": retrieval.history, "ranking": ranking.history}
        samples_per_second = {"retrieval": retrieval.samples_per_second, "ranking": ranking.samples_per_second}
        seconds = {
            "retrieval": retrieval.train_seconds,
            "ranking": ranking.train_seconds,
            "total": time.perf_counter() - started,
        }
        device = device_name()
        (tmp / "metrics.json").write_text(
            json.dumps(
                {
                    "metrics": metrics,
                    "history": history,
                    "samples_per_second": samples_per_second,
                    "seconds": seconds,
                    "users_evaluated": users_evaluated,
                    "device": device,
                    "feature_version": fv.feature_version,
                    "data_version": fv.data_version,
                    "params": asdict(params),
                },
                indent=2,
                sort_keys=True,
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
    )


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
