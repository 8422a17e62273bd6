"""Two-tower retrieval model (merlin-models ``TwoTowerModelV2``): building, fitting with early stopping, exports.

Query tower: user id + user features + the user's history (:mod:`recsys.features.history`: the items they
engaged with, newest first, pooled as sum / sqrt(length)). Candidate tower: item id + item features. Each
tower embeds its columns (L2-regularized embedding tables), concatenates them and applies
``MLPBlock([2d, d])`` with dropout. A training row's history never holds the item it predicts. Trained on the positive rows (target == 1) with in-batch negatives and the logQ correction
(in-batch negatives are drawn by popularity; without the correction popular items are pushed down).
After every epoch the model is scored over the whole catalogue with the shared
:class:`~recsys.training.evaluation.TopKProtocol`; :class:`~recsys.training.keras_utils.BestEpoch` stops
when that metric stops improving and restores the best epoch's weights; the learning rate halves after
``lr_patience`` epochs without improvement (a refit replays the rates). :func:`candidate_pools` gives each
user the items the fitted model proposes: the ranker's hard negatives.

Exports (docs/layouts.md section 4):
- ``retrieval/query_tower/``: SavedModel, user features -> query embedding
- ``retrieval/item_embeddings.parquet``: item_id (encoded), item_id_raw, embedding (list<float32>)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from recsys.training.evaluation import TopKProtocol
from recsys.layout import FeatureVersion, FeatureVersionError, RunExports

log = logging.getLogger(__name__)

PRIMARY_METRIC = "recall_at_10"
"""What early stopping (and tuning) maximises: whole-catalogue recall@10 on the validation rows."""


@dataclass
class ModelResult:
    """What one trainer hands back to the pipeline."""

    metrics: dict[str, float]
    history: dict[str, list[float]]
    samples_per_second: float
    train_seconds: float
    exports: dict[str, Path] = field(default_factory=dict)
    stopping: dict[str, Any] = field(default_factory=dict)
    """:meth:`BestEpoch.summary`: best_epoch, epochs_run, stop_reason (and the refit's epochs, if any)."""
    model: Any = None
    """The fitted Keras model (in memory only; the pipeline exports it or refits a fresh one)."""


def query_columns(fv: FeatureVersion, params) -> list[str]:
    """The query tower's inputs: the user's id and features, and the history when it is on."""
    from recsys.features.history import HISTORY

    return fv.user_columns + ([HISTORY] if params.history_length else [])


def with_schema_history(fv: FeatureVersion, schema, params):
    """``schema`` plus the history column (a ragged list of encoded item ids, its own embedding table)."""
    from merlin.schema import ColumnSchema, Schema, Tags

    from recsys.features.history import HISTORY

    if not params.history_length:
        return schema
    item = schema[fv.item_id]
    column = ColumnSchema(
        HISTORY, dtype=item.dtype, tags=[Tags.USER, Tags.CATEGORICAL], is_list=True, is_ragged=True,
        properties={"domain": {"min": 0, "max": int(item.int_domain.max), "name": HISTORY},
                    "value_count": {"min": 0, "max": int(params.history_length)}},
    )
    return schema + Schema([column])


def add_history(frame: pd.DataFrame, values: np.ndarray, offsets: np.ndarray) -> pd.DataFrame:
    """``frame`` with the history column (row r = ``values[offsets[r]:offsets[r+1]]``)."""
    from recsys.features.history import HISTORY

    return frame.assign(**{HISTORY: np.split(values, offsets[1:-1]) if len(frame) else []})


def user_histories(fv: FeatureVersion, interactions: pd.DataFrame, users: pd.DataFrame, params) -> pd.DataFrame:
    """``users`` with each user's history: every item of ``interactions``, newest first (serving's rule)."""
    from recsys.features.history import per_user, truncate

    if not params.history_length:
        return users
    lists = per_user(interactions[fv.user_id].to_numpy(), interactions[fv.item_id].to_numpy(),
                     interactions[fv.columns.get("timestamp", "timestamp")].to_numpy())
    empty = np.zeros(0, np.int64)
    values, offsets = truncate([lists.get(u, empty) for u in users[fv.user_id].to_numpy()], params.history_length)
    return add_history(users, values, offsets)


def build_two_tower(fv: FeatureVersion, schema, params, item_counts: np.ndarray):
    """A compiled ``TwoTowerModelV2`` for the feature version's user and item columns.

    ``params``: :class:`recsys.training.pipeline.TrainParams` (embedding_dim, l2_reg, dropout,
    learning_rate); ``item_counts``: training positives per encoded item id (the logQ correction).
    """
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.models.tf.outputs.base import DotProduct
    from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
    from merlin.schema import Tags

    from recsys.training.keras_utils import regularized_embeddings

    d = int(params.embedding_dim)

    def tower(columns: list[str]):
        tower_schema = schema.select_by_name(columns)
        inputs = mm.InputBlockV2(
            tower_schema, categorical=regularized_embeddings(tower_schema.select_by_tag(Tags.CATEGORICAL), params),
        )
        return mm.Encoder(inputs, mm.MLPBlock([2 * d, d], no_activation_last_layer=True, dropout=params.dropout))

    id_schema = schema.select_by_name(fv.item_columns).select_by_tag(Tags.ITEM_ID)
    probabilities = (item_counts + 1.0) / (item_counts + 1.0).sum()
    outputs = mm.ContrastiveOutput(
        to_call=DotProduct(),
        negative_samplers="in-batch",
        store_negative_ids=True,  # the correction needs the in-batch negatives' ids
        schema=id_schema,
        post=PopularityLogitsCorrection(tf.constant(probabilities, dtype=tf.float32), is_prob_distribution=True,
                                        schema=id_schema),
    )
    model = mm.TwoTowerModelV2(tower(query_columns(fv, params)), tower(fv.item_columns), outputs=outputs)
    # No Keras metrics: merlin's default in-batch top-k metrics cost 4x the training time on CPU and
    # only rank the batch's items; the whole-catalogue metrics are computed after each epoch instead.
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=params.learning_rate), metrics=[])
    return model


