-- End every session without a live connection whose disconnected_at is
-- `grace` seconds or more before `now`; announce capacity if any ended.
-- ARGV: [1] now, [2] grace (seconds)
-- Reply: the ended keys.
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local candidates = scoredUpTo(DISCONNECTED, now - grace)
local expired = {}
for i = 1, #candidates, 2 do
  if now - tonumber(candidates[i + 1]) >= grace then
    table.insert(expired, candidates[i])
  end
end
if #expired > 0 then
  endSessions(expired, ARGV[1])
  tellCapacity()
end
return cjson.encode(expired)
