"""The champion gate's evidence: this run's models and the serving champion, scored on the same rows.

A run's own validation metrics say how its models do on its window; the champion's logged metrics were
measured on *another* window (older data), so the two do not compare. Here the champion's exported
models (what serves: query tower, item embeddings, DLRM, and the NVTabular workflows they were trained
with) are scored on this run's validation rows the way serving would score them: its own workflows
transform this run's raw users and items (categories it never saw go to the out-of-vocabulary bucket),
its item embeddings cover the items it knew (items newer than it cannot be retrieved by it: they score
-inf, as in its FAISS index), and a user's history is their training positives in its item codes.

Which rows: the validation rows that are **not in the champion's data version**. Published models are
refitted on their whole data version, so the champion has seen every interaction of it; scoring it on
those would reward memory. When this run's data is the champion's (a retrain on the same data), no row is
fresh and the models are not compared here; the gate then compares the logged metrics of the two runs,
which were measured on the same validation rows when they share a feature version.

Runs in the Merlin runtime (TensorFlow, NVTabular), inside the training job, right after the early-stopped
models are evaluated; the control-plane gate (:mod:`recsys.tracking.registry`) reads the ``gate_*``
metrics it logs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from recsys.layout import RunExports, data_dir, data_table

log = logging.getLogger(__name__)

OOV = 2  # NVTabular Categorify's out-of-vocabulary code (docs/layouts.md section 3)
GATE_USERS = 5000
"""The gate scores both sides on at most this many users with fresh rows (the same seeded sample)."""


@dataclass(frozen=True)
class ChampionExports:
    """A downloaded champion: its exports folder (laid out like a training run) and its lineage."""

    path: Path
    run_id: str
    versions: dict[str, str]
    data_version: str
    feature_version: str
    ranker_weight: float = 1.0
    """The scoring stage's blend it serves with (its run's ``pipeline_ranker_weight``)."""

    def to_tags(self) -> dict[str, str]:
        return {"gate.champion_run": self.run_id, "gate.champion_versions": json.dumps(self.versions, sort_keys=True),
                "gate.champion_data_version": self.data_version}


def fresh_validation(data, champion_data_dir: Path) -> pd.DataFrame:
    """This run's validation rows that are not interactions of the champion's data version.

    Matched on raw user id, raw item id and timestamp (seconds): the same interaction in both versions.
    """
    fv = data.fv
    timestamp = fv.columns.get("timestamp", "timestamp")
    valid = data.valid
    raw_users, raw_items = raw_ids(fv, "user"), raw_ids(fv, "item")
    keys = pd.DataFrame({
        "u": raw_users.reindex(valid[fv.user_id].to_numpy()).to_numpy(),
        "i": raw_items.reindex(valid[fv.item_id].to_numpy()).to_numpy(),
        "t": valid[timestamp].to_numpy(np.int64),
    })
    old = pd.read_parquet(data_table(champion_data_dir, "interactions"), columns=["user_id", "item_id", "timestamp"])
    old_t = old["timestamp"]
    old_seconds = (old_t.astype("datetime64[ns]").astype("int64") // 1_000_000_000) if np.issubdtype(old_t.dtype, np.datetime64) else old_t.astype("int64")
    seen = pd.MultiIndex.from_arrays([old["user_id"].to_numpy(), old["item_id"].to_numpy(), old_seconds.to_numpy()])
    mine = pd.MultiIndex.from_arrays([keys["u"].to_numpy(), keys["i"].to_numpy(), keys["t"].to_numpy()])
    return valid[~mine.isin(seen)].reset_index(drop=True)


def raw_ids(fv, entity: str) -> pd.Series:
    """Encoded id -> raw id of the users or items that have an encoded id of their own (not OOV)."""
    frame = pd.read_parquet(fv.id_map(entity))
    column = f"{entity}_id"
    frame = frame[frame[column] != OOV].drop_duplicates(column)
    return frame.set_index(column)[f"{column}_raw"]


class ChampionScorer:
    """The champion's exports, fed with this run's raw data in the champion's own encodings."""

    def __init__(self, champion: ChampionExports, data_dir: Path):
        import nvtabular as nvt
        from merlin.io import Dataset

        from recsys.serving.engine import SavedModelFunction

        run = RunExports(champion.path)
        self.query_tower = SavedModelFunction(run.query_tower)
        self.ranker = SavedModelFunction(run.dlrm)
        embeddings = pd.read_parquet(run.item_embeddings)
        self.item_vectors = pd.Series(list(np.stack(embeddings["embedding"].to_numpy()).astype(np.float32)),
                                      index=embeddings["item_id_raw"].to_numpy())
        users = pd.read_parquet(data_table(data_dir, "users"))
        items = pd.read_parquet(data_table(data_dir, "items"))
        user_workflow = nvt.Workflow.load(str(run.workflow("user")))
        item_workflow = nvt.Workflow.load(str(run.workflow("item")))
        encoded_users = user_workflow.transform(Dataset(users[user_workflow.input_schema.column_names], cpu=True)).to_ddf().compute()
        encoded_items = item_workflow.transform(Dataset(items[item_workflow.input_schema.column_names], cpu=True)).to_ddf().compute()
        self.users = encoded_users.reset_index(drop=True).set_index(users["user_id"].to_numpy())
        self.items = encoded_items.reset_index(drop=True).set_index(items["item_id"].to_numpy())
        self.history_length = _history_length(run.query_tower)

    def encode_histories(self, raw_lists: list[np.ndarray]) -> list[np.ndarray]:
        """Each raw history (newest first) in the champion's item codes, cut to its history length.

        Encoded once per user (one reindex of all of them): the ranker sees a user's history on every one
        of their candidates, and a reindex per candidate row cost minutes at demo scale.
        """
        cut = [np.asarray(raw)[:self.history_length] for raw in raw_lists]
        if not cut:
            return []
        flat = np.concatenate(cut)
        codes = self.items["item_id"].reindex(flat).fillna(OOV).to_numpy(np.int64)
        return np.split(codes, np.cumsum([len(c) for c in cut])[:-1])

    def _feed(self, fn, user_raw: np.ndarray, item_raw: Optional[np.ndarray], histories: Optional[list]) -> dict:
        from recsys.features.history import HISTORY

        feed: dict[str, np.ndarray] = {}
        user_rows = self.users.reindex(user_raw)
        item_rows = self.items.reindex(item_raw) if item_raw is not None else None
        for name in fn.inputs:
            if name.startswith(HISTORY + "__"):
                continue
            source = user_rows if name in self.users.columns else item_rows
            if source is None or name not in source.columns:
                raise KeyError(f"the champion's model takes {name!r}, which neither its user nor item workflow makes")
            fill = OOV if np.issubdtype(np.dtype(fn.inputs[name]), np.integer) else 0.0
            feed[name] = source[name].fillna(fill).to_numpy()
        if f"{HISTORY}__values" in fn.inputs:
            from recsys.features.history import truncate

            values, offsets = truncate(histories, self.history_length)
            feed[f"{HISTORY}__values"], feed[f"{HISTORY}__offsets"] = values, offsets
        return feed

    def query_vectors(self, user_raw: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """``histories``: :meth:`encode_histories` of each user's raw history."""
        return self.query_tower(self._feed(self.query_tower, user_raw, None, histories))

    def catalogue_vectors(self, item_raw: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, known mask) of the items, zero for items the champion has no embedding of."""
        found = self.item_vectors.reindex(item_raw)
        mask = found.notna().to_numpy()
        vectors = np.zeros((len(item_raw), dim), np.float32)
        if mask.any():
            vectors[mask] = np.stack(found[mask].to_numpy())
        return vectors, mask

    def rank(self, user_raw: np.ndarray, item_raw: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return self.ranker(self._feed(self.ranker, user_raw, item_raw, histories)).reshape(-1)


def gate_metrics(data, retrieval_model, retrieval_params, ranking_model, ranking_params,
                 champion: ChampionExports, data_root: Path, ranker_weight: float = 1.0,
                 candidates: int = 200, prior_weight: float = 0.0) -> dict[str, float]:
    """``gate_*`` metrics: this run's early-stopped models, the champion and popularity on the fresh rows.

    ``data_root``: where data versions live (this run's and the champion's); ``ranker_weight``: this run's
    scoring blend (the champion's is its own); ``candidates``: retrieval's depth, as served. Besides the
    retrieval metrics, ``gate_pipeline_*`` score each side as it serves: its retrieval's candidates ordered
    by its scoring stage (:func:`recsys.serving.scoring.fuse`).

    Retrieval: the whole-catalogue protocol (recall@k, ndcg@10); ranking: AUC over the fresh positives
    and as many popularity-sampled negatives per positive as training uses (the same rows for both).
    """
    from recsys.training.evaluation import build_protocol
    from recsys.training.keras_utils import batched_call
    from recsys.training.metrics import auc
    from recsys.training.negatives import with_negatives
    from recsys.training.popularity import evaluate_popularity
    from recsys.training.ranking import ranker_columns, with_histories
    from recsys.training.retrieval import embed, items_in_order, popularity_prior, protocol_users

    fv = data.fv
    fresh = fresh_validation(data, data_dir(Path(data_root), champion.data_version))
    known = data.train.loc[data.train[fv.target] == 1, fv.user_id].unique()
    fresh = fresh[fresh[fv.user_id].isin(known)]
    # at most GATE_USERS users (seeded): both sides are scored on the same ones
    protocol = build_protocol(data.train, fresh, data.protocol.item_ids, fv.user_id, fv.item_id, fv.target).sample(
        GATE_USERS, seed=retrieval_params.seed)
    out: dict[str, float] = {"gate_rows": float((fresh[fv.target] == 1).sum()), "gate_users": float(len(protocol.user_ids))}
    if not len(protocol.user_ids):
        log.info("gate: no validation row is new to the champion (data version %s): nothing to compare on", champion.data_version)
        return out

    raw_users, raw_items = raw_ids(fv, "user"), raw_ids(fv, "item")
    timestamp = fv.columns.get("timestamp", "timestamp")
    from recsys.features.history import per_user

    train = data.train  # histories: every training interaction, newest first (what the online store holds)
    raw_history = per_user(train[fv.user_id].to_numpy(), raw_items.reindex(train[fv.item_id].to_numpy()).to_numpy(),
                           train[timestamp].to_numpy())
    empty = np.zeros(0, dtype=object)

    # --- retrieval: this run's model, the champion, popularity, on one protocol ------------------------
    users = protocol_users(fv, data.train, data.users, retrieval_params, protocol.user_ids)
    catalogue = items_in_order(data.items, fv.item_id, protocol.item_ids)
    # this run's retrieval as it would serve: with its popularity prior (the champion's is in its exports)
    q, v = embed(retrieval_model, fv, retrieval_params, users, catalogue,
                 prior_weight * popularity_prior(fv, data.train, catalogue) if prior_weight else None)
    mine = protocol.evaluate(lambda rows: q[rows] @ v.T)
    scorer = ChampionScorer(champion, data_dir(Path(data_root), fv.data_version))  # this run's raw users and items
    user_raw = raw_users.reindex(protocol.user_ids).to_numpy()
    histories = scorer.encode_histories([raw_history.get(u, empty) for u in protocol.user_ids])
    cq = scorer.query_vectors(user_raw, histories)
    cv, cmask = scorer.catalogue_vectors(raw_items.reindex(protocol.item_ids).to_numpy(), cq.shape[1])

    def champion_scores(rows):
        s = cq[rows] @ cv.T
        s[:, ~cmask] = -np.inf  # items newer than the champion: not in its index, never retrieved
        return s

    theirs = protocol.evaluate(champion_scores)
    popularity = evaluate_popularity(protocol, data.train, fv.item_id, fv.target)
    for key in ("recall_at_10", "recall_at_50", "recall_at_100", "ndcg_at_10"):
        out[f"gate_{key}"] = float(mine[key])
        out[f"gate_champion_{key}"] = float(theirs[key])
        out[f"gate_popularity_{key}"] = float(popularity[f"popularity_{key}"])
    out["gate_champion_unknown_items"] = float((~cmask).sum())

    # --- the pipelines as served: candidates ordered by each side's own scoring stage -------------------
    from recsys.training.evaluation import two_stage

    columns = ranker_columns(fv, ranking_params)
    ranker_users = protocol_users(fv, data.train, data.users, ranking_params, protocol.user_ids)
    user_part = [c for c in columns if c not in fv.item_columns]
    catalogue_raw = raw_items.reindex(protocol.item_ids).to_numpy()

    def rank_mine(user_rows, item_positions):
        frame = pd.concat([ranker_users[user_part].iloc[user_rows].reset_index(drop=True),
                           catalogue[fv.item_columns].iloc[item_positions].reset_index(drop=True)], axis=1)
        return batched_call(ranking_model, frame, columns).ravel()

    def rank_theirs(user_rows, item_positions):
        return scorer.rank(user_raw[user_rows], catalogue_raw[item_positions], [histories[r] for r in user_rows])

    rows = np.arange(len(protocol.user_ids))
    mine_served = protocol.evaluate(two_stage(lambda r: q[r] @ v.T, rank_mine, protocol.seen, rows, candidates).scores(ranker_weight))
    theirs_served = protocol.evaluate(
        two_stage(champion_scores, rank_theirs, protocol.seen, rows, candidates).scores(champion.ranker_weight))
    for key in ("recall_at_10", "ndcg_at_10"):
        out[f"gate_pipeline_{key}"] = float(mine_served[key])
        out[f"gate_champion_pipeline_{key}"] = float(theirs_served[key])

    # --- ranking: AUC of both rankers on the fresh positives and their sampled negatives ----------------
    rows = with_histories(fv, data.train, fresh, ranking_params.history_length)[1] if ranking_params.history_length else fresh
    rows = rows[columns + [fv.target]].reset_index(drop=True)
    if not fv.has_labels:  # positives only: the same popularity-drawn negatives as training, for both rankers
        rows = with_negatives(rows, data.items[fv.item_columns], user_col=fv.user_id, item_col=fv.item_id, target=fv.target,
                              negatives_per_positive=ranking_params.negatives_per_positive, seed=ranking_params.seed + 7,
                              known_positives=data.train, strategy="popularity")
    if len(rows) and rows[fv.target].nunique() == 2:
        labels = rows[fv.target].to_numpy()
        out["gate_auc"] = auc(labels, batched_call(ranking_model, rows, columns).ravel())
        row_users = raw_users.reindex(rows[fv.user_id].to_numpy()).to_numpy()
        row_items = raw_items.reindex(rows[fv.item_id].to_numpy()).to_numpy()
        row_histories = scorer.encode_histories([raw_history.get(u, empty) for u in rows[fv.user_id].to_numpy()])
        out["gate_champion_auc"] = auc(labels, scorer.rank(row_users, row_items, row_histories))
    log.info("gate: %d fresh validation positives of %d users: %s", int(out["gate_rows"]), int(out["gate_users"]),
             ", ".join(f"{k}={v:.4f}" for k, v in out.items() if k.startswith("gate_") and "rows" not in k and "users" not in k))
    return out


def _history_length(saved_model: Path) -> int:
    """The history length a query tower was trained with (its input schema's value count), 0 without one."""
    from recsys.features.history import HISTORY

    schema = json.loads((saved_model / ".merlin" / "input_schema.json").read_text())
    for feature in schema.get("feature", []):
        if feature.get("name") == HISTORY:
            return int(feature.get("valueCount", {}).get("max") or 0)
    return 0

