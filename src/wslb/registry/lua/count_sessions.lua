-- ARGV[1]: "" every session, "0" those without a live connection (in their
-- reconnect grace), "1" those with one.
-- Reply: how many (ZCARDs: no session is read).
if ARGV[1] == '0' then return cjson.encode(redis.call('ZCARD', DISCONNECTED)) end
local all = redis.call('ZCARD', SESSIONS)
if ARGV[1] == '' then return cjson.encode(all) end
return cjson.encode(all - redis.call('ZCARD', DISCONNECTED))
