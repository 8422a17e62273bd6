"""Bulk reads of the Redis online store for the serving model (many users, whole versions).

The four-stage model (:mod:`recsys.serving.engine`) answers a *batch* of requests at once and keeps
the item features of the current online version in memory (they never change within a version):

    users = read_users(store, [1042, 77, 5], with_seen=True)   # ONE round trip, ONE version (or ["u-7f3a", ...])
    table = read_item_table(store, users.version)              # every item row of that version
    rows = table.rows_of(raw_item_ids)                         # positions into table.columns (-1: absent)
    flags = unavailable_flags(store, raw_item_ids)             # the live (unversioned) unavailable set

``read_users`` resolves ``current`` (or, pinned, the newest version of a feature version) and reads
every user of the batch inside one Lua script, so a batch never mixes versions; ``read_item_table`` reads a *named* version (immutable), so pairing it
with ``users.version`` keeps a whole request on one version. Uses :class:`RedisOnlineStore`'s key
layout and row packing (see :mod:`recsys.online.redis_store`). Ids are raw ids of the version's
kinds (:mod:`recsys.data.ids`): int64 arrays for int ids, object arrays of str for text ids.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Optional

from recsys.data import ids
from recsys.online.redis_store import OnlineStoreError, VersionGoneError, as_text

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from recsys.online.redis_store import RedisOnlineStore

log = logging.getLogger(__name__)

# KEYS: version pointer (current, or a feature version's newest), unavailable. ARGV: version key prefix, "1" to read seen items, the largest unavailable
# set to return whole ("0": never), user ids (text)...
_READ_USERS = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local base = ARGV[1] .. v .. ':'
local ids = {unpack(ARGV, 4)}
local users = redis.call('HMGET', base .. 'u', unpack(ids))
local seen = false
if ARGV[2] == '1' then seen = redis.call('HMGET', base .. 's', unpack(ids)) end
local unavailable = false
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('SCARD', KEYS[2]) <= limit then unavailable = redis.call('SMEMBERS', KEYS[2]) end
return {v, users, seen, unavailable}
"""
MAX_USERS_PER_READ = 4000  # Lua's unpack() limit is ~8000 values


@dataclass
class UserRows:
    """Features of several users from ONE online version (arrays of shape (n,), the models' dtypes)."""

    version: str
    found: "np.ndarray"  # bool per user
    columns: dict[str, "np.ndarray"]  # unknown users hold the OOV code / 0.0
    seen: Optional[list["np.ndarray"]]  # raw item ids per user (when asked for)
    unavailable: Optional["np.ndarray"] = None  # the whole unavailable set (raw ids), when asked for and small


@dataclass
class ItemTable:
    """Every item row of one online version: ``columns[name][row]``, rows sorted by raw item id."""

    version: str
    ids: "np.ndarray"  # raw item ids, sorted: int64, or an object array of str
    columns: dict[str, "np.ndarray"]
    popularity: "np.ndarray"  # raw item ids, most popular first
    kind: str = ids.INT  # of the raw item ids
    _row_of: Optional[dict] = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, raw_ids: "np.ndarray") -> "np.ndarray":
        """Row of each raw item id in this table (int64), -1 for ids the version does not hold."""
        import numpy as np

        if self.kind != ids.INT:
            # text ids: one dict lookup each (measured faster than a binary search over str objects
            # or fixed-width unicode for the few hundred ids a request asks about)
            if self._row_of is None:
                self._row_of = dict(zip(self.ids.tolist(), range(len(self.ids))))
            get = self._row_of.get
            return np.fromiter((get(i, -1) for i in raw_ids), dtype=np.int64, count=len(raw_ids))
        raw_ids = ids.as_array(raw_ids, ids.INT)
        if len(self.ids) == 0:
            return np.full(raw_ids.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self.ids, raw_ids)
        clipped = np.minimum(pos, len(self.ids) - 1)
        return np.where(self.ids[clipped] == raw_ids, clipped, -1).astype(np.int64)


