"""The Redis online feature store: versioned, atomically switched, read in one round trip.

Keys (``{p}`` is ``{<settings.online_key_prefix>}``, a Redis Cluster hash tag)::

    {p}:current             STRING  the current online version id, e.g. "b74d8f2b4077-7"
    {p}:fv:<F>              STRING  the newest online version written from feature version F
    {p}:pinned              HASH    feature version -> why serving needs it (publish pins, GC keeps)
    {p}:seq                 STRING  counter that makes version ids unique
    {p}:writing             ZSET    versions being written -> start time (stale ones are collected)
    {p}:retired             ZSET    versions that stopped being current -> when
    {p}:unavailable         SET     raw item ids (their text) operations took off sale (not versioned)
    {p}:v:<V>:meta          HASH    feature/data version, column layouts, id kinds, counts, times
    {p}:v:<V>:u             HASH    raw user id -> packed user features
    {p}:v:<V>:s             HASH    raw user id -> packed list of the RAW item ids the user has seen, newest first
    {p}:v:<V>:i             HASH    raw item id -> packed item features
    {p}:v:<V>:d             HASH    raw item id -> display attributes (JSON)
    {p}:v:<V>:pop           STRING  popularity list: packed raw item ids, most popular first
    {p}:v:<V>:hu / :hi      STRING  per-entity content hashes: sorted raw ids + their hashes (uint64)
    {p}:batch:current       STRING  the current batch of precomputed lists (offline mode), e.g. "3-12"
    {p}:batch:seq           STRING  counter that makes batch ids unique
    {p}:batch:<B>:r         HASH    raw user id (its text) -> the user's packed list (recsys.serving.batch.pack)
    {p}:batch:<B>:meta      HASH    Triton model version, online version, feature version, top_n, users,
                                    created_at, airflow_run, ids (the lists' id kinds, JSON)
    {p}:events              STREAM  the event log: accepted events (fields u, i, e, t, r, k: EVENT_FIELDS),
                                    appended by the accept script only; consumer groups ``live`` (applies
                                    them to the live state) and ``landing`` (writes them to parquet)
    {p}:events:inbox        STREAM  raw events from producers on Redis (user_id, item_id, event_type,
                                    timestamp, request_id), validated by the event worker (group ``validate``)
    {p}:events:refused      STREAM  inbox entries validation refused: their fields + ``reason`` (capped ~10k)
    {p}:events:parts        HASH    landing parts being written: part file name -> JSON {consumer, ids, tmp}
    {p}:events:flush        STRING  the newest request (unix ms) that landing consumers write what they hold now
    {p}:events:stats        HASH    accepted, applied, refused, landed (totals); last_accept_ms,
                                    last_applied_ms, last_landed_ms (unix ms)
    {p}:live:s:<U>          ZSET    raw item id -> newest event time (ms): the items of user U's live events
                                    (seen since the batch; the newest N are the recent-items sequence)
    {p}:live:c:<E>:<G>:<B>  HASH    "<event type>|<raw id>" -> events in bucket B (unix ms // bucket size)
                                    of granularity G (``f``: 5 minutes, ``c``: 1 hour), entity E (``u``/``i``)

Ids (:mod:`recsys.data.ids`). Raw ids are integers or text, as the version's ``meta`` field ``ids``
records (``{"user_id": "int"|"string", "item_id": ...}``; a version written before kinds existed
has none: int). Hash fields and set members are an id's text (``"5003"``, ``"SKU-85123A"``).
Packed lists (``:s`` values, ``:pop``) use the item kind's codec (``ids.pack``: int64 little-endian
for int ids, as always; NUL-separated UTF-8 for text ids); ``:hu``/``:hi`` are ``ids.pack_with``
of the sorted ids and their hashes (int: ids then hashes, as always; text: count, hashes, ids).
Readers return ids in their kind: int64 arrays, or object arrays of str.

One hash per entity kind per version (not one key per entity): a version is a handful of keys, so
retiring one is a few ``UNLINK`` calls (freed off the main thread) instead of a scan over 100k keys,
and a hash field costs far less memory than a key. A read of 100 items is one ``HMGET``.

Versioning. A refresh writes version V completely under its own keys (pipelined units of at most
``batch_size`` entities, ``transaction=False``; paced against readers' latency, see "Pacing"), then
one Lua script switches ``current`` to V if it still holds the version the refresh started from
(compare-and-set: two concurrent refreshes cannot silently overwrite each other). Readers run one Lua
script that reads ``current`` and that version's rows in the same atomic step, so every read comes
from exactly one version. A refresh that fails
(an exception, a bad row, a lost connection) deletes V's keys and leaves ``current`` untouched; a
refresh whose process died is collected later from ``{p}:writing``. A retired version stays
readable for the grace period, then :meth:`RedisOnlineStore.collect_garbage` unlinks it.

Bulk reads (the serving engine answers a batch of requests at once). :meth:`RedisOnlineStore.read_users`
reads every user of a batch (features, seen items and, when it is small, the whole unavailable set)
inside one Lua script that resolves the version too, so a batch never mixes versions and costs one
round trip; at most ``MAX_USERS_PER_READ`` users, Lua's ``unpack()`` limit. :meth:`read_item_table`
reads a *named* version's whole item hash with ``HSCAN`` (Redis is never blocked for long) once per
version: the engine keeps it in memory and gathers candidates by array indexing instead of reading
200 rows per request. A large unavailable set is asked about per batch (``SMISMEMBER`` of the
candidates). Rejected: reading items per request inside the users' script (a few hundred ``HMGET``
fields per request on every batch, for rows that never change within a version).

Precomputed lists (offline mode, :mod:`recsys.serving.batch`). A batch job writes batch B's lists
and meta completely, then one ``SET`` of ``{p}:batch:current`` switches readers to it and the other
batches are unlinked right away; a failed job unlinks B and leaves ``current`` alone. A reader
resolves ``current`` and reads the user's list, the batch's id kinds and the unavailable set in one
Lua script (one atomic step, one round trip), so no reader is mid-read in an unlinked batch. Lists
are opaque here (the batch job packs them); items taken off sale after the batch ran are filtered by
the reader. Batches are not online versions: no grace period, no pins (a batch is two keys, and the
served model does not read it).

Feature-version pinning. Encoded ids and normalized features differ between feature versions, so a
served model must read rows of the feature version it was trained on, not whatever is current: a
refresh to a new feature version runs as soon as the ETL wrote it, long before (or without ever) a
model trained on it serving. The switch script therefore also sets ``{p}:fv:<F>``, and every read
takes ``feature_version=F`` to resolve that pointer instead of ``current`` (the read scripts take
the pointer key as KEYS[1], so a pinned read costs the same). A version written before these
pointers existed gets its pointer from the next refresh of the same snapshot (the "already current"
path sets a missing pointer; idempotent). Publishing pins the served feature
versions in ``{p}:pinned``; garbage collection keeps the newest version of every pinned feature
version whatever its age, and an unpinned one gets the grace period again from the unpin.

Incremental refresh. The new version is still complete: a reader never needs more than one version.
The refresh compares the new entities' content hashes with the current version's ``:hu``/``:hi``,
writes only changed and new entities from the client, and copies the unchanged ones server-side
(a Lua script: ``HMGET`` from the base version, ``HSET`` into the new one, in batches), so their
bytes never cross the network and are not re-packed. Deleted entities are simply not copied. The
alternative, a thin version layered over its base with readers falling back inside the read script,
would make a refresh O(changes) in server work too, but every read would pay the fallback, the
garbage collector would have to keep bases alive, and chains of layers would need compaction; with
a few hundred thousand entities the server-side copy costs tens of milliseconds, spread over many
small scripts, which readers do not notice. A change of column layout falls back to a full refresh.

Pacing (:mod:`recsys.online.pacing` decides, the refresh obeys). Redis runs one command at a time and
the machine's cores are shared, so a refresh at full speed makes readers wait (their p99 was ~4x its
idle value during full refreshes, ~16x during incremental ones: bench/README.md). Given a read budget, a child process times probe reads (the users script serving runs,
for one user) every few milliseconds from before the first write to the switch, each tagged whether
a write unit (an ``HSET`` pipeline, or one copy script) was in flight, and the pacer shortens the
units and pauses between them so that readers' p99 stays within the budget x its idle value. Full and
incremental refreshes share it: the copy scripts of an incremental refresh are units too (a script
runs whole, so a short one is a short wait).

The live layer (events take effect within milliseconds; not versioned). Two steps, each one Lua
script, so accepting never waits for the effects and the effects happen exactly once:

1. accept (:meth:`RedisOnlineStore.accept_events`): ``XADD`` of every event to ``{p}:events``, the
   event log (and, for events from the inbox, ``XACK`` of their inbox entries in the same script);
2. apply (:meth:`RedisOnlineStore.apply_events`, the live applier of :mod:`recsys.events.live`, a
   consumer group ``live`` on the log): for each entry it can ``XACK`` (so a re-read or claimed entry
   is applied once), ``ZADD GT`` of the item into the user's ``live:s`` (the newest event time per
   item: a late event never moves an item back) and ``HINCRBY`` of the four counter buckets (user
   and item, 5-minute and hour buckets).

Why two steps: accepting is what producers wait for, and one ``XADD`` per event keeps it near
Redis' own ``XADD`` rate (bench/events.py), while the effects cost ~10 commands per event;
appending and applying in one script measured 0.1x of the ``XADD`` ceiling. The applier blocks on the
log (``XREADGROUP BLOCK``), so an event is visible a few milliseconds after it was accepted.
Readers take a user's live items in the same script that reads the batch version
(:meth:`RedisOnlineStore.read_users` ``with_live``) and compose them with the version's seen list:
a refresh or a version switch never touches the live keys, so it never wipes events newer than the
batch; live items that the batch already holds are simply read twice (sets: harmless). Live items
leave by age (``settings.live_ttl_hours``, by event time, and the whole key after that long without
events) and by count (:data:`LIVE_MAX_ITEMS`, oldest first). Counters are bucketed, not exact
sliding windows: "last hour" is the 13 five-minute buckets that cover it (60 to 65 minutes), "last
day" the 25 hourly ones; each bucket key expires when it leaves its window. Rejected: one counter
hash per entity with bucket fields (stale fields need a clean-up pass on every write), and exact
windows as a sorted set of event times per entity (memory grows with the traffic of popular items).

Redis Cluster. Every key shares one hash tag, so redis-py's ``RedisCluster`` client works unchanged
(scripts and pipelines touch one slot), at the price that the whole store lives on one shard: fine
for the memory this needs (~100 bytes per entity), and replicas still give availability. Spreading
versions over shards (a tag per version) would cost readers a second round trip to resolve
``current``, which lives on another slot. The read scripts build the version's key names from
``current`` inside the script: legal here only because all keys share the slot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional

from recsys.data import ids
from recsys.online.pacing import ForkedProber, RefreshPacer
from recsys.online.snapshot import EntityRows, RowLayout, Snapshot
from recsys.online.store import (
    AcceptResult,
    BatchHook,
    EventBatch,
    ConcurrentRefreshError,
    FeatureRows,
    ItemTable,
    NoOnlineVersionError,
    OnlineStore,
    OnlineStoreError,
    PrecomputedList,
    RefreshResult,
    UserRows,
    VersionGoneError,
    VersionInfo,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from typing import Callable, Iterator, Mapping

    import numpy as np
    import redis

    from recsys.settings import Settings

log = logging.getLogger(__name__)

VERSION_KEY_SUFFIXES = ("meta", "u", "s", "i", "d", "pop", "hu", "hi")
LIVE_MAX_ITEMS = 1000
"""Most live items kept per user (the oldest go first): bounds the memory and the read of a heavy user or a bot."""
COUNTER_BUCKETS = (("f", 300_000, 3_600_000), ("c", 3_600_000, 86_400_000))
"""Live counter granularities: (name, bucket ms, window ms) for the 1h and 24h windows (store.LIVE_WINDOWS)."""
EVENT_FIELDS = ("u", "i", "e", "t", "r", "k")
"""Fields of an event log entry: user id, item id (text), event type, timestamp (unix ms), request id, id kinds."""
ACCEPT_CHUNK = 1000
"""Events per accept step (one MULTI/EXEC of XADDs, or one script): about a millisecond of Redis' time."""
APPLY_CHUNK = 200
"""Events per apply script: ~10 us of Redis' time each (ten commands), so each script stays ~2 ms and
serving's reads never wait behind a long one (a 1000-event script measured ~12 ms)."""
INBOX_GROUP = "validate"
"""The event worker's consumer group on the inbox."""
LIVE_GROUP = "live"
"""The live applier's consumer group on the event log (recsys.events.live)."""
MAX_ITEMS_PER_READ = 4000
MAX_USERS_PER_READ = 4000  # users per bulk read: Lua's unpack() limit is ~8000 values
FIELDS_PER_COMMAND = 100  # Lua's unpack() limit is ~8000 values
BATCH_KEY_SUFFIXES = ("r", "meta")
PROGRESS_SECONDS = 30.0
"""A refresh logs its progress every tenth of an entity kind, and at least this often (a paced one can be slow)."""
PROBE_USERS = 16
"""A paced refresh's probe reads cycle through this many users of the snapshot."""


