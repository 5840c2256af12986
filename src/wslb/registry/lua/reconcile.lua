-- Make the connections instance [1] counts match what it holds
-- (IRegistry.reconcile): each one it counts for a request id it does not
-- hold any more is counted out (its release or abandon was lost). Reads the
-- instance's own sessions only.
-- ARGV: [1] instance, [2] now, then pairs: a session key, the space-separated
--       request ids of its connections the instance holds
-- Reply: the keys whose counts changed.
local instance, now = ARGV[1], ARGV[2]
local held = {}
for i = 3, #ARGV, 2 do
  local ids = {}
  for request in string.gmatch(ARGV[i + 1], '%S+') do ids[request] = true end
  held[ARGV[i]] = ids
end
local changed = {}
for _, key in ipairs(redis.call('SMEMBERS', instanceSessionsKey(instance))) do
  local mine, touched = held[key] or {}, false
  for _, request in ipairs(requestsOf(key, instance)) do
    if not mine[request] then
      disconnect(key, request, now)
      touched = true
    end
  end
  if touched then table.insert(changed, key) end
end
return cjson.encode(changed)
