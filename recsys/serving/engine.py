"""The four stages of a recommendation, in one process (what the ``recsys`` Triton model runs).

    engine = FourStageRecommender.load(version_dir)          # query tower, ranker, FAISS index, pipeline.json
    result = engine.recommend(user_id=1042, k=10)            # Recommendation(item_ids, scores, timings_ms, ...)
    results = engine.recommend_many([Query(1042, 10), Query(7, 5)])   # a batch: one pass of every stage

Ids are raw ids of the deployment's kinds (``pipeline.json``'s ``ids``, :mod:`recsys.data.ids`): a
query's user id (and ``context.exclude_items``) may come as an int, a str or bytes and is parsed
into its kind (a bad one is that request's :class:`BadRequest`); answers hold item ids in their kind
(int64, or an object array of str). Inside the stages items are table rows (int64) either way, so
text ids cost only the lookups at the edges (:meth:`recsys.online.store.ItemTable.rows_of`).

1. **retrieval**: the users' features (online store) -> query tower -> FAISS top ``candidates_k``;
   an unknown user gets the popularity list instead (cold start);
2. **filtering**: drop duplicates, items the user has seen, items excluded by the request's context,
   items in the unavailable set, items the current online version does not hold;
3. **scoring**: DLRM over user x candidate features; cold start keeps the popularity order;
4. **ordering**: business rules (:mod:`recsys.serving.ordering`).

Where the time goes, and why it is spent this way:

- **Item features live in memory.** An online version never changes once written, so the item rows
  of the current version are read once (:meth:`recsys.online.store.OnlineStore.read_item_table`,
  ~0.1 s for 100k items) and candidates are gathered by array indexing instead of a Redis read of 200
  rows per request. FAISS positions map to table rows once per (index, version) pair.
- **Batches.** With Triton's dynamic batching (``settings.triton_batch_delay_us``) the model gets
  every request queued meanwhile in one call; the batch costs one Redis round trip in all (users,
  seen items and, when it is small, the whole unavailable set, in one Lua script), one query-tower
  call, one FAISS search and one ranker call over all candidates of all requests; filtering is
  numpy masks over a (requests x candidates) array. The fixed cost of a TensorFlow call (~0.3 ms of
  Python and runtime overhead) is paid once per batch instead of once per request.
- **One version per batch, pinned.** The users' read resolves the newest online version of the
  feature version the models were trained on (``pipeline.json``), in the same atomic script; items
  come from that version's in-memory table, so a request never mixes versions, and a newer feature
  version refreshed into Redis before its models serve is not read. When the version changes, the
  first batch that sees it loads its items (tables of the two latest versions are kept). Only the
  unavailable set is read live: operations change it without a new version.

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


class BadRequest(RecsysError):
    """The request itself is wrong (the caller can fix it)."""


@dataclass
class Query:
    """One request of a batch: raw user id (int, str or bytes), k (None: the default), optional context."""

    user_id: Any
    k: Optional[int] = None
    context: Optional[dict[str, Any]] = None


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

    def recommend_many(self, queries: Sequence[Query]) -> list[Union[Recommendation, Exception]]:
        """Answer a batch of requests with one pass of each stage; a bad request gets its own
        :class:`BadRequest` in its place (the others are answered). Other failures (Redis down, ...)
        raise."""
        answers: list[Union[Recommendation, Exception, None]] = [None] * len(queries)
        valid: list[int] = []
        users: list[ids.IdValue] = []
        ks: list[int] = []
        excludes: list[np.ndarray] = []
        for i, query in enumerate(queries):
            try:
                user = self.parse_user(query.user_id)
                k = self.check_k(query.k)
                exclude = _exclusions(query.context, self.id_kinds.item_id)
            except BadRequest as exc:
                answers[i] = exc
                continue
            users.append(user)
            ks.append(k)
            excludes.append(exclude)
            valid.append(i)
        if valid:
            try:
                results = self._recommend_batch(users, ks, excludes)
            except _VersionGone:
                # the version was collected between the users' read and its items' read: once more
                results = self._recommend_batch(users, ks, excludes)
            for i, result in zip(valid, results):
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
        # --- 1. retrieval: one read of every user (+ seen items, + the unavailable set when small),
        # one query-tower call and one FAISS search for the warm users; popularity for the cold ones
        users = self.store.read_users(
            user_ids, with_seen=True, unavailable_up_to=UNAVAILABLE_READ_WHOLE,
            feature_version=self.feature_version,
        )
        catalogue = self._catalogue(users.version)
        table = catalogue.table
        # candidates as table rows, one line per request (-1: no candidate in that slot)
        candidates = np.full((n_req, n_cand), -1, dtype=np.int64)
        # popularity mode: no model; every user is answered like a cold one (seen items are still filtered)
        warm = users.found if self.mode == MODELS else np.zeros(n_req, dtype=bool)
        history = self._histories(users, table, warm) if self.history_length else None
        if warm.any():
            query = self.query_tower(_feed(self.query_tower, lambda c: users.columns[c][warm], history))
            positions = self.index.search_positions(query, n_cand)
            candidates[warm, : positions.shape[1]] = np.where(positions >= 0, catalogue.row_of_position[positions], -1)
        if not warm.all():
            popular = catalogue.popularity_rows[:n_cand]
            candidates[~warm, : len(popular)] = popular
        t1 = clock()
        # --- 2. filtering: masks over the whole batch (FAISS positions and the popularity list are unique)
        keep = candidates >= 0
        banned = [table.rows_of(np.concatenate([users.seen[i], excludes[i]])) for i in range(n_req)]
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
            else:  # cold start: popularity order, as a score in (0, 1], 1 for the most popular
                request_scores = (1.0 - np.arange(len(rows), dtype=np.float32) / max(len(rows), 1)).astype(np.float32)
            raw = table.ids[rows]
            chosen, final_scores = order(
                raw, request_scores, ks[i], self.rules,
                categories=categories[rows] if categories is not None else None, user_id=user_ids[i],
            )
            answers.append(Recommendation(raw[chosen], final_scores, timings, not warm[i], users.version))
        timings["ordering"] = 1000 * (clock() - t3)
        return answers


    def _histories(self, users: UserRows, table: ItemTable, warm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, offsets) of the warm users' histories: their seen items (newest first in the online store)
        as encoded item ids of this version, at most ``history_length`` (recsys.features.history)."""
        codes = table.columns[self.item_id_column]
        lists = []
        for i in np.flatnonzero(warm):
            rows = table.rows_of(users.seen[i])
            lists.append(codes[rows[rows >= 0]])
        return truncate(lists, self.history_length)


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
