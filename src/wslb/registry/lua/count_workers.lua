-- ARGV: none
-- Reply: {state: how many workers are in it} for every state (ZCARD of the
-- state indexes: no worker is read).
local counts = {}
for _, state in ipairs({'starting', 'healthy', 'unhealthy', 'dead'}) do
  counts[state] = redis.call('ZCARD', stateKey(state))
end
return cjson.encode(counts)
