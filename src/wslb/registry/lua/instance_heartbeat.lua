-- A wslb instance is alive: (re)set its heartbeat key with a TTL and list it.
-- ARGV: [1] instance, [2] ttl in milliseconds
-- Reply: true when the previous heartbeat was still there; false on the
-- first beat, after the instance was swept, or after Redis lost its data
-- (in the last two cases the instance should re-assert its sessions).
local known = redis.call('EXISTS', instanceKey(ARGV[1])) == 1
redis.call('SET', instanceKey(ARGV[1]), '1', 'PX', ARGV[2])
redis.call('SADD', INSTANCES, ARGV[1])
return cjson.encode(known)
