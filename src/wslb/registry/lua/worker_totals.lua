-- ARGV: none
-- Reply: {"load": n, "capacity": n}, the sums over every worker that is not
-- dead (counters kept by reindex and forgetWorker: no worker is read).
local totals = redis.call('HMGET', TOTALS, 'load', 'capacity')
return cjson.encode({load = tonumber(totals[1] or '0'), capacity = tonumber(totals[2] or '0')})
