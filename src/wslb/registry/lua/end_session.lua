-- End a session: delete it, free its cost, announce capacity.
-- ARGV: [1] key, [2] now (dates the worker's idle_since if left empty)
-- Reply: the session as it was, or null.
local session = sessionSnapshot(ARGV[1])
if session then
  endSessions({ARGV[1]}, ARGV[2])
  tellCapacity()
end
return cjson.encode(session)