# KEYS: version pointer (current or a feature version's), unavailable. ARGV: version key prefix, user id ("" for none), "1" to read seen items, item ids (text)...
_READ = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local base = ARGV[1] .. v .. ':'
local user, seen = false, false
if ARGV[2] ~= '' then
  user = redis.call('HGET', base .. 'u', ARGV[2])
  if ARGV[3] == '1' then seen = redis.call('HGET', base .. 's', ARGV[2]) end
end
local items, unavailable = {}, {}
if #ARGV > 3 then
  local ids = {unpack(ARGV, 4)}
  items = redis.call('HMGET', base .. 'i', unpack(ids))
  unavailable = redis.call('SMISMEMBER', KEYS[2], unpack(ids))
end
return {v, user, seen, items, unavailable}
"""

# KEYS: version pointer (current, or a feature version's newest), unavailable. ARGV: version key prefix, "1" to read seen
# items, the largest unavailable set to return whole ("0": never), the live key prefix ("": no live items), user ids
# (text)... Returns the version, user rows, seen lists, the unavailable set, each user's live items newest first.
_READ_USERS = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local base = ARGV[1] .. v .. ':'
local ids = {unpack(ARGV, 5)}
local users = redis.call('HMGET', base .. 'u', unpack(ids))
local seen = false
if ARGV[2] == '1' then seen = redis.call('HMGET', base .. 's', unpack(ids)) end
local unavailable = false
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('SCARD', KEYS[2]) <= limit then unavailable = redis.call('SMEMBERS', KEYS[2]) end
local live = false
if ARGV[4] ~= '' then
  live = {}
  for n, id in ipairs(ids) do live[n] = redis.call('ZREVRANGE', ARGV[4] .. 's:' .. id, 0, -1) end
end
return {v, users, seen, unavailable, live}
"""

# KEYS: current batch, unavailable. ARGV: batch key prefix, user id (text). Returns the batch, the user's list (nil: not
# in it), the unavailable set, the batch's id kinds (JSON; nil for a batch written before kinds were recorded).
_READ_BATCH = """
local batch = redis.call('GET', KEYS[1])
if not batch then return false end
local row = redis.call('HGET', ARGV[1] .. batch .. ':r', ARGV[2])
return {batch, row, redis.call('SMEMBERS', KEYS[2]), redis.call('HGET', ARGV[1] .. batch .. ':meta', 'ids')}
"""

