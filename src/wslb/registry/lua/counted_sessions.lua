-- Some of the sessions an instance counts connections for, by SSCAN: a full
-- pass over the cursor returns each one at least once, and each call
-- reads about [3] of them.
-- ARGV: [1] instance, [2] cursor ("0": from the start), [3] how many to read
-- Reply: [the next cursor ("0": done), [session keys]]
local found = redis.call('SSCAN', instanceSessionsKey(ARGV[1]), ARGV[2], 'COUNT', ARGV[3])
return cjson.encode(found)
