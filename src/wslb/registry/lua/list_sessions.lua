-- One page of sessions, ordered by key.
-- ARGV: [1] the key after which the page starts ("": the first), [2] at
--       most this many, [3..] the fields to read
-- Reply: a row per session: the values of those fields in that order.
local after, limit = ARGV[1], ARGV[2]
local fields = {unpack(ARGV, 3)}
local rows = {}
for _, key in ipairs(redis.call('ZRANGE', SESSIONS, after == '' and '-' or '(' .. after, '+',
    'BYLEX', 'LIMIT', 0, limit)) do
  table.insert(rows, redis.call('HMGET', sessionKey(key), unpack(fields)))
end
return cjson.encode(rows)
