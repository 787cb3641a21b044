"""The Lua sources that make each batching and queue step one atomic round-trip.

Every script touches only keys of one hash slot (see `system.store.keys`) and takes the current time as
an argument, so the injected clock, not the server's, decides deadlines. Each script names its KEYS and
ARGV in locals at its head; the Python side that reads a script's return codes holds them as IntEnums
(`system.ingest.batch_store.AppendOutcome` and `ClaimStatus`, `system.ingest.core.StatusApplied`).
"""

from __future__ import annotations

from string import Template

# Re-schedules a conversation after its turn ended (ack or dead letter): a sealed batch is due now,
# an open one at its own deadline; wakes the batchers when something became due.
_RELEASE_NEXT = """
local function release_next(due_key, buf_key, sealed_key, meta_key, member, now, wake_channel)
  local score = nil
  if redis.call('LLEN', sealed_key) > 0 then
    score = now
  elseif redis.call('LLEN', buf_key) > 0 then
    score = tonumber(redis.call('HGET', meta_key, 'deadline') or now)
    if score < now then score = now end
  end
  if score then
    redis.call('ZADD', due_key, score, member)
    redis.call('PUBLISH', wake_channel, score)
  else
    redis.call('ZREM', due_key, member)
  end
end
"""

# Takes a job's entry off the stream when it is still pending in the group; false when another worker
# settled it first (then nothing else may change).
_TAKE_PENDING = """
local function take_pending(queue_key, group, entry_id)
  if redis.call('XACK', queue_key, group, entry_id) == 0 then return false end
  redis.call('XDEL', queue_key, entry_id)
  return true
end
"""

