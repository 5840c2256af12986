-- Look up or assign a session key, counting one more live connection for it
-- (IRegistry.assign): an existing session answers at once; otherwise, with
-- the queue empty or this ticket at its head, the key is bound to the
-- worker `placement` picks among healthy, non-draining workers it fits in
-- (pack: highest load; spread: lowest; ties: lowest id); otherwise, when
-- overtaking is allowed, no ticket ahead of the caller fits any worker and
-- the head was passed fewer than [9] times, the key is bound likewise and
-- the head's `passed` count grows; otherwise the ticket stays queued, or a
-- new one joins the tail, or the queue is full.
-- ARGV: [1] key, [2] cost, [3] instance, [4] placement ("pack"|"spread"),
--       [5] max queue length, [6] ticket held by the caller ("" for none),
--       [7] now, [8] id for a new ticket (used only when one is created),
--       [9] how many may pass one head (MAX_OVERTAKES; "0": strict FIFO)
-- Reply: {"assigned": worker (without sessions), "fresh": bool} | {"queued": ticket,
--        "position": n} (0 is the head) | {"full": true}
local key, cost, instance, placement = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local maxQueue, ticket, now, newTicket = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local maxOvertakes = tonumber(ARGV[9])
if placement ~= 'pack' and placement ~= 'spread' then
  return redis.error_reply('unknown placement ' .. placement)
end

-- Healthy, non-draining workers as {id, load, room}, in id order.
local function assignable()
  local found = {}
  for _, id in ipairs(redis.call('ZRANGE', WORKERS, 0, -1)) do
    local f = redis.call('HMGET', workerKey(id), 'state', 'draining', 'capacity', 'load')
    if f[1] == 'healthy' and f[2] == '0' then
      local load = tonumber(f[4])
      table.insert(found, {id = id, load = load, room = tonumber(f[3]) - load})
    end
  end
  return found
end

local function choose(workers)
  local best
  for _, w in ipairs(workers) do
    if w.room >= cost and (best == nil or (placement == 'pack' and w.load > best.load)
        or (placement == 'spread' and w.load < best.load)) then
      best = w
    end
  end
  return best and best.id
end

-- May the caller go ahead of the queue, whose head is `head`: the head was
-- passed fewer than maxOvertakes times and no ticket ahead of the caller fits?
local function mayOvertake(head, workers)
  if tonumber(redis.call('HGET', ticketKey(head), 'passed') or '0') >= maxOvertakes then
    return false
  end
  local room = -1
  for _, w in ipairs(workers) do room = math.max(room, w.room) end
  local rank = ticket ~= '' and redis.call('ZRANK', QUEUE, ticket)
  for _, ahead in ipairs(redis.call('ZRANGE', QUEUE, 0, rank and rank - 1 or -1)) do
    if tonumber(redis.call('HGET', ticketKey(ahead), 'cost')) <= room then return false end
  end
  return true
end

local session = sessionSnapshot(key)
if session then
  if ticket ~= '' then dropTickets({ticket}) end
  countConnections(key, instance, 1, now)
  return cjson.encode({assigned = record(workerKey(session.worker)), fresh = false})
end
local head = queueHead()
local workers = assignable()
local overtaking = head ~= nil and head ~= ticket and mayOvertake(head, workers)
if head == nil or head == ticket or overtaking then
  local worker = choose(workers)
  if worker then
    if overtaking then redis.call('HINCRBY', ticketKey(head), 'passed', 1) end
    if ticket ~= '' then dropTickets({ticket}) end
    bind(key, ARGV[2], worker, now)
    countConnections(key, instance, 1, now)
    return cjson.encode({assigned = record(workerKey(worker)), fresh = true})
  end
end
if ticket ~= '' and redis.call('ZSCORE', QUEUE, ticket) then
  return cjson.encode({queued = ticket, position = redis.call('ZRANK', QUEUE, ticket)})
end
local length = redis.call('ZCARD', QUEUE)
if length >= maxQueue then return cjson.encode({full = true}) end
redis.call('ZADD', QUEUE, redis.call('INCR', QUEUE_SEQ), newTicket)
redis.call('ZADD', TICKET_HEARTBEATS, now, newTicket)
redis.call('HSET', ticketKey(newTicket), 'key', key, 'cost', ARGV[2], 'instance', instance,
  'enqueued_at', now)
return cjson.encode({queued = newTicket, position = length})
