"""DLRM ranking model (merlin-models ``DLRMModel``): user x item features -> click probability.

With labels (has_labels true) it trains on the rows as they are; with positives only, sampled
negatives are added to train and valid (:mod:`recsys.training.negatives`). Evaluated with AUC
and logloss on valid; exported as ``ranking/dlrm/`` (SavedModel) after checking that the reloaded
model predicts the same numbers as the trained one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import RecsysError
from recsys.training.feature_version import FeatureVersion, FeatureVersionError
from recsys.training.metrics import auc, logloss
from recsys.training.negatives import with_negatives
from recsys.training.retrieval import ModelResult

log = logging.getLogger(__name__)


class ExportMismatchError(RecsysError):
    """A reloaded SavedModel does not reproduce the trained model's predictions."""


def ranking_frames(
    fv: FeatureVersion,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    items: pd.DataFrame,
    *,
    negatives_per_positive: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and valid rows for the ranker, with sampled negatives when the data has no labels."""
    columns = fv.user_columns + fv.item_columns + [fv.target]
    train, valid = train[columns], valid[columns]
    if fv.has_labels:
        return train.reset_index(drop=True), valid.reset_index(drop=True)
    common = dict(
        items=items[fv.item_columns],
        user_col=fv.user_id,
        item_col=fv.item_id,
        target=fv.target,
        negatives_per_positive=negatives_per_positive,
    )
    train_rows = with_negatives(train, seed=seed, **common)
    # Validation negatives also avoid the user's training positives (they are not negatives).
    valid_rows = with_negatives(valid, seed=seed + 1, known_positives=train, **common)
    return train_rows, valid_rows


def train_ranking(
    fv: FeatureVersion,
    train_rows: pd.DataFrame,
    valid_rows: pd.DataFrame,
    out_dir: Path,
    *,
    epochs: int,
    batch_size: int,
    embedding_dim: int,
    learning_rate: float,
) -> ModelResult:
    """Train, evaluate (AUC, logloss on ``valid_rows``) and export the DLRM into ``out_dir / 'ranking'``."""
    import merlin.io
    import merlin.models.tf as mm
    import tensorflow as tf

    from recsys.training.keras_utils import EpochTimer, ProgressLogger, batched_call, clean_history

    feature_cols = fv.user_columns + fv.item_columns
    schema = fv.dataset("train").schema.select_by_name(feature_cols + [fv.target])
    for name, frame in (("train", train_rows), ("valid", valid_rows)):
        classes = set(np.unique(frame[fv.target]).tolist())
        if classes != {0, 1}:
            raise FeatureVersionError(
                f"{fv.path / name}: column {fv.target} must hold both 0 and 1 for ranking; found {sorted(classes)}"
            )
    has_continuous = bool(fv.columns.get("user_continuous") or fv.columns.get("item_continuous"))
    model = mm.DLRMModel(
        schema,
        embedding_dim=embedding_dim,
        # DLRM maps the continuous features to the embedding size so they can interact with them
        bottom_block=mm.MLPBlock([embedding_dim]) if has_continuous else None,
        top_block=mm.MLPBlock([2 * embedding_dim, embedding_dim]),
        prediction_tasks=mm.BinaryOutput(fv.target),
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=learning_rate))

    train_loader = mm.Loader(merlin.io.Dataset(train_rows, schema=schema), batch_size=batch_size, shuffle=True)
    valid_loader = mm.Loader(merlin.io.Dataset(valid_rows, schema=schema), batch_size=batch_size, shuffle=False)
    timer = EpochTimer()
    log.info("ranking: training on %d rows (%.1f%% positive), validating on %d",
             len(train_rows), 100 * train_rows[fv.target].mean(), len(valid_rows))
    started = time.perf_counter()
    fit = model.fit(
        train_loader,
        validation_data=valid_loader,
        epochs=epochs,
        verbose=0,
        callbacks=[timer, ProgressLogger("ranking", epochs, len(train_rows), timer)],
    )
    train_seconds = time.perf_counter() - started

    probabilities = batched_call(model, valid_rows, feature_cols).ravel()
    labels = valid_rows[fv.target].to_numpy()
    metrics = {"auc": auc(labels, probabilities), "logloss": logloss(labels, probabilities)}
    log.info("ranking: valid auc=%.4f logloss=%.4f", metrics["auc"], metrics["logloss"])

    folder = out_dir / "ranking"
    folder.mkdir(parents=True, exist_ok=True)
    dlrm_dir = folder / "dlrm"
    model.save(str(dlrm_dir))
    verify_export(dlrm_dir, valid_rows.head(512), feature_cols, probabilities[:512])
    return ModelResult(
        metrics=metrics,
        history=clean_history(fit.history),
        samples_per_second=timer.samples_per_second(len(train_rows)),
        train_seconds=train_seconds,
        exports={"dlrm": dlrm_dir},
    )


def verify_export(saved_dir: Path, rows: pd.DataFrame, columns: list[str], expected: np.ndarray) -> None:
    """Reload the SavedModel and check it reproduces ``expected`` on ``rows``."""
    import tensorflow as tf

    from recsys.training.keras_utils import batched_call

    reloaded = tf.keras.models.load_model(str(saved_dir))
    got = batched_call(reloaded, rows, columns).ravel()
    worst = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if got.shape != expected.shape or worst > 1e-5:
        raise ExportMismatchError(
            f"{saved_dir}: reloaded model differs from the trained one (max abs difference {worst:.3g})"
        )