def item_counts_of(fv: FeatureVersion, schema, positives: pd.DataFrame) -> np.ndarray:
    """Positives per encoded item id, sized to the item id's embedding table."""
    from merlin.schema import Tags

    id_schema = schema.select_by_name(fv.item_columns).select_by_tag(Tags.ITEM_ID)
    cardinality = int(id_schema.first.int_domain.max) + 1
    return np.bincount(positives[fv.item_id].to_numpy(np.int64), minlength=cardinality)[:cardinality].astype(np.float64)


def positives_of(fv: FeatureVersion, frame: pd.DataFrame, where: Path, params=None) -> pd.DataFrame:
    """The rows with ``target == 1`` (their user and item columns): what retrieval learns from.

    With a history (``params.history_length``), each row also holds the user's other interactions of
    ``frame`` (every kind: the online store's seen list), newest first, the row's own item left out.
    """
    from recsys.features.history import leave_one_out

    positive = (frame[fv.target] == 1).to_numpy()
    if not positive.any():
        raise FeatureVersionError(f"{where}: no rows with {fv.target} == 1 to train retrieval on")
    rows = frame[fv.user_columns + fv.item_columns]
    if params is not None and params.history_length:
        timestamp = fv.columns.get("timestamp", "timestamp")
        values, offsets = leave_one_out(frame[fv.user_id].to_numpy(), frame[fv.item_id].to_numpy(),
                                        frame[timestamp].to_numpy(), params.history_length)
        rows = add_history(rows, values, offsets)
    return rows[positive].reset_index(drop=True)


