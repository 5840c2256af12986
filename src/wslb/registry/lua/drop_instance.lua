-- A wslb instance died: drop the connections it counted. Sessions left
-- without a live connection start their reconnect grace at `now`.
-- ARGV: [1] instance, [2] now
-- Reply: the keys whose grace started.
return cjson.encode(dropInstance(ARGV[1], ARGV[2]))
