"""DLRM ranking model (merlin-models ``DLRMModel``): user x item features -> click probability.

With labels (has_labels true) it trains on the rows as they are; with positives only, sampled
negatives are added to train and valid (:mod:`recsys.training.negatives`). Evaluated with AUC
and logloss on valid, with early stopping on the validation AUC (the best epoch's weights are kept);
exported as ``ranking/dlrm/`` (SavedModel) after checking that the reloaded model predicts the same
numbers as the trained one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from recsys.errors import RecsysError
from recsys.features.history import HISTORY
from recsys.layout import FeatureVersion, FeatureVersionError, RunExports
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
    params,
    candidates: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and valid rows for the ranker: the user's history on every row (when ``params.history_length``),
    and sampled negatives when the data has no labels.

    Negatives are drawn by popularity: the items retrieval proposes are popular ones, and a ranker trained
    against uniformly drawn (mostly obscure) items learns little more than popularity itself. With
    ``candidates`` (:func:`recsys.training.retrieval.candidate_pools`: retrieval's best items for each
    user), half of each positive's negatives come from the user's own candidates: serving asks the ranker
    to order exactly those. Measured on MovieLens-latest-small (bench/README.md): the ranker alone over
    retrieval's 200 candidates went from validation recall@10 0.079 to 0.091 (the served blend 0.128 ->
    0.130; the AUC, now against harder negatives, 0.796 -> 0.706). Each negative copies the history of the
    positive it was drawn for.
    """
    columns = fv.user_columns + fv.item_columns + [fv.target]
    if params.history_length:
        train, valid = with_histories(fv, train, valid, params.history_length)
        columns = columns + [HISTORY]
    train, valid = train[columns].reset_index(drop=True), valid[columns].reset_index(drop=True)
    if fv.has_labels:
        return train, valid
    common = dict(
        items=items[fv.item_columns],
        user_col=fv.user_id,
        item_col=fv.item_id,
        target=fv.target,
        negatives_per_positive=params.negatives_per_positive,
        strategy="popularity",
        candidates=candidates,
        candidate_negatives=params.negatives_per_positive // 2,
    )
    train_rows = with_negatives(train, seed=params.seed, **common)
    # Validation negatives also avoid the user's training positives (they are not negatives).
    valid_rows = with_negatives(valid, seed=params.seed + 1, known_positives=train, **common)
    return train_rows, valid_rows


def with_histories(fv: FeatureVersion, train: pd.DataFrame, valid: pd.DataFrame, length: int):
    """Each training row gets the user's other training interactions (leave one out); each validation row
    gets all of the user's training interactions: what serving will read (recsys.features.history)."""
    from recsys.features.history import leave_one_out, per_user, truncate
    from recsys.training.retrieval import add_history

    timestamp = fv.columns.get("timestamp", "timestamp")
    users, items, times = train[fv.user_id].to_numpy(), train[fv.item_id].to_numpy(), train[timestamp].to_numpy()
    lists = per_user(users, items, times)
    empty = np.zeros(0, np.int64)
    values, offsets = truncate([lists.get(u, empty) for u in valid[fv.user_id].to_numpy()], length)
    return add_history(train, *leave_one_out(users, items, times, length)), add_history(valid, values, offsets)


PRIMARY_METRIC = "auc"
"""What early stopping (and tuning) maximises for the ranker: AUC on the validation rows."""


def build_dlrm(fv: FeatureVersion, schema, params):
    """A compiled ``DLRMModel`` over the user and item columns (L2-regularized embeddings, MLP dropout)."""
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.schema import Tags

    from recsys.training.keras_utils import regularized_embeddings

    d = int(params.embedding_dim)
    has_continuous = bool(fv.columns.get("user_continuous") or fv.columns.get("item_continuous"))
    model = mm.DLRMModel(
        schema,
        embeddings=regularized_embeddings(schema.select_by_tag(Tags.CATEGORICAL), params),
        # DLRM maps the continuous features to the embedding size so they can interact with them
        bottom_block=mm.MLPBlock([d]) if has_continuous else None,
        top_block=mm.MLPBlock([2 * d, d], dropout=params.dropout),
        prediction_tasks=mm.BinaryOutput(fv.target),
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=params.learning_rate))
    return model