def fit_two_tower(
    fv: FeatureVersion,
    positives: pd.DataFrame,
    params,
    *,
    epochs: int,
    protocol: Optional[TopKProtocol] = None,
    users: Optional[pd.DataFrame] = None,
    items: Optional[pd.DataFrame] = None,
    probe: Optional[TopKProtocol] = None,
    on_epoch: Optional[Callable[[int, float], None]] = None,
    name: str = "retrieval",
    learning_rates: Optional[list[float]] = None,
) -> ModelResult:
    """Fit a new two-tower on ``positives`` (:func:`positives_of`, with histories) for at most ``epochs`` epochs.

    With a ``protocol`` (validation rows), every epoch is scored over the whole catalogue and training
    stops ``params.patience`` epochs after the best one, whose weights are kept; ``probe`` (the same
    protocol over training rows) measures the train/validation gap at the end. ``users`` then carries
    each user's history (:func:`user_histories`). Without a protocol (the refit on training and
    validation together), exactly ``epochs`` epochs run.
    """
    import tensorflow as tf

    from recsys.training.keras_utils import (
        BestEpoch, EpochTimer, ProgressLogger, auto_batch_size, batched_call, clean_history, frame_batches,
    )

    schema = with_schema_history(fv, fv.dataset("train").schema.select_by_name(fv.user_columns + fv.item_columns), params)
    batch_size = int(params.batch_size) or auto_batch_size(len(positives))
    # A batch larger than the data would leave no in-batch negatives to learn from.
    batch_size = max(2, min(batch_size, len(positives)))
    model = build_two_tower(fv, schema, params, item_counts_of(fv, schema, positives))
    query_inputs = query_columns(fv, params)
    loader = frame_batches(positives, list(dict.fromkeys(query_inputs + fv.item_columns)), batch_size, seed=params.seed)

    evaluation = None
    callbacks: list = [EpochTimer()]
    timer = callbacks[0]
    if protocol is not None:
        eval_users = users_in_order(users, fv.user_id, protocol.user_ids, fv.path / "users")
        catalogue = items_in_order(items, fv.item_id, protocol.item_ids)

        def evaluate(on: TopKProtocol, user_rows: pd.DataFrame) -> dict[str, float]:
            query_vectors, item_vectors = embed(model, fv, params, user_rows, catalogue)
            return on.evaluate(lambda rows: query_vectors[rows] @ item_vectors.T)

        class FullCatalogueEvaluation(tf.keras.callbacks.Callback):
            """Adds val_recall_at_k / val_ndcg_at_10 (whole catalogue, seen items excluded) to the logs."""

            def on_epoch_end(self, epoch, logs=None):
                for key, value in evaluate(protocol, eval_users).items():
                    if key != "users_evaluated" and logs is not None:
                        logs[f"val_{key}"] = value

        evaluation = BestEpoch(f"val_{PRIMARY_METRIC}", "max", patience=int(params.patience), on_epoch=on_epoch)
        callbacks += [FullCatalogueEvaluation(), evaluation]
        if params.lr_patience:
            callbacks.append(tf.keras.callbacks.ReduceLROnPlateau(
                f"val_{PRIMARY_METRIC}", factor=0.5, patience=int(params.lr_patience), mode="max", min_delta=0.0,
                min_lr=params.learning_rate / 16))
    elif learning_rates:  # a refit replays the early-stopped fit's rates
        callbacks.append(tf.keras.callbacks.LearningRateScheduler(lambda epoch, _lr: learning_rates[min(epoch, len(learning_rates) - 1)]))
    callbacks.append(ProgressLogger(name, epochs, len(positives), timer))
    log.info("%s: %d positives, batch %d (%d steps per epoch), at most %d epochs", name, len(positives), batch_size,
             -(-len(positives) // batch_size), epochs)
    started = time.perf_counter()
    fit = model.fit(loader, epochs=epochs, verbose=0, callbacks=callbacks)
    train_seconds = time.perf_counter() - started

    metrics: dict[str, float] = {}
    stopping: dict[str, Any] = {"epochs_run": len(timer.seconds), "batch_size": batch_size}
    if evaluation is not None:
        stopping.update(evaluation.summary())
        final = evaluate(protocol, eval_users)  # the restored best epoch
        metrics = {key: float(value) for key, value in final.items()}
        if probe is not None and len(probe.user_ids):
            probe_users = users_in_order(users, fv.user_id, probe.user_ids, fv.path / "users")
            seen_on_train = evaluate(probe, probe_users)
            metrics[f"train_{PRIMARY_METRIC}"] = float(seen_on_train[PRIMARY_METRIC])
            metrics[f"gap_{PRIMARY_METRIC}"] = metrics[f"train_{PRIMARY_METRIC}"] - metrics[PRIMARY_METRIC]
        log.info("%s: %s; %s %.4f at the best epoch", name, evaluation.stop_reason, PRIMARY_METRIC, metrics[PRIMARY_METRIC])
    return ModelResult(
        metrics=metrics,
        history=clean_history(fit.history),
        samples_per_second=timer.samples_per_second(len(positives)),
        train_seconds=train_seconds,
        stopping=stopping,
        model=model,
    )


def embed(model, fv: FeatureVersion, params, user_rows: pd.DataFrame, item_rows: pd.DataFrame,
          prior: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors of ``user_rows``, candidate vectors of ``item_rows``) of a two-tower; score = dot product.

    ``prior`` (weighted, per item row): the vectors get the prior slot the exports have (``[q, 1]``, ``[v, p]``).
    """
    from recsys.training.keras_utils import batched_call

    queries = batched_call(model.query_encoder, user_rows, query_columns(fv, params))
    items = batched_call(model.candidate_encoder, item_rows, fv.item_columns)
    if prior is not None:
        queries = np.hstack([queries, np.ones((len(queries), 1), queries.dtype)])
        items = np.hstack([items, np.asarray(prior, items.dtype)[:, None]])
    return queries, items


PRIOR_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)
"""The popularity prior weights a run tries on validation (see :func:`popularity_prior`)."""


def candidate_pools(model, fv: FeatureVersion, params, interactions: pd.DataFrame, users: pd.DataFrame,
                    items: pd.DataFrame, k: int, prior_weight: float = 0.0,
                    chunk_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(sorted user ids, a (users, k) matrix of item ids, -1 past the items left): each user of
    ``interactions`` and their ``k`` best items by this model, best first, among those they have no
    interaction with, as serving's retrieval would propose them (``users``: :func:`user_histories` rows;
    ``prior_weight``: the popularity prior's, as exported). The ranker's hardest negatives: the items it
    will have to order."""
    from recsys.training.evaluation import best_unseen

    user_ids = np.unique(interactions[fv.user_id].to_numpy(np.int64))
    catalogue = items.drop_duplicates(fv.item_id).reset_index(drop=True)
    item_ids = catalogue[fv.item_id].to_numpy(np.int64)
    rows = users_in_order(users, fv.user_id, user_ids, fv.path / "users")
    prior = prior_weight * popularity_prior(fv, interactions, catalogue) if prior_weight else None
    queries, vectors = embed(model, fv, params, rows, catalogue, prior)
    position = pd.Index(item_ids).get_indexer(interactions[fv.item_id].to_numpy(np.int64))
    seen = pd.Series(position).groupby(pd.Index(user_ids).get_indexer(interactions[fv.user_id].to_numpy(np.int64)))
    seen_of = {int(row): group.to_numpy()[group.to_numpy() >= 0] for row, group in seen}
    out = []
    for start in range(0, len(user_ids), chunk_size):
        scores = np.asarray(queries[start:start + chunk_size] @ vectors.T, dtype=np.float64)
        top = best_unseen(scores, [seen_of.get(r) for r in range(start, start + len(scores))], k)
        out.append(np.where(top >= 0, item_ids[top], -1))
    return user_ids, np.concatenate(out)


def popularity_prior(fv: FeatureVersion, interactions: pd.DataFrame, item_rows: pd.DataFrame) -> np.ndarray:
    """log(1 + positives) of each item of ``item_rows`` in ``interactions``: the prior retrieval may add.

    Why: the logQ correction teaches the towers relevance *without* popularity (in-batch negatives are
    drawn by popularity), while what a user picks next is, all else equal, more often popular. Retrieval
    scores ``q . v + w * prior``; ``w`` is chosen on the validation rows (``retrieval_prior_weight``) and
    folded into the exports (the query gets a constant 1, each item ``w * prior``), so FAISS, serving and
    the gate rank with it unchanged. Measured on MovieLens-latest-small: w = 0.25 raised the test
    recall@10 from 0.139 to 0.146.
    """
    positives = interactions.loc[interactions[fv.target] == 1, fv.item_id]
    counts = positives.value_counts().reindex(item_rows[fv.item_id].to_numpy(), fill_value=0).to_numpy()
    return np.log1p(counts.astype(np.float64))


def choose_prior_weight(data, model, params) -> tuple[float, dict[str, float]]:
    """The popularity prior weight (one of :data:`PRIOR_WEIGHTS`) with the best validation recall@10 (then
    ndcg@10); returns it and the retrieval metrics with it, plus ``recall_at_10_no_prior``."""
    fv, protocol = data.fv, data.protocol
    users = protocol_users(fv, data.train, data.users, params, protocol.user_ids)
    catalogue = items_in_order(data.items, fv.item_id, protocol.item_ids)
    queries, vectors = embed(model, fv, params, users, catalogue)
    prior = popularity_prior(fv, data.train, catalogue)
    tried = {w: protocol.evaluate(lambda rows, w=w: queries[rows] @ vectors.T + w * prior) for w in PRIOR_WEIGHTS}
    best = max(PRIOR_WEIGHTS, key=lambda w: (tried[w][PRIMARY_METRIC], tried[w]["ndcg_at_10"], -w))
    log.info("retrieval: popularity prior weight on validation (recall@10): %s -> %s",
             ", ".join(f"{w}: {tried[w][PRIMARY_METRIC]:.4f}" for w in PRIOR_WEIGHTS), best)
    metrics = {k: float(v) for k, v in tried[best].items()}
    metrics["recall_at_10_no_prior"] = float(tried[0.0][PRIMARY_METRIC])
    metrics["retrieval_prior_weight"] = float(best)
    return best, metrics


def export_retrieval(model, fv: FeatureVersion, items: pd.DataFrame, run: RunExports, batch_size: int = 8192,
                     prior: Optional[np.ndarray] = None) -> dict[str, Path]:
    """Write the query tower SavedModel and the embeddings of every item of ``items``.

    ``prior``: ``weight * log(1 + positives)`` per row of ``items`` (:func:`popularity_prior`); the query
    tower then outputs ``[q, 1]`` and each item ``[v, prior]``, one more dimension, so an inner product
    adds the prior.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.data import ids
    from recsys.training.keras_utils import batched_call

    query_dir = run.query_tower
    query_dir.parent.mkdir(parents=True, exist_ok=True)
    if prior is None:
        model.query_encoder.save(str(query_dir))
    else:
        _save_query_with_prior_slot(model, query_dir)

    vectors = batched_call(model.candidate_encoder, items, fv.item_columns, batch_size).astype(np.float32)
    if prior is not None:
        vectors = np.hstack([vectors, np.asarray(prior, dtype=np.float32)[:, None]])
    encoded = items[fv.item_id].to_numpy(np.int64)
    raw_ids = _raw_item_ids(fv, encoded)
    dim = vectors.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim).cast(
        pa.list_(pa.float32())
    )
    table = pa.table(
        {
            "item_id": pa.array(encoded, pa.int64()),
            # the raw id in its kind (recsys.data.ids): int64, or text for string ids
            "item_id_raw": pa.array(raw_ids, pa.int64() if ids.kind_of(raw_ids) == ids.INT else pa.string()),
            "embedding": embedding,
        }
    )
    embeddings_path = run.item_embeddings
    pq.write_table(table, embeddings_path)
    log.info("retrieval: exported query tower to %s and %d item embeddings (dim %d)", query_dir, len(items), dim)
    return {"query_tower": query_dir, "item_embeddings": embeddings_path}


def _save_query_with_prior_slot(model, path: Path) -> None:
    """The query tower as a SavedModel that outputs ``[q, 1]`` (named inputs, like merlin's, and its schema)."""
    import shutil

    import tensorflow as tf
    from merlin.models.io import save_merlin_metadata
    from merlin.schema import ColumnSchema, Schema

    encoder = model.query_encoder
    probe = Path(path).parent / ".query_probe"
    encoder.save(str(probe))  # for the input signature merlin gives the encoder (names and dtypes)
    _, spec = tf.saved_model.load(str(probe)).signatures["serving_default"].structured_input_signature
    shutil.rmtree(probe, ignore_errors=True)
    spec = {name: tf.TensorSpec([None], s.dtype, name=name) for name, s in spec.items()}

    class QueryWithPriorSlot(tf.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        @tf.function(input_signature=[spec])
        def serve(self, inputs):
            query = self.encoder(inputs, training=False)
            return {"output_1": tf.concat([query, tf.ones_like(query[:, :1])], axis=1)}

    module = QueryWithPriorSlot()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    width = int(module.serve.get_concrete_function().structured_outputs["output_1"].shape[-1])
    output = ColumnSchema("output_1", dtype=np.float32, dims=(None, width))  # what merlin writes, one wider
    save_merlin_metadata(str(path), encoder.schema, Schema([output]))


def _raw_item_ids(fv: FeatureVersion, encoded: np.ndarray) -> np.ndarray:
    """Raw item id of each row of items/ (whose encoded ids are ``encoded``).

    Items absent from the training window share the out-of-vocabulary code, so the encoded id
    alone cannot name them; id_maps/items.parquet written in the row order of items/ (as the ETL
    does) does. Otherwise each encoded id must be unique to be mapped back. Raw ids keep their kind
    (int64, or an object array of str: recsys.data.ids).
    """
    from recsys.data import ids

    id_map = fv.item_id_map()
    where = fv.id_map("item")
    kind = ids.kind_of(id_map["item_id_raw"])
    if len(id_map) == len(encoded) and (id_map["item_id"].to_numpy(np.int64) == encoded).all():
        return ids.as_array(id_map["item_id_raw"], kind)
    unique_map = id_map.drop_duplicates("item_id", keep=False).set_index("item_id")["item_id_raw"]
    unmapped = ~pd.Index(encoded).isin(unique_map.index)
    if unmapped.any():
        raise FeatureVersionError(
            f"{where}: encoded item_id {int(encoded[unmapped][0])} from items/ has no unique raw id "
            "(and the file is not in the row order of items/)"
        )
    return ids.as_array(unique_map.loc[encoded], kind)


def protocol_users(fv: FeatureVersion, interactions: pd.DataFrame, users: pd.DataFrame, params,
                   user_ids: np.ndarray) -> pd.DataFrame:
    """The query rows of ``user_ids`` (in order): their features and, when ``params`` has one, their history
    of ``interactions`` (:func:`user_histories`)."""
    return users_in_order(user_histories(fv, interactions, users, params), fv.user_id, user_ids, fv.path / "users")


def users_in_order(users: pd.DataFrame, user_col: str, user_ids: np.ndarray, where: Path) -> pd.DataFrame:
    """The rows of ``users`` for ``user_ids``, in that order (a protocol's rows); ``where`` names the folder
    in the error when one has no row."""
    indexed = users.drop_duplicates(user_col).set_index(user_col, drop=False)
    missing = ~pd.Index(user_ids).isin(indexed.index)
    if missing.any():
        raise FeatureVersionError(
            f"{where}: validation user {user_col}={int(user_ids[missing][0])} has no row in users/"
        )
    return indexed.loc[user_ids].reset_index(drop=True)


def items_in_order(items: pd.DataFrame, item_col: str, item_ids: np.ndarray) -> pd.DataFrame:
    """The rows of ``items`` for ``item_ids``, in that order (a protocol's catalogue)."""
    return items.drop_duplicates(item_col).set_index(item_col, drop=False).loc[item_ids].reset_index(drop=True)
