"""Two-tower retrieval model (merlin-models ``TwoTowerModelV2``), its evaluation and exports.

Query tower: user id + user features. Candidate tower: item id + item features. Trained on the
positive rows (target == 1) with in-batch negatives (merlin's ContrastiveOutput default).
After every epoch the model is scored over the whole catalogue with the shared
:class:`~recsys.training.evaluation.TopKProtocol`, so the history shows the real metric.

Exports (docs/layouts.md section 4):
- ``retrieval/query_tower/``: SavedModel, user features -> query embedding
- ``retrieval/item_embeddings.parquet``: item_id (encoded), item_id_raw, embedding (list<float32>)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.training.evaluation import TopKProtocol
from recsys.training.feature_version import FeatureVersion, FeatureVersionError

log = logging.getLogger(__name__)


@dataclass
class ModelResult:
    """What one trainer hands back to the pipeline."""

    metrics: dict[str, float]
    history: dict[str, list[float]]
    samples_per_second: float
    train_seconds: float
    exports: dict[str, Path] = field(default_factory=dict)


def train_retrieval(
    fv: FeatureVersion,
    train: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    protocol: TopKProtocol,
    out_dir: Path,
    *,
    epochs: int,
    batch_size: int,
    embedding_dim: int,
    learning_rate: float,
    logq_correction: bool = True,
) -> ModelResult:
    """Train, evaluate and export the two-tower model into ``out_dir / 'retrieval'``.

    ``train``: training rows (only target == 1 rows are used); ``users``/``items``: the feature
    version's users/ and items/ tables; ``protocol``: the evaluation shared with the baseline.
    """
    import merlin.io
    import merlin.models.tf as mm
    import tensorflow as tf

    from recsys.training.keras_utils import EpochTimer, ProgressLogger, batched_call, clean_history

    user_cols, item_cols = fv.user_columns, fv.item_columns
    schema = fv.dataset("train").schema.select_by_name(user_cols + item_cols)
    positives = train.loc[train[fv.target] == 1, user_cols + item_cols].reset_index(drop=True)
    if len(positives) == 0:
        raise FeatureVersionError(f"{fv.path / 'train'}: no rows with {fv.target} == 1 to train retrieval on")
    # A batch larger than the data would leave no in-batch negatives to learn from.
    batch_size = max(2, min(batch_size, len(positives)))

    query_tower = mm.Encoder(
        schema.select_by_name(user_cols),
        mm.MLPBlock([2 * embedding_dim, embedding_dim], no_activation_last_layer=True),
    )
    candidate_tower = mm.Encoder(
        schema.select_by_name(item_cols),
        mm.MLPBlock([2 * embedding_dim, embedding_dim], no_activation_last_layer=True),
    )
    outputs = None
    if logq_correction:
        # In-batch negatives are drawn by popularity, so popular items get pushed down unless the
        # logits are corrected by log(item frequency) (sampling-bias correction, Yi et al. 2019).
        from merlin.models.tf.outputs.base import DotProduct
        from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
        from merlin.schema import Tags

        id_schema = schema.select_by_name(item_cols).select_by_tag(Tags.ITEM_ID)
        cardinality = int(id_schema.first.int_domain.max) + 1
        counts = np.bincount(positives[fv.item_id].to_numpy(np.int64), minlength=cardinality)[:cardinality]
        outputs = mm.ContrastiveOutput(
            to_call=DotProduct(),
            negative_samplers="in-batch",
            store_negative_ids=True,  # the correction needs the in-batch negatives' ids
            schema=id_schema,
            post=PopularityLogitsCorrection(
                tf.constant((counts + 1.0) / (counts + 1.0).sum(), dtype=tf.float32),
                is_prob_distribution=True,
                schema=id_schema,
            ),
        )
    model = mm.TwoTowerModelV2(query_tower, candidate_tower, outputs=outputs)
    # No Keras metrics: merlin's default in-batch top-k metrics cost 4x the training time on CPU and
    # only rank the batch's items; the whole-catalogue metrics are computed after each epoch instead.
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=learning_rate), metrics=[])

    eval_users = _users_in_order(users, fv.user_id, protocol.user_ids, fv.path / "users")
    catalogue = _items_in_order(items, fv.item_id, protocol.item_ids)

    def embed_all() -> tuple[np.ndarray, np.ndarray]:
        item_vectors = batched_call(model.candidate_encoder, catalogue, item_cols)
        query_vectors = batched_call(model.query_encoder, eval_users, user_cols)
        return query_vectors, item_vectors

    def evaluate() -> dict[str, float]:
        query_vectors, item_vectors = embed_all()
        return protocol.evaluate(lambda rows: query_vectors[rows] @ item_vectors.T)

    class FullCatalogueEvaluation(tf.keras.callbacks.Callback):
        """Adds val_recall_at_k / val_ndcg_at_10 (whole catalogue, seen items excluded) to the logs."""

        last: dict[str, float] = {}

        def on_epoch_end(self, epoch, logs=None):
            self.last = evaluate()
            if logs is not None:
                for key, value in self.last.items():
                    if key != "users_evaluated":
                        logs[f"val_{key}"] = value

    timer, evaluation = EpochTimer(), FullCatalogueEvaluation()
    loader = mm.Loader(merlin.io.Dataset(positives, schema=schema), batch_size=batch_size, shuffle=True)
    log.info(
        "retrieval: training on %d positives, %d users evaluated over %d items",
        len(positives), len(protocol.user_ids), len(protocol.item_ids),
    )
    started = time.perf_counter()
    fit = model.fit(
        loader,
        epochs=epochs,
        verbose=0,
        callbacks=[timer, evaluation, ProgressLogger("retrieval", epochs, len(positives), timer)],
    )
    train_seconds = time.perf_counter() - started
    final = evaluation.last or evaluate()  # the last epoch's evaluation is the final one
    metrics = {key: float(value) for key, value in final.items()}

    exports = export_retrieval(model, fv, items, out_dir / "retrieval", batch_size=8192)
    return ModelResult(
        metrics=metrics,
        history=clean_history(fit.history),
        samples_per_second=timer.samples_per_second(len(positives)),
        train_seconds=train_seconds,
        exports=exports,
    )


def export_retrieval(model, fv: FeatureVersion, items: pd.DataFrame, folder: Path, batch_size: int) -> dict[str, Path]:
    """Write the query tower SavedModel and the embeddings of every item of ``items``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.data import ids
    from recsys.training.keras_utils import batched_call

    folder.mkdir(parents=True, exist_ok=True)
    query_dir = folder / "query_tower"
    model.query_encoder.save(str(query_dir))

    vectors = batched_call(model.candidate_encoder, items, fv.item_columns, batch_size).astype(np.float32)
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
    embeddings_path = folder / "item_embeddings.parquet"
    pq.write_table(table, embeddings_path)
    log.info("retrieval: exported query tower to %s and %d item embeddings (dim %d)", query_dir, len(items), dim)
    return {"query_tower": query_dir, "item_embeddings": embeddings_path}


