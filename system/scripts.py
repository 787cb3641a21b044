"""The Lua scripts that make each batching and queue step one atomic round-trip.

Every script touches only keys of one hash slot (see `system.keys`) and takes the current time as an
argument, so the injected clock, not the server's, decides deadlines.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from string import Template
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, KeyT

# Re-schedules a conversation after its turn ended (ack or dead letter): a sealed batch is due now,
# an open one at its own deadline; wakes the batchers when something became due.
# KEYS: due, buf, sealed, meta ; ARGV: member, now_ms, wake_channel
_RELEASE_NEXT = """
local function release_next(k_due, k_buf, k_sealed, k_meta, member, now, channel)
  local score = nil
  if redis.call('LLEN', k_sealed) > 0 then
    score = now
  elseif redis.call('LLEN', k_buf) > 0 then
    score = tonumber(redis.call('HGET', k_meta, 'deadline') or now)
    if score < now then score = now end
  end
  if score then
    redis.call('ZADD', k_due, score, member)
    redis.call('PUBLISH', channel, score)
  else
    redis.call('ZREM', k_due, member)
  end
end
"""

# The batching numbers are constants of a deployment, so they are written into the script's source
# (see `append_script`) instead of travelling with every call. One call appends every message of one
# round trip that belongs to one shard, in order: the keys and counters they share are touched once.
# KEYS: 1 due, 2 stats, then per message: buf, sealed, meta, lease, seen, sender bucket, company bucket
# ARGV: 1 now_ms, 2 wake channel, then per message: message json, message id ('' = none), member,
#       '1' when rate limits apply
# Returns one status per message: 1 accepted, 2 duplicate, 3 sender limited, 4 company limited
# A batch's keys live KEEP_MS from its last fragment: well past its deadline, so that a late batcher
# still finds (and flushes) it; see `system.batching.BATCH_KEEP_MARGIN_MS`.
APPEND = Template("""
local TIMEOUT_MS, MAX_SIZE, KEEP_MS, DEDUP_TTL_MS = $timeout_ms, $max_size, $keep_ms, $dedup_ttl_ms
local SENDER_BURST, SENDER_INTERVAL_MS = $sender_burst, $sender_interval_ms
local COMPANY_BURST, COMPANY_INTERVAL_MS = $company_burst, $company_interval_ms
local K_DUE, K_STATS = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])

-- Rate limits as GCRA (a token bucket kept as one number): the key holds the theoretical arrival
-- time; `burst` messages fit at once and one more every interval. It expires when the bucket is full.
local function admitted(key, burst, interval)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  tat = tat + interval
  if tat - now > burst * interval then return nil end
  return tat
end
local function commit(key, tat)
  redis.call('SET', key, tat, 'PX', math.ceil(tat - now))
end
local function limit(sender, company)
  local sender_tat
  if SENDER_BURST > 0 then
    sender_tat = admitted(sender, SENDER_BURST, SENDER_INTERVAL_MS)
    if not sender_tat then return 3 end
  end
  if COMPANY_BURST > 0 then
    local company_tat = admitted(company, COMPANY_BURST, COMPANY_INTERVAL_MS)
    if not company_tat then return 4 end
    commit(company, company_tat)
  end
  if sender_tat then commit(sender, sender_tat) end
  return 1
end