def fit_dlrm(
    fv: FeatureVersion,
    train_rows: pd.DataFrame,
    params,
    *,
    epochs: int,
    valid_rows: Optional[pd.DataFrame] = None,
    on_epoch: Optional[Callable[[int, float], None]] = None,
    name: str = "ranking",
) -> ModelResult:
    """Fit a new DLRM on ``train_rows`` for at most ``epochs`` epochs.

    With ``valid_rows``, Keras evaluates them after each epoch, training stops ``params.patience`` epochs
    after the best validation AUC and keeps that epoch's weights; AUC and logloss of the kept model on the
    validation rows are the metrics (``train_auc`` and the gap beside them). Without (the refit on training
    and validation together), exactly ``epochs`` epochs run.
    """
    from recsys.training.keras_utils import (
        BestEpoch, EpochTimer, ProgressLogger, auto_batch_size, batched_call, clean_history, frame_batches,
    )

    from recsys.training.retrieval import with_schema_history

    feature_cols = ranker_columns(fv, params)
    schema = with_schema_history(fv, fv.dataset("train").schema.select_by_name(fv.user_columns + fv.item_columns + [fv.target]), params)
    frames = {"train": train_rows} if valid_rows is None else {"train": train_rows, "valid": valid_rows}
    for split, frame in frames.items():
        classes = set(np.unique(frame[fv.target]).tolist())
        if classes != {0, 1}:
            raise FeatureVersionError(
                f"{fv.path / split}: column {fv.target} must hold both 0 and 1 for ranking; found {sorted(classes)}"
            )
    batch_size = int(params.batch_size) or auto_batch_size(len(train_rows))
    model = build_dlrm(fv, schema, params)
    train_loader = frame_batches(train_rows, feature_cols, batch_size, target=fv.target, seed=params.seed)
    timer = EpochTimer()
    callbacks: list = [timer]
    stopping = None
    fit_kwargs: dict[str, Any] = {}
    if valid_rows is not None:
        fit_kwargs["validation_data"] = frame_batches(valid_rows, feature_cols, batch_size, target=fv.target, shuffle=False)
        stopping = BestEpoch(f"val_{PRIMARY_METRIC}", "max", patience=int(params.patience), on_epoch=on_epoch)
        callbacks.append(stopping)
    callbacks.append(ProgressLogger(name, epochs, len(train_rows), timer))
    log.info("%s: training on %d rows (%.1f%% positive), batch %d, at most %d epochs%s", name, len(train_rows),
             100 * train_rows[fv.target].mean(), batch_size, epochs,
             f", validating on {len(valid_rows)}" if valid_rows is not None else "")
    started = time.perf_counter()
    fit = model.fit(train_loader, epochs=epochs, verbose=0, callbacks=callbacks, **fit_kwargs)
    train_seconds = time.perf_counter() - started

    metrics: dict[str, float] = {}
    summary: dict[str, Any] = {"epochs_run": len(timer.seconds), "batch_size": batch_size}
    if stopping is not None:
        summary.update(stopping.summary())
        probabilities = batched_call(model, valid_rows, feature_cols).ravel()
        labels = valid_rows[fv.target].to_numpy()
        metrics = {"auc": auc(labels, probabilities), "logloss": logloss(labels, probabilities)}
        train_auc = fit.history.get("auc", [])
        if len(train_auc) >= stopping.best_epoch > 0:
            metrics["train_auc"] = float(train_auc[stopping.best_epoch - 1])
            metrics["gap_auc"] = metrics["train_auc"] - metrics["auc"]
        log.info("%s: %s; valid auc=%.4f logloss=%.4f", name, stopping.stop_reason, metrics["auc"], metrics["logloss"])
    return ModelResult(
        metrics=metrics,
        history=clean_history(fit.history),
        samples_per_second=timer.samples_per_second(len(train_rows)),
        train_seconds=train_seconds,
        stopping=summary,
        model=model,
    )


def ranker_columns(fv: FeatureVersion, params) -> list[str]:
    """The ranker's inputs: user columns, item columns, and the history when it is on."""
    return fv.user_columns + fv.item_columns + ([HISTORY] if params.history_length else [])


def export_ranking(model, fv: FeatureVersion, check_rows: pd.DataFrame, run: RunExports, params) -> dict[str, Path]:
    """Save the DLRM as ``run.dlrm`` and check the reloaded model predicts what the trained one does."""
    from recsys.training.keras_utils import batched_call

    from recsys.training.keras_utils import frame_to_inputs, save_with_named_inputs

    feature_cols = ranker_columns(fv, params)
    dlrm_dir = run.dlrm
    dlrm_dir.parent.mkdir(parents=True, exist_ok=True)
    rows = check_rows.head(512)
    save_with_named_inputs(model, dlrm_dir, frame_to_inputs(rows.head(2), feature_cols), f"{fv.target}/binary_output")
    verify_export(dlrm_dir, rows, feature_cols, batched_call(model, rows, feature_cols).ravel())
    return {"dlrm": dlrm_dir}


def verify_export(saved_dir: Path, rows: pd.DataFrame, columns: list[str], expected: np.ndarray) -> None:
    """Reload the SavedModel and check its serving signature (what Triton calls) reproduces ``expected``."""
    import tensorflow as tf

    from recsys.training.keras_utils import batched_call

    serving = tf.saved_model.load(str(saved_dir)).signatures["serving_default"]
    got = batched_call(lambda inputs: serving(**inputs), rows, columns).ravel()
    worst = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if got.shape != expected.shape or worst > 1e-5:
        raise ExportMismatchError(
            f"{saved_dir}: reloaded model differs from the trained one (max abs difference {worst:.3g})"
        )
