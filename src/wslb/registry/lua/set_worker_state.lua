-- Move a worker to a state; state_since changes only when the state does.
-- "healthy" also sets last_seen; "dead" ends the worker's sessions. Entering
-- "healthy" or "dead" announces capacity.
-- ARGV: [1] worker id, [2] state (starting|healthy|unhealthy|dead), [3] now
-- Reply: the worker, or null when unknown.
local id, state, now = ARGV[1], ARGV[2], ARGV[3]
local states = {starting = true, healthy = true, unhealthy = true, dead = true}
if not states[state] then
  return redis.error_reply('unknown worker state ' .. state)
end
local wk = workerKey(id)
local current = redis.call('HGET', wk, 'state')
if not current then return cjson.encode(nil) end
local changed = current ~= state
if changed then redis.call('HSET', wk, 'state', state, 'state_since', now) end
if state == 'healthy' then redis.call('HSET', wk, 'last_seen', now) end
if state == 'dead' then
  local keys = redis.call('SMEMBERS', workerSessionsKey(id))
  endSessions(keys, now)
end
if changed and (state == 'healthy' or state == 'dead') then tellCapacity() end
return cjson.encode(workerSnapshot(id))