# KEYS: version pointer (current or a feature version's). ARGV: version key prefix, command (HGET|HMGET|GET), key suffix, fields...
_READ_ONE = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local key = ARGV[1] .. v .. ':' .. ARGV[3]
if ARGV[2] == 'GET' then return {v, redis.call('GET', key)} end
return {v, redis.call(ARGV[2], key, unpack(ARGV, 4))}
"""

# KEYS: source hash, target hash[, second source, second target]. ARGV: fields. Returns fields copied.
_COPY_FIELDS = """
local copied = 0
for k = 1, #KEYS, 2 do
  local values = redis.call('HMGET', KEYS[k], unpack(ARGV))
  local args = {}
  for i, f in ipairs(ARGV) do
    if values[i] then args[#args + 1] = f; args[#args + 1] = values[i] end
  end
  if #args > 0 then redis.call('HSET', KEYS[k + 1], unpack(args)) end
  copied = copied + #args / 2
end
return copied
"""

# KEYS: current, writing, retired, new meta, new version's feature version pointer, new users, new items.
# ARGV: expected current ("" = none), new version, now.
# Returns {1, previous} (switched), {0, current} (another version became current) or {2, what is missing}:
# the version on the server lacks rows the refresh wrote. That happens when its primary died and a replica
# that had not yet received the last acknowledged writes took over (Redis replicates asynchronously):
# switching to it would serve a version with holes.
_SWITCH = """
local counts = redis.call('HMGET', KEYS[4], 'users', 'items')
if not counts[1] or not counts[2] then return {2, 'its meta'} end
local users, items = redis.call('HLEN', KEYS[6]), redis.call('HLEN', KEYS[7])
if users ~= tonumber(counts[1]) or items ~= tonumber(counts[2]) then
  return {2, users .. ' of ' .. counts[1] .. ' users and ' .. items .. ' of ' .. counts[2] .. ' items'}
end
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return {0, cur} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[5], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if cur ~= '' then redis.call('ZADD', KEYS[3], ARGV[3], cur) end
redis.call('HSET', KEYS[4], 'switched_at', ARGV[3])
return {1, cur}
"""


# KEYS: current, pinned, writing, retired, the version's feature version pointer, the version's keys...
# ARGV: version, its feature version. Deletes the version unless it is current or the newest of a
# pinned feature version (1: deleted). One script, so a pin set just before cannot lose the race.
_COLLECT = """
local v = ARGV[1]
if redis.call('GET', KEYS[1]) == v then
  redis.call('ZREM', KEYS[3], v)
  redis.call('ZREM', KEYS[4], v)
  return 0
end
if redis.call('GET', KEYS[5]) == v then
  if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
  redis.call('DEL', KEYS[5])
end
redis.call('UNLINK', unpack(KEYS, 6))
redis.call('ZREM', KEYS[3], v)
redis.call('ZREM', KEYS[4], v)
return 1
"""

# KEYS: the event log, the inbox, stats. ARGV: now (ms), the inbox's consumer group, then per event: its inbox entry id
# ("" when it came another way), user, item, event type, timestamp (ms), request id, id kinds. Appends every event; an
# event from the inbox only if acknowledging its inbox entry succeeds (a worker whose entries another worker claimed
# and accepted appends nothing twice). Returns the first and last appended entry ids and how many were appended.
_ACCEPT = """
for j = 3, #ARGV, 7 do  -- check before writing: a script that fails half-way is not rolled back
  if not tonumber(ARGV[j + 4]) then return redis.error_reply('timestamp ' .. ARGV[j + 4] .. ' is not a number') end
end
local first, last, accepted = false, false, 0
for j = 3, #ARGV, 7 do
  if ARGV[j] == '' or redis.call('XACK', KEYS[2], ARGV[2], ARGV[j]) == 1 then
    last = redis.call('XADD', KEYS[1], '*', 'u', ARGV[j + 1], 'i', ARGV[j + 2], 'e', ARGV[j + 3], 't', ARGV[j + 4],
                      'r', ARGV[j + 5], 'k', ARGV[j + 6])
    first = first or last
    accepted = accepted + 1
  end
end
if accepted > 0 then
  redis.call('HINCRBY', KEYS[3], 'accepted', accepted)
  redis.call('HSET', KEYS[3], 'last_accept_ms', ARGV[1])
end
return {first, last, accepted}
"""

# KEYS: the event log, stats. ARGV: live key prefix, now (ms), live TTL (ms), most live items per user, the applier's
# consumer group, then per event: its entry id in the log, user, item, event type, timestamp (ms). Applies each event
# whose entry it can acknowledge in the group (so an event is applied exactly once, whoever else read it) to the live
# state (see "The live layer"); returns how many were applied.
_APPLY = """
local live = ARGV[1]
local now, ttl, cap, group = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local buckets = {{'f', 300000, 3600000}, {'c', 3600000, 86400000}}
for j = 6, #ARGV, 5 do
  if not tonumber(ARGV[j + 4]) then return redis.error_reply('timestamp ' .. ARGV[j + 4] .. ' is not a number') end
end
local users, counters = {}, {}
local applied = 0
for j = 6, #ARGV, 5 do
  if redis.call('XACK', KEYS[1], group, ARGV[j]) == 1 then
    local u, i, e, ts = ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], tonumber(ARGV[j + 4])
    local seen = live .. 's:' .. u
    redis.call('ZADD', seen, 'GT', ts, i)
    users[seen] = true
    for _, b in ipairs(buckets) do
      if ts > now - b[3] then
        local bucket = math.floor(ts / b[2])
        local ku, ki = live .. 'c:u:' .. b[1] .. ':' .. bucket, live .. 'c:i:' .. b[1] .. ':' .. bucket
        redis.call('HINCRBY', ku, e .. '|' .. u, 1)
        redis.call('HINCRBY', ki, e .. '|' .. i, 1)
        local expires = (bucket + 1) * b[2] + b[3]
        counters[ku], counters[ki] = expires, expires
      end
    end
    applied = applied + 1
  end
end
for key in pairs(users) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now - ttl))
  local extra = redis.call('ZCARD', key) - cap
  if extra > 0 then redis.call('ZREMRANGEBYRANK', key, 0, extra - 1) end
  redis.call('PEXPIRE', key, ttl)
end
for key, at in pairs(counters) do redis.call('PEXPIREAT', key, string.format('%d', at)) end
if applied > 0 then
  redis.call('HINCRBY', KEYS[2], 'applied', applied)
  redis.call('HSET', KEYS[2], 'last_applied_ms', ARGV[2])
end
return applied
"""

# KEYS: pinned, retired, the feature version's pointer. ARGV: feature version, now. Unpins, and the
# version it pinned (if retired) gets the whole grace period from now: in-flight requests finish.
_UNPIN = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
local v = redis.call('GET', KEYS[3])
if removed == 1 and v then redis.call('ZADD', KEYS[2], 'XX', ARGV[2], v) end
return removed
"""


def client(settings: "Settings", *, cluster: Optional[bool] = None, **kwargs: Any) -> "redis.Redis":
    """The redis-py client of ``settings.redis``, authenticated with ``settings.redis_password`` or the
    embedded Redis's generated password (:mod:`recsys.credentials`). Every Redis client is made here;
    ``cluster`` (default ``settings.redis_is_cluster``): a ``RedisCluster`` client, which starts from every
    node of ``settings.redis_nodes`` (a client made while one node is down still finds the cluster).

    During a failover (a primary died; its replica takes over after ``cluster-node-timeout``) a cluster
    client's command fails fast with ``ConnectionError`` or ``ClusterDownError`` (redis-py retries it a few
    times at once, re-reading the slot map each time) and succeeds as soon as the replica is promoted: the
    client itself follows the new slot map. Not retried for longer on purpose: a read that waits seconds is
    worse for serving than a fast error, and a refresh must start again rather than carry on (writes the
    dead primary acknowledged but had not replicated are lost; see ``_SWITCH``)."""
    from recsys import credentials

    if cluster is None:
        cluster = settings.redis_is_cluster
    if cluster:
        from redis.cluster import ClusterNode

        kwargs.setdefault("startup_nodes", [ClusterNode(host, port) for host, port in settings.redis_nodes[1:]])
    return connect(settings.redis, cluster=cluster,
                   password=credentials.client_value(settings, credentials.REDIS_PASSWORD), **kwargs)


def connect(url: str, *, cluster: bool = False, **kwargs: Any) -> "redis.Redis":
    """A redis-py client for ``url`` (``redis://``, ``rediss://`` for TLS, password and db in the URL;
    a password in the URL wins over ``password=``)."""
    import redis

    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


