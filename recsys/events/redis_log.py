"""The event log on Redis Streams: :class:`RedisEventLog`, on a :class:`~recsys.online.redis_store.RedisOnlineStore`.

Keys are the store's (its key map names them: ``{p}:events``, ``{p}:events:inbox``,
``{p}:events:refused``, ``{p}:events:parts``, ``{p}:events:stats``); nothing here composes a key.
Redis 6.2 is enough: ``XPENDING ... IDLE`` and ``XTRIM MINID`` are 6.2's; nothing reads the 7.0
``XINFO`` lag fields.

Holding entries. A stream keeps, per pending entry, the consumer it was delivered to and the time
since (its *idle* time); a claim takes only entries idle for ``events_claim_idle_seconds``. Holding
(:data:`_HOLD`, :data:`HOLD_CHUNK` entries per script) checks that entries are still pending for the
consumer and resets their idle time (``XCLAIM`` to itself, ``JUSTID``: the delivery count does not
grow), so a live consumer's entries are never claimed, and a consumer whose entries were claimed
learns it before it writes them. Beginning a part holds its entries and then records its intent;
fencing checks the intent and holds them again: what makes a part's rename safe against a consumer
that claims its entries (freshly held entries cannot be claimed for ``events_claim_idle_seconds``).

Trimming. Every group of a stream has acknowledged every entry older than its oldest pending entry,
and, when nothing is pending, every entry up to its last delivered one; ``XTRIM MINID`` to the
oldest such bound over all groups (users' own groups too) deletes only what every group is done
with. The figures are read one group after another, not atomically: groups only move forward, so a
bound read earlier is only more conservative. A group created at ``0`` after the trim finds the
trimmed entries gone (as on any capped stream), and readers without a group are not protected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

from recsys.data.contract import stream_id_key
from recsys.events.log import EVENTS, INBOX, LANDING_GROUP, EventLog, GroupState, LogEntry, PartIntent
from recsys.online.redis_store import as_text

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.online.redis_store import RedisOnlineStore

HOLD_CHUNK = 500
"""Entry ids per hold / commit script. Each such script is a millisecond or two, so a part of 60k events never
keeps readers (serving's user reads) waiting long: measured 115-125 ms for one script over a whole 60k-event part.
Chunking keeps begin and fence sound: every chunk resets its entries' idle time, and another consumer may only
claim entries idle for ``events_claim_idle_seconds``, so none can be taken between the chunks and the intent's
single-command record or check that follows them (the remaining window is the one landing.py names)."""
REFUSED_MAXLEN = 10_000
"""The refused stream keeps about this many entries (``XADD MAXLEN ~``)."""
UNDELIVERED_CAP = 10_000
"""Status counts a group's undelivered entries up to this many (Redis 6.2 has no lag field)."""
_ALL = 2_147_483_647  # an XPENDING count that never truncates

# KEYS: the stream. ARGV: group, consumer, first id, last id, entry ids (at most HOLD_CHUNK, all between first and
# last)... Resets the idle time of those pending for the consumer (XCLAIM to itself, JUSTID: the delivery count does
# not grow); returns the others (claimed by another consumer, or acknowledged).
_HOLD = """
local group, consumer = ARGV[1], ARGV[2]
local mine = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], group, ARGV[3], ARGV[4], %d, consumer)) do mine[p[1]] = true end
local held, lost = {'XCLAIM', KEYS[1], group, consumer, 0}, {}
for j = 5, #ARGV do
  if mine[ARGV[j]] then held[#held + 1] = ARGV[j] else lost[#lost + 1] = ARGV[j] end
end
if #held > 5 then
  held[#held + 1] = 'JUSTID'
  redis.call(unpack(held))
end
return lost
""" % _ALL

# KEYS: the event log, stats. ARGV: group, entry ids (at most HOLD_CHUNK)... Acknowledges them and counts those
# acknowledged now as landed (a second commit of the same entries acknowledges and counts nothing). Returns that count.
_COMMIT = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
if acked > 0 then redis.call('HINCRBY', KEYS[2], 'landed', acked) end
return acked
"""

# KEYS: the event log, the parts hash. ARGV: group, part name, intent JSON, its consumer, min idle (ms), first id,
# last id, entry ids... Removes the intent if it is still recorded as written and each entry is acknowledged or
# pending for the intent's consumer, idle for at least min idle. Returns 1 if removed, else 0.
_DROP = """
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return 0 end
local owner, min_idle = ARGV[4], tonumber(ARGV[5])
local pending = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[6], ARGV[7], %d)) do pending[p[1]] = p end
for j = 8, #ARGV do
  local p = pending[ARGV[j]]
  if p and (p[2] ~= owner or p[3] < min_idle) then return 0 end
