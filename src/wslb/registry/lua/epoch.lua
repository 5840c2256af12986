-- The registry's epoch: a random value set once and kept until Redis loses
-- its data. Pollers compare it with the value they saw before.
-- ARGV: [1] a fresh random value, used when none is set
-- Reply: the epoch (a JSON string).
local key = P .. 'epoch'
redis.call('SET', key, ARGV[1], 'NX')
return cjson.encode(redis.call('GET', key))
