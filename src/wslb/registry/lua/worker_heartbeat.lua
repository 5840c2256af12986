-- A worker said it is alive: set last_seen.
-- ARGV: [1] worker id, [2] now
-- Reply: the worker, or null when unknown.
if redis.call('EXISTS', workerKey(ARGV[1])) == 0 then return cjson.encode(nil) end
redis.call('HSET', workerKey(ARGV[1]), 'last_seen', ARGV[2])
return cjson.encode(workerSnapshot(ARGV[1]))
