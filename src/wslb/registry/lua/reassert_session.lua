-- After Redis lost its data (or forgot this instance), an instance
-- re-asserts a session it is relaying right now: the worker record is
-- recreated if missing (state healthy: it is serving this user), the session
-- is bound to it if missing (its cost joins the worker's load, even past
-- capacity: the user is already there), and this instance's connections of
-- it become those of the given request ids. A key bound to another worker meanwhile
-- is left alone: the caller sees it in the reply and should close its user
-- (1012) so that it reconnects to that worker.
-- ARGV: [1] key, [2] worker id, [3] worker url, [4] provider, [5] capacity,
--       [6] cost, [7] instance, [8] the request ids of its connections
--       (space-separated, at least one), [9] now
-- Reply: the session as the registry now has it.
local key, workerId, instance, now = ARGV[1], ARGV[2], ARGV[7], ARGV[9]
if redis.call('EXISTS', workerKey(workerId)) == 0 then
  newWorker(workerId, ARGV[3], ARGV[4], ARGV[5], 'healthy', now)
  redis.call('HSET', workerKey(workerId), 'last_seen', now)
end
local listed = {}
for request in string.gmatch(ARGV[8], '%S+') do table.insert(listed, request) end
local session = sessionSnapshot(key)
if session == nil then
  bind(key, ARGV[6], workerId, now, instance, listed, false)
elseif session.worker == workerId then
  local wanted = {}
  for _, request in ipairs(listed) do wanted[request] = true end
  for _, request in ipairs(requestsOf(key, instance)) do
    if not wanted[request] then disconnect(key, request, now) end
  end
  for _, request in ipairs(listed) do connect(key, instance, request, false, now) end
  local rest = (tonumber(redis.call('HGET', sessionKey(key), 'conn:' .. instance)) or 0) - #listed
  if rest > 0 then countConnections(key, instance, -rest, now) end  -- counted without an id
else
  return cjson.encode(session)
end
return cjson.encode(sessionSnapshot(key))
