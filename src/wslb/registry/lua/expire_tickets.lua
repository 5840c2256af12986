-- Drop held tickets whose heartbeat is more than `max_age` seconds before
-- `now` (their instance died) and abandoned ones whose rejoin grace ended
-- before `now`.
-- ARGV: [1] now, [2] max_age (seconds)
-- Reply: how many were dropped.
local now, maxAge = tonumber(ARGV[1]), tonumber(ARGV[2])
local stale = {}
local held = scoredUpTo(TICKET_HEARTBEATS, now - maxAge)
for i = 1, #held, 2 do
  if now - tonumber(held[i + 1]) > maxAge then table.insert(stale, held[i]) end
end
local abandoned = scoredUpTo(QUEUE_ABSENT, now)
for i = 1, #abandoned, 2 do
  if tonumber(abandoned[i + 1]) < now then table.insert(stale, abandoned[i]) end
end
dropTickets(stale)
return cjson.encode(#stale)
