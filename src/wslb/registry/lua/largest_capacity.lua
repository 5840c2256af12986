-- ARGV: none
-- Reply: the largest capacity of any worker that is not dead, 0 when there
-- is none (the top of the capacities index).
local top = redis.call('ZRANGE', CAPACITIES, 0, 0, 'REV', 'WITHSCORES')
return cjson.encode(tonumber(top[2] or '0'))