class RedisOnlineStore(OnlineStore):
    """The online store on one redis-py client (``redis.Redis`` or ``redis.cluster.RedisCluster``)."""

    def __init__(
        self,
        client: "redis.Redis",
        *,
        prefix: str = "recsys",
        batch_size: int = 1000,
        grace_seconds: float = 3600.0,
        live_ttl_seconds: float = 7 * 86400.0,
    ) -> None:
        if batch_size < 1:
            raise OnlineStoreError(f"batch size must be >= 1, got {batch_size}")
        self.client = client
        self.prefix = prefix
        self.batch_size = batch_size
        self.grace_seconds = grace_seconds
        self.live_ttl_seconds = live_ttl_seconds
        tag = "{" + prefix + "}"
        self.key_current = f"{tag}:current"
        self.key_seq = f"{tag}:seq"
        self.key_writing = f"{tag}:writing"
        self.key_retired = f"{tag}:retired"
        self.key_unavailable = f"{tag}:unavailable"
        self.key_pinned = f"{tag}:pinned"
        self.version_prefix = f"{tag}:v:"
        self.feature_version_prefix = f"{tag}:fv:"
        self.key_batch_current = f"{tag}:batch:current"
        self.key_batch_seq = f"{tag}:batch:seq"
        self.batch_prefix = f"{tag}:batch:"
        self.key_events = f"{tag}:events"
        self.key_inbox = f"{tag}:events:inbox"
        self.key_refused = f"{tag}:events:refused"
        self.key_parts = f"{tag}:events:parts"
        self.key_event_stats = f"{tag}:events:stats"
        self.key_flush = f"{tag}:events:flush"
        self.live_prefix = f"{tag}:live:"
        self._read = client.register_script(_READ)
        self._read_users = client.register_script(_READ_USERS)
        self._read_batch = client.register_script(_READ_BATCH)
        self._read_one = client.register_script(_READ_ONE)
        self._copy = client.register_script(_COPY_FIELDS)
        self._switch = client.register_script(_SWITCH)
        self._collect = client.register_script(_COLLECT)
        self._unpin = client.register_script(_UNPIN)
        self._accept = client.register_script(_ACCEPT)
        self._apply = client.register_script(_APPLY)
        # versions never change: their layouts and id kinds are safe to cache
        self._layouts: dict[str, tuple[RowLayout, RowLayout]] = {}
        self._kinds: dict[str, ids.IdKinds] = {}

    @classmethod
    def from_settings(cls, settings: Optional["Settings"] = None, *, cluster: Optional[bool] = None) -> "RedisOnlineStore":
        from recsys.settings import get_settings

        s = settings or get_settings()
        return cls(
            client(s, cluster=cluster),
            prefix=s.online_key_prefix,
            batch_size=s.online_batch_size,
            grace_seconds=s.online_gc_grace_seconds,
            live_ttl_seconds=s.live_ttl_hours * 3600,
        )

    def key(self, version: str, suffix: str) -> str:
        return f"{self.version_prefix}{version}:{suffix}"

    def version_keys(self, version: str) -> list[str]:
        return [self.key(version, s) for s in VERSION_KEY_SUFFIXES]

    def batch_key(self, batch: str, suffix: str) -> str:
        """A key of a batch of precomputed lists (``suffix``: ``r`` or ``meta``)."""
        return f"{self.batch_prefix}{batch}:{suffix}"

    def pointer_key(self, feature_version: Optional[str] = None) -> str:
        """The key naming the version a read resolves: ``current``, or a feature version's newest."""
        return self.key_current if feature_version is None else f"{self.feature_version_prefix}{feature_version}"

    def no_version_error(self, feature_version: Optional[str] = None) -> NoOnlineVersionError:
        """The error of a read whose pointer is empty (one message for every read path)."""
        if feature_version is None:
            return NoOnlineVersionError("the online store has no current version: run `recsys online refresh`")
        return NoOnlineVersionError(
            f"the online store holds no version of feature version {feature_version!r} (the served model's): "
            f"run `recsys online refresh --features <features root>/{feature_version}`"
        )

    # --- refresh ------------------------------------------------------------------------------
    def refresh(
        self,
        snapshot: Snapshot,
        *,
        incremental: bool = False,
        force: bool = False,
        on_batch: Optional[BatchHook] = None,
        read_budget: float = 0.0,
    ) -> RefreshResult:
        started = time.time()
        base = self.current()
        if (
            base is not None
            and not force
            and base.feature_version == snapshot.feature_version
            and base.data_version == snapshot.data_version
        ):
            log.info("online version %s already holds feature version %s: nothing to do", base.version, base.feature_version)
            # A version written before the per-feature-version pointers existed has none, so pinned
            # reads of it would fail; set it here (NX: never moves a pointer a switch already set).
            if self.client.set(self.pointer_key(base.feature_version), base.version, nx=True):
                log.info("set the missing pointer %s -> %s", self.pointer_key(base.feature_version), base.version)
            return RefreshResult(base.version, snapshot.feature_version, base.mode, skipped=True, reason="already current")

        mode, reason = "full", ""
        if incremental:
            reason = self._incremental_blocker(base, snapshot)
            mode = "full" if reason else "incremental"
            if reason:
                log.info("incremental refresh not possible (%s): writing in full", reason)

        version = f"{snapshot.feature_version}-{int(self.client.incr(self.key_seq))}"
        self.client.zadd(self.key_writing, {version: started})
        result = RefreshResult(version, snapshot.feature_version, mode, reason=reason)
        if base is not None and mode == "incremental":
            result.base_version = base.version
        with self._pacer(snapshot, read_budget) as pacer:
            try:
                self._write_meta(version, snapshot, mode, result.base_version, started)
                self._write_entities(version, base, snapshot, mode, result, on_batch, pacer)
                self._write_blobs(version, snapshot)
                switched, found = self._switch(
                    keys=[
                        self.key_current, self.key_writing, self.key_retired, self.key(version, "meta"),
                        self.pointer_key(snapshot.feature_version), self.key(version, "u"), self.key(version, "i"),
                    ],
                    args=[base.version if base else "", version, time.time()],
                )
                if int(switched) == 2:
                    raise OnlineStoreError(
                        f"online version {version} is incomplete on the server ({as_text(found)} written are "
                        f"there): writes were lost, e.g. by a Redis failover during the refresh; {version} was "
                        "discarded, run the refresh again"
                    )
                if not int(switched):
                    raise ConcurrentRefreshError(
                        f"online version {as_text(found)} became current while {version} was being written "
                        f"(expected {base.version if base else 'none'}); {version} was discarded"
                    )
            except BaseException as error:
                import redis.exceptions as redis_errors

                log.warning("refresh of %s failed: removing its keys; %s stays current", version, base.version if base else "nothing")
                try:
                    self._delete_version(version)
                except redis_errors.RedisError as cleanup:  # Redis itself is what failed: keep the first error
                    log.warning("could not remove %s's keys (%s): garbage collection removes them later", version, cleanup)
                if isinstance(error, (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterError,
                                      redis_errors.RedisClusterException,  # a slot that no node serves
                                      ConnectionError)):  # the socket's own (a reset), from _send_pipelined's reads
                    raise OnlineStoreError(
                        f"refresh of online version {version} lost its Redis connection ({error}), e.g. to a failover "
                        f"of the primary holding the store; {base.version if base else 'no version'} stays current: "
                        "run the refresh again (it starts over)"
                    ) from error
                raise
        result.seconds = time.time() - started
        result.pacing = pacer.report()
        log.info(
            "online version %s is current (%s, feature version %s): %d users and %d items written, "
            "%d + %d copied, %d + %d deleted, in %.2fs (%.0f rows/s; %s)",
            version, mode, snapshot.feature_version, result.users_written, result.items_written,
            result.users_copied, result.items_copied, result.users_deleted, result.items_deleted,
            result.seconds, result.rows / max(result.seconds, 1e-9), pacer.summary(),
        )
        return result

    @contextlib.contextmanager
    def _pacer(self, snapshot: Snapshot, read_budget: float) -> "Iterator[RefreshPacer]":
        """The refresh's pacer (:mod:`recsys.online.pacing`): with a budget, its prober runs in a forked
        child for the refresh's duration and the idle latencies are measured before anything is written.
        The child reads through this store's client (so with its TLS, password or cluster settings, on
        connections of its own) and is reaped on every way out, an exception or a signal's included."""
        prober = ForkedProber(self._probe(snapshot)) if read_budget > 0 else None
        try:
            started = prober is not None and prober.start()
            pacer = RefreshPacer(read_budget, self.batch_size, prober if started else None)
            if prober is not None and not started:
                pacer.note = f"no pacing: {prober.why_not}"
            pacer.measure_idle()
            yield pacer
        finally:
            if prober is not None:
                prober.close()

    def _probe(self, snapshot: Snapshot) -> "Callable[[], Any]":
        """A read like serving's, for pacing a refresh: the users script for one user (features, seen and
        live items) of what is current, cycling through :data:`PROBE_USERS` users of ``snapshot`` (run by
        the prober's child process, on its own connections)."""
        import itertools

        users = snapshot.users.ids
        step = max(1, len(users) // PROBE_USERS)
        sample = ids.as_python(users[::step][:PROBE_USERS]) or ["0"]
        fields = itertools.cycle([ids.to_text(u) for u in sample])
        keys = [self.key_current, self.key_unavailable]
        return lambda: self._read_users(keys=keys, args=[self.version_prefix, "1", 0, self.live_prefix, next(fields)])

    def _incremental_blocker(self, base: Optional[VersionInfo], snapshot: Snapshot) -> str:
        """Why an incremental refresh over ``base`` is impossible ("" when it is possible)."""
        if base is None:
            return "no current version"
        user_layout, item_layout = self._layout(base.version)
        if user_layout != snapshot.user_layout or item_layout != snapshot.item_layout:
            return f"column layout differs from {base.version}"
        if self.id_kinds(base.version) != snapshot.id_kinds:
            return f"id kinds differ from {base.version}"
        return ""

    def _write_meta(self, version: str, snapshot: Snapshot, mode: str, base: Optional[str], started: float) -> None:
        self.client.hset(
            self.key(version, "meta"),
            mapping={
                "feature_version": snapshot.feature_version,
                "data_version": snapshot.data_version,
                "created_at": repr(started),
                "mode": mode,
                "base_version": base or "",
                "user_layout": json.dumps(snapshot.user_layout.to_dict()),
                "item_layout": json.dumps(snapshot.item_layout.to_dict()),
                "display_columns": json.dumps(list(snapshot.display_columns)),
                "ids": json.dumps(snapshot.id_kinds.to_dict()),
                "users": len(snapshot.users),
                "items": len(snapshot.items),
                "popularity": len(snapshot.popularity),
            },
        )

    def _write_entities(
        self,
        version: str,
        base: Optional[VersionInfo],
        snapshot: Snapshot,
        mode: str,
        result: RefreshResult,
        on_batch: Optional[BatchHook],
        pacer: RefreshPacer,
    ) -> None:
        for kind, rows, (features_key, extra_key), hashes_key in (
            ("users", snapshot.users, ("u", "s"), "hu"),
            ("items", snapshot.items, ("i", "d"), "hi"),
        ):
            write = list(range(len(rows)))
            if mode == "incremental":
                assert base is not None
                write, copy, deleted = _diff(rows, self._hashes(base.version, hashes_key))
                copied = self._copy_unchanged(base.version, version, (features_key, extra_key), copy, pacer)
                if copied != len(copy):
                    raise OnlineStoreError(
                        f"base version {base.version} lacks {len(copy) - copied} of the {kind} it lists "
                        "as present; run a full refresh"
                    )
                setattr(result, f"{kind}_copied", copied)
                setattr(result, f"{kind}_deleted", deleted)
            id_kind = snapshot.id_kinds.of("user_id" if kind == "users" else "item_id")
            written = self._write_rows(version, kind, rows, id_kind, write, (features_key, extra_key), on_batch, pacer)
            setattr(result, f"{kind}_written", written)

    def _write_rows(
        self,
        version: str,
        kind: str,
        rows: EntityRows,
        id_kind: str,
        positions: list[int],
        suffixes: tuple[str, str],
        on_batch: Optional[BatchHook],
        pacer: RefreshPacer,
    ) -> int:
        """Write the rows at ``positions`` in units the pacer sizes (one round trip each, then the pacer's pause)."""
        features_key, extra_key = (self.key(version, s).encode() for s in suffixes)
        fields = ids.field_bytes(rows.ids, id_kind)
        written = 0
        progress = _Progress(f"{version}: %d / %d {kind} written", len(positions), pacer)
        for start, stop in pacer.units(len(positions)):
            batch = positions[start:stop]
            commands = []
            # HSET key f1 v1 f2 v2 ... of at most FIELDS_PER_COMMAND fields: Redis runs each command as
            # soon as it has read it, so short commands let readers' requests in between.
            for chunk in range(0, len(batch), FIELDS_PER_COMMAND):
                features, extra = [b"HSET", features_key], [b"HSET", extra_key]
                for i in batch[chunk : chunk + FIELDS_PER_COMMAND]:
                    features += (fields[i], rows.features[i])
                    extra += (fields[i], rows.extra[i])
                commands += (features, extra)
            self._send_pipelined(commands)
            written += len(batch)
            if on_batch is not None:
                on_batch(kind, written)
            progress(written)
        return written

    def _send_pipelined(self, commands: list[Any]) -> list[Any]:
        """Send commands in one round trip, check every reply, return the replies.

        redis-py's command packing costs ~25 us per argument in Python, which made it the bottleneck of
        refreshes and of accepting events; hiredis (a dependency of ``redis[hiredis]``) frames each
        command in C and the frames go out on one of the client's connections (its TLS and auth apply).
        A cluster client gets a normal pipeline (a ``MULTI`` ... ``EXEC`` framed batch: its transactional
        pipeline, whose keys share the store's slot; the replies keep the same shape, ``EXEC``'s last).
        Errors inside a ``MULTI``/``EXEC`` reply are raised too.
        """
        import hiredis
        import redis

        if not isinstance(self.client, redis.Redis):
            names = [as_text(command[0]).upper() for command in commands]
            transaction = len(commands) >= 2 and names[0] == "MULTI" and names[-1] == "EXEC"
            inner = commands[1:-1] if transaction else commands
            pipe = self.client.pipeline(transaction=transaction)
            for command in inner:
                name, *rest = command  # the cluster client routes by the command's name: text, not bytes
                pipe.execute_command(as_text(name), *rest)
            replies = pipe.execute()
            return [b"OK", *[b"QUEUED"] * len(inner), replies] if transaction else replies
        pack = hiredis.pack_command
        payload = b"".join(pack(command if isinstance(command, tuple) else tuple(command)) for command in commands)
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            connection.connect()  # no-op when connected
            connection.send_packed_command([payload], check_health=False)
            # Replies come from the connection's own parser when it has one: Connection.read_response's
            # per-call bookkeeping (health checks, error texts) was 2 us of the 5 us an accepted event cost.
            read = getattr(getattr(connection, "_parser", None), "read_response", None) or connection.read_response
            replies = [read(disable_decoding=True) for _ in commands]
        except BaseException:
            connection.disconnect()  # a half-read reply stream must not be reused
            raise
        finally:
            pool.release(connection)
        error = redis.ResponseError
        for reply in replies:
            if isinstance(reply, error):
                raise reply
            if isinstance(reply, list):  # an EXEC reply: the commands' own replies
                failed = next((inner for inner in reply if isinstance(inner, error)), None)
                if failed is not None:
                    raise failed
        return replies

    def _copy_unchanged(
        self, base: str, version: str, suffixes: tuple[str, str], raw_ids: list[ids.IdValue], pacer: RefreshPacer
    ) -> int:
        """Copy the rows of ``raw_ids`` from the base version server-side: one script per unit the pacer
        sizes (a script runs whole, readers wait behind it: short units keep that wait short)."""
        keys = [self.key(base, suffixes[0]), self.key(version, suffixes[0]), self.key(base, suffixes[1]), self.key(version, suffixes[1])]
        self.client.script_load(_COPY_FIELDS)  # EVALSHA below: sent as one framed command per unit
        copied = 0
        progress = _Progress(f"{version}: %d / %d unchanged entities copied from {base}", len(raw_ids), pacer)
        for start, stop in pacer.units(len(raw_ids)):
            command = ("EVALSHA", self._copy.sha, len(keys), *keys, *raw_ids[start:stop])
            reply = self._send_pipelined([command])
            copied += int(reply[0]) // 2  # two hashes per entity
            progress(stop)
        return copied

    def _write_blobs(self, version: str, snapshot: Snapshot) -> None:
        import numpy as np

        kinds = snapshot.id_kinds
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.key(version, "pop"), ids.pack(snapshot.popularity, kinds.item_id))
        for suffix, rows, kind in (("hu", snapshot.users, kinds.user_id), ("hi", snapshot.items, kinds.item_id)):
            order = np.argsort(rows.ids, kind="stable")
            pipe.set(self.key(version, suffix), ids.pack_with(rows.ids[order], rows.hashes[order].astype("<u8"), kind))
        pipe.execute()

    def _hashes(self, version: str, suffix: str) -> tuple["np.ndarray", "np.ndarray"]:
        """(sorted raw ids, their content hashes) of a version's users (``hu``) or items (``hi``)."""
        kinds = self.id_kinds(version)
        blob = self.client.get(self.key(version, suffix))
        return ids.unpack_with(blob, kinds.user_id if suffix == "hu" else kinds.item_id, "<u8")

    def _delete_version(self, version: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command("UNLINK", *self.version_keys(version))  # a cluster pipeline's unlink() takes one key
        pipe.zrem(self.key_writing, version)
        pipe.zrem(self.key_retired, version)
        pipe.execute()
        self._forget(version)

    def _forget(self, version: str) -> None:
        self._layouts.pop(version, None)
        self._kinds.pop(version, None)

    def collect_garbage(self, now: Optional[float] = None) -> list[str]:
        """Delete versions retired longer than the grace period and stale partial writes.

        Never the current version, nor the newest version of a pinned feature version (whatever its
        age): a served model reads that one. Returns the deleted versions.
        """
        now = time.time() if now is None else now
        cutoff = now - self.grace_seconds
        removed, kept = [], []
        # Retired versions past the grace period, and writes whose process died (never switched).
        for zset in (self.key_retired, self.key_writing):
            for raw in self.client.zrangebyscore(zset, "-inf", f"({cutoff}"):
                version = as_text(raw)
                feature_version = version.rsplit("-", 1)[0]  # ids are "<feature version>-<seq>"
                keys = [self.key_current, self.key_pinned, self.key_writing, self.key_retired,
                        self.pointer_key(feature_version), *self.version_keys(version)]
                if int(self._collect(keys=keys, args=[version, feature_version])):
                    self._forget(version)
                    removed.append(version)
                elif zset == self.key_retired and self.client.zscore(self.key_retired, version) is not None:
                    kept.append(version)
        if kept:
            log.info("kept online versions %s past the grace period: pinned by serving", kept)
        if removed:
            log.info("removed online versions %s (retired more than %ss ago)", removed, self.grace_seconds)
        return removed

    # --- pins (the feature versions serving reads) ----------------------------------------------
    def pin(self, feature_version: str, reason: str) -> bool:
        """Keep the newest online version of ``feature_version`` from garbage collection; True if newly pinned.

        ``reason`` says who needs it (e.g. ``"triton v4 serving"``); pinning again replaces it.
        """
        return bool(self.client.hset(self.key_pinned, feature_version, reason))

    def unpin(self, feature_version: str) -> bool:
        """Let garbage collection have ``feature_version`` again (after a full grace period from now)."""
        keys = [self.key_pinned, self.key_retired, self.pointer_key(feature_version)]
        return bool(self._unpin(keys=keys, args=[feature_version, time.time()]))

    def pins(self) -> dict[str, str]:
        """``{feature version: reason}`` of every pin."""
        return {as_text(k): as_text(v) for k, v in self.client.hgetall(self.key_pinned).items()}

    # --- reading ------------------------------------------------------------------------------
    def current(self, feature_version: Optional[str] = None) -> Optional[VersionInfo]:
        """The current version, or with ``feature_version`` the newest one written from it (None: none)."""
        version = as_text(self.client.get(self.pointer_key(feature_version)))
        if not version:
            return None
        return self.info(version)

    def info(self, version: str) -> Optional[VersionInfo]:
        meta = {as_text(k): as_text(v) for k, v in self.client.hgetall(self.key(version, "meta")).items()}
        if not meta:
            return None
        switched = float(meta["switched_at"]) if meta.get("switched_at") else None
        return VersionInfo(
            version=version,
            feature_version=meta["feature_version"],
            data_version=meta["data_version"],
            created_at=float(meta["created_at"]),
            switched_at=switched,
            mode=meta["mode"],
            users=int(meta["users"]),
            items=int(meta["items"]),
            age_seconds=(time.time() - switched) if switched else None,
            ids=ids.IdKinds.from_dict(json.loads(meta.get("ids") or "{}")).to_dict(),
        )

    def read(
        self,
        user_id: Optional[ids.IdValue],
        item_ids: Iterable[ids.IdValue] = (),
        *,
        with_seen: bool = False,
        feature_version: Optional[str] = None,
    ) -> FeatureRows:
        """User features + the items' features (+ seen items) in one round trip, from the current
        version or (``feature_version``) the newest version of that feature version.

        Ids are raw ids (ints or strs, looked up by their text); seen items come back in the item
        id kind."""
        import numpy as np

        item_fields = ids.as_python(item_ids)
        if len(item_fields) > MAX_ITEMS_PER_READ:
            raise OnlineStoreError(f"at most {MAX_ITEMS_PER_READ} items per read, got {len(item_fields)}")
        user_field = "" if user_id is None else ids.to_text(user_id)
        args = [self.version_prefix, user_field, "1" if with_seen else "0", *item_fields]
        for attempt in range(3):
            reply = self._read(keys=[self.pointer_key(feature_version), self.key_unavailable], args=args)
            if not reply:
                raise self.no_version_error(feature_version)
            version, user_row, seen, item_rows, unavailable = reply
            version = as_text(version)
            try:
                # Known versions' layouts are cached; a version first seen is looked up once. It can
                # only be gone already if it was retired and collected right after this read (grace
                # period 0): then read again from the new current version.
                user_layout, item_layout = self._layout(version)
                break
            except VersionGoneError:
                if attempt == 2:
                    raise
        user, found = user_layout.decode([user_row or None])
        items, item_found = item_layout.decode(list(item_rows))
        return FeatureRows(
            version=version,
            user_found=bool(found[0]),
            user=user,
            items=items,
            item_found=item_found,
            unavailable=np.asarray(unavailable, dtype=bool) if item_fields else np.zeros(0, dtype=bool),
            seen=ids.unpack(seen, self.id_kinds(version).item_id) if with_seen else None,
        )

    def read_pipelined(
        self, user_id: ids.IdValue, item_ids: Iterable[ids.IdValue], *, feature_version: Optional[str] = None
    ) -> FeatureRows:
        """The same read as :meth:`read` without a script: ``current`` once, then one pipeline.

        Two round trips; kept for the benchmark that compares it with the scripted read.
        """
        import numpy as np

        item_fields = ids.as_python(item_ids)
        version = as_text(self.client.get(self.pointer_key(feature_version)))
        if not version:
            raise self.no_version_error(feature_version)
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.key(version, "u"), ids.to_text(user_id))
        pipe.hmget(self.key(version, "i"), item_fields)
        pipe.smismember(self.key_unavailable, item_fields)
        user_row, item_rows, unavailable = pipe.execute()
        user_layout, item_layout = self._layout(version)
        user, found = user_layout.decode([user_row])
        items, item_found = item_layout.decode(list(item_rows))
        return FeatureRows(version, bool(found[0]), user, items, item_found, np.asarray(unavailable, dtype=bool))

    def _read_versioned(self, feature_version: Optional[str], command: str, suffix: str, *fields: Any) -> tuple[str, Any]:
        keys = [self.pointer_key(feature_version)]
        reply = self._read_one(keys=keys, args=[self.version_prefix, command, suffix, *fields])
        if not reply:
            raise self.no_version_error(feature_version)
        return as_text(reply[0]), reply[1]

    def seen_items(self, user_id: ids.IdValue, *, feature_version: Optional[str] = None) -> "np.ndarray":
        version, value = self._read_versioned(feature_version, "HGET", "s", ids.to_text(user_id))
        return ids.unpack(value, self.id_kinds(version).item_id)

    def popularity(self, k: Optional[int] = None, *, feature_version: Optional[str] = None) -> "np.ndarray":
        version, value = self._read_versioned(feature_version, "GET", "pop")
        popular = ids.unpack(value, self.id_kinds(version).item_id)
        return popular if k is None else popular[:k]

    def display(
        self, item_ids: Iterable[ids.IdValue], *, feature_version: Optional[str] = None
    ) -> list[Optional[dict[str, Any]]]:
        fields = ids.as_python(item_ids)
        if not fields:
            return []
        _, values = self._read_versioned(feature_version, "HMGET", "d", *fields)
        return [json.loads(v) if v is not None else None for v in values]

    def _layout(self, version: str) -> tuple[RowLayout, RowLayout]:
        if version not in self._layouts:
            raw = self.client.hmget(self.key(version, "meta"), ["user_layout", "item_layout", "ids"])
            if raw[0] is None or raw[1] is None:
                raise VersionGoneError(f"online version {version} has no metadata (collected while in use?)")
            self._layouts[version] = (RowLayout.from_dict(json.loads(raw[0])), RowLayout.from_dict(json.loads(raw[1])))
            self._kinds[version] = ids.IdKinds.from_dict(json.loads(raw[2] or "{}"), f"online version {version}")
        return self._layouts[version]

    def id_kinds(self, version: str) -> ids.IdKinds:
        """The kinds of a version's raw ids (int/int for a version written before kinds were recorded)."""
        if version not in self._kinds:
            self._layout(version)
        return self._kinds[version]

    # --- bulk reads (the serving engine) --------------------------------------------------------
    def read_users(
        self,
        user_ids: Iterable[ids.IdValue],
        *,
        with_seen: bool = False,
        with_live: bool = False,
        unavailable_up_to: int = 0,
        feature_version: Optional[str] = None,
    ) -> UserRows:
        """Features (and seen items) of ``user_ids`` from the current version (or, ``feature_version``,
        the newest version of that feature version), in one round trip (see the module docstring).

        ``with_live``: each user's live items too (``UserRows.live``, the live layer), in the same trip.
        ``unavailable_up_to`` > 0: the same trip also returns the whole unavailable set when it holds at
        most that many items (``UserRows.unavailable``; None when larger: ask :meth:`unavailable_flags`).
        """
        fields = ids.as_python(user_ids)
        if not fields:
            raise OnlineStoreError("read_users needs at least one user id")
        if len(fields) > MAX_USERS_PER_READ:
            raise OnlineStoreError(f"at most {MAX_USERS_PER_READ} users per read, got {len(fields)}")
        args = [self.version_prefix, "1" if with_seen else "0", int(unavailable_up_to),
                self.live_prefix if with_live else "", *fields]
        for attempt in range(3):
            reply = self._read_users(keys=[self.pointer_key(feature_version), self.key_unavailable], args=args)
            if not reply:
                raise self.no_version_error(feature_version)
            version, rows, seen = as_text(reply[0]), reply[1], reply[2]
            try:
                user_layout, _ = self._layout(version)
                break
            except VersionGoneError:  # collected right after this read (grace period 0): read again
                if attempt == 2:
                    raise
        columns, found = user_layout.decode(list(rows))
        item_kind = self.id_kinds(version).item_id
        seen_ids = [ids.unpack(s, item_kind) for s in seen] if with_seen else None
        unavailable = None
        if reply[3]:  # members that are not ids of this kind can match no item: skipped
            unavailable = ids.from_fields(reply[3], item_kind, strict=False)
        elif reply[3] is not None and unavailable_up_to > 0:  # an empty list: the set is empty
            unavailable = ids.empty(item_kind)
        live = [ids.from_fields(items, item_kind, strict=False) for items in reply[4]] if with_live else None
        return UserRows(version, found, columns, seen_ids, unavailable, live)

    def read_item_table(self, version: str, *, batch: int = 5000) -> ItemTable:
        """Every item row (and the popularity list) of online ``version``.

        Scans the version's item hash in steps of ``batch`` fields (HSCAN: Redis is never blocked for
        long). Raises :class:`VersionGoneError` if the version is collected before the scan ends.
        """
        import numpy as np

        began = time.perf_counter()
        _, item_layout = self._layout(version)
        key = self.key(version, "i")
        rows: dict[bytes, bytes] = {}
        cursor = 0
        while True:  # HSCAN may return a field twice: the dict keeps one
            cursor, part = self.client.hscan(key, cursor, count=batch)
            rows.update(part)
            if int(cursor) == 0:
                break
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self.key(version, "meta"))
        pipe.hlen(key)
        pipe.get(self.key(version, "pop"))
        meta_exists, expected, popularity = pipe.execute()
        if not meta_exists or len(rows) != int(expected):
            raise VersionGoneError(f"online version {version} changed or was collected while its items were read")
        keys = list(rows)
        kind = self.id_kinds(version).item_id
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

    def unavailable_flags(self, item_ids: Iterable[ids.IdValue]) -> "np.ndarray":
        """True for each raw item id that is in the unavailable set now (one ``SMISMEMBER``)."""
        import numpy as np

        members = ids.as_python(item_ids)
        if not members:
            return np.zeros(0, dtype=bool)
        return np.asarray(self.client.smismember(self.key_unavailable, members), dtype=bool)

    def entity_ids(self, version: str, entity: str = "users") -> "np.ndarray":
        """Raw ids of every user (``entity="users"``) or item of ``version``, sorted, in their kind
        (HSCAN in steps of 5000)."""
        import numpy as np

        if entity not in ("users", "items"):
            raise OnlineStoreError(f"entity must be 'users' or 'items', got {entity!r}")
        key = self.key(version, entity[0])
        # HSCAN may return a field twice: the dict keeps one; HSCAN NOVALUES is Redis 7.4+, so values come too
        fields = dict.fromkeys(f for f, _ in self.client.hscan_iter(key, count=5000))
        kinds = self.id_kinds(version)
        return np.sort(ids.from_fields(list(fields), kinds.user_id if entity == "users" else kinds.item_id))

    # --- unavailable items ----------------------------------------------------------------------
    def _unavailable_members(self, item_ids: Iterable[Any]) -> list[str]:
        """The set members (id texts) of ``item_ids``, parsed into the current version's item id
        kind (:class:`recsys.data.ids.IdError` names a bad one). Without a current version any valid
        id text is taken: the kind is not known yet."""
        version = as_text(self.client.get(self.key_current))
        kind = self.id_kinds(version).item_id if version else ids.STRING
        return [ids.to_text(ids.parse(item, kind, "item_id")) for item in item_ids]

    def add_unavailable(self, item_ids: Iterable[ids.IdValue]) -> int:
        members = self._unavailable_members(item_ids)
        return int(self.client.sadd(self.key_unavailable, *members)) if members else 0

    def remove_unavailable(self, item_ids: Iterable[ids.IdValue]) -> int:
        members = self._unavailable_members(item_ids)
        return int(self.client.srem(self.key_unavailable, *members)) if members else 0

    def unavailable(self) -> list[ids.IdValue]:
        """Every unavailable raw item id, sorted, in the current version's item id kind (members that
        are not ids of that kind, left from another deployment, are skipped)."""
        version = as_text(self.client.get(self.key_current))
        kind = self.id_kinds(version).item_id if version else ids.STRING
        return sorted(ids.from_fields(self.client.smembers(self.key_unavailable), kind, strict=False).tolist())

    # --- the live layer -----------------------------------------------------------------------
    def accept_events(self, events: EventBatch, *, inbox_ids: Iterable[str] = (), now: Optional[float] = None) -> AcceptResult:
        """Append ``events`` to the event log ``{p}:events``, :data:`ACCEPT_CHUNK` events at a time, each
        chunk whole. They become visible when the live applier applies them (:meth:`apply_events`, run by
        :mod:`recsys.events.live`). ``now``: unix seconds (tests).

        ``inbox_ids``: the inbox entry of each event (parallel to ``events``): one script acknowledges
        each and appends the event only if the acknowledgement succeeds (another worker may have
        claimed and accepted it). Without inbox ids, a ``MULTI``/``EXEC`` of plain ``XADD`` commands
        framed by hiredis: measured ~1.25x the script's rate (bench/events.py), and nothing to check."""
        began = time.perf_counter()
        inbox = list(inbox_ids)
        n = len(events)
        if inbox and len(inbox) != n:
            raise OnlineStoreError(f"{len(inbox)} inbox ids for {n} events: give one per event, or none")
        if any(not isinstance(t, int) for t in events.timestamps_ms):
            bad = next(t for t in events.timestamps_ms if not isinstance(t, int))
            raise OnlineStoreError(f"event timestamps must be unix milliseconds (int), got {bad!r}")
        now_ms = int(1000 * (time.time() if now is None else now))
        kinds = events.id_kinds.to_code()
        first = last = ""
        accepted = 0
        for start in range(0, n, ACCEPT_CHUNK):
            stop = min(start + ACCEPT_CHUNK, n)
            if inbox:
                args: list[Any] = [now_ms, INBOX_GROUP]
                for j in range(start, stop):
                    args += (inbox[j], events.user_ids[j], events.item_ids[j], events.event_types[j],
                             events.timestamps_ms[j], events.request_ids[j], kinds)
                chunk_first, chunk_last, count = self._accept(
                    keys=[self.key_events, self.key_inbox, self.key_event_stats], args=args)
                chunk_first, chunk_last, count = as_text(chunk_first), as_text(chunk_last), int(count)
            else:
                key = self.key_events
                commands: list[Any] = [("MULTI",)]
                commands += [("XADD", key, "*", "u", events.user_ids[j], "i", events.item_ids[j], "e", events.event_types[j],
                              "t", events.timestamps_ms[j], "r", events.request_ids[j], "k", kinds) for j in range(start, stop)]
                commands += [("HINCRBY", self.key_event_stats, "accepted", stop - start),
                             ("HSET", self.key_event_stats, "last_accept_ms", now_ms), ("EXEC",)]
                appended = self._send_pipelined(commands)[-1]
                chunk_first, chunk_last, count = as_text(appended[0]), as_text(appended[stop - start - 1]), stop - start
            first = first or chunk_first
            last = chunk_last or last
            accepted += count
        return AcceptResult(accepted, first, last, time.perf_counter() - began)

    def apply_events(self, entry_ids: list[str], events: EventBatch, *, now: Optional[float] = None) -> int:
        """Apply logged events (``entry_ids``: their ids in the event log, parallel to ``events``) to the
        live state, acknowledging them in the live applier's group ``LIVE_GROUP`` in the same step: an
        entry no longer pending there (already applied) is skipped. Returns how many were applied."""
        if len(entry_ids) != len(events):
            raise OnlineStoreError(f"{len(entry_ids)} entry ids for {len(events)} events")
        now_ms = int(1000 * (time.time() if now is None else now))
        applied = 0
        for start in range(0, len(events), APPLY_CHUNK):
            args: list[Any] = [self.live_prefix, now_ms, int(1000 * self.live_ttl_seconds), LIVE_MAX_ITEMS, LIVE_GROUP]
            for j in range(start, min(start + APPLY_CHUNK, len(events))):
                args += (entry_ids[j], events.user_ids[j], events.item_ids[j], events.event_types[j], events.timestamps_ms[j])
            applied += int(self._apply(keys=[self.key_events, self.key_event_stats], args=args))
        return applied

    def live_items(self, user_id: ids.IdValue, kind: str = ids.INT) -> "np.ndarray":
        members = self.client.zrevrange(f"{self.live_prefix}s:{ids.to_text(user_id)}", 0, -1)
        return ids.from_fields(members, kind, strict=False)

    def live_counts(
        self, entity: str, entity_ids: Iterable[ids.IdValue], event_types: Iterable[str] = (), *, now: Optional[float] = None
    ) -> list[dict[str, dict[str, int]]]:
        """Per id, ``{event type: {window: count}}`` (see :meth:`OnlineStore.live_counts`); ``event_types``
        default: the settings' accepted types. One pipeline of ``HMGET`` over the buckets of both windows."""
        import numpy as np

        from recsys.online.store import LIVE_WINDOWS

        if entity not in ("users", "items"):
            raise OnlineStoreError(f"live counters exist for 'users' and 'items', not {entity!r}")
        texts = [ids.to_text(i) for i in entity_ids]
        if not event_types:
            from recsys.settings import get_settings

            event_types = get_settings().event_type_list
        types = list(event_types)
        if not texts or not types:
            return [{} for _ in texts]
        fields = [f"{t}|{i}" for i in texts for t in types]
        now_ms = int(1000 * (time.time() if now is None else now))
        pipe = self.client.pipeline(transaction=False)
        sizes = []
        for granularity, bucket_ms, window_ms in COUNTER_BUCKETS:
            newest, oldest = now_ms // bucket_ms, (now_ms - window_ms) // bucket_ms
            for bucket in range(oldest, newest + 1):
                pipe.hmget(f"{self.live_prefix}c:{entity[0]}:{granularity}:{bucket}", fields)
            sizes.append(newest - oldest + 1)
        replies = pipe.execute()
        totals = []
        at = 0
        for size in sizes:
            block = np.array([[int(v) if v is not None else 0 for v in reply] for reply in replies[at : at + size]])
            totals.append(block.sum(axis=0).reshape(len(texts), len(types)))
            at += size
        out = []
        for row in range(len(texts)):
            counts = {}
            for col, event_type in enumerate(types):
                windows = {name: int(total[row, col]) for name, total in zip(LIVE_WINDOWS, totals)}
                if any(windows.values()):
                    counts[event_type] = windows
            out.append(counts)
        return out

    def event_stats(self) -> dict[str, int]:
        """Totals of the event log (accepted, refused, landed) and the newest accept/landing times (ms)."""
        return {as_text(k): int(v) for k, v in self.client.hgetall(self.key_event_stats).items()}

    # --- precomputed lists (offline mode) -----------------------------------------------------
    def new_batch(self, label: str) -> str:
        return f"{label}-{int(self.client.incr(self.key_batch_seq))}"

    def write_batch_rows(self, batch: str, rows: "Mapping[str, bytes]") -> None:
        if rows:
            self.client.hset(self.batch_key(batch, "r"), mapping=dict(rows))

    def write_batch_meta(self, batch: str, meta: "Mapping[str, Any]", id_kinds: ids.IdKinds) -> None:
        self.client.hset(self.batch_key(batch, "meta"), mapping={**meta, "ids": json.dumps(id_kinds.to_dict())})

    def switch_batch(self, batch: str) -> list[str]:
        self.client.set(self.key_batch_current, batch)  # the switch: readers now see the new batch whole
        others = set()
        for key in self.client.scan_iter(match=f"{self.batch_prefix}*:meta", count=1000):
            other = as_text(key)[len(self.batch_prefix) : -len(":meta")]
            if other != batch:
                others.add(other)
        for other in others:
            self.discard_batch(other)
        return sorted(others)

    def discard_batch(self, batch: str) -> None:
        self.client.unlink(*(self.batch_key(batch, s) for s in BATCH_KEY_SUFFIXES))

    def current_batch(self) -> Optional[dict[str, str]]:
        batch = as_text(self.client.get(self.key_batch_current))
        if not batch:
            return None
        meta = {as_text(k): as_text(v) for k, v in self.client.hgetall(self.batch_key(batch, "meta")).items()}
        return {"batch": batch, **meta}

    def read_precomputed(self, user_field: str) -> Optional[PrecomputedList]:
        reply = self._read_batch(keys=[self.key_batch_current, self.key_unavailable], args=[self.batch_prefix, user_field])
        if not reply:
            return None
        batch, packed, members, kinds = reply
        return PrecomputedList(
            batch=as_text(batch),
            packed=packed,
            id_kinds=ids.IdKinds.from_dict(json.loads(as_text(kinds) or "{}")),
            unavailable=frozenset(as_text(m) for m in members),  # members are the ids' text
        )

    def close(self) -> None:
        self.client.close()

    # --- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Current version, pins, retired and in-progress versions, unavailable count (for the CLI)."""
        current = self.current()
        now = time.time()
        pins = self.pins()
        pinned = {
            fv: {"reason": reason, "online_version": as_text(self.client.get(self.pointer_key(fv))) or None}
            for fv, reason in sorted(pins.items())
        }
        return {
            "current": current.to_dict() if current else None,
            "pinned": pinned,
            "retired": {as_text(v): round(now - s, 1) for v, s in self.client.zrange(self.key_retired, 0, -1, withscores=True)},
            "writing": {as_text(v): round(now - s, 1) for v, s in self.client.zrange(self.key_writing, 0, -1, withscores=True)},
            "unavailable_items": int(self.client.scard(self.key_unavailable)),
            "grace_seconds": self.grace_seconds,
        }


