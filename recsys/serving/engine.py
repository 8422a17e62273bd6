"""The four stages of a recommendation, in one process (what the ``recsys`` Triton model runs).

    engine = FourStageRecommender.load(version_dir)          # query tower, ranker, FAISS index, pipeline.json
    result = engine.recommend(user_id=1042, k=10)            # Recommendation(item_ids, scores, timings_ms, ...)
    results = engine.recommend_many([Query(1042, 10), Query(7, 5)])   # a batch: one pass of every stage
    similar = engine.similar(item_id=12, k=10)               # the item's nearest items by cosine

Ids are raw ids of the deployment's kinds (``pipeline.json``'s ``ids``, :mod:`recsys.data.ids`): a
query's user id (and ``context.exclude_items``) may come as an int, a str or bytes and is parsed
into its kind (a bad one is that request's :class:`BadRequest`); answers hold item ids in their kind
(int64, or an object array of str). Inside the stages items are table rows (int64) either way, so
text ids cost only the lookups at the edges (:meth:`recsys.online.store.ItemTable.rows_of`).

1. **retrieval**: the users' features and history (online store, live events first) -> query tower
   -> FAISS top ``candidates_k``; a user unknown to the batch data is answered the same way from their
   live items (below), or, without any, with the popularity list (cold start);
2. **filtering**: drop duplicates, items the user has seen (batch data and live events), items
   excluded by the request's context, items in the unavailable set, items the current online
   version does not hold;
3. **scoring**: DLRM over user x candidate features, fused with retrieval's order
   (:mod:`recsys.serving.scoring`); cold start keeps retrieval's order;
4. **ordering**: business rules (:mod:`recsys.serving.ordering`).

**The live layer** (``pipeline.json`` ``live``; a version without it reads none). The users' read
also returns each user's live items (events accepted since the batch data, newest first,
:meth:`recsys.online.store.OnlineStore.accept_events`), and they count at once:

- *filtering* drops the union of the version's seen list and the live items;
- *history* (the query tower's and the ranker's ``history`` input) is the recent-items sequence (the
  newest ``recent_items`` live items) followed by the seen list, first occurrence kept, cut to the
  history length: what the user did seconds ago moves the query;
- *a user unknown to the batch data who sent events* is answered by the models like a known one:
  their events are the history both towers read, their id and features the out-of-vocabulary
  codes. On MovieLens (bench/quality.py's live replay: test users sent under new ids with the
  first half of their test ratings as events) this found 1.38x the popularity list's recall@10
  (0.0757 vs 0.0548), where the cosine neighbours of their session found 0.97x. Only a model
  without a history input answers them with those neighbours (the newest ``recent_items`` live items
  form a session vector, the recency-weighted mean, weights 1, 1/2, 1/3, ..., of their unit item
  vectors without the prior slot; its ``neighbours_k`` nearest items by cosine,
  :meth:`recsys.serving.index.ItemIndex.neighbours`), then the popularity list. An unknown user
  without events gets the popularity list.

Rejected, measured on the same replay: the session's neighbours as a second candidate source for
known users. Interleaved with the tower's list (tower 1st, neighbour 1st, ...) they cost 23% of
recall@10 (0.0893 vs 0.1161; one neighbour every 10 tower items still cost 3%): cosine neighbours in
the two-tower's space are weaker candidates than the tower's own, and the fusion's position term
favoured them. After the tower's list they changed nothing (it fills ``candidates_k`` by itself)
and cost ~12% of a batch's time. A user without live items gets exactly the answer, item for item
and score for score, of the path without the live read.

**Similar items** (a request with ``item_id`` instead of ``user_id``): the item's nearest items by
cosine over the published embeddings without the prior slot, leaving out the item itself, items
the request's context excludes, unavailable items and items the online version does not hold;
``scores`` are the cosine similarities. One FAISS search for every such request of a batch, one
read of the online store for all their neighbours. Popularity mode (no model) answers it with an
error. Timings: retrieval is the search, filtering the read and the masks; no scoring or ordering.

Where the time goes, and why it is spent this way:

- **Item features live in memory.** An online version never changes once written, so the item rows
  of the current version are read once (:meth:`recsys.online.store.OnlineStore.read_item_table`,
  ~0.1 s for 100k items) and candidates are gathered by array indexing instead of a Redis read of 200
  rows per request. FAISS positions map to table rows once per (index, version) pair.
- **Batches.** With Triton's dynamic batching (``settings.triton_batch_delay_us``) the model gets
  every request queued meanwhile in one call; the batch costs one Redis round trip in all (users,
  seen items, live items and, when it is small, the whole unavailable set, in one Lua script), one
  query-tower call, one FAISS search and one ranker call over all candidates of all requests; filtering is
  numpy masks over a (requests x candidates) array. The fixed cost of a TensorFlow call (~0.3 ms of
  Python and runtime overhead) is paid once per batch instead of once per request.
- **One version per batch, pinned.** The users' read resolves the newest online version of the
  feature version the models were trained on (``pipeline.json``), in the same atomic script; items
  come from that version's in-memory table, so a request never mixes versions, and a newer feature
  version refreshed into Redis before its models serve is not read. When the version changes, the
  first batch that sees it loads its items (tables of the two latest versions are kept). Only the
  unavailable set and the users' live items are read live: neither belongs to a version.

TensorFlow and FAISS run single-threaded (one Triton instance per core parallelizes better than
threads inside one small call). Merlin runtime only.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from recsys.data import ids
from recsys.errors import RecsysError
from recsys.features.history import truncate
from recsys.online.store import ItemTable, OnlineStore, UserRows, VersionGoneError
from recsys.serving.ordering import OrderingRules, order
from recsys.serving.schema import STAGES
from recsys.serving.scoring import fuse

log = logging.getLogger(__name__)

QUERY_TOWER_DIR, RANKER_DIR, INDEX_DIR, PIPELINE_FILE = "query_tower", "ranker", "index", "pipeline.json"
MODELS, POPULARITY = "models", "popularity"
"""pipeline.json ``mode``: the four stages with models, or the popularity list alone (no model beats it yet)."""
HISTORY_INPUT = "history__"
"""Prefix of the SavedModels' history inputs (``history__values``, ``history__offsets``)."""
KEPT_VERSIONS = 2
"""Item tables kept in memory: the current online version and the one before (a request in flight)."""
UNAVAILABLE_READ_WHOLE = 10_000
"""An unavailable set up to this size comes whole with the users' read (no second round trip)."""
SIMILAR_SLACK = 10
"""Similar items: neighbours searched beyond ``k + 1`` (room for filtered ones); a request that still
has fewer than ``k`` after filtering is searched again, 4x wider, until the index is exhausted."""
SIMILAR_READ_ITEMS = 2000
"""Similar items: neighbours looked up in the online store per read (version and unavailable flags)."""


