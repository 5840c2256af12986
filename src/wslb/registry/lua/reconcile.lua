-- Make the connections instance [1] counts for some of its sessions match
-- what it holds (IRegistry.reconcile, a page at a time: see
-- counted_sessions.lua): each one it counts for a request id it does not
-- hold any more is counted out (its release or abandon was lost).
-- ARGV: [1] instance, [2] now, then pairs: a session key, the space-separated
--       request ids of its connections the instance holds ("": none)
-- Reply: the keys whose counts changed.
local instance, now = ARGV[1], ARGV[2]
local changed = {}
for i = 3, #ARGV, 2 do
  local key, mine, touched = ARGV[i], {}, false
  for request in string.gmatch(ARGV[i + 1], '%S+') do mine[request] = true end
  for _, request in ipairs(requestsOf(key, instance)) do
    if not mine[request] then
      disconnect(key, request, now)
      touched = true
    end
  end
  if touched then table.insert(changed, key) end
end
return cjson.encode(changed)
