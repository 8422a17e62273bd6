"""The four stages of a recommendation, in one process (what the ``recsys`` Triton model runs).

    engine = FourStageRecommender.load(version_dir)          # query tower, ranker, FAISS index, pipeline.json
    result = engine.recommend(user_id=1042, k=10)            # Recommendation(item_ids, scores, timings_ms, ...)

1. **retrieval**: the user's features (online store) -> query tower -> FAISS top ``candidates_k``;
   an unknown user gets the popularity list instead (cold start);
2. **filtering**: drop duplicates, items the user has seen, items excluded by the request's context,
   items in the unavailable set, items the current online version does not hold;
3. **scoring**: DLRM over user x candidate features (candidate features read from the online store
   in the same round trip as the unavailable flags); cold start keeps the popularity order;
4. **ordering**: business rules (:mod:`recsys.serving.ordering`).

Per request: two Redis round trips (user + seen; candidates' features + unavailable flags), two
TensorFlow calls (1 row, ``candidates_k`` rows) and one FAISS search. Both Redis reads name the
online version they came from; if a refresh switched versions in between, the request is redone
once so it never mixes two versions. TensorFlow runs single-threaded (one instance per core
parallelizes better than threads inside one small call). Merlin runtime only.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from recsys.errors import RecsysError
from recsys.serving.ordering import OrderingRules, order

log = logging.getLogger(__name__)

STAGES = ("retrieval", "filtering", "scoring", "ordering")
QUERY_TOWER_DIR, RANKER_DIR, INDEX_DIR, PIPELINE_FILE = "query_tower", "ranker", "index", "pipeline.json"


class BadRequest(RecsysError):
    """The request itself is wrong (the caller can fix it)."""


class FeatureReader(Protocol):
    """What the engine needs from the online store (:class:`recsys.online.store.OnlineStore` fits)."""

    def read(self, user_id: Optional[int], item_ids=(), *, with_seen: bool = False): ...

    def popularity(self, k: Optional[int] = None) -> np.ndarray: ...


@dataclass
class Recommendation:
    """One answer: raw item ids and scores, best first; per-stage milliseconds."""

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


class FourStageRecommender:
    """Retrieval, filtering, scoring and ordering over one model version directory."""

    def __init__(self, version_dir: Path, reader: FeatureReader, pipeline: dict[str, Any]):
        from recsys.serving.index import ItemIndex

        self.version_dir = Path(version_dir)
        self.reader = reader
        self.pipeline = pipeline
        self.query_tower = SavedModelFunction(self.version_dir / QUERY_TOWER_DIR)
        self.ranker = SavedModelFunction(self.version_dir / RANKER_DIR)
        self.index = ItemIndex.load(self.version_dir / INDEX_DIR)
        self.rules = OrderingRules.from_dict(pipeline.get("ordering", {}))
        self.candidates_k = int(pipeline.get("candidates_k", 200))
        self.default_k = int(pipeline.get("default_k", 10))
        self.max_k = int(pipeline.get("max_k", 100))
        self.category_column = pipeline.get("category_column") or None
        self.user_columns = set(pipeline.get("user_columns", []))
        missing = [c for c in self.ranker.inputs if c not in self.user_columns | set(pipeline.get("item_columns", []))]
        if missing:
            raise RecsysError(f"{self.version_dir / PIPELINE_FILE}: ranker inputs {missing} are neither user nor item columns")
        if self.rules.max_per_category and self.category_column not in pipeline.get("item_columns", []):
            raise RecsysError(
                f"{self.version_dir / PIPELINE_FILE}: max_per_category is set but category column "
                f"{self.category_column!r} is not an item feature"
            )

    @classmethod
    def load(cls, version_dir: Path, reader: Optional[FeatureReader] = None) -> "FourStageRecommender":
        """Load a version directory written by :func:`recsys.serving.repository.write_model_versions`.

        ``reader`` defaults to the Redis online store of the settings (the server's environment).
        """
        version_dir = Path(version_dir)
        pipeline = json.loads((version_dir / PIPELINE_FILE).read_text())
        if reader is None:
            from recsys.online.redis_store import RedisOnlineStore

            reader = RedisOnlineStore.from_settings()
        return cls(version_dir, reader, pipeline)

    def warm_up(self) -> None:
        """Run both TensorFlow functions once (their first call traces and allocates: ~100 ms)."""
        oov = {name: np.full(1, 2, dtype=dtype) for name, dtype in self.query_tower.inputs.items()}
        self.query_tower(oov)
        n = self.candidates_k
        self.ranker({name: np.full(n, 2, dtype=dtype) for name, dtype in self.ranker.inputs.items()})

    # --- request ------------------------------------------------------------------------------
    def check_k(self, k: Optional[int]) -> int:
        if k is None:
            return self.default_k
        k = int(k)
        if not 1 <= k <= self.max_k:
            raise BadRequest(f"k must be between 1 and {self.max_k}, got {k}")
        return k

    def recommend(self, user_id: int, k: Optional[int] = None, context: Optional[dict[str, Any]] = None) -> Recommendation:
        """The top ``k`` items for ``user_id`` (raw id). ``context``: optional ``{"exclude_items": [raw ids]}``."""
        k = self.check_k(k)
        exclude = _exclusions(context)
        for _attempt in range(2):
            result = self._recommend_once(int(user_id), k, exclude)
            if result is not None:
                return result
        raise RecsysError("the online store switched versions twice during one request; retry")

    def _recommend_once(self, user_id: int, k: int, exclude: np.ndarray) -> Optional[Recommendation]:
        clock = time.perf_counter
        t0 = clock()
        # --- 1. retrieval
        user_rows = self.reader.read(user_id, (), with_seen=True)
        cold = not user_rows.user_found
        if cold:
            candidates = np.asarray(self.reader.popularity(self.candidates_k), dtype=np.int64)
        else:
            query = self.query_tower({c: user_rows.user[c] for c in self.query_tower.inputs})
            candidates, _codes, _similarity = self.index.search(query, self.candidates_k)
        t1 = clock()
        # --- 2. filtering (what needs no item features), then one read of the rest
        candidates = _unique_in_order(candidates)
        drop = np.isin(candidates, user_rows.seen) if user_rows.seen is not None and len(user_rows.seen) else None
        if len(exclude):
            drop = np.isin(candidates, exclude) if drop is None else drop | np.isin(candidates, exclude)
        if drop is not None:
            candidates = candidates[~drop]
        item_rows = self.reader.read(None, candidates)
        if item_rows.version != user_rows.version:
            log.info("online version switched during a request (%s -> %s): redoing it", user_rows.version, item_rows.version)
            return None
        keep = item_rows.item_found & ~item_rows.unavailable
        candidates = candidates[keep]
        items = {name: values[keep] for name, values in item_rows.items.items()}
        t2 = clock()
        # --- 3. scoring
        n = len(candidates)
        if n == 0:
            scores = np.zeros(0, dtype=np.float32)
        elif cold:
            # popularity order, as a score in (0, 1]: 1 for the most popular
            scores = (1.0 - np.arange(n, dtype=np.float32) / n).astype(np.float32)
        else:
            columns = {}
            for name in self.ranker.inputs:
                columns[name] = np.repeat(user_rows.user[name], n) if name in self.user_columns else items[name]
            scores = self.ranker(columns).reshape(-1).astype(np.float32)
        t3 = clock()
        # --- 4. ordering
        categories = items.get(self.category_column) if self.category_column else None
        chosen, final_scores = order(candidates, scores, k, self.rules, categories=categories, user_id=user_id)
        t4 = clock()
        timings = dict(zip(STAGES, (1000 * (t1 - t0), 1000 * (t2 - t1), 1000 * (t3 - t2), 1000 * (t4 - t3))))
        return Recommendation(candidates[chosen], final_scores, timings, cold, user_rows.version)


def _unique_in_order(ids: np.ndarray) -> np.ndarray:
    """``ids`` without repeats, first occurrences in their original order."""
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def _exclusions(context: Optional[dict[str, Any]]) -> np.ndarray:
    if not context:
        return np.zeros(0, dtype=np.int64)
    if not isinstance(context, dict):
        raise BadRequest(f"context must be a JSON object, got {type(context).__name__}")
    unknown = sorted(set(context) - {"exclude_items"})
    if unknown:
        raise BadRequest(f"context: unknown key {unknown[0]!r} (known: 'exclude_items')")
    raw = context.get("exclude_items") or []
    try:
        return np.asarray([int(i) for i in raw], dtype=np.int64)
    except (TypeError, ValueError):
        raise BadRequest(f"context.exclude_items must be a list of item ids, got {raw!r}") from None
