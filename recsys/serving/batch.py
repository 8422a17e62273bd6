"""Offline mode: every user's top N precomputed into Redis, for when real time is not worth it.

How the lists are made. Each known user (the raw user ids of the online store's current version) is
sent to the served ``recsys`` model on Triton, pinned to the version that serves when the batch
starts, ``batch_concurrency`` requests in flight. Calling the served model rather than running the
four stages in-process costs the Triton hop (~0.5 ms of a few ms per request, measured in
``bench/``) but buys three things: the lists are exactly what the online path would answer (same
code, same ``pipeline.json``, same model version, recorded in the batch's metadata); the task needs
no TensorFlow, so it runs in the control plane; and it scales with Triton's instances (or another
Triton) instead of the Airflow worker. The in-process alternative (one query-tower call and one
FAISS search for thousands of users at once) would be several times faster per user, but would
re-implement filtering, scoring and ordering outside the served model and drift from it.

Where the lists live: the online store's *precomputed lists* (:class:`recsys.online.store.OnlineStore`;
the Redis keys are in :mod:`recsys.online.redis_store`'s key map), one list per user under the raw
user id's text, plus the batch's metadata (Triton model version, online version, feature version,
top_n, users, created_at, airflow_run, the id kinds). The packed list is
:func:`recsys.data.ids.pack_with` of the item ids (in the served model's item id kind, the batch's
``ids``) and their scores: for int ids n int64 ids then n float32 scores (as batches always held; a
batch without ``ids`` is int), for text ids the count, the scores, the ids.

A batch writes its lists completely, then the store's switch makes it current and deletes the older
batches; a batch that fails is discarded and leaves the current one alone. Readers resolve the
current batch and read the user's list in one atomic round trip. Items taken off sale after the
batch ran (the online store's unavailable set) are filtered out at read time.

    from recsys.serving.batch import precompute, read_precomputed
    precompute(airflow_run="recsys_batch_recommendations/manual__...")   # {"batch", "users", ...}
    read_precomputed(1042, k=10)     # [(item_id, score), ...] best first, or None (unknown user / no batch)
    read_precomputed("u-7f3a")       # text ids: [("SKU-85123A", 0.93), ...]
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional

from recsys.data import ids
from recsys.errors import RecsysError
from recsys.settings import Settings, get_settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.online.store import OnlineStore

log = logging.getLogger(__name__)

MODEL = "recsys"


class BatchError(RecsysError):
    """Precomputing the recommendations failed (nothing was switched)."""


def pack(item_ids, scores, kind: str = ids.INT) -> bytes:
    """One user's list: item ids of ``kind`` and their float32 scores (:func:`recsys.data.ids.pack_with`)."""
    import numpy as np

    return ids.pack_with(item_ids, np.asarray(scores, dtype="<f4"), kind)


def unpack(value: bytes, kind: str = ids.INT) -> tuple["Any", "Any"]:
    """The inverse of :func:`pack`: (item ids of ``kind``, float32 scores)."""
    return ids.unpack_with(value, kind, "<f4")


def _store(settings: Settings) -> "OnlineStore":
    from recsys.online.redis_store import RedisOnlineStore

    return RedisOnlineStore.from_settings(settings)


# --- reading ------------------------------------------------------------------------------------
def read_precomputed(
    user_id: ids.IdValue, k: Optional[int] = None, *, settings: Optional[Settings] = None,
    store: Optional["OnlineStore"] = None,
) -> Optional[list[tuple[ids.IdValue, float]]]:
    """The precomputed ``(item_id, score)`` list of a user, best first, without unavailable items.

    ``user_id``: the raw id (int or str; typed text such as ``"0042"`` is parsed into the batch's user
    id kind, and refused with :class:`recsys.data.ids.IdError` when it is not one). Item ids come back
    in their kind. ``None`` when there is no batch or the user is not in it (a new user): ask the
    online path then. ``k``: at most that many (default: all that were precomputed). Pass ``store``
    to reuse a connection.
    """
    own = store is None
    store = store or _store(settings or get_settings())
    try:
        field = ids.to_text(user_id)
        found = store.read_precomputed(field)
        if found is not None:
            # One trip normally: the id's text is its field. Typed text not in the kind's own form
            # ("0042" for an int batch) is parsed (or refused) and looked up once more.
            canonical = ids.to_text(ids.parse(user_id, found.id_kinds.user_id, "user_id"))
            if found.packed is None and canonical != field:
                found = store.read_precomputed(canonical)
    finally:
        if own:
            store.close()
    if found is None or found.packed is None:
        return None
    item_ids, scores = unpack(found.packed, found.id_kinds.item_id)
    off_sale = found.unavailable  # the ids' text
    pairs = [(i, float(v)) for i, v in zip(item_ids.tolist(), scores.tolist()) if ids.to_text(i) not in off_sale]
    return pairs if k is None else pairs[:k]


def current_batch(settings: Optional[Settings] = None) -> Optional[dict[str, str]]:
    """Metadata of the current batch (``batch`` id included), or None."""
    with _store(settings or get_settings()) as store:
        return store.current_batch()


# --- writing ------------------------------------------------------------------------------------
def _served_version(settings: Settings) -> int:
    """The version of ``recsys`` Triton serves now (the batch pins its requests to it; publishing serves one
    version on every replica)."""
    from recsys.serving.triton_client import Replicas

    triton = Replicas(settings, "http")
    try:
        versions = triton.call(lambda client: client.get_model_metadata(MODEL)).get("versions") or []
    except Exception as exc:
        raise BatchError(f"Triton at {settings.triton_http} serves no {MODEL!r} model: {exc}; publish first") from None
    finally:
        triton.close()
    if not versions:
        raise BatchError(f"Triton at {settings.triton_http} has no ready version of {MODEL!r}")
    return max(int(v) for v in versions)


