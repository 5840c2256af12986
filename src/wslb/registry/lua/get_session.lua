-- ARGV: [1] key
-- Reply: the session, or null.
return cjson.encode(sessionSnapshot(ARGV[1]))