class BadRequest(RecsysError):
    """The request itself is wrong (the caller can fix it)."""


@dataclass
class Query:
    """One request of a batch: raw user id (int, str or bytes) or, for similar items, a raw ``item_id``
    (exactly one of them), k (None: the default), optional context."""

    user_id: Any = None
    k: Optional[int] = None
    context: Optional[dict[str, Any]] = None
    item_id: Any = None
    """Instead of ``user_id``: the raw id of an item whose most similar items are asked."""


@dataclass
class Recommendation:
    """One answer: raw item ids (in their kind) and scores, best first; per-stage milliseconds (of its batch)."""

    item_ids: np.ndarray
    scores: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    cold_start: bool = False
    online_version: str = ""


def configure_tensorflow_threads(intra: int = 1, inter: int = 1) -> None:
    """Pin TensorFlow's thread pools (must run before the first TF op of the process)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # already initialized by an earlier model in this process: keep it
        pass


class SavedModelFunction:
    """A SavedModel's ``serving_default`` signature called with numpy columns; returns one numpy array."""

    def __init__(self, path: Path):
        import tensorflow as tf

        self._tf = tf
        self._fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        _, spec = self._fn.structured_input_signature
        self.inputs = {name: s.dtype.as_numpy_dtype for name, s in spec.items()}
        outputs = list(self._fn.structured_outputs)
        if len(outputs) != 1:
            raise RecsysError(f"{path}: expected one output in serving_default, found {outputs}")
        self.output = outputs[0]

    def __call__(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        tf = self._tf
        # Converting to tensors up front is ~2x cheaper than letting the signature convert numpy.
        feed = {name: tf.constant(np.asarray(columns[name], dtype=dtype)) for name, dtype in self.inputs.items()}
        return self._fn(**feed)[self.output].numpy()


@dataclass
class _Catalogue:
    """One online version's items, addressed the ways the stages need them."""

    table: ItemTable
    row_of_position: np.ndarray  # FAISS position -> table row (-1: the version lacks that item)
    popularity_rows: np.ndarray  # the popularity list as table rows (held by the version, no repeats)


class FourStageRecommender:
    """Retrieval, filtering, scoring and ordering over one model version directory."""

    def __init__(self, version_dir: Path, store: OnlineStore, pipeline: dict[str, Any]):
        from recsys.serving.index import ItemIndex

        self.version_dir = Path(version_dir)
        self.store = store
        self.pipeline = pipeline
        self.id_kinds = ids.IdKinds.from_dict(pipeline.get("ids"), str(self.version_dir / PIPELINE_FILE))
        # "popularity": no model beats the popularity baseline yet; every user gets the popularity list,
        # filtered the same way (their seen items, exclusions, unavailable items).
        self.mode = pipeline.get("mode", MODELS)
        if self.mode not in (MODELS, POPULARITY):
            raise RecsysError(f"{self.version_dir / PIPELINE_FILE}: mode must be {MODELS!r} or {POPULARITY!r}, got {self.mode!r}")
        self.history_length = int(pipeline.get("history_length") or 0)
        self.ranker_weight = float(pipeline.get("scoring", {}).get("ranker_weight", 1.0))
        self.item_id_column = (pipeline.get("item_columns") or ["item_id"])[0]
        self.rules = OrderingRules.from_dict(pipeline.get("ordering", {}), self.id_kinds.item_id)
        self.candidates_k = int(pipeline.get("candidates_k", 200))
        self.default_k = int(pipeline.get("default_k", 10))
        self.max_k = int(pipeline.get("max_k", 100))
        self.category_column = pipeline.get("category_column") or None
        self.user_columns = set(pipeline.get("user_columns", []))
        # Reads are pinned to the feature version the models were trained on: a newer feature version
        # refreshed into the online store (current) before its models are published is not read.
        self.feature_version: Optional[str] = pipeline.get("feature_version") or None
        # The live layer (events since the batch data): read only by versions published with it.
        live = pipeline.get("live")
        self.read_live = isinstance(live, dict)
        self.recent_items = max(0, int((live or {}).get("recent_items", 0)))
        self.neighbours_k = max(0, int((live or {}).get("neighbours_k", 0)))
        self._catalogues: "OrderedDict[str, _Catalogue]" = OrderedDict()
        self.query_tower = self.ranker = self.index = None
        if self.mode == POPULARITY:
            return
        self.query_tower = SavedModelFunction(self.version_dir / QUERY_TOWER_DIR)
        self.ranker = SavedModelFunction(self.version_dir / RANKER_DIR)
        self.index = ItemIndex.load(self.version_dir / INDEX_DIR, threads=1)
        if self.index.id_kind != self.id_kinds.item_id:
            raise RecsysError(
                f"{self.version_dir / INDEX_DIR}: the index holds {self.index.id_kind} item ids but "
                f"{PIPELINE_FILE} says {self.id_kinds.item_id}"
            )
        missing = [c for c in self.ranker.inputs
                   if c not in self.user_columns | set(pipeline.get("item_columns", [])) and not c.startswith(HISTORY_INPUT)]
        if missing:
            raise RecsysError(f"{self.version_dir / PIPELINE_FILE}: ranker inputs {missing} are neither user nor item columns")
        if self.rules.max_per_category and self.category_column not in pipeline.get("item_columns", []):
            raise RecsysError(
                f"{self.version_dir / PIPELINE_FILE}: max_per_category is set but category column "
                f"{self.category_column!r} is not an item feature"
            )

    @classmethod
    def load(cls, version_dir: Path, store: Optional[OnlineStore] = None) -> "FourStageRecommender":
        """Load a version directory written by :func:`recsys.serving.repository.write_model_versions`.

        ``store``: the online store to read (any :class:`recsys.online.store.OnlineStore`); defaults to
        the Redis one of the settings (the server's environment).
        """
        version_dir = Path(version_dir)
        pipeline = json.loads((version_dir / PIPELINE_FILE).read_text())
        if store is None:
            from recsys.online.redis_store import RedisOnlineStore

            store = RedisOnlineStore.from_settings()
        return cls(version_dir, store, pipeline)

    def warm_up(self) -> None:
        """Run both TensorFlow functions once (their first call traces and allocates: ~100 ms) and
        load the current online version's items, so the first requests do not pay for either."""
        for n in (1, 16) if self.mode == MODELS else ():
            for fn, rows in ((self.query_tower, n), (self.ranker, n * self.candidates_k)):
                feed = {name: np.full(rows, 2, dtype=dtype) for name, dtype in fn.inputs.items()}
                if f"{HISTORY_INPUT}values" in feed:  # one item of history per row
                    feed[f"{HISTORY_INPUT}values"] = np.full(rows, 3, np.int64)
                    feed[f"{HISTORY_INPUT}offsets"] = np.arange(rows + 1, dtype=np.int64)
                fn(feed)
        if self.index is not None:
            self.index.prepare_neighbours()  # the cosine index of similar items (and a history-less model's newcomers)
        try:
            current = self.store.current(feature_version=self.feature_version)
            if current is not None:
                self._catalogue(current.version)
        except Exception as exc:  # Redis away or no version yet: the first request loads the items
            log.warning("online items not preloaded (%s: %s); the first request will load them", type(exc).__name__, exc)

    # --- request ------------------------------------------------------------------------------
    def parse_user(self, user_id: Any) -> ids.IdValue:
        """A request's user id in the deployment's user id kind (:class:`BadRequest` if it is not one)."""
        try:
            return ids.parse(user_id, self.id_kinds.user_id, "user_id")
        except ids.IdError as exc:
            raise BadRequest(str(exc)) from None

    def parse_item(self, item_id: Any) -> int:
        """A similar-items request's item: its index position (:class:`BadRequest` if the id is not of
        the item kind, the index does not hold it, or this version has no model)."""
        if self.index is None:
            raise BadRequest("similar items need a trained model, and this version serves the popularity list "
                             "(popularity mode: no model beats the popularity baseline yet)")
        try:
            item = ids.parse(item_id, self.id_kinds.item_id, "item_id")
        except ids.IdError as exc:
            raise BadRequest(str(exc)) from None
        position = int(self.index.positions_of(ids.as_array([item], self.id_kinds.item_id))[0])
        if position < 0:
            raise BadRequest(f"item_id {ids.show(item)} is unknown: the served model's index does not hold it")
        return position

    def check_k(self, k: Optional[int]) -> int:
        if k is None:
            return self.default_k
        k = int(k)
        if not 1 <= k <= self.max_k:
            raise BadRequest(f"k must be between 1 and {self.max_k}, got {k}")
        return k

    def recommend(self, user_id: Any, k: Optional[int] = None, context: Optional[dict[str, Any]] = None) -> Recommendation:
        """The top ``k`` items for ``user_id`` (raw id). ``context``: optional ``{"exclude_items": [raw ids]}``."""
        result = self.recommend_many([Query(user_id, k, context)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def similar(self, item_id: Any, k: Optional[int] = None, context: Optional[dict[str, Any]] = None) -> Recommendation:
        """The ``k`` items most similar to ``item_id`` (raw id), by cosine; ``scores`` are the similarities."""
        result = self.recommend_many([Query(None, k, context, item_id=item_id)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def recommend_many(self, queries: Sequence[Query]) -> list[Union[Recommendation, Exception]]:
        """Answer a batch of requests (recommendations for a user, or similar items) with one pass of
        each stage; a bad request gets its own :class:`BadRequest` in its place (the others are
        answered). Other failures (Redis down, ...) raise."""
        answers: list[Union[Recommendation, Exception, None]] = [None] * len(queries)
        by_user: list[tuple[int, ids.IdValue, int, np.ndarray]] = []
        by_item: list[tuple[int, int, int, np.ndarray]] = []
        for i, query in enumerate(queries):
            try:
                if (query.user_id is None) == (query.item_id is None):
                    raise BadRequest(
                        "give exactly one of user_id (recommendations) and item_id (similar items), got "
                        + ("both" if query.user_id is not None else "neither")
                    )
                k = self.check_k(query.k)
                exclude = _exclusions(query.context, self.id_kinds.item_id)
                if query.user_id is not None:
                    by_user.append((i, self.parse_user(query.user_id), k, exclude))
                else:
                    by_item.append((i, self.parse_item(query.item_id), k, exclude))
            except BadRequest as exc:
                answers[i] = exc
        for batch, answer in ((by_user, self._recommend_batch), (by_item, self._similar_batch)):
            if not batch:
                continue
            slots, *columns = (list(column) for column in zip(*batch))
            try:
                results = answer(*columns)
            except _VersionGone:
                # the version was collected between the users' read and its items' read: once more
                results = answer(*columns)
            for i, result in zip(slots, results):
                answers[i] = result
        return answers  # type: ignore[return-value]

    def _catalogue(self, version: str) -> _Catalogue:
        catalogue = self._catalogues.get(version)
        if catalogue is not None:
            self._catalogues.move_to_end(version)
            return catalogue
        try:
            table = self.store.read_item_table(version)
        except VersionGoneError as exc:
            raise _VersionGone(str(exc)) from None
        popularity_rows = table.rows_of(table.popularity)
        popularity_rows = popularity_rows[popularity_rows >= 0]
        first = _first_occurrences(popularity_rows)
        if first is not None:
            popularity_rows = popularity_rows[first]
        positions = table.rows_of(self.index.raw_ids) if self.index is not None else np.zeros(0, np.int64)
        catalogue = _Catalogue(table, positions, popularity_rows)
        self._catalogues[version] = catalogue
        while len(self._catalogues) > KEPT_VERSIONS:
            self._catalogues.popitem(last=False)
        return catalogue

    def _recommend_batch(self, user_ids: list[ids.IdValue], ks: list[int], excludes: list[np.ndarray]) -> list[Recommendation]:
        clock = time.perf_counter
        t0 = clock()
        n_req, n_cand = len(user_ids), self.candidates_k
        # --- 1. retrieval: one read of every user (+ seen items, live items, + the unavailable set when
        # small), one query-tower call and one FAISS search for the warm users (newcomers with events among
        # them); popularity for the cold ones
        users = self.store.read_users(
            user_ids, with_seen=True, with_live=self.read_live, unavailable_up_to=UNAVAILABLE_READ_WHOLE,
            feature_version=self.feature_version,
        )
        catalogue = self._catalogue(users.version)
        table = catalogue.table
        empty = ids.empty(self.id_kinds.item_id)
        live = users.live if users.live is not None else [empty] * n_req
        # candidates as table rows, one line per request (-1: no candidate in that slot)
        candidates = np.full((n_req, n_cand), -1, dtype=np.int64)
        # popularity mode: no model; every user is answered like a cold one (seen items are still filtered).
        # A user unknown to the batch data who sent events is answered by the models too: their events are
        # the history both towers read (their id and features take the out-of-vocabulary codes, as the read
        # fills them), which measured 1.38x the popularity list's recall on MovieLens (bench/README.md)
        has_live = np.fromiter((len(items) > 0 for items in live), dtype=bool, count=n_req)
        warm = (users.found | (has_live & bool(self.history_length))) if self.mode == MODELS else np.zeros(n_req, dtype=bool)
        history = self._histories(users, live, table, warm) if self.history_length else None
        if warm.any():
            query = self.query_tower(_feed(self.query_tower, lambda c: users.columns[c][warm], history))
            positions = self.index.search_positions(query, n_cand)
            candidates[warm, : positions.shape[1]] = np.where(positions >= 0, catalogue.row_of_position[positions], -1)
        # cold requests: a newcomer's session neighbours (their events, a model without a history input),
        # then the popularity list
        cold_live = [items if not warm[i] else items[:0] for i, items in enumerate(live)]
        neighbours = self._session_neighbours(cold_live, catalogue) if self.mode == MODELS else {}
        for i in np.flatnonzero(~warm).tolist():
            cold = catalogue.popularity_rows[:n_cand]
            if i in neighbours:
                cold = _distinct(np.concatenate([neighbours[i], cold]))[:n_cand]
            candidates[i, : len(cold)] = cold
        t1 = clock()
        # --- 2. filtering: masks over the whole batch (every candidate line holds each row once)
        keep = candidates >= 0
        banned = [table.rows_of(np.concatenate([users.seen[i], live[i], excludes[i]])) for i in range(n_req)]
        if any(len(b) for b in banned):
            # (request, row) pairs as one number each: one np.isin for the batch
            width = len(table) + 1
            banned_keys = np.concatenate([i * width + b[b >= 0] for i, b in enumerate(banned)])
            keep &= ~np.isin(np.arange(n_req)[:, None] * width + candidates, banned_keys)
        if users.unavailable is not None:
            off_sale = table.rows_of(users.unavailable)
            off_sale = off_sale[off_sale >= 0]
        else:  # a large unavailable set: ask about this batch's candidates only
            distinct = np.unique(candidates[keep])
            off_sale = distinct[self.store.unavailable_flags(table.ids[distinct])]
        if len(off_sale):
            is_off_sale = np.zeros(len(table) + 1, dtype=bool)  # the extra last slot answers row -1
            is_off_sale[off_sale] = True
            keep &= ~is_off_sale[candidates]
        t2 = clock()
        # --- 3. scoring: one ranker call over every warm request's candidates, fused with retrieval's order
        scores = np.full(candidates.shape, np.nan, dtype=np.float64)
        owner, slot = np.nonzero(keep & warm[:, None])
        if len(owner):
            rows = candidates[owner, slot]
            # the history of the row's request: warm requests are numbered 0.. in the history arrays
            row_history = _repeat_rows(history, (np.cumsum(warm) - 1)[owner]) if history is not None else None
            columns = _feed(
                self.ranker,
                lambda name: users.columns[name][owner] if name in self.user_columns else table.columns[name][rows],
                row_history,
            )
            scores[owner, slot] = self.ranker(columns).reshape(-1)
            scores[warm] = fuse(scores[warm], self.ranker_weight)
        t3 = clock()
        # --- 4. ordering
        categories = table.columns.get(self.category_column) if self.category_column else None
        answers = []
        timings = dict(zip(STAGES, (1000 * (t1 - t0), 1000 * (t2 - t1), 1000 * (t3 - t2), 0.0)))
        for i in range(n_req):
            rows = candidates[i, keep[i]]
            if warm[i]:
                request_scores = scores[i, keep[i]].astype(np.float32)
            else:  # cold start: retrieval's order, as a score in (0, 1], 1 for the first
                request_scores = (1.0 - np.arange(len(rows), dtype=np.float32) / max(len(rows), 1)).astype(np.float32)
            raw = table.ids[rows]
            chosen, final_scores = order(
                raw, request_scores, ks[i], self.rules,
                categories=categories[rows] if categories is not None else None, user_id=user_ids[i],
            )
            answers.append(Recommendation(raw[chosen], final_scores, timings, not warm[i], users.version))
        timings["ordering"] = 1000 * (clock() - t3)
        return answers

    def _session_neighbours(self, live: list[np.ndarray], catalogue: _Catalogue) -> dict[int, np.ndarray]:
        """``{request: table rows}``: the ``neighbours_k`` nearest items (cosine, most similar first) of
        the session of each request with live items: the recency-weighted mean of its newest
        ``recent_items`` items' unit vectors (weights 1, 1/2, 1/3, ...). The session's own items are
        left out; rows the online version does not hold are dropped. One FAISS search for the batch."""
        if not (self.neighbours_k and self.recent_items) or self.index is None:
            return {}
        recent = [items[: self.recent_items] for items in live]
        lengths = np.array([len(r) for r in recent])
        if not lengths.any():
            return {}
        # every request's recent items in one lookup; items the model does not know carry no vector
        positions = self.index.positions_of(np.concatenate([r for r in recent if len(r)]))
        owner = np.repeat(np.arange(len(live)), lengths)
        rank = np.arange(len(positions)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # 0: the newest
        known = positions >= 0
        positions, owner, rank = positions[known], owner[known], rank[known]
        who = np.unique(owner)
        if not len(who):
            return {}
        line = np.searchsorted(who, owner)  # the session each item belongs to
        weights = np.zeros((len(who), len(positions)), dtype=np.float32)  # sessions x their items
        weights[line, np.arange(len(positions))] = 1.0 / (1.0 + rank)
        sessions = weights @ self.index.unit_vectors[positions]
        found, _similarity = self.index.neighbours(sessions, self.neighbours_k + self.recent_items)
        # leave out each session's own items: (session, position) pairs as one number each, one np.isin
        total = len(self.index) + 1
        own = np.isin(np.arange(len(who))[:, None] * total + found, line * total + positions) | (found < 0)
        out = {}
        for n, i in enumerate(who.tolist()):
            rows = catalogue.row_of_position[found[n][~own[n]][: self.neighbours_k]]
            out[i] = rows[rows >= 0]
        return out

    def _similar_batch(self, positions: list[int], ks: list[int], excludes: list[np.ndarray]) -> list[Recommendation]:
        """Similar items for a batch of items (index positions): one cosine search, one online read."""
        clock = time.perf_counter
        n_req, total = len(positions), len(self.index)
        width = min(total, max(ks) + 1 + SIMILAR_SLACK)
        pending = np.arange(n_req)
        chosen: list[Optional[tuple[np.ndarray, np.ndarray]]] = [None] * n_req
        version, retrieval_ms, filtering_ms = "", 0.0, 0.0
        while len(pending):
            t0 = clock()
            found, similarity = self.index.neighbours(self.index.unit_vectors[np.asarray(positions)[pending]], width)
            t1 = clock()
            distinct = np.unique(found[found >= 0])
            raw = self.index.raw_ids[distinct]
            held, off_sale, version = self._item_flags(raw)
            servable = np.zeros(total + 1, dtype=bool)  # the extra last slot answers position -1
            servable[distinct[held & ~off_sale]] = True
            retry = []
            for line, request in enumerate(pending):
                keep = servable[found[line]] & (found[line] != positions[request])
                if len(excludes[request]):
                    keep &= ~np.isin(self.index.raw_ids[np.maximum(found[line], 0)], excludes[request])
                picked = found[line][keep][: ks[request]]
                chosen[request] = (picked, similarity[line][keep][: ks[request]])
                if len(picked) < ks[request] and width < total:
                    retry.append(request)
            retrieval_ms += 1000 * (t1 - t0)
            filtering_ms += 1000 * (clock() - t1)
            pending = np.asarray(retry, dtype=np.int64)
            width = min(total, 4 * width)
        timings = dict(zip(STAGES, (retrieval_ms, filtering_ms, 0.0, 0.0)))
        return [Recommendation(self.index.raw_ids[picked], scores.astype(np.float32), timings, False, version)
                for picked, scores in chosen]

    def _item_flags(self, raw_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """(held by the online version, in the unavailable set, the version) for each raw item id: one
        read of the online store per :data:`SIMILAR_READ_ITEMS` ids."""
        held, off_sale, version = np.zeros(len(raw_ids), bool), np.zeros(len(raw_ids), bool), ""
        for start in range(0, max(len(raw_ids), 1), SIMILAR_READ_ITEMS):
            part = raw_ids[start: start + SIMILAR_READ_ITEMS]
            rows = self.store.read(None, part, feature_version=self.feature_version)
            held[start: start + len(part)] = rows.item_found
            off_sale[start: start + len(part)] = rows.unavailable
            version = rows.version
        return held, off_sale, version

    def _histories(self, users: UserRows, live: list[np.ndarray], table: ItemTable, warm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, offsets) of the warm users' histories as encoded item ids of this version, at most
        ``history_length`` (recsys.features.history): their newest ``recent_items`` live items (newest
        first), then their seen items (newest first in the online store), each item once."""
        codes = table.columns[self.item_id_column]
        lists = []
        for i in np.flatnonzero(warm):
            rows = table.rows_of(users.seen[i])
            if len(live[i]):  # without live items the seen list is used as it is (distinct already)
                recent = live[i][: self.recent_items] if self.recent_items else live[i]  # the recent-items sequence
                rows = _distinct(np.concatenate([table.rows_of(recent), rows]))
            lists.append(codes[rows[rows >= 0]])
        return truncate(lists, self.history_length)


def _distinct(rows: np.ndarray) -> np.ndarray:
    """``rows`` without -1 and repeats, first occurrences in order."""
    rows = rows[rows >= 0]
    first = _first_occurrences(rows)
    return rows if first is None else rows[first]


def _feed(fn: "SavedModelFunction", column: Any, history: Optional[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """A SavedModel's inputs: every named column from ``column(name)``, and the history's values/offsets."""
    feed = {name: column(name) for name in fn.inputs if not name.startswith(HISTORY_INPUT)}
    if f"{HISTORY_INPUT}values" in fn.inputs:
        if history is None:
            raise RecsysError("the model takes the user's history, but pipeline.json sets no history_length")
        feed[f"{HISTORY_INPUT}values"], feed[f"{HISTORY_INPUT}offsets"] = history
    return feed


def _repeat_rows(ragged: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ragged rows ``rows`` of (values, offsets), in that order (a row may repeat)."""
    values, offsets = ragged
    begin, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    out = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    take = np.repeat(begin - out[:-1], lengths) + np.arange(out[-1])
    return values[take], out


class _VersionGone(RecsysError):
    """The online version of a batch was collected before its items were read."""


def _first_occurrences(rows: np.ndarray) -> Optional[np.ndarray]:
    """Positions of the first occurrence of each id, in order; None when ``rows`` has no repeats."""
    _, first = np.unique(rows, return_index=True)
    if len(first) == len(rows):
        return None
    return np.sort(first)


def _exclusions(context: Optional[dict[str, Any]], item_kind: str) -> np.ndarray:
    """The raw item ids a request's context excludes, in the item id kind."""
    if not context:
        return ids.empty(item_kind)
    if not isinstance(context, dict):
        raise BadRequest(f"context must be a JSON object, got {type(context).__name__}")
    unknown = sorted(set(context) - {"exclude_items"})
    if unknown:
        raise BadRequest(f"context: unknown key {unknown[0]!r} (known: 'exclude_items')")
    raw = context.get("exclude_items") or []
    if not isinstance(raw, list):
        raise BadRequest(f"context.exclude_items must be a list of item ids, got {raw!r}")
    try:
        return ids.parse_many(raw, item_kind, "item_id")
    except ids.IdError as exc:
        raise BadRequest(f"context.exclude_items: {exc}") from None
