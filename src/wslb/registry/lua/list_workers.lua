-- ARGV: none
-- Reply: every worker, ordered by id.
local workers = {}
for _, id in ipairs(redis.call('ZRANGE', WORKERS, 0, -1)) do
  table.insert(workers, workerSnapshot(id))
end
return cjson.encode(workers)
