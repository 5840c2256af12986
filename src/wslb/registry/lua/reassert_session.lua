-- After Redis lost its data (or forgot this instance), an instance
-- re-asserts a session it is relaying right now: the worker record is
-- recreated if missing (state healthy: it is serving this user), the session
-- is bound to it if missing (its cost joins the worker's load, even past
-- capacity: the user is already there), and this instance's connection
-- count is set to `connections`. A key bound to another worker meanwhile
-- is left alone: the caller sees it in the reply and should close its user
-- (1012) so that it reconnects to that worker.
-- ARGV: [1] key, [2] worker id, [3] worker url, [4] provider, [5] capacity,
--       [6] cost, [7] instance, [8] connections (>= 1), [9] now
-- Reply: the session as the registry now has it.
local key, workerId, instance, now = ARGV[1], ARGV[2], ARGV[7], ARGV[9]
if redis.call('EXISTS', workerKey(workerId)) == 0 then
  newWorker(workerId, ARGV[3], ARGV[4], ARGV[5], 'healthy', now)
  redis.call('HSET', workerKey(workerId), 'last_seen', now)
end
local session = sessionSnapshot(key)
if session == nil then
  bind(key, ARGV[6], workerId, now, instance, ARGV[8])
elseif session.worker == workerId then
  local mine = tonumber(redis.call('HGET', sessionKey(key), 'conn:' .. instance)) or 0
  countConnections(key, instance, tonumber(ARGV[8]) - mine, now)
else
  return cjson.encode(session)
end
return cjson.encode(sessionSnapshot(key))
