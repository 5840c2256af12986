-- Count out one live connection of a session: the one request [4] counted
-- (nothing when it counts none, so a release retried after an unknown
-- outcome counts once), or with [4] = "" any one instance [2] counts. At
-- zero the reconnect grace starts.
-- ARGV: [1] key, [2] instance, [3] now, [4] request id or ""
-- Reply: the session, or null.
local key, instance, now, request = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if request == '' then request = requestsOf(key, instance)[1] end
if request then disconnect(key, request, now) end
return cjson.encode(sessionSnapshot(key))
