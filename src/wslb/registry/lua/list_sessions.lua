-- One page of sessions, ordered by key.
-- ARGV: [1] the key after which the page starts ("": the first), [2] at
--       most this many
-- Reply: the sessions.
local after, limit = ARGV[1], ARGV[2]
local sessions = {}
for _, key in ipairs(redis.call('ZRANGE', SESSIONS, after == '' and '-' or '(' .. after, '+',
    'BYLEX', 'LIMIT', 0, limit)) do
  table.insert(sessions, sessionSnapshot(key))
end
return cjson.encode(sessions)
