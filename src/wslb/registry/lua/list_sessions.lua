-- ARGV: none
-- Reply: every session, ordered by key.
local sessions = {}
for _, key in ipairs(redis.call('ZRANGE', SESSIONS, 0, -1)) do
  table.insert(sessions, sessionSnapshot(key))
end
return cjson.encode(sessions)
