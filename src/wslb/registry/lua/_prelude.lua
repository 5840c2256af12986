-- wslb registry prelude: wslb.registry.redis_ops puts in front of every
-- registry script (not the lock scripts) the definitions below it uses, so
-- each script is one self-contained EVAL. Only definitions ("local ...")
-- and comments at the top level (wslb.registry.prelude reads it so).
-- Anyone running the scripts (the Twisted registry, the Lambda handlers
-- with redis-py) loads them through redis_ops (Op.source).
--
-- KEYS, the same list for every registry script (Keys.scriptKeys()):
--   KEYS[1] "{ns}:"                  the prefix; never a key itself
--   KEYS[2] "{ns}:workers"           KEYS[3] "{ns}:sessions"
--   KEYS[4] "{ns}:disconnected"      KEYS[5] "{ns}:queue"
--   KEYS[6] "{ns}:queue-seq"         KEYS[7] "{ns}:ticket-heartbeats"
--   KEYS[8] "{ns}:instances"
-- Per-record keys (worker:<id>, session:<key>, ...) and the indexes are
-- derived from KEYS[1]. That is cluster-safe: they share the hash tag {ns}
-- with the declared keys, so every key a script touches lives in the same
-- slot. The schema is documented in wslb/registry/keys.py.
--
-- No script reads every worker, session or ticket: the indexes below are
-- kept in step by every script that changes what they index (reindex,
-- forgetWorker, enqueue, dropTickets), so reads are O(log n) look-ups.
--
-- ARGV are strings. Times are seconds as decimal strings, stored as given;
-- "" stands for none. Replies are one JSON document (cjson.encode), decoded
-- by redis_ops; an empty Lua table encodes as {}, read as an empty list.
-- Notices go to the channel "{ns}:events": "capacity" (capacity may have
-- become free: queued callers retry), "ended:<key>" (close its users) and
-- "queue" (tickets left the queue: positions behind them changed).
--
-- SERVED_BUCKET, SERVED_SLOTS and START_SAMPLES are defined in front of
-- this prelude by redis_ops, from wslb.registry's constants.

local P = KEYS[1]
local WORKERS, SESSIONS, DISCONNECTED = KEYS[2], KEYS[3], KEYS[4]
local QUEUE, QUEUE_SEQ, TICKET_HEARTBEATS, INSTANCES = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local EVENTS = P .. 'events'

local function workerKey(id) return P .. 'worker:' .. id end
local function workerSessionsKey(id) return P .. 'worker-sessions:' .. id end
local function sessionKey(key) return P .. 'session:' .. key end
local function ticketKey(ticket) return P .. 'ticket:' .. ticket end
local function instanceKey(id) return P .. 'instance:' .. id end
local function instanceSessionsKey(id) return P .. 'instance-sessions:' .. id end
local function assignableKey(capacity) return P .. 'assignable:' .. capacity end
local function stateKey(state) return P .. 'state:' .. state end
local function queueCostKey(cost) return P .. 'queue-cost:' .. cost end
local function abandonedKey(request) return P .. 'abandoned:' .. request end
local ASSIGNABLE_CAPACITIES = P .. 'assignable-capacities'
local CAPACITIES = P .. 'capacities'
local TOTALS = P .. 'totals'
local QUEUE_COSTS, QUEUE_DEMAND = P .. 'queue-costs', P .. 'queue-demand'
local QUEUE_HELD, QUEUE_ABSENT, QUEUE_KEYS = P .. 'queue-held', P .. 'queue-absent', P .. 'queue-keys'
local SERVED, START_SECONDS = P .. 'served', P .. 'start-seconds'

