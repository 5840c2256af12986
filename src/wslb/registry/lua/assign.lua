-- Look up or assign a session key, counting one more live connection for it
-- (IRegistry.assign). The caller's ticket is the one it holds, else the one
-- its key has queued (it takes that up: held again, at its place). An
-- existing session answers at once; otherwise, with no held ticket queued
-- or this ticket the first held one (the head), the key is bound to the
-- worker `placement` picks among healthy, non-draining workers it fits in
-- (pack: highest load; spread: lowest; ties: lowest id); otherwise, when
-- overtaking is allowed, no ticket ahead of the caller fits any worker and
-- the head was passed fewer than [9] times, the key is bound likewise and
-- the head's `passed` count grows; otherwise the ticket stays queued, or a
-- new one joins the tail, or the queue is full.
-- A connection is counted once per request id; an abandoned request id
-- (abandon.lua ran first) does nothing.
-- ARGV: [1] key, [2] cost, [3] instance, [4] placement ("pack"|"spread"),
--       [5] max queue length, [6] ticket held by the caller ("" for none),
--       [7] now, [8] the request id (also the id of a ticket it queues),
--       [9] how many may pass one head (MAX_OVERTAKES; "0": strict FIFO)
-- Reply: {"assigned": worker (without sessions), "fresh": bool} | {"queued": ticket,
--        "position": n (0 is the first ticket), "order": arrival number} | {"full": true}
--        | {"abandoned": true}
local key, cost, instance, placement = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local maxQueue, ticket, now, request = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local maxOvertakes = tonumber(ARGV[9])
if placement ~= 'pack' and placement ~= 'spread' then
  return redis.error_reply('unknown placement ' .. placement)
end
if redis.call('EXISTS', abandonedKey(request)) == 1 then
  return cjson.encode({abandoned = true})
end

-- The worker `placement` picks for `cost`, from the assignable index: per
-- capacity, the workers by load. In each capacity's set the candidate is
-- one look-up (spread: the lowest load; pack: the highest load that leaves
-- room for the cost, then the lowest id with that load); the best of the
-- capacities wins (ties: the lowest id). O(capacities * log(workers)).
local function choose()
  local best, bestLoad
  for _, capacity in ipairs(redis.call('ZRANGE', ASSIGNABLE_CAPACITIES, cost, '+inf',
      'BYSCORE')) do
    local workers, most = assignableKey(capacity), tonumber(capacity) - cost
    local id, load
    if placement == 'spread' then
      local lowest = redis.call('ZRANGE', workers, 0, 0, 'WITHSCORES')
      if lowest[1] and tonumber(lowest[2]) <= most then id, load = lowest[1], tonumber(lowest[2]) end
    else
      local highest = redis.call('ZRANGE', workers, most, '-inf', 'BYSCORE', 'REV',
        'LIMIT', 0, 1, 'WITHSCORES')
      if highest[1] then
        load = tonumber(highest[2])
        id = redis.call('ZRANGE', workers, load, load, 'BYSCORE', 'LIMIT', 0, 1)[1]
      end
    end
    if id and (best == nil or (load == bestLoad and before(id, best))
        or (placement == 'pack' and load > bestLoad)
        or (placement == 'spread' and load < bestLoad)) then
      best, bestLoad = id, load
    end
  end
  return best
end

-- The most room any assignable worker has (-1: none): per capacity, that
-- of its least loaded worker; the largest capacities first, stopping when
-- no capacity left could have more.
local function mostRoom()
  local room = -1
  for _, capacity in ipairs(redis.call('ZRANGE', ASSIGNABLE_CAPACITIES, 0, -1, 'REV')) do
    if tonumber(capacity) <= room then break end
    local lowest = redis.call('ZRANGE', assignableKey(capacity), 0, 0, 'WITHSCORES')
    if lowest[1] then room = math.max(room, tonumber(capacity) - tonumber(lowest[2])) end
  end
  return room
end

-- May the caller go ahead of the queue, whose head is `head`: the head was
-- passed fewer than maxOvertakes times and no ticket ahead of the caller
-- fits? Per cost that fits the most room, the earliest ticket of that cost
-- tells whether one is ahead: O(costs * log(tickets)).
local function mayOvertake(head)
  if tonumber(redis.call('HGET', ticketKey(head), 'passed') or '0') >= maxOvertakes then
    return false
  end
  local mine = ticket ~= '' and tonumber(redis.call('ZSCORE', QUEUE, ticket))
  for _, fitting in ipairs(redis.call('ZRANGE', QUEUE_COSTS, '-inf', mostRoom(), 'BYSCORE')) do
    local earliest = redis.call('ZRANGE', queueCostKey(fitting), 0, 0, 'WITHSCORES')
    if earliest[1] and (not mine or tonumber(earliest[2]) < mine) then return false end
  end
  return true
end

if ticket == '' or not redis.call('ZSCORE', QUEUE, ticket) then
  ticket = redis.call('HGET', QUEUE_KEYS, key) or ''
end
local session = sessionSnapshot(key)
if session then
  if ticket ~= '' then dropTickets({ticket}) end
  local fresh = connect(key, instance, request, false, now)
  return cjson.encode({assigned = record(workerKey(session.worker)), fresh = fresh})
end
if ticket ~= '' then holdTicket(ticket, now, instance, request) end
local head = queueHead()
local overtaking = head ~= nil and head ~= ticket and mayOvertake(head)
if head == nil or head == ticket or overtaking then
  local worker = choose()
  if worker then
    if overtaking then redis.call('HINCRBY', ticketKey(head), 'passed', 1) end
    if ticket ~= '' then
      dropTickets({ticket})
      countServed(now)
    end
    bind(key, ARGV[2], worker, now, instance, {request}, true)
    return cjson.encode({assigned = record(workerKey(worker)), fresh = true})
  end
end
if ticket ~= '' then
  return cjson.encode({queued = ticket, position = redis.call('ZRANK', QUEUE, ticket),
    order = tonumber(redis.call('ZSCORE', QUEUE, ticket))})
end
local length = redis.call('ZCARD', QUEUE)
if length >= maxQueue then return cjson.encode({full = true}) end
local seq = enqueue(request, key, ARGV[2], instance, now)
return cjson.encode({queued = request, position = length, order = seq})
