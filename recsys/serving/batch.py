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

Keys (``{p}`` is ``{<settings.online_key_prefix>}``, the online store's hash tag: one slot)::

    {p}:batch:current       STRING  the current batch id
    {p}:batch:seq           STRING  counter that makes batch ids unique
    {p}:batch:<B>:r         HASH    raw user id (its text) -> packed list of item ids and float32 scores
    {p}:batch:<B>:meta      HASH    Triton model version, online version, feature version, top_n, users,
                                    created_at, airflow_run, ids (the id kinds, JSON)

The packed list is :func:`recsys.data.ids.pack_with` of the item ids (in the served model's item id
kind, ``meta.ids``) and their scores: for int ids n int64 ids then n float32 scores (as batches
always held; a batch without ``meta.ids`` is int), for text ids the count, the scores, the ids.

A batch writes ``<B>`` completely, then one ``SET`` of ``current`` switches readers to it; a batch that
fails deletes its keys and leaves ``current`` alone. Readers resolve ``current`` and read the user's
list in one Lua script (one atomic step, one round trip), so older batches can be unlinked right
after the switch. Items taken off sale after the batch ran (the online store's unavailable set) are
filtered out at read time.

    from recsys.serving.batch import precompute, read_precomputed
    precompute(airflow_run="recsys_batch_recommendations/manual__...")   # {"batch", "users", ...}
    read_precomputed(1042, k=10)     # [(item_id, score), ...] best first, or None (unknown user / no batch)
    read_precomputed("u-7f3a")       # text ids: [("SKU-85123A", 0.93), ...]
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional

from recsys.data import ids
from recsys.errors import RecsysError
from recsys.online.redis_store import as_text
from recsys.settings import Settings, get_settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    import redis

log = logging.getLogger(__name__)

MODEL = "recsys"

# Resolve ``current`` and read one user's list (+ the unavailable set, + the batch's id kinds) in one atomic step.
# KEYS[1] = current, KEYS[2] = unavailable; ARGV[1] = "<tag>:batch:", ARGV[2] = user id (text).
_READ = """
local batch = redis.call('GET', KEYS[1])
if not batch then return false end
local row = redis.call('HGET', ARGV[1] .. batch .. ':r', ARGV[2])
return {batch, row, redis.call('SMEMBERS', KEYS[2]), redis.call('HGET', ARGV[1] .. batch .. ':meta', 'ids')}
"""


class BatchError(RecsysError):
    """Precomputing the recommendations failed (nothing was switched)."""


@dataclass(frozen=True)
class BatchKeys:
    """Key names of the precomputed lists under one prefix (the online store's)."""

    prefix: str

    @property
    def tag(self) -> str:
        return "{" + self.prefix + "}"

    @property
    def current(self) -> str:
        return f"{self.tag}:batch:current"

    @property
    def seq(self) -> str:
        return f"{self.tag}:batch:seq"

    @property
    def unavailable(self) -> str:
        return f"{self.tag}:unavailable"  # owned by the online store (recsys.online.redis_store)

    @property
    def batch_prefix(self) -> str:
        return f"{self.tag}:batch:"

    def rows(self, batch: str) -> str:
        return f"{self.batch_prefix}{batch}:r"

    def meta(self, batch: str) -> str:
        return f"{self.batch_prefix}{batch}:meta"


def pack(item_ids, scores, kind: str = ids.INT) -> bytes:
    """One user's list: item ids of ``kind`` and their float32 scores (:func:`recsys.data.ids.pack_with`)."""
    import numpy as np

    return ids.pack_with(item_ids, np.asarray(scores, dtype="<f4"), kind)


def unpack(value: bytes, kind: str = ids.INT) -> tuple["Any", "Any"]:
    """The inverse of :func:`pack`: (item ids of ``kind``, float32 scores)."""
    return ids.unpack_with(value, kind, "<f4")


def _redis(settings: Settings) -> "redis.Redis":
    from recsys.online.redis_store import connect

    return connect(settings.redis)


# --- reading ------------------------------------------------------------------------------------
def read_precomputed(
    user_id: ids.IdValue, k: Optional[int] = None, *, settings: Optional[Settings] = None,
    client: Optional["redis.Redis"] = None,
) -> Optional[list[tuple[ids.IdValue, float]]]:
    """The precomputed ``(item_id, score)`` list of a user, best first, without unavailable items.

    ``user_id``: the raw id (int or str; typed text such as ``"0042"`` is parsed into the batch's user
    id kind, and refused with :class:`recsys.data.ids.IdError` when it is not one). Item ids come back
    in their kind. ``None`` when there is no batch or the user is not in it (a new user): ask the
    online path then. ``k``: at most that many (default: all that were precomputed). Pass ``client``
    to reuse a connection.
    """
    s = settings or get_settings()
    keys = BatchKeys(s.online_key_prefix)
    own = client is None
    r = client or _redis(s)
    try:
        field = ids.to_text(user_id)
        reply = r.eval(_READ, 2, keys.current, keys.unavailable, keys.batch_prefix, field)
        if reply:
            # One trip normally: the id's text is its field. Typed text not in the kind's own form
            # ("0042" for an int batch) is parsed (or refused) and looked up once more.
            kinds = ids.IdKinds.from_dict(json.loads(as_text(reply[3]) or "{}"))
            canonical = ids.to_text(ids.parse(user_id, kinds.user_id, "user_id"))
            if reply[1] is None and canonical != field:
                reply = r.eval(_READ, 2, keys.current, keys.unavailable, keys.batch_prefix, canonical)
    finally:
        if own:
            r.close()
    if not reply or reply[1] is None:
        return None
    kinds = ids.IdKinds.from_dict(json.loads(as_text(reply[3]) or "{}"))
    item_ids, scores = unpack(reply[1], kinds.item_id)
    off_sale = {as_text(i) for i in reply[2]}  # members are the ids' text
    pairs = [(i, float(v)) for i, v in zip(item_ids.tolist(), scores.tolist()) if ids.to_text(i) not in off_sale]
    return pairs if k is None else pairs[:k]


def current_batch(settings: Optional[Settings] = None) -> Optional[dict[str, str]]:
    """Metadata of the current batch (``batch`` id included), or None."""
    s = settings or get_settings()
    keys = BatchKeys(s.online_key_prefix)
    r = _redis(s)
    try:
        batch = as_text(r.get(keys.current))
        if not batch:
            return None
        meta = {as_text(k): as_text(v) for k, v in r.hgetall(keys.meta(batch)).items()}
        return {"batch": batch, **meta}
    finally:
        r.close()


# --- writing ------------------------------------------------------------------------------------
def _served_version(settings: Settings) -> int:
    """The version of ``recsys`` Triton serves now (the batch pins its requests to it)."""
    from recsys.serving.publish import triton_client

    try:
        versions = triton_client(settings).get_model_metadata(MODEL).get("versions") or []
    except Exception as exc:
        raise BatchError(f"Triton at {settings.triton_http} serves no {MODEL!r} model: {exc}; publish first") from None
    if not versions:
        raise BatchError(f"Triton at {settings.triton_http} has no ready version of {MODEL!r}")
    return max(int(v) for v in versions)


def _known_users(r: "redis.Redis", prefix: str) -> tuple[str, str, list[ids.IdValue]]:
    """(online version, its feature version, raw user ids in their kind) of the online store's current version."""
    from recsys.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore(r, prefix=prefix)
    current = store.current()
    if current is None:
        raise BatchError("the online store has no current version: run `recsys online refresh` first")
    fields = [u for u, _ in r.hscan_iter(store.key(current.version, "u"), count=5000)]
    users = sorted(ids.from_fields(fields, store.id_kinds(current.version).user_id).tolist())
    return current.version, current.feature_version, users


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _recommend_many(client, users: list[ids.IdValue], k: int, version: int, contract) -> list[tuple[Any, Any]]:
    """One ``recsys`` request per user, all in flight through the client's connection pool.

    ``contract``: the served config's (:func:`recsys.serving.client.served_contract`: batching, id
    kinds), shared with every other caller through :func:`recsys.serving.client.recommend_inputs`.
    """
    import tritonclient.http as httpclient

    from recsys.serving.client import recommend_inputs, recommendation_arrays

    pending = []
    for user in users:
        inputs = recommend_inputs(httpclient, user, k, contract=contract)
        pending.append(client.async_infer(MODEL, inputs, model_version=str(version)))
    results = []
    for user, request in zip(users, pending):
        try:
            result = request.get_result()
        except Exception as exc:
            raise BatchError(f"Triton {MODEL!r} v{version} refused user {user!r}: {exc}") from None
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
    import tritonclient.http as httpclient

    s = settings or get_settings()
    top_n = int(top_n or s.batch_top_n)
    if not 1 <= top_n <= s.recommend_max_k:
        raise BatchError(f"top_n must be between 1 and recommend_max_k={s.recommend_max_k}, got {top_n}")
    keys = BatchKeys(s.online_key_prefix)
    r = _redis(s)
    try:
        model_version = _served_version(s)
        online_version, feature_version, users = _known_users(r, s.online_key_prefix)
        previous = as_text(r.get(keys.current))
        if previous and not force:
            meta = {as_text(k): as_text(v) for k, v in r.hgetall(keys.meta(previous)).items()}
            if (meta.get("model_version"), meta.get("online_version"), meta.get("top_n")) == (
                str(model_version), online_version, str(top_n)
            ):
                log.info("batch %s already holds top %d of %s v%d over online version %s: nothing to do",
                         previous, top_n, MODEL, model_version, online_version)
                return BatchResult(previous, True, int(meta.get("users", 0)), top_n, model_version, online_version, feature_version)

        batch = f"{model_version}-{int(r.incr(keys.seq))}"
        started = time.perf_counter()
        url = s.triton_http.split("://", 1)[-1]
        triton = httpclient.InferenceServerClient(
            url, ssl=s.triton_http.startswith("https://"), concurrency=max(1, s.batch_concurrency), network_timeout=120.0
        )
        log.info("precomputing top %d for %d users with %s v%d (%d in flight) into batch %s",
                 top_n, len(users), MODEL, model_version, s.batch_concurrency, batch)
        try:
            from recsys.serving.client import served_contract

            contract = served_contract(triton, MODEL)
            item_kind = contract.id_kinds.item_id
            done = 0
            for chunk in _chunks(users, chunk_size):
                results = _recommend_many(triton, chunk, top_n, model_version, contract)
                rows = {ids.to_text(u): pack(items, sc, item_kind) for u, (items, sc) in zip(chunk, results)}
                pipe = r.pipeline(transaction=False)
                pipe.hset(keys.rows(batch), mapping=rows)
                pipe.execute()
                done += len(chunk)
                rate = done / max(time.perf_counter() - started, 1e-9)
                log.info("precomputed %d/%d users (%.0f users/s)", done, len(users), rate)
            seconds = time.perf_counter() - started
            r.hset(keys.meta(batch), mapping={
                "model_version": model_version, "online_version": online_version, "feature_version": feature_version,
                "top_n": top_n, "users": len(users), "created_at": time.time(), "seconds": round(seconds, 3),
                "airflow_run": airflow_run, "ids": json.dumps(contract.id_kinds.to_dict()),
            })
        except BaseException:
            r.unlink(keys.rows(batch), keys.meta(batch))
            raise
        finally:
            triton.close()
        r.set(keys.current, batch)  # the switch: readers now see the new batch whole
        removed = _remove_other_batches(r, keys, batch)
        log.info("batch %s is current: %d users in %.1f s; removed %d older batch(es)", batch, len(users), seconds, removed)
        return BatchResult(batch, False, len(users), top_n, model_version, online_version, feature_version,
                           round(seconds, 3), round(len(users) / seconds, 1) if seconds else None, removed)
    finally:
        r.close()


def _remove_other_batches(r: "redis.Redis", keys: BatchKeys, keep: str) -> int:
    """Unlink every batch but ``keep`` (readers resolve ``current`` atomically, so none is mid-read)."""
    others = set()
    for key in r.scan_iter(match=f"{keys.batch_prefix}*:meta", count=1000):
        batch = as_text(key)[len(keys.batch_prefix) : -len(":meta")]
        if batch != keep:
            others.add(batch)
    for batch in others:
        r.unlink(keys.rows(batch), keys.meta(batch))
    return len(others)


# --- command line -------------------------------------------------------------------------------
def register_cli(serving_subparsers) -> None:
    """Add ``precompute`` and ``precomputed`` to a command group (e.g. ``recsys serving``)."""
    p = serving_subparsers.add_parser("precompute", help="precompute every user's top N into Redis (offline mode)")
    p.add_argument("--top-n", type=int, default=None)
    p.add_argument("--force", action="store_true", help="even if the current batch is up to date")
    p.set_defaults(func=_cli_precompute)
    q = serving_subparsers.add_parser("precomputed", help="a user's precomputed recommendations")
    q.add_argument("--user", required=True, help="raw user id (as your data has it: 1042, u-7f3a, ...)")
    q.add_argument("-k", type=int, default=None)
    q.set_defaults(func=_cli_read)


def _cli_precompute(args) -> int:
    print(json.dumps(precompute(top_n=args.top_n, force=args.force).to_dict(), indent=2))
    return 0


def _cli_read(args) -> int:
    pairs = read_precomputed(args.user, args.k)
    if pairs is None:
        print(f"no precomputed recommendations for user {args.user}")
        return 1
    print(json.dumps([{"item_id": i, "score": round(v, 6)} for i, v in pairs], indent=2))
    return 0
