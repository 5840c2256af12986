-- ARGV: [1] "0": leave out each worker's sessions (their lists grow with
--       the sessions); otherwise with them
-- Reply: every worker, ordered by id.
local withSessions = ARGV[1] ~= '0'
local workers = {}
for _, id in ipairs(redis.call('ZRANGE', WORKERS, 0, -1)) do
  table.insert(workers, withSessions and workerSnapshot(id) or record(workerKey(id)))
end
return cjson.encode(workers)