def _raw_item_ids(fv: FeatureVersion, encoded: np.ndarray) -> np.ndarray:
    """Raw item id of each row of items/ (whose encoded ids are ``encoded``).

    Items absent from the training window share the out-of-vocabulary code, so the encoded id
    alone cannot name them; id_maps/items.parquet written in the row order of items/ (as the ETL
    does) does. Otherwise each encoded id must be unique to be mapped back. Raw ids keep their kind
    (int64, or an object array of str: recsys.data.ids).
    """
    from recsys.data import ids

    id_map = fv.item_id_map()
    where = fv.path / "id_maps" / "items.parquet"
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


def _users_in_order(users: pd.DataFrame, user_col: str, user_ids: np.ndarray, where: Path) -> pd.DataFrame:
    indexed = users.drop_duplicates(user_col).set_index(user_col, drop=False)
    missing = ~pd.Index(user_ids).isin(indexed.index)
    if missing.any():
        raise FeatureVersionError(
            f"{where}: validation user {user_col}={int(user_ids[missing][0])} has no row in users/"
        )
    return indexed.loc[user_ids].reset_index(drop=True)


def _items_in_order(items: pd.DataFrame, item_col: str, item_ids: np.ndarray) -> pd.DataFrame:
    return items.drop_duplicates(item_col).set_index(item_col, drop=False).loc[item_ids].reset_index(drop=True)