local function append(buf, sealed, meta, lease, msg, id, member)
  local n = redis.call('RPUSH', buf, msg)
  local score
  local has_sealed = false
  if n >= MAX_SIZE then
    -- sealed at once: the next fragment starts a new batch
    local msgs = redis.call('LRANGE', buf, 0, -1)
    local first_id = id
    if n > 1 then first_id = redis.call('HGET', meta, 'first_id') end
    redis.call('RPUSH', sealed, cjson.encode({first_id, #msgs}) .. '\\n[' .. table.concat(msgs, ',') .. ']')
    redis.call('DEL', buf, meta)
    score = now
    has_sealed = true
  else
    score = now + TIMEOUT_MS
    if n == 1 then
      redis.call('HSET', meta, 'deadline', score, 'first_id', id, 'first_ms', now)
    else
      redis.call('HSET', meta, 'deadline', score)
    end
    redis.call('PEXPIRE', buf, KEEP_MS)
    redis.call('PEXPIRE', meta, KEEP_MS)
    if redis.call('EXISTS', sealed) == 1 then
      has_sealed = true
      local cur = tonumber(redis.call('ZSCORE', K_DUE, member) or score)
      if cur < score then score = cur end
    end
  end
  if has_sealed then redis.call('PEXPIRE', sealed, KEEP_MS) end
  -- one turn per conversation: nothing is released before the turn in flight ends
  local held = redis.call('PTTL', lease)
  if held > 0 and now + held > score then score = now + held end
  redis.call('ZADD', K_DUE, score, member)
  return score
end

local first = redis.call('ZRANGE', K_DUE, 0, 0, 'WITHSCORES')
local earliest = first[2] and tonumber(first[2]) or math.huge
local wake = nil
local counts = {0, 0, 0, 0}
local out = {}
for i = 1, (#ARGV - 2) / 4 do
  local k, a = 2 + (i - 1) * 7, 2 + (i - 1) * 4
  local id, seen = ARGV[a + 2], KEYS[k + 5]
  local status = 2
  -- the marker is set first and taken back if a limit refuses the message, so a retry is not a duplicate
  if id == '' or redis.call('SET', seen, '1', 'PX', DEDUP_TTL_MS, 'NX') then
    status = 1
    if ARGV[a + 4] == '1' then status = limit(KEYS[k + 6], KEYS[k + 7]) end
    if status ~= 1 and id ~= '' then redis.call('DEL', seen) end
  end
  if status == 1 then
    local score = append(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], ARGV[a + 1], id, ARGV[a + 3])
    if score < earliest then earliest = score; wake = score end
  end
  counts[status] = counts[status] + 1
  out[i] = status
end
if counts[1] > 0 then
  redis.call('HINCRBY', K_STATS, 'accepted', counts[1])
  redis.call('HINCRBY', K_STATS, 'buffered', counts[1])
end
if counts[2] > 0 then redis.call('HINCRBY', K_STATS, 'duplicates', counts[2]) end
if counts[3] + counts[4] > 0 then redis.call('HINCRBY', K_STATS, 'rate_limited', counts[3] + counts[4]) end
if wake then redis.call('PUBLISH', ARGV[2], wake) end
return out
""")


def append_script(
    *,
    timeout_ms: int,
    max_size: int,
    keep_ms: int,
    dedup_ttl_ms: int,
    sender_burst: int,
    sender_refill_per_ms: float,
    company_burst: int,
    company_refill_per_ms: float,
) -> str:
    """The APPEND source for one deployment's numbers (0 burst = no limit; a limit needs a refill rate)."""
    return APPEND.substitute(
        timeout_ms=int(timeout_ms),
        max_size=int(max_size),
        keep_ms=int(keep_ms),
        dedup_ttl_ms=int(dedup_ttl_ms),
        sender_burst=int(sender_burst),
        sender_interval_ms=_interval_ms(sender_burst, sender_refill_per_ms),
        company_burst=int(company_burst),
        company_interval_ms=_interval_ms(company_burst, company_refill_per_ms),
    )


def _interval_ms(burst: int, refill_per_ms: float) -> str:
    if burst <= 0:
        return "0"
    if refill_per_ms <= 0:
        raise ValueError("a rate limit with a burst needs a positive refill rate")
    return repr(1.0 / refill_per_ms)


# KEYS: 1 due, 2 buf, 3 sealed, 4 meta, 5 lease, 6 queue, 7 stats, 8 lateness
# ARGV: 1 member, 2 now_ms, 3 queued lease ms, 4 queue max length, 5 keep ms (the batch keys' lifetime),
#       6 company id, 7 phone, 8 jobs channel, 9 lateness values kept
# Returns (see `system.batching.ClaimStatus`) {1, lateness_ms, fragments, batch_id} when a job was
# enqueued, {0} when nothing was due, {-1} when deferred for the turn in flight, {-2} when deferred
# because the queue is full, {-3} when the batch's keys had expired: its due entry is removed and counted.
# A batch past its deadline is always flushed, however late; a deferred one keeps its keys alive.
CLAIM = """
local member = ARGV[1]
local now = tonumber(ARGV[2])
local score = redis.call('ZSCORE', KEYS[1], member)
if not score then return {0} end
score = tonumber(score)
if score > now then return {0} end
local keep = tonumber(ARGV[5])
local function keep_alive()
  redis.call('PEXPIRE', KEYS[2], keep)
  redis.call('PEXPIRE', KEYS[3], keep)
  redis.call('PEXPIRE', KEYS[4], keep)
end

local lease = redis.call('PTTL', KEYS[5])
if lease ~= -2 then
  if lease < 0 then lease = tonumber(ARGV[3]) end
  redis.call('ZADD', KEYS[1], now + lease, member)
  keep_alive()
  return {-1}
end
if redis.call('XLEN', KEYS[6]) >= tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], now + 1000, member)
  redis.call('HINCRBY', KEYS[7], 'backpressure', 1)
  keep_alive()
  return {-2}
end

local batch, first_id, n
local sealed = redis.call('LPOP', KEYS[3])
if sealed then
  local nl = string.find(sealed, '\\n', 1, true)
  local head = cjson.decode(string.sub(sealed, 1, nl - 1))
  first_id, n = head[1], head[2]
  batch = string.sub(sealed, nl + 1)
else
  local deadline = tonumber(redis.call('HGET', KEYS[4], 'deadline') or '-1')
  n = redis.call('LLEN', KEYS[2])
  if n == 0 then
    -- due, yet neither an open nor a sealed batch: its keys outlived KEEP_MS unflushed and expired
    redis.call('ZREM', KEYS[1], member)
    redis.call('DEL', KEYS[4])
    redis.call('HINCRBY', KEYS[7], 'batches_expired', 1)
    return {-3}
  end
  if deadline > now then
    redis.call('ZADD', KEYS[1], deadline, member)
    return {0}
  end
  batch = '[' .. table.concat(redis.call('LRANGE', KEYS[2], 0, -1), ',') .. ']'
  first_id = redis.call('HGET', KEYS[4], 'first_id') or ''
  redis.call('DEL', KEYS[2])
  redis.call('HDEL', KEYS[4], 'deadline', 'first_id', 'first_ms')
end

local batch_id = ARGV[6] .. ':' .. ARGV[7] .. ':' .. first_id
local job = '{"batch_id":' .. cjson.encode(batch_id) .. ',"company_id":' .. ARGV[6] ..
  ',"phone":"' .. ARGV[7] .. '","messages":' .. batch .. ',"enqueued_ms":' .. ARGV[2] .. ',"attempt":0}'
redis.call('XADD', KEYS[6], '*', 'job', job)
redis.call('SET', KEYS[5], batch_id, 'PX', ARGV[3])

if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), member)
else
  redis.call('ZREM', KEYS[1], member)
end
local late = now - score
redis.call('LPUSH', KEYS[8], late)
redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[9]) - 1)
redis.call('HINCRBY', KEYS[7], 'batches_flushed', 1)
redis.call('HINCRBY', KEYS[7], 'fragments_flushed', n)
redis.call('HINCRBY', KEYS[7], 'buffered', -n)
redis.call('PUBLISH', ARGV[8], 1)
return {1, late, n, batch_id}
"""

# The worker took a job: the lease becomes its processing lease (visibility timeout based).
# KEYS: 1 lease ; ARGV: 1 batch_id, 2 lease ms. Returns 1 when held by this job, 0 when another turn holds it.
HOLD = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: 1 queue, 2 lease, 3 due, 4 buf, 5 sealed, 6 meta, 7 stats
# ARGV: 1 entry id, 2 group, 3 batch_id, 4 now_ms, 5 member, 6 wake channel
ACK = (
    _RELEASE_NEXT
    + """
local acked = redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
release_next(KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[5], tonumber(ARGV[4]), ARGV[6])
if acked == 1 then redis.call('HINCRBY', KEYS[7], 'jobs_done', 1) end
return acked
"""
)

# A failed attempt that will be retried: the job waits in `delayed`, the lease keeps the turn.
# KEYS: 1 queue, 2 delayed, 3 lease, 4 stats ; ARGV: 1 entry id, 2 group, 3 job json, 4 due ms,
#       5 lease ms, 6 batch_id
RETRY = """
local acked = redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
if acked == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
if tonumber(ARGV[5]) > 0 and redis.call('GET', KEYS[3]) == ARGV[6] then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end
redis.call('HINCRBY', KEYS[4], 'jobs_retried', 1)
return 1
"""

# KEYS: 1 queue, 2 dlq, 3 lease, 4 due, 5 buf, 6 sealed, 7 meta, 8 stats
# ARGV: 1 entry id, 2 group, 3 job json, 4 error, 5 now_ms, 6 member, 7 wake channel, 8 batch_id,
#       9 dlq max length
DEAD_LETTER = (
    _RELEASE_NEXT
    + """
local acked = redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
if acked == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], '*', 'job', ARGV[3], 'error', ARGV[4], 'failed_ms', ARGV[5])
if redis.call('GET', KEYS[3]) == ARGV[8] then redis.call('DEL', KEYS[3]) end
release_next(KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[6], tonumber(ARGV[5]), ARGV[7])
redis.call('HINCRBY', KEYS[8], 'dead_letters', 1)
return 1
"""
)

# KEYS: 1 delayed, 2 queue, 3 stats ; ARGV: 1 now_ms, 2 limit, 3 jobs channel. Returns jobs moved.
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'job', job)
  redis.call('ZREM', KEYS[1], job)
end
if #due > 0 then redis.call('PUBLISH', ARGV[3], #due) end
return #due
"""

# Re-enqueue a dead letter (the operator's replay). KEYS: 1 dlq, 2 queue ; ARGV: 1 entry id, 2 job json
REPLAY = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
return 1
"""

# Delivery statuses only move forward, and only for a message we sent: the worker creates the hash
# (field `turn`) when it sends, so a status for any other wamid creates nothing. KEYS: 1 status hash ;
# ARGV: 1 status, 2 rank, 3 ts_ms, 4 error code, 5 ttl_ms. Returns {applied, turn key or ''}: applied is
# -1 for a message we never sent, 0 when it would have moved backwards, 1 when applied.
STATUS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, ''} end
local cur = tonumber(redis.call('HGET', KEYS[1], 'rank') or '0')
local turn = redis.call('HGET', KEYS[1], 'turn') or ''
if tonumber(ARGV[2]) <= cur then return {0, turn} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'rank', ARGV[2], 'ts_ms', ARGV[3], 'error', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, turn}
"""


class Script:
    """One Lua script, run by EVALSHA; loaded again when the server has lost it (restart, failover)."""

    def __init__(self, redis: Redis, source: str) -> None:
        self._redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def load(self) -> None:
        await self._redis.script_load(self.source)

    async def __call__(self, *, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        try:
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load()
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)


@dataclass(frozen=True, slots=True)
class _Call:
    script: Script
    keys: Sequence[KeyT]
    args: Sequence[EncodableT]


class ScriptBatch:
    """Script calls sent in one pipeline (one round trip), each call still atomic on its own.

    redis-py's own pipeline support asks SCRIPT EXISTS on every execute, a second round trip; here a
    call the server reports as unknown (it never ran) is loaded and run again instead. The calls go on
    `lane` when one is given (a caller's dedicated connection), else on a connection from the pool.
    """

    def __init__(self, redis: Redis, *, lane: Lane | None = None) -> None:
        self._redis = redis
        self._lane = lane
        self._calls: list[_Call] = []

    def add(self, script: Script, *, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> None:
        self._calls.append(_Call(script, keys, args))

    async def run(self) -> list[Any]:
        """One result per call, in order; a failed call's exception is returned in its place."""
        results = await self._execute(self._calls)
        lost = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if lost:
            for script in {self._calls[i].script.sha: self._calls[i].script for i in lost}.values():
                await script.load()
            for i, result in zip(lost, await self._execute([self._calls[i] for i in lost]), strict=True):
                results[i] = result
        return results

    async def _execute(self, calls: Sequence[_Call]) -> list[Any]:
        # The commands go straight onto the connection: redis-py's pipeline spends more on packing
        # arguments and bookkeeping than the webhook spends on everything else it does.
        packed = b"".join(pack_command(b"EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) for c in calls)
        if self._lane is not None:
            return await exchange(self._lane.connection, packed, len(calls), timeout_s=self._lane.timeout_s)
        conn = await borrow_connection(self._redis)
        try:
            return await exchange(conn, packed, len(calls))
        finally:
            await self._redis.connection_pool.release(conn)


async def borrow_connection(redis: Redis) -> Connection:
    """A connection of the client's pool, connected; the caller gives it back (or keeps it for good)."""
    conn: Connection = await redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    return conn


@dataclass(frozen=True, slots=True)
class Lane:
    """A pool connection kept for good by one caller; each exchange on it carries its own deadline."""

    connection: Connection
    timeout_s: float | None

    @classmethod
    async def borrow(cls, redis: Redis) -> Lane:
        conn = await borrow_connection(redis)
        # Without a socket timeout redis-py writes straight to the socket instead of wrapping each
        # write in a task of its own (asyncio.wait_for); the exchange's deadline bounds it instead.
        timeout_s, conn.socket_timeout = conn.socket_timeout, None
        return cls(conn, timeout_s)


async def exchange(conn: Connection, packed: bytes, replies: int, *, timeout_s: float | None = None) -> list[Any]:
    """Send packed commands and read their replies; an error reply is returned in its place.

    One deadline (`timeout_s`, else the connection's socket timeout) covers the whole exchange instead
    of one per reply.
    """
    deadline_s = conn.socket_timeout if timeout_s is None else timeout_s
    try:
        async with asyncio.timeout(deadline_s):
            await conn.send_packed_command(packed, check_health=False)
            results: list[Any] = []
            for _ in range(replies):
                try:
                    results.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:  # that command failed; the connection still holds the rest
                    results.append(exc)
            return results
    except TimeoutError as exc:
        await conn.disconnect()
        raise RedisTimeoutError(f"no reply from Redis within {deadline_s} s") from exc
    except BaseException:
        await conn.disconnect()  # replies may be left unread on it; it reconnects on its next use
        raise


def pack_command(*parts: EncodableT) -> bytes:
    """One command in RESP: an array of bulk strings (str as UTF-8, numbers in decimal)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        kind = type(part)  # exact types first: this runs for every argument of every append
        if kind is str:
            data = part.encode()  # type: ignore[union-attr]
        elif kind is bytes:
            data = part
        elif kind is int or kind is float:
            data = repr(part).encode()
        else:
            data = _encode_subclass(part)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _encode_subclass(part: object) -> bytes:
    """str, bytes and numbers of subclasses (enums, for instance) as their plain values; nothing else."""
    if isinstance(part, str):
        return str.encode(part)
    if isinstance(part, bytes):
        return bytes(part)
    if isinstance(part, int | float) and not isinstance(part, bool):
        return repr(int(part) if isinstance(part, int) else float(part)).encode()
    raise TypeError(f"cannot send {type(part).__name__} to Redis")


@dataclass(frozen=True, slots=True)
class Scripts:
    """The system's scripts bound to one client."""

    claim: Script
    hold: Script
    ack: Script
    retry: Script
    dead_letter: Script
    promote: Script
    replay: Script
    status: Script

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        return cls(
            claim=Script(redis, CLAIM),
            hold=Script(redis, HOLD),
            ack=Script(redis, ACK),
            retry=Script(redis, RETRY),
            dead_letter=Script(redis, DEAD_LETTER),
            promote=Script(redis, PROMOTE),
            replay=Script(redis, REPLAY),
            status=Script(redis, STATUS),
        )

    async def load(self) -> None:
        """Load every script up front, so the first requests need no extra round trip."""
        for script in (
            self.claim,
            self.hold,
            self.ack,
            self.retry,
            self.dead_letter,
            self.promote,
            self.replay,
            self.status,
        ):
            await script.load()