def _known_users(store: "OnlineStore") -> tuple[str, str, list[ids.IdValue]]:
    """(online version, its feature version, raw user ids in their kind, sorted) of the online store's current version."""
    current = store.current()
    if current is None:
        raise BatchError("the online store has no current version: run `recsys online refresh` first")
    return current.version, current.feature_version, store.entity_ids(current.version, "users").tolist()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _recommend_many(replicas, users: list[ids.IdValue], k: int, version: int, contract,
                    model: str = MODEL) -> list[tuple[Any, Any]]:
    """One ``recsys`` request per user, all in flight through the replicas' connection pools (each request to
    the next replica in turn, :class:`recsys.serving.triton_client.Replicas`); a request a replica refused
    the connection for is sent again, through the same owner (to another replica).

    ``contract``: the served config's (:func:`recsys.serving.client.served_contract`: batching, id
    kinds), shared with every other caller through :func:`recsys.serving.client.recommend_inputs`.
    """
    import tritonclient.http as httpclient

    from recsys.serving.client import recommend_inputs, recommendation_arrays
    from recsys.serving.triton_client import refused

    def send(inputs):
        return replicas.call(lambda client: client.async_infer(model, inputs, model_version=str(version)))

    pending = []
    for user in users:
        inputs = recommend_inputs(httpclient, user, k, contract=contract)
        pending.append((inputs, send(inputs)))
    results = []
    for user, (inputs, request) in zip(users, pending):
        try:
            try:
                result = request.get_result()
            except Exception as exc:
                if not refused(exc):
                    raise
                result = replicas.call(lambda client: client.infer(model, inputs, model_version=str(version)))
        except Exception as exc:
            raise BatchError(f"Triton {model!r} v{version} refused user {user!r}: {exc}") from None
        results.append(recommendation_arrays(result, contract))
    return results


@dataclass
class BatchResult:
    batch: str
    skipped: bool
    users: int
    top_n: int
    model_version: int
    online_version: str
    feature_version: str
    seconds: float = 0.0
    users_per_second: Optional[float] = None
    removed_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def precompute(
    *, top_n: Optional[int] = None, force: bool = False, airflow_run: str = "", settings: Optional[Settings] = None,
    chunk_size: int = 1000,
) -> BatchResult:
    """Precompute every known user's top ``top_n`` (default ``settings.batch_top_n``) and switch readers to it.

    No-op when the current batch was made by the same Triton version from the same online version with
    the same ``top_n`` (unless ``force``): the lists would be the same. Raises :class:`BatchError`
    (after deleting the partial batch) when any request fails.
    """
    from recsys.serving.triton_client import Replicas

    s = settings or get_settings()
    top_n = int(top_n or s.batch_top_n)
    if not 1 <= top_n <= s.recommend_max_k:
        raise BatchError(f"top_n must be between 1 and recommend_max_k={s.recommend_max_k}, got {top_n}")
    with _store(s) as store:
        model_version = _served_version(s)
        online_version, feature_version, users = _known_users(store)
        meta = store.current_batch()
        if meta is not None and not force:
            previous = meta["batch"]
            if (meta.get("model_version"), meta.get("online_version"), meta.get("top_n")) == (
                str(model_version), online_version, str(top_n)
            ):
                log.info("batch %s already holds top %d of %s v%d over online version %s: nothing to do",
                         previous, top_n, MODEL, model_version, online_version)
                return BatchResult(previous, True, int(meta.get("users", 0)), top_n, model_version, online_version, feature_version)

        batch = store.new_batch(str(model_version))
        started = time.perf_counter()
        # batch_concurrency requests in flight in all, shared by the replicas
        triton = Replicas(s, "http", concurrency=-(-s.batch_concurrency // s.triton_replica_count))
        log.info("precomputing top %d for %d users with %s v%d (%d in flight) into batch %s",
                 top_n, len(users), MODEL, model_version, s.batch_concurrency, batch)
        try:
            from recsys.serving.client import served_contract

            contract = triton.call(lambda client: served_contract(client, MODEL))
            item_kind = contract.id_kinds.item_id
            done = 0
            for chunk in _chunks(users, chunk_size):
                results = _recommend_many(triton, chunk, top_n, model_version, contract)
                rows = {ids.to_text(u): pack(items, sc, item_kind) for u, (items, sc) in zip(chunk, results)}
                store.write_batch_rows(batch, rows)
                done += len(chunk)
                rate = done / max(time.perf_counter() - started, 1e-9)
                log.info("precomputed %d/%d users (%.0f users/s)", done, len(users), rate)
            seconds = time.perf_counter() - started
            store.write_batch_meta(batch, {
                "model_version": model_version, "online_version": online_version, "feature_version": feature_version,
                "top_n": top_n, "users": len(users), "created_at": time.time(), "seconds": round(seconds, 3),
                "airflow_run": airflow_run,
            }, contract.id_kinds)
        except BaseException:
            store.discard_batch(batch)
            raise
        finally:
            triton.close()
        removed = len(store.switch_batch(batch))  # readers now see the new batch whole; older ones are deleted
        log.info("batch %s is current: %d users in %.1f s; removed %d older batch(es)", batch, len(users), seconds, removed)
        return BatchResult(batch, False, len(users), top_n, model_version, online_version, feature_version,
                           round(seconds, 3), round(len(users) / seconds, 1) if seconds else None, removed)
