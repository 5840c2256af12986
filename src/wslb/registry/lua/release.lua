-- Count one live connection less for a session via an instance (nothing if
-- that instance counts none); at zero the reconnect grace starts.
-- ARGV: [1] key, [2] instance, [3] now
-- Reply: the session, or null.
local key, instance = ARGV[1], ARGV[2]
local mine = tonumber(redis.call('HGET', sessionKey(key), 'conn:' .. instance))
if mine and mine > 0 then countConnections(key, instance, -1, ARGV[3]) end
return cjson.encode(sessionSnapshot(key))
