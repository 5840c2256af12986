-- ARGV: none
-- Reply: how many sessions there are (ZCARD: no session is read).
return cjson.encode(redis.call('ZCARD', SESSIONS))