# The batching numbers are constants of a deployment, so they are written into the script's source
# (see `append_script`) instead of travelling with every call. One call appends every message of one
# round trip that belongs to one shard, in order: the keys and counters they share are touched once.
# After the two shared keys and arguments come 7 keys and 4 arguments per message.
# Returns one `AppendOutcome` per message.
# A batch's keys live KEEP_MS from its last fragment: well past its deadline, so that a late batcher
# still finds (and flushes) it; see `system.ingest.batch_store.BATCH_KEEP_MARGIN_MS`.
APPEND = Template("""
local TIMEOUT_MS, MAX_SIZE, KEEP_MS, DEDUP_TTL_MS = $timeout_ms, $max_size, $keep_ms, $dedup_ttl_ms
local SENDER_BURST, SENDER_INTERVAL_MS = $sender_burst, $sender_interval_ms
local COMPANY_BURST, COMPANY_INTERVAL_MS = $company_burst, $company_interval_ms
local due_key = KEYS[1]
local stats_key = KEYS[2]
local now_ms = ARGV[1]
local wake_channel = ARGV[2]
local KEYS_PER_MESSAGE, ARGS_PER_MESSAGE = 7, 4
local now = tonumber(now_ms)

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
      local cur = tonumber(redis.call('ZSCORE', due_key, member) or score)
      if cur < score then score = cur end
    end
  end
  if has_sealed then redis.call('PEXPIRE', sealed, KEEP_MS) end
  -- one turn per conversation: nothing is released before the turn in flight ends
  local held = redis.call('PTTL', lease)
  if held > 0 and now + held > score then score = now + held end
  redis.call('ZADD', due_key, score, member)
  return score
end

local first = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
local earliest = first[2] and tonumber(first[2]) or math.huge
local wake = nil
local counts = {0, 0, 0, 0}
local out = {}
for i = 1, (#ARGV - 2) / ARGS_PER_MESSAGE do
  local k, a = 2 + (i - 1) * KEYS_PER_MESSAGE, 2 + (i - 1) * ARGS_PER_MESSAGE
  local buf_key, sealed_key, meta_key, lease_key = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local seen_key, sender_bucket_key, company_bucket_key = KEYS[k + 5], KEYS[k + 6], KEYS[k + 7]
  local message_json, id, member, rate_limited = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local status = 2
  -- the marker is set first and taken back if a limit refuses the message, so a retry is not a duplicate
  if id == '' or redis.call('SET', seen_key, '1', 'PX', DEDUP_TTL_MS, 'NX') then
    status = 1
    if rate_limited == '1' then status = limit(sender_bucket_key, company_bucket_key) end
    if status ~= 1 and id ~= '' then redis.call('DEL', seen_key) end
  end
  if status == 1 then
    local score = append(buf_key, sealed_key, meta_key, lease_key, message_json, id, member)
    if score < earliest then earliest = score; wake = score end
  end
  counts[status] = counts[status] + 1
  out[i] = status
end
if counts[1] > 0 then
  redis.call('HINCRBY', stats_key, 'accepted', counts[1])
  redis.call('HINCRBY', stats_key, 'buffered', counts[1])
end
if counts[2] > 0 then redis.call('HINCRBY', stats_key, 'duplicates', counts[2]) end
if counts[3] + counts[4] > 0 then redis.call('HINCRBY', stats_key, 'rate_limited', counts[3] + counts[4]) end
if wake then redis.call('PUBLISH', wake_channel, wake) end
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


# Returns a `ClaimStatus` first: {1, lateness_ms, fragments, batch_id} when a job was enqueued, {0} when
# nothing was due, {-1} when deferred for the turn in flight, {-2} when deferred because the queue is full,
# {-3} when the batch's keys had expired: its due entry is removed and counted.
# A batch past its deadline is always flushed, however late; a deferred one keeps its keys alive.
CLAIM = """
local due_key = KEYS[1]
local buf_key = KEYS[2]
local sealed_key = KEYS[3]
local meta_key = KEYS[4]
local lease_key = KEYS[5]
local queue_key = KEYS[6]
local stats_key = KEYS[7]
local lateness_key = KEYS[8]
local member = ARGV[1]
local now_ms = ARGV[2]
local queued_lease_ms = ARGV[3]
local queue_max_len = ARGV[4]
local keep_ms = ARGV[5]
local company_id = ARGV[6]
local phone = ARGV[7]
local jobs_channel = ARGV[8]
local lateness_kept = ARGV[9]

local now = tonumber(now_ms)
local score = redis.call('ZSCORE', due_key, member)
if not score then return {0} end
score = tonumber(score)
if score > now then return {0} end
local keep = tonumber(keep_ms)
local function keep_alive()
  redis.call('PEXPIRE', buf_key, keep)
  redis.call('PEXPIRE', sealed_key, keep)
  redis.call('PEXPIRE', meta_key, keep)
end

local lease = redis.call('PTTL', lease_key)
if lease ~= -2 then
  if lease < 0 then lease = tonumber(queued_lease_ms) end
  redis.call('ZADD', due_key, now + lease, member)
  keep_alive()
  return {-1}
end
if redis.call('XLEN', queue_key) >= tonumber(queue_max_len) then
  redis.call('ZADD', due_key, now + 1000, member)
  redis.call('HINCRBY', stats_key, 'backpressure', 1)
  keep_alive()
  return {-2}
end

local batch, first_id, n
local sealed = redis.call('LPOP', sealed_key)
if sealed then
  local nl = string.find(sealed, '\\n', 1, true)
  local head = cjson.decode(string.sub(sealed, 1, nl - 1))
  first_id, n = head[1], head[2]
  batch = string.sub(sealed, nl + 1)
else
  local deadline = tonumber(redis.call('HGET', meta_key, 'deadline') or '-1')
  n = redis.call('LLEN', buf_key)
  if n == 0 then
    -- due, yet neither an open nor a sealed batch: its keys outlived KEEP_MS unflushed and expired
    redis.call('ZREM', due_key, member)
    redis.call('DEL', meta_key)
    redis.call('HINCRBY', stats_key, 'batches_expired', 1)
    return {-3}
  end
  if deadline > now then
    redis.call('ZADD', due_key, deadline, member)
    return {0}
  end
  batch = '[' .. table.concat(redis.call('LRANGE', buf_key, 0, -1), ',') .. ']'
  first_id = redis.call('HGET', meta_key, 'first_id') or ''
  redis.call('DEL', buf_key)
  redis.call('HDEL', meta_key, 'deadline', 'first_id', 'first_ms')
end

local batch_id = company_id .. ':' .. phone .. ':' .. first_id
local job = '{"batch_id":' .. cjson.encode(batch_id) .. ',"company_id":' .. company_id ..
  ',"phone":"' .. phone .. '","messages":' .. batch .. ',"enqueued_ms":' .. now_ms .. ',"attempt":0}'
redis.call('XADD', queue_key, '*', 'job', job)
redis.call('SET', lease_key, batch_id, 'PX', queued_lease_ms)

if redis.call('EXISTS', sealed_key) == 1 or redis.call('EXISTS', buf_key) == 1 then
  redis.call('ZADD', due_key, now + tonumber(queued_lease_ms), member)
else
  redis.call('ZREM', due_key, member)
end
local late = now - score
redis.call('LPUSH', lateness_key, late)
redis.call('LTRIM', lateness_key, 0, tonumber(lateness_kept) - 1)
redis.call('HINCRBY', stats_key, 'batches_flushed', 1)
redis.call('HINCRBY', stats_key, 'fragments_flushed', n)
redis.call('HINCRBY', stats_key, 'buffered', -n)
redis.call('PUBLISH', jobs_channel, 1)
return {1, late, n, batch_id}
"""

# The worker took a job: the lease becomes its processing lease (visibility timeout based).
# Returns 1 when held by this job, 0 when another turn holds it.
HOLD = """
local lease_key = KEYS[1]
local batch_id = ARGV[1]
local lease_ms = ARGV[2]

local cur = redis.call('GET', lease_key)
if cur and cur ~= batch_id then return 0 end
redis.call('SET', lease_key, batch_id, 'PX', lease_ms)
return 1
"""

# The turn ended: the entry leaves the stream, the lease is released and the conversation re-scheduled.
# Returns 1 when this call acknowledged the entry, 0 when it was acknowledged already.
ACK = (
    _RELEASE_NEXT
    + """
local queue_key = KEYS[1]
local lease_key = KEYS[2]
-- the conversation's keys, as release_next takes them
local due_key, buf_key, sealed_key, meta_key = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local stats_key = KEYS[7]
local entry_id, group = ARGV[1], ARGV[2]  -- the job's stream entry and its consumer group
local batch_id = ARGV[3]
local now_ms = ARGV[4]
local member, wake_channel = ARGV[5], ARGV[6]  -- the conversation to re-schedule, and whom to wake

local acked = redis.call('XACK', queue_key, group, entry_id)
redis.call('XDEL', queue_key, entry_id)
if redis.call('GET', lease_key) == batch_id then redis.call('DEL', lease_key) end
release_next(due_key, buf_key, sealed_key, meta_key, member, tonumber(now_ms), wake_channel)
if acked == 1 then redis.call('HINCRBY', stats_key, 'jobs_done', 1) end
return acked
"""
)

# A failed attempt that will be retried: the job waits in `delayed`, the lease keeps the turn.
# Returns 1 when moved, 0 when the entry was no longer pending (another worker settled it).
RETRY = (
    _TAKE_PENDING
    + """
local queue_key = KEYS[1]
local delayed_key = KEYS[2]
local lease_key = KEYS[3]
local stats_key = KEYS[4]
local entry_id, group = ARGV[1], ARGV[2]  -- the job's stream entry and its consumer group
local job_json = ARGV[3]
local due_ms = ARGV[4]
local lease_ms = ARGV[5]
local batch_id = ARGV[6]

if not take_pending(queue_key, group, entry_id) then return 0 end
redis.call('ZADD', delayed_key, due_ms, job_json)
if tonumber(lease_ms) > 0 and redis.call('GET', lease_key) == batch_id then
  redis.call('PEXPIRE', lease_key, lease_ms)
end
redis.call('HINCRBY', stats_key, 'jobs_retried', 1)
return 1
"""
)

# A job that will never succeed goes to the dead letters (a bounded stream); the conversation moves on.
# Returns 1 when moved, 0 when the entry was no longer pending.
DEAD_LETTER = (
    _RELEASE_NEXT
    + _TAKE_PENDING
    + """
local queue_key = KEYS[1]
local dlq_key = KEYS[2]
local lease_key = KEYS[3]
-- the conversation's keys, as release_next takes them
local due_key, buf_key, sealed_key, meta_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local stats_key = KEYS[8]
local entry_id, group = ARGV[1], ARGV[2]  -- the job's stream entry and its consumer group
local job_json = ARGV[3]
local error_text = ARGV[4]
local now_ms = ARGV[5]
local member, wake_channel = ARGV[6], ARGV[7]  -- the conversation to re-schedule, and whom to wake
local batch_id = ARGV[8]
local dlq_max_len = ARGV[9]

if not take_pending(queue_key, group, entry_id) then return 0 end
redis.call('XADD', dlq_key, 'MAXLEN', '~', dlq_max_len, '*', 'job', job_json, 'error', error_text, 'failed_ms', now_ms)
if redis.call('GET', lease_key) == batch_id then redis.call('DEL', lease_key) end
release_next(due_key, buf_key, sealed_key, meta_key, member, tonumber(now_ms), wake_channel)
redis.call('HINCRBY', stats_key, 'dead_letters', 1)
return 1
"""
)

# Retries whose time has come go back onto the stream. Returns the number of jobs moved.
PROMOTE = """
local delayed_key = KEYS[1]
local queue_key = KEYS[2]
local stats_key = KEYS[3]
local now_ms = ARGV[1]
local limit = ARGV[2]
local jobs_channel = ARGV[3]

local due = redis.call('ZRANGEBYSCORE', delayed_key, '-inf', now_ms, 'LIMIT', 0, tonumber(limit))
for _, job in ipairs(due) do
  redis.call('XADD', queue_key, '*', 'job', job)
  redis.call('ZREM', delayed_key, job)
end
if #due > 0 then redis.call('PUBLISH', jobs_channel, #due) end
return #due
"""

# Re-enqueue a dead letter (the operator's replay). Returns 1 when replayed, 0 when it was gone.
REPLAY = """
local dlq_key = KEYS[1]
local queue_key = KEYS[2]
local entry_id = ARGV[1]
local job_json = ARGV[2]

if redis.call('XDEL', dlq_key, entry_id) == 0 then return 0 end
redis.call('XADD', queue_key, '*', 'job', job_json)
return 1
"""

# Delivery statuses only move forward, and only for a message we sent: the worker creates the hash
# (field `turn`) when it sends, so a status for any other wamid creates nothing. Returns
# {`StatusApplied`, turn key or ''}.
STATUS = """
local status_key = KEYS[1]
local status = ARGV[1]
local rank = ARGV[2]
local ts_ms = ARGV[3]
local error_code = ARGV[4]
local ttl_ms = ARGV[5]

if redis.call('EXISTS', status_key) == 0 then return {-1, ''} end
local cur = tonumber(redis.call('HGET', status_key, 'rank') or '0')
local turn = redis.call('HGET', status_key, 'turn') or ''
if tonumber(rank) <= cur then return {0, turn} end
redis.call('HSET', status_key, 'status', status, 'rank', rank, 'ts_ms', ts_ms, 'error', error_code)
redis.call('PEXPIRE', status_key, ttl_ms)
return {1, turn}
"""

# One turn's context write, atomic in the context's slot. `turn_mark` (the turn record's key) is kept in the
# dialog hash: a redelivered turn whose write already landed finds its mark and writes nothing twice, without a
# transaction spanning the turn record (another slot on a cluster). Returns 1 when written, 0 when already done.
# ARGV: turn_mark, dialog TTL s, messages TTL s, preferences TTL s, messages kept, then the dialog's field count
# and fields, the preferences' field count and fields, then the new messages.
CONTEXT_SAVE = """
local dialog_key, messages_key, preferences_key = KEYS[1], KEYS[2], KEYS[3]
local turn_mark = ARGV[1]
local dialog_ttl, messages_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local preferences_ttl, messages_kept = tonumber(ARGV[4]), tonumber(ARGV[5])
if turn_mark ~= '' and redis.call('HGET', dialog_key, 'turn') == turn_mark then return 0 end
local at = 6
local dialog_fields = tonumber(ARGV[at])
redis.call('HSET', dialog_key, 'turn', turn_mark, unpack(ARGV, at + 1, at + dialog_fields))
redis.call('EXPIRE', dialog_key, dialog_ttl)
at = at + dialog_fields + 1
local preference_fields = tonumber(ARGV[at])
redis.call('HSET', preferences_key, unpack(ARGV, at + 1, at + preference_fields))
redis.call('EXPIRE', preferences_key, preferences_ttl)
at = at + preference_fields + 1
if at <= #ARGV then redis.call('RPUSH', messages_key, unpack(ARGV, at, #ARGV)) end
redis.call('LTRIM', messages_key, -messages_kept, -1)
redis.call('EXPIRE', messages_key, messages_ttl)
return 1
"""
