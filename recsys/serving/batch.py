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
    {p}:batch:<B>:r         HASH    raw user id -> packed list: n int64 item ids, then n float32 scores
    {p}:batch:<B>:meta      HASH    Triton model version, online version, feature version, top_n, users,
                                    created_at, airflow_run

A batch writes ``<B>`` completely, then one ``SET`` of ``current`` switches readers to it; a batch that
fails deletes its keys and leaves ``current`` alone. Readers resolve ``current`` and read the user's
list in one Lua script (one atomic step, one round trip), so older batches can be unlinked right
after the switch. Items taken off sale after the batch ran (the online store's unavailable set) are
filtered out at read time.

    from recsys.serving.batch import precompute, read_precomputed
    precompute(airflow_run="recsys_batch_recommendations/manual__...")   # {"batch", "users", ...}
    read_precomputed(1042, k=10)     # [(item_id, score), ...] best first, or None (unknown user / no batch)
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional

from recsys.errors import RecsysError
from recsys.settings import Settings, get_settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    import redis

log = logging.getLogger(__name__)

MODEL = "recsys"

# Resolve ``current`` and read one user's list (+ the unavailable set) in one atomic step.
# KEYS[1] = current, KEYS[2] = unavailable; ARGV[1] = "<tag>:batch:", ARGV[2] = user id.
_READ = """
local batch = redis.call('GET', KEYS[1])
if not batch then return false end
local row = redis.call('HGET', ARGV[1] .. batch .. ':r', ARGV[2])
return {batch, row, redis.call('SMEMBERS', KEYS[2])}
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


def pack(item_ids, scores) -> bytes:
    """n int64 item ids followed by n float32 scores (little-endian)."""
    import numpy as np

    ids = np.asarray(item_ids, dtype="<i8")
    return ids.tobytes() + np.asarray(scores, dtype="<f4").tobytes()


def unpack(value: bytes) -> tuple["Any", "Any"]:
    """The inverse of :func:`pack`: (int64 item ids, float32 scores)."""
    import numpy as np

    n = len(value) // 12
    return np.frombuffer(value[: 8 * n], dtype="<i8"), np.frombuffer(value[8 * n :], dtype="<f4")


def _redis(settings: Settings) -> "redis.Redis":
    from recsys.online.redis_store import connect

    return connect(settings.redis)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else ("" if value is None else str(value))


# --- reading ------------------------------------------------------------------------------------
def read_precomputed(
    user_id: int, k: Optional[int] = None, *, settings: Optional[Settings] = None, client: Optional["redis.Redis"] = None
) -> Optional[list[tuple[int, float]]]:
    """The precomputed ``(item_id, score)`` list of a user, best first, without unavailable items.

    ``None`` when there is no batch or the user is not in it (a new user): ask the online path then.
    ``k``: at most that many (default: all that were precomputed). Pass ``client`` to reuse a connection.
    """
    s = settings or get_settings()
    keys = BatchKeys(s.online_key_prefix)
    own = client is None
    r = client or _redis(s)
    try:
        reply = r.eval(_READ, 2, keys.current, keys.unavailable, keys.batch_prefix, int(user_id))
    finally:
        if own:
            r.close()
    if not reply or reply[1] is None:
        return None
    ids, scores = unpack(reply[1])
    off_sale = {int(_text(i)) for i in reply[2]}
    pairs = [(int(i), float(v)) for i, v in zip(ids, scores) if int(i) not in off_sale]
    return pairs if k is None else pairs[:k]


def current_batch(settings: Optional[Settings] = None) -> Optional[dict[str, str]]:
    """Metadata of the current batch (``batch`` id included), or None."""
    s = settings or get_settings()
    keys = BatchKeys(s.online_key_prefix)
    r = _redis(s)
    try:
        batch = _text(r.get(keys.current))
        if not batch:
            return None
        meta = {_text(k): _text(v) for k, v in r.hgetall(keys.meta(batch)).items()}
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


def _known_users(r: "redis.Redis", prefix: str) -> tuple[str, str, list[int]]:
    """(online version, its feature version, raw user ids) of the online store's current version."""
    from recsys.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore(r, prefix=prefix)
    current = store.current()
    if current is None:
        raise BatchError("the online store has no current version: run `recsys online refresh` first")
    users = sorted(int(_text(u)) for u, _ in r.hscan_iter(store.key(current.version, "u"), count=5000))
    return current.version, current.feature_version, users


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _recommend_many(client, users: list[int], k: int, version: int, batched: bool) -> list[tuple[Any, Any]]:
    """One ``recsys`` request per user, all in flight through the client's connection pool.

    ``batched``: the served config has dynamic batching (requests of shape [1, 1]; see
    :func:`recsys.serving.client.recommend_inputs`, shared with every other caller).
    """
    import tritonclient.http as httpclient

    from recsys.serving.client import recommend_inputs, recommendation_arrays

    pending = []
    for user in users:
        inputs = recommend_inputs(httpclient, user, k, batched=batched)
        pending.append(client.async_infer(MODEL, inputs, model_version=str(version)))
    results = []
    for user, request in zip(users, pending):
        try:
            result = request.get_result()
        except Exception as exc:
            raise BatchError(f"Triton {MODEL!r} v{version} refused user {user}: {exc}") from None
        results.append(recommendation_arrays(result))
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
        previous = _text(r.get(keys.current))
        if previous and not force:
            meta = {_text(k): _text(v) for k, v in r.hgetall(keys.meta(previous)).items()}
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
            from recsys.serving.client import model_uses_batching

            batched = model_uses_batching(triton, MODEL)
            done = 0
            for chunk in _chunks(users, chunk_size):
                results = _recommend_many(triton, chunk, top_n, model_version, batched)
                pipe = r.pipeline(transaction=False)
                pipe.hset(keys.rows(batch), mapping={u: pack(ids, sc) for u, (ids, sc) in zip(chunk, results)})
                pipe.execute()
                done += len(chunk)
                rate = done / max(time.perf_counter() - started, 1e-9)
                log.info("precomputed %d/%d users (%.0f users/s)", done, len(users), rate)
            seconds = time.perf_counter() - started
            r.hset(keys.meta(batch), mapping={
                "model_version": model_version, "online_version": online_version, "feature_version": feature_version,
                "top_n": top_n, "users": len(users), "created_at": time.time(), "seconds": round(seconds, 3),
                "airflow_run": airflow_run,
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
        batch = _text(key)[len(keys.batch_prefix) : -len(":meta")]
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
    q.add_argument("--user", type=int, required=True)
    q.add_argument("-k", type=int, default=None)
    q.set_defaults(func=_cli_read)


def _cli_precompute(args) -> int:
    import json

    print(json.dumps(precompute(top_n=args.top_n, force=args.force).to_dict(), indent=2))
    return 0


def _cli_read(args) -> int:
    import json

    pairs = read_precomputed(args.user, args.k)
    if pairs is None:
        print(f"no precomputed recommendations for user {args.user}")
        return 1
    print(json.dumps([{"item_id": i, "score": round(v, 6)} for i, v in pairs], indent=2))
    return 0