def read_users(
    store: "RedisOnlineStore",
    user_ids: Iterable[ids.IdValue],
    *,
    with_seen: bool = False,
    unavailable_up_to: int = 0,
    feature_version: Optional[str] = None,
) -> UserRows:
    """Features (and seen items) of ``user_ids`` from the current version, in one round trip.

    ``feature_version``: read the newest online version of that feature version instead of
    ``current`` (a served model reads the features it was trained on, whatever is current).

    ``unavailable_up_to`` > 0: the same trip also returns the whole unavailable set when it holds at
    most that many items (``UserRows.unavailable``; None when larger: ask :func:`unavailable_flags`).
    """
    import numpy as np

    fields = ids.as_python(user_ids)
    if not fields:
        raise OnlineStoreError("read_users needs at least one user id")
    if len(fields) > MAX_USERS_PER_READ:
        raise OnlineStoreError(f"at most {MAX_USERS_PER_READ} users per read, got {len(fields)}")
    script = _script(store)
    for attempt in range(3):
        args = [store.version_prefix, "1" if with_seen else "0", int(unavailable_up_to), *fields]
        reply = script(keys=[store.pointer_key(feature_version), store.key_unavailable], args=args)
        if not reply:
            raise store.no_version_error(feature_version)
        version, rows, seen = as_text(reply[0]), reply[1], reply[2]
        try:
            user_layout, _ = store._layout(version)
            break
        except VersionGoneError:  # collected right after this read (grace period 0): read again
            if attempt == 2:
                raise
    columns, found = user_layout.decode(list(rows))
    item_kind = store.id_kinds(version).item_id
    seen_ids = [ids.unpack(s, item_kind) for s in seen] if with_seen else None
    unavailable = None
    if reply[3]:  # members that are not ids of this kind can match no item: skipped
        unavailable = ids.from_fields(reply[3], item_kind, strict=False)
    elif reply[3] is not None and unavailable_up_to > 0:  # an empty list: the set is empty
        unavailable = ids.empty(item_kind)
    return UserRows(version, found, columns, seen_ids, unavailable)


def read_item_table(store: "RedisOnlineStore", version: str, *, batch: int = 5000) -> ItemTable:
    """Every item row (and the popularity list) of online ``version``.

    Scans the version's item hash in steps of ``batch`` fields (HSCAN: Redis is never blocked for
    long). Raises :class:`VersionGoneError` if the version is collected before the scan ends.
    """
    import numpy as np

    began = time.perf_counter()
    _, item_layout = store._layout(version)
    key = store.key(version, "i")
    rows: dict[bytes, bytes] = {}
    cursor = 0
    while True:  # HSCAN may return a field twice: the dict keeps one
        cursor, part = store.client.hscan(key, cursor, count=batch)
        rows.update(part)
        if int(cursor) == 0:
            break
    pipe = store.client.pipeline(transaction=False)
    pipe.exists(store.key(version, "meta"))
    pipe.hlen(key)
    pipe.get(store.key(version, "pop"))
    meta_exists, expected, popularity = pipe.execute()
    if not meta_exists or len(rows) != int(expected):
        raise VersionGoneError(f"online version {version} changed or was collected while its items were read")
    keys = list(rows)
    kind = store.id_kinds(version).item_id
    raw_ids = ids.from_fields(keys, kind)
    order = np.argsort(raw_ids, kind="stable")
    columns, _found = item_layout.decode([rows[keys[i]] for i in order])
    table = ItemTable(
        version=version,
        ids=raw_ids[order],
        columns=columns,
        popularity=ids.unpack(popularity, kind),
        kind=kind,
    )
    log.info("online version %s: %d item rows read in %.0f ms", version, len(table), 1000 * (time.perf_counter() - began))
    return table


def unavailable_flags(store: "RedisOnlineStore", item_ids: Iterable[ids.IdValue]) -> "np.ndarray":
    """True for each raw item id that is in the unavailable set now (one round trip)."""
    import numpy as np

    members = ids.as_python(item_ids)
    if not members:
        return np.zeros(0, dtype=bool)
    return np.asarray(store.client.smismember(store.key_unavailable, members), dtype=bool)


def _script(store: "RedisOnlineStore"):
    # registered once per store object (redis-py then calls it by SHA, loading it when Redis lacks it)
    script = getattr(store, "_bulk_read_users", None)
    if script is None:
        script = store.client.register_script(_READ_USERS)
        store._bulk_read_users = script
    return script
