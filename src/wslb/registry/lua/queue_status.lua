-- Each key's place in the queue, the queue's length and its pace
-- (IRegistry.queueStatus): O(keys * log(tickets)), plus the pace's O(1).
-- ARGV: [1] now, [2..n] session keys
-- Reply: {"length": n, "places": [{"ticket", "position", "held"} | {"session": session}
--        | {} per key], "pace": {"served", "over", "starting", "start_seconds"?}}
local places = {}
for i = 2, #ARGV do
  local place = {}
  local ticket = redis.call('HGET', QUEUE_KEYS, ARGV[i])
  if ticket then
    place = {ticket = ticket, position = redis.call('ZRANK', QUEUE, ticket),
      held = redis.call('ZSCORE', QUEUE_HELD, ticket) ~= false}
  else
    local session = sessionSnapshot(ARGV[i])
    if session then place = {session = session} end
  end
  table.insert(places, place)
end
return cjson.encode({length = redis.call('ZCARD', QUEUE), places = places,
  pace = queuePace(ARGV[1])})
