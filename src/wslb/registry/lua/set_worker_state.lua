-- Move a worker to a state; state_since changes only when the state does.
-- "healthy" also sets last_seen (and, from "starting", counts a start time);
-- "dead" ends the worker's sessions. Entering
-- "healthy" or "dead" announces capacity. With ARGV[5], only a worker in one
-- of those states moves (checked here, so the check and the move are one
-- atomic step); any other is left as it was.
-- ARGV: [1] worker id, [2] state (starting|healthy|unhealthy|dead), [3] now,
--       [4] "0": reply without the worker's sessions, else with them,
--       [5] optional: the states it may move from, space-separated ("": none)
-- Reply: the worker as it is afterwards, or null when unknown.
local id, state, now, allowedFrom = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local function reply() return cjson.encode(worker(id, ARGV[4] ~= '0')) end
local states = {starting = true, healthy = true, unhealthy = true, dead = true}
if not states[state] then
  return redis.error_reply('unknown worker state ' .. state)
end
local allowed = nil
if allowedFrom then
  allowed = {}
  for from in string.gmatch(allowedFrom, '%S+') do
    if not states[from] then return redis.error_reply('unknown worker state ' .. from) end
    allowed[from] = true
  end
end
local wk = workerKey(id)
local current = redis.call('HGET', wk, 'state')
if not current then return cjson.encode(nil) end
if allowed and not allowed[current] then return reply() end
local changed = current ~= state
if changed then redis.call('HSET', wk, 'state', state, 'state_since', now) end
if current == 'starting' and state == 'healthy' then
  countStart(tonumber(now) - tonumber(redis.call('HGET', wk, 'started_at')))
end
if state == 'healthy' then redis.call('HSET', wk, 'last_seen', now) end
if state == 'dead' then
  local keys = redis.call('SMEMBERS', workerSessionsKey(id))
  endSessions(keys, now)
end
reindex(id)
if changed and (state == 'healthy' or state == 'dead') then tellCapacity() end
return reply()