class _Progress:
    """Progress lines of one loop of a refresh: every tenth of ``total`` and every :data:`PROGRESS_SECONDS`,
    with the pacer's speed (``message`` takes the count done and ``total``)."""

    def __init__(self, message: str, total: int, pacer: RefreshPacer) -> None:
        self.message, self.total, self.pacer = message, total, pacer
        self.step = max(1, total // 10)
        self.next_count = self.step
        self.began = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if done < self.next_count and now - self.last < PROGRESS_SECONDS and done < self.total:
            return
        rate = done / max(now - self.began, 1e-9)
        log.info(self.message + " (%.0f/s; %s)", done, self.total, rate, self.pacer.state)
        self.next_count = (done // self.step + 1) * self.step
        self.last = now


def _diff(rows: EntityRows, old: tuple["np.ndarray", "np.ndarray"]) -> tuple[list[int], list[ids.IdValue], int]:
    """Positions of ``rows`` to write (changed or new), raw ids to copy (unchanged), count deleted.

    ``old`` holds sorted ids (either kind: numpy's searchsorted compares str objects too)."""
    import numpy as np

    old_ids, old_hashes = old
    pos = np.searchsorted(old_ids, rows.ids)
    pos_clipped = np.minimum(pos, max(len(old_ids) - 1, 0))
    present = (pos < len(old_ids)) & (old_ids[pos_clipped] == rows.ids) if len(old_ids) else np.zeros(len(rows), bool)
    same = present & (old_hashes[pos_clipped] == rows.hashes) if len(old_ids) else present
    write = np.flatnonzero(~same).tolist()
    copy = rows.ids[same].tolist()
    deleted = int(len(old_ids) - present.sum())
    return write, copy, deleted


def as_text(value: Any) -> str:
    """A Redis reply value as text (bytes decoded, ``None`` as ``""``): every reader of the store's replies uses it."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
