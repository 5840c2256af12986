-- Register a worker in state "starting"; an existing record stays unchanged.
-- ARGV: [1] worker id, [2] url, [3] provider, [4] capacity, [5] now
-- Reply: the worker.
local id = ARGV[1]
if redis.call('EXISTS', workerKey(id)) == 0 then
  newWorker(id, ARGV[2], ARGV[3], ARGV[4], 'starting', ARGV[5])
end
return cjson.encode(workerSnapshot(id))
