-- Drop tickets whose heartbeat is more than `max_age` seconds before `now`
-- (their instance died).
-- ARGV: [1] now, [2] max_age (seconds)
-- Reply: how many were dropped.
local now, maxAge = tonumber(ARGV[1]), tonumber(ARGV[2])
local candidates = scoredUpTo(TICKET_HEARTBEATS, now - maxAge)
local stale = {}
for i = 1, #candidates, 2 do
  if now - tonumber(candidates[i + 1]) > maxAge then
    table.insert(stale, candidates[i])
  end
end
dropTickets(stale)
return cjson.encode(#stale)
