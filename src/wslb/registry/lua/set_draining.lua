-- Set a worker's draining flag; clearing it announces capacity.
-- ARGV: [1] worker id, [2] "1" (draining) or "0"
-- Reply: the worker, or null when unknown.
local wk = workerKey(ARGV[1])
local current = redis.call('HGET', wk, 'draining')
if not current then return cjson.encode(nil) end
if current == '1' and ARGV[2] == '0' then tellCapacity() end
redis.call('HSET', wk, 'draining', ARGV[2])
reindex(ARGV[1])
return cjson.encode(workerSnapshot(ARGV[1]))