end
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
""" % _ALL

# KEYS: the inbox, the refused stream, stats. ARGV: group, the refused stream's approximate cap, then per entry:
# its inbox id, the reason, the number n of field names and values, those n values. Acknowledges each entry and,
# only if that acknowledged it now, appends its fields + inbox_id + reason to the refused stream; counts those as
# refused. Returns how many.
_REFUSE = """
local refused, j = 0, 3
while j <= #ARGV do
  local id, reason, n = ARGV[j], ARGV[j + 1], tonumber(ARGV[j + 2])
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 then
    local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*'}
    for k = j + 3, j + 2 + n do args[#args + 1] = ARGV[k] end
    args[#args + 1] = 'inbox_id'
    args[#args + 1] = id
    args[#args + 1] = 'reason'
    args[#args + 1] = reason
    redis.call(unpack(args))
    refused = refused + 1
  end
  j = j + 3 + n
end
if refused > 0 then redis.call('HINCRBY', KEYS[3], 'refused', refused) end
return refused
"""


class RedisEventLog(EventLog):
    """:class:`~recsys.events.log.EventLog` on the store's Redis client and keys."""

    def __init__(self, store: "RedisOnlineStore"):
        self.store = store
        self.client = store.client
        self._streams = {EVENTS: store.key_events, INBOX: store.key_inbox}
        self._hold = self.client.register_script(_HOLD)
        self._commit = self.client.register_script(_COMMIT)
        self._drop = self.client.register_script(_DROP)
        self._refuse = self.client.register_script(_REFUSE)

    def key(self, stream: str) -> str:
        try:
            return self._streams[stream]
        except KeyError:
            raise ValueError(f"unknown stream {stream!r}; one of {', '.join(self._streams)}") from None

    # --- consuming ----------------------------------------------------------------------------
    def ensure_group(self, stream: str, group: str) -> None:
        import redis

        try:  # from the stream's start: entries appended before the first consumer ran are read too
            self.client.xgroup_create(self.key(stream), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(
        self, stream: str, group: str, consumer: str, *, count: int, after: str = ">", block_ms: Optional[int] = None
    ) -> list[LogEntry]:
        key = self.key(stream)
        # block=0 would wait forever: a positive wait or none
        block = max(int(block_ms), 1) if block_ms is not None and after == ">" else None
        reply = self.client.xreadgroup(group, consumer, {key: after}, count=count, block=block)
        if not reply:
            return []
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        return [_entry(entry_id, fields) for entry_id, fields in entries]

    def claim(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int, exclude: Iterable[str] = ()
    ) -> list[str]:
        key = self.key(stream)
        skip = set(exclude)
        summary = self.client.xpending(key, group)
        claimed: list[str] = []
        for row in summary.get("consumers") or []:
            owner = as_text(row["name"])
            if owner == consumer or len(claimed) >= count:
                continue
            idle = self.client.xpending_range(key, group, "-", "+", count - len(claimed) + len(skip),
                                              consumername=owner, idle=min_idle_ms)
            candidates = [as_text(p["message_id"]) for p in idle]
            candidates = [i for i in candidates if i not in skip][: count - len(claimed)]
            if candidates:
                # XCLAIM checks the idle time again: an entry its owner held meanwhile stays its owner's
                taken = self.client.xclaim(key, group, consumer, min_idle_ms, candidates, justid=True)
                claimed += [as_text(i) for i in taken]
        return claimed

    def hold(self, stream: str, group: str, consumer: str, entry_ids: Sequence[str]) -> list[str]:
        return self._run_hold(self.key(stream), group, consumer, entry_ids) if entry_ids else []

    def ack(self, stream: str, group: str, entry_ids: Sequence[str]) -> int:
        return int(self.client.xack(self.key(stream), group, *entry_ids)) if entry_ids else 0

    def _run_hold(self, key: str, group: str, consumer: str, entry_ids: Sequence[str]) -> list[str]:
        """Hold ``entry_ids`` in chunks of :data:`HOLD_CHUNK` (see there); returns the ids no longer the consumer's."""
        ordered = sorted(entry_ids, key=stream_id_key)
        lost: list[str] = []
        for start in range(0, len(ordered), HOLD_CHUNK):
            chunk = ordered[start : start + HOLD_CHUNK]
            lost += [as_text(i) for i in self._hold(keys=[key], args=[group, consumer, chunk[0], chunk[-1], *chunk])]
        return lost

    # --- landing parts ------------------------------------------------------------------------
    def begin_part(self, intent: PartIntent) -> list[str]:
        lost = self._run_hold(self.store.key_events, LANDING_GROUP, intent.consumer, intent.ids)
        if not lost:
            self.client.hset(self.store.key_parts, intent.name, intent.to_json())
        return lost

    def fence_part(self, intent: PartIntent) -> bool:
        if self.client.hget(self.store.key_parts, intent.name) != intent.to_json().encode():
            return False
        return self._run_hold(self.store.key_events, LANDING_GROUP, intent.consumer, intent.ids) == []

    def commit_part(self, intent: PartIntent, now_ms: int) -> int:
        """Acknowledge the part's entries chunk by chunk, then forget the intent: a crash half-way leaves
        the intent, whose recovery finds the file and commits again (acknowledging only the rest)."""
        keys = [self.store.key_events, self.store.key_event_stats]
        acked = 0
        for start in range(0, len(intent.ids), HOLD_CHUNK):
            acked += int(self._commit(keys=keys, args=[LANDING_GROUP, *intent.ids[start : start + HOLD_CHUNK]]))
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.store.key_parts, intent.name)
        if acked:
            pipe.hset(self.store.key_event_stats, "last_landed_ms", now_ms)
        pipe.execute()
        return acked

    def drop_part(self, intent: PartIntent, *, min_idle_ms: int = 0) -> bool:
        args = [LANDING_GROUP, intent.name, intent.to_json(), intent.consumer, int(min_idle_ms), intent.first, intent.last,
                *intent.ids]
        return bool(self._drop(keys=[self.store.key_events, self.store.key_parts], args=args))

    def parts(self) -> list[PartIntent]:
        raw = self.client.hgetall(self.store.key_parts)
        return sorted((PartIntent.from_json(as_text(k), as_text(v)) for k, v in raw.items()), key=lambda p: p.name)

    def request_flush(self) -> tuple[int, str]:
        import time

        now_ms = int(time.time() * 1000)
        newest = self.client.xrevrange(self.store.key_events, count=1)
        self.client.set(self.store.key_flush, now_ms)
        return now_ms, as_text(newest[0][0]) if newest else ""

    def flush_requested(self) -> int:
        return int(self.client.get(self.store.key_flush) or 0)

    def landed_through(self, entry_id: str) -> bool:
        import redis

        key = self.store.key_events
        try:
            group = next((g for g in self.client.xinfo_groups(key) if as_text(g["name"]) == LANDING_GROUP), None)
        except redis.ResponseError:  # no log yet: nothing to land
            return True
        if group is None:
            return False  # no landing consumer ever ran: the log's entries are not landed
        if stream_id_key(as_text(group["last-delivered-id"])) < stream_id_key(entry_id):
            return False  # not all of them were read yet
        return not self.client.xpending_range(key, LANDING_GROUP, min="-", max=entry_id, count=1)

    # --- housekeeping and figures -------------------------------------------------------------
    def trim(self, stream: str) -> int:
        import redis

        key = self.key(stream)
        try:
            groups = self.client.xinfo_groups(key)
        except redis.ResponseError:  # no such stream yet
            return 0
        if not groups:
            return 0  # nobody consumes it: nothing is known to be done with
        bound = None
        for group in groups:
            if int(group["pending"]) > 0:
                oldest = as_text(self.client.xpending(key, group["name"])["min"])
                limit = stream_id_key(oldest) if oldest else (0, 0)
            else:
                ms, seq = stream_id_key(as_text(group["last-delivered-id"]))
                limit = (ms, seq + 1)  # everything up to the last delivered entry is acknowledged
            bound = limit if bound is None else min(bound, limit)
        if bound is None or bound == (0, 0) or bound == (0, 1):
            return 0
        return int(self.client.xtrim(key, minid=f"{bound[0]}-{bound[1]}", approximate=False))

    def groups(self, stream: str) -> list[GroupState]:
        import redis

        key = self.key(stream)
        try:
            raw = self.client.xinfo_groups(key)
        except redis.ResponseError:
            return []
        out = []
        for group in raw:
            name = as_text(group["name"])
            summary = self.client.xpending(key, name)
            consumers = {as_text(c["name"]): int(c["pending"]) for c in summary.get("consumers") or []}
            last = as_text(group["last-delivered-id"])
            after = self.client.xrange(key, min=f"({last}" if last != "0-0" else "-", max="+", count=UNDELIVERED_CAP + 1)
            out.append(GroupState(name, int(group["pending"]), consumers, last, min(len(after), UNDELIVERED_CAP),
                                  len(after) > UNDELIVERED_CAP))
        return out

    def length(self, stream: str) -> int:
        return int(self.client.xlen(self.key(stream)))

    def backlog(self) -> int:
        stats = self.store.event_stats()
        return max(stats.get("accepted", 0) - stats.get("landed", 0), 0)

    # --- the inbox's refusals -----------------------------------------------------------------
    def refuse(self, group: str, refusals: Sequence[tuple[LogEntry, str]]) -> int:
        if not refusals:
            return 0
        args: list[Any] = [group, REFUSED_MAXLEN]
        for entry, reason in refusals:
            values = [v for pair in entry.fields.items() for v in pair]
            args += [entry.id, reason, len(values), *values]
        return int(self._refuse(keys=[self.store.key_inbox, self.store.key_refused, self.store.key_event_stats], args=args))

    def refused(self, count: int = 20) -> list[LogEntry]:
        return [_entry(i, f) for i, f in self.client.xrevrange(self.store.key_refused, count=count)]


def _entry(entry_id: Any, fields: Any) -> LogEntry:
    """A redis-py stream entry as a :class:`LogEntry` (fields decoded; a producer's non-UTF-8 bytes replaced)."""

    def text(value: Any) -> str:
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

    return LogEntry(as_text(entry_id), {text(k): text(v) for k, v in (fields or {}).items()})
