-- Look up or assign a session key, counting one more live connection for it
-- (IRegistry.assign): an existing session answers at once; otherwise, with
-- the queue empty or this ticket at its head, the key is bound to the
-- worker `placement` picks among healthy, non-draining workers it fits in
-- (pack: highest load; spread: lowest; ties: lowest id); otherwise the
-- ticket stays queued, or a new one joins the tail, or the queue is full.
-- ARGV: [1] key, [2] cost, [3] instance, [4] placement ("pack"|"spread"),
--       [5] max queue length, [6] ticket held by the caller ("" for none),
--       [7] now, [8] id for a new ticket (used only when one is created)
-- Reply: {"assigned": worker, "fresh": bool} | {"queued": ticket,
--        "position": n} (0 is the head) | {"full": true}
local key, cost, instance, placement = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local maxQueue, ticket, now, newTicket = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
if placement ~= 'pack' and placement ~= 'spread' then
  return redis.error_reply('unknown placement ' .. placement)
end

local function choose()
  local best, bestLoad
  for _, id in ipairs(redis.call('ZRANGE', WORKERS, 0, -1)) do
    local f = redis.call('HMGET', workerKey(id), 'state', 'draining', 'capacity', 'load')
    local load = tonumber(f[4])
    if f[1] == 'healthy' and f[2] == '0' and tonumber(f[3]) - load >= cost then
      if best == nil or (placement == 'pack' and load > bestLoad)
          or (placement == 'spread' and load < bestLoad) then
        best, bestLoad = id, load
      end
    end
  end
  return best
end

local session = sessionSnapshot(key)
if session then
  dropTickets({ticket})
  countConnections(key, instance, 1, now)
  return cjson.encode({assigned = workerSnapshot(session.worker), fresh = false})
end
local head = queueHead()
if head == nil or head == ticket then
  local worker = choose()
  if worker then
    dropTickets({ticket})
    bind(key, ARGV[2], worker, now)
    countConnections(key, instance, 1, now)
    return cjson.encode({assigned = workerSnapshot(worker), fresh = true})
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