-- A hash as a table, or nil when the key does not exist.
local function record(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local fields = {}
  for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
  return fields
end

-- A worker's fields plus `sessions` (its session keys), or nil.
local function workerSnapshot(id)
  local worker = record(workerKey(id))
  if worker then worker.sessions = redis.call('SMEMBERS', workerSessionsKey(id)) end
  return worker
end

-- A worker with or without its sessions (their list grows with them), or nil.
local function worker(id, withSessions)
  if withSessions then return workerSnapshot(id) end
  return record(workerKey(id))
end

local function sessionSnapshot(key)
  return record(sessionKey(key))
end

local capacityTold = false
local function tellCapacity()
  if not capacityTold then
    redis.call('PUBLISH', EVENTS, 'capacity')
    capacityTold = true
  end
end

-- Whether string a sorts before b byte by byte, as ZSET members and
-- Python's str do (Lua's < follows the server's locale).
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- The worker indexes (see keys.py). A worker's record keeps, in `indexed`,
-- the "state draining capacity" it is indexed under, so that the entries
-- can be found again and taken out when any of the three changes.
local function unindex(id, indexed)
  local state, draining, capacity = string.match(indexed, '^(%S+) (%S+) (%S+)$')
  redis.call('ZREM', stateKey(state), id)
  redis.call('ZREM', CAPACITIES, id)
  if state == 'healthy' and draining == '0' then
    local assignable = assignableKey(capacity)
    redis.call('ZREM', assignable, id)
    if redis.call('EXISTS', assignable) == 0 then
      redis.call('ZREM', ASSIGNABLE_CAPACITIES, capacity)
    end
  end
end

-- Move what a worker adds to the pool's totals from `was` to `now`, each
-- "load capacity" or nil for nothing; the record's `counted` keeps `now`.
local function recount(wk, was, now)
  local before = {string.match(was or '0 0', '^(%S+) (%S+)$')}
  local after = {string.match(now or '0 0', '^(%S+) (%S+)$')}
  for i, field in ipairs({'load', 'capacity'}) do
    local change = tonumber(after[i]) - tonumber(before[i])
    if change ~= 0 then redis.call('HINCRBY', TOTALS, field, change) end
  end
  if now then redis.call('HSET', wk, 'counted', now) else redis.call('HDEL', wk, 'counted') end
end

-- Bring worker `id`'s index entries and its share of the totals in step with
-- its record: call it after any change to its state, draining flag, capacity
-- or load.
local function reindex(id)
  local wk = workerKey(id)
  local f = redis.call('HMGET', wk, 'state', 'draining', 'capacity', 'load', 'indexed', 'counted')
  local state, draining, capacity, load, indexed, counted = f[1], f[2], f[3], f[4], f[5], f[6]
  if not state then return end
  local counts = nil  -- a dead worker adds nothing
  if state ~= 'dead' then counts = load .. ' ' .. capacity end
  if counted ~= counts then recount(wk, counted, counts) end
  local now = state .. ' ' .. draining .. ' ' .. capacity
  if indexed ~= now then
    if indexed then unindex(id, indexed) end
    redis.call('ZADD', stateKey(state), 0, id)
    if state ~= 'dead' then redis.call('ZADD', CAPACITIES, capacity, id) end
    redis.call('HSET', wk, 'indexed', now)
  end
  if state == 'healthy' and draining == '0' then
    redis.call('ZADD', assignableKey(capacity), load, id)
    -- Indexed so before, it is in the set already: the capacity is listed.
    if indexed ~= now then redis.call('ZADD', ASSIGNABLE_CAPACITIES, capacity, capacity) end
  end
end

-- Delete a worker's record, its session set, its index entries and its share
-- of the totals.
local function forgetWorker(id)
  local wk = workerKey(id)
  local f = redis.call('HMGET', wk, 'indexed', 'counted')
  if f[1] then unindex(id, f[1]) end
  if f[2] then recount(wk, f[2], nil) end
  redis.call('DEL', workerKey(id), workerSessionsKey(id))
  redis.call('ZREM', WORKERS, id)
end

local function newWorker(id, url, provider, capacity, state, now)
  redis.call('HSET', workerKey(id), 'id', id, 'url', url, 'provider', provider,
    'state', state, 'draining', '0', 'capacity', capacity, 'load', '0',
    'started_at', now, 'state_since', now, 'idle_since', now, 'last_seen', '')
  redis.call('ZADD', WORKERS, 0, id)
  reindex(id)
  tellCapacity()
end

-- Bind a new session to a worker (its cost joins the worker's load), with
-- the live connections of `requests` (request ids, at least one) via
-- `instance` (see connect(); `fresh`: they bound it).
local function bind(key, cost, workerId, now, instance, requests, fresh)
  local fields = {'key', key, 'worker', workerId, 'cost', cost, 'since', now,
    'connections', #requests, 'conn:' .. instance, #requests, 'disconnected_at', ''}
  for _, request in ipairs(requests) do
    table.insert(fields, 'r:' .. request)
    table.insert(fields, (fresh and '+' or '') .. instance)
  end
  redis.call('HSET', sessionKey(key), unpack(fields))
  redis.call('ZADD', SESSIONS, 0, key)
  redis.call('SADD', instanceSessionsKey(instance), key)
  redis.call('SADD', workerSessionsKey(workerId), key)
  if redis.call('HINCRBY', workerKey(workerId), 'load', cost) == tonumber(cost) then
    redis.call('HSET', workerKey(workerId), 'idle_since', '')  -- it was idle until now
  end
  reindex(workerId)
end

-- Count `n` (may be negative) more live connections of a session via one
-- instance. Losing the last one starts the reconnect grace at `now`.
local function countConnections(key, instance, n, now)
  local sk = sessionKey(key)
  local mine = redis.call('HINCRBY', sk, 'conn:' .. instance, n)
  if mine > 0 then
    redis.call('SADD', instanceSessionsKey(instance), key)
  else
    redis.call('HDEL', sk, 'conn:' .. instance)
    redis.call('SREM', instanceSessionsKey(instance), key)
  end
  local total = redis.call('HINCRBY', sk, 'connections', n)
  if total > 0 then
    redis.call('HSET', sk, 'disconnected_at', '')
    redis.call('ZREM', DISCONNECTED, key)
  elseif n < 0 then
    redis.call('HSET', sk, 'disconnected_at', now)
    redis.call('ZADD', DISCONNECTED, now, key)
  end
end

-- The connections a session counts are also its fields "r:<request id>",
-- one per request id (IRegistry.assign), whose value is the instance that
-- holds it, with "+" in front when that request bound the session. They
-- keep assign, release and abandon idempotent; countConnections keeps the
-- counts they add up to.
local function holder(value) return (string.gsub(value, '^%+', '')) end

-- Count the connection of request `request` via `instance`, once. Returns
-- whether the request that counted it bound the session.
local function connect(key, instance, request, fresh, now)
  local sk = sessionKey(key)
  local held = redis.call('HGET', sk, 'r:' .. request)
  if held then return string.sub(held, 1, 1) == '+' end
  redis.call('HSET', sk, 'r:' .. request, (fresh and '+' or '') .. instance)
  countConnections(key, instance, 1, now)
  return fresh
end

-- Count out the connection of request `request`. Returns its field's value,
-- or nil when it counts none.
local function disconnect(key, request, now)
  local sk = sessionKey(key)
  local held = redis.call('HGET', sk, 'r:' .. request)
  if held then
    redis.call('HDEL', sk, 'r:' .. request)
    countConnections(key, holder(held), -1, now)
  end
  return held
end

-- The request ids of the connections `instance` counts for a session.
local function requestsOf(key, instance)
  local found = {}
  local flat = redis.call('HGETALL', sessionKey(key))
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'r:' and holder(flat[i + 1]) == instance then
      table.insert(found, string.sub(flat[i], 3))
    end
  end
  return found
end

-- Delete sessions; a worker left empty becomes idle at `now`.
local function endSessions(keys, now)
  for _, key in ipairs(keys) do
    local session = sessionSnapshot(key)
    if session then
      for field in pairs(session) do
        if string.sub(field, 1, 5) == 'conn:' then
          redis.call('SREM', instanceSessionsKey(string.sub(field, 6)), key)
        end
      end
      redis.call('DEL', sessionKey(key))
      redis.call('ZREM', SESSIONS, key)
      redis.call('ZREM', DISCONNECTED, key)
      redis.call('SREM', workerSessionsKey(session.worker), key)
      local wk = workerKey(session.worker)
      if redis.call('EXISTS', wk) == 1 then
        redis.call('HINCRBY', wk, 'load', -tonumber(session.cost))
        if redis.call('SCARD', workerSessionsKey(session.worker)) == 0 then
          redis.call('HSET', wk, 'idle_since', now)
        end
        reindex(session.worker)
      end
      redis.call('PUBLISH', EVENTS, 'ended:' .. key)
    end
  end
end

-- The first ticket somebody holds: the one served next. Tickets nobody
-- holds (in their rejoin grace) keep their rank in QUEUE but are passed over.
local function queueHead()
  return redis.call('ZRANGE', QUEUE_HELD, 0, 0)[1]
end

-- A held ticket is listed in QUEUE_HELD and among the held tickets of its
-- cost (what overtaking looks at); a ticket nobody holds is in neither.
local function listHeld(ticket, seq, cost)
  redis.call('ZADD', QUEUE_HELD, seq, ticket)
  redis.call('ZADD', queueCostKey(cost), seq, ticket)
  redis.call('ZADD', QUEUE_COSTS, cost, cost)
end

local function unlistHeld(ticket, cost)
  redis.call('ZREM', QUEUE_HELD, ticket)
  if redis.call('ZREM', queueCostKey(cost), ticket) == 1
      and redis.call('EXISTS', queueCostKey(cost)) == 0 then
    redis.call('ZREM', QUEUE_COSTS, cost)
  end
end

-- Tell capacity listeners when the head changed: a new head may fit where
-- the old one did not, and it retries only when told.
local function tellIfNewHead(head)
  local newHead = queueHead()
  if newHead and newHead ~= head then tellCapacity() end
end

-- Queue a new ticket at the tail, held by its caller. Besides its place in
-- QUEUE, it counts in the queue's demand and is its key's ticket. Returns
-- its arrival number.
local function enqueue(ticket, key, cost, instance, now)
  local seq = redis.call('INCR', QUEUE_SEQ)
  redis.call('ZADD', QUEUE, seq, ticket)
  redis.call('ZADD', TICKET_HEARTBEATS, now, ticket)
  redis.call('HSET', ticketKey(ticket), 'key', key, 'cost', cost, 'instance', instance,
    'holder', ticket, 'enqueued_at', now)
  redis.call('HSET', QUEUE_KEYS, key, ticket)
  redis.call('INCRBY', QUEUE_DEMAND, cost)
  listHeld(ticket, seq, cost)
  return seq
end

-- Somebody holds a queued ticket (again): its heartbeat is `now`; one that
-- nobody held takes its place among the held again. `instance` and
-- `request` (or nil) are its new holder's.
local function holdTicket(ticket, now, instance, request)
  if redis.call('ZREM', QUEUE_ABSENT, ticket) == 1 then
    local head = queueHead()
    listHeld(ticket, redis.call('ZSCORE', QUEUE, ticket),
      redis.call('HGET', ticketKey(ticket), 'cost'))
    tellIfNewHead(head)
  end
  redis.call('ZADD', TICKET_HEARTBEATS, now, ticket)
  if instance then
    redis.call('HSET', ticketKey(ticket), 'instance', instance, 'holder', request)
  end
end

-- Nobody holds a queued ticket any more: it keeps its place until `deadline`.
local function abandonTicket(ticket, deadline)
  if redis.call('ZREM', TICKET_HEARTBEATS, ticket) == 1 then
    local head = queueHead()
    unlistHeld(ticket, redis.call('HGET', ticketKey(ticket), 'cost'))
    redis.call('ZADD', QUEUE_ABSENT, deadline, ticket)
    tellIfNewHead(head)
  else
    redis.call('ZADD', QUEUE_ABSENT, 'XX', 'GT', deadline, ticket)
  end
end

-- Remove tickets ("" is ignored), wherever they stand; tell the queue's
-- watchers when any was queued.
local function dropTickets(tickets)
  local head = queueHead()
  local dropped = false
  for _, ticket in ipairs(tickets) do
    if ticket ~= '' then
      local fields = redis.call('HMGET', ticketKey(ticket), 'key', 'cost')
      local key, cost = fields[1], fields[2]
      if redis.call('ZREM', QUEUE, ticket) == 1 then
        dropped = true
        redis.call('DECRBY', QUEUE_DEMAND, cost)
        unlistHeld(ticket, cost)
        if redis.call('HGET', QUEUE_KEYS, key) == ticket then
          redis.call('HDEL', QUEUE_KEYS, key)
        end
      end
      redis.call('ZREM', TICKET_HEARTBEATS, ticket)
      redis.call('ZREM', QUEUE_ABSENT, ticket)
      redis.call('DEL', ticketKey(ticket))
    end
  end
  if dropped then redis.call('PUBLISH', EVENTS, 'queue') end
  tellIfNewHead(head)
end

-- The pace of the queue (see wslb.registry: SERVED_BUCKET). A queued
-- session served at `now` counts in its bucket's slot of the ring, "bucket
-- count"; a slot holding an older bucket starts over.
local function countServed(now)
  local bucket = math.floor(tonumber(now) / SERVED_BUCKET)
  local slot = bucket % SERVED_SLOTS
  local stored, count = string.match(redis.call('HGET', SERVED, slot) or '', '^(%S+) (%S+)$')
  if tonumber(stored) == bucket then count = tonumber(count) + 1 else count = 1 end
  redis.call('HSET', SERVED, slot, string.format('%d %d', bucket, count))
end

-- {served, over, starting, start_seconds} as of `now` (IRegistry.queueStatus):
-- O(SERVED_SLOTS + START_SAMPLES), whatever the queue's length.
local function queuePace(now)
  now = tonumber(now)
  local bucket = math.floor(now / SERVED_BUCKET)
  local served, oldest = 0, nil
  local slots = redis.call('HGETALL', SERVED)
  for i = 2, #slots, 2 do
    local stored, count = string.match(slots[i], '^(%S+) (%S+)$')
    stored = tonumber(stored)
    if stored <= bucket and stored > bucket - SERVED_SLOTS then
      served = served + tonumber(count)
      if oldest == nil or stored < oldest then oldest = stored end
    end
  end
  local pace = {served = served, over = 0,
    starting = redis.call('ZCARD', stateKey('starting'))}
  if served > 0 then pace.over = now - oldest * SERVED_BUCKET end
  local samples = redis.call('LRANGE', START_SECONDS, 0, -1)
  if #samples > 0 then
    local sum = 0
    for _, seconds in ipairs(samples) do sum = sum + tonumber(seconds) end
    pace.start_seconds = sum / #samples
  end
  return pace
end

-- A worker that was starting became healthy after `seconds`.
local function countStart(seconds)
  redis.call('LPUSH', START_SECONDS, string.format('%.17g', seconds))
  redis.call('LTRIM', START_SECONDS, 0, START_SAMPLES - 1)
end

-- Members of a ZSET whose score is at most `limit`, give or take rounding:
-- callers filter them with the exact comparison the memory registry makes.
local function scoredUpTo(zset, limit)
  local slack = math.abs(limit) * 1e-12 + 1e-9
  return redis.call('ZRANGEBYSCORE', zset, '-inf', string.format('%.17g', limit + slack),
    'WITHSCORES')
end

-- An instance died: its connection counts go; sessions left without a live
-- connection start their reconnect grace at `now`. Returns those keys.
local function dropInstance(instance, now)
  local graceStarted = {}
  for _, key in ipairs(redis.call('SMEMBERS', instanceSessionsKey(instance))) do
    for _, request in ipairs(requestsOf(key, instance)) do disconnect(key, request, now) end
    -- Counted by a wslb from before requests were recorded.
    local rest = tonumber(redis.call('HGET', sessionKey(key), 'conn:' .. instance))
    if rest then countConnections(key, instance, -rest, now) end
    if redis.call('HGET', sessionKey(key), 'connections') == '0' then
      table.insert(graceStarted, key)
    end
  end
  redis.call('DEL', instanceSessionsKey(instance), instanceKey(instance))
  redis.call('SREM', INSTANCES, instance)
  return graceStarted
end

