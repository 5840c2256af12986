-- Delete a worker and end its sessions.
-- ARGV: [1] worker id
-- Reply: the keys of the ended sessions (empty when unknown).
local id = ARGV[1]
if redis.call('EXISTS', workerKey(id)) == 0 then return cjson.encode({}) end
local keys = redis.call('SMEMBERS', workerSessionsKey(id))
endSessions(keys, '')  -- no idle_since to date: the worker goes
forgetWorker(id)
return cjson.encode(keys)
