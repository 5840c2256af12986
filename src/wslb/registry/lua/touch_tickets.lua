-- Refresh the heartbeat of tickets an instance still holds (unknown ones
-- are ignored).
-- ARGV: [1] now, [2..n] tickets
-- Reply: null.
for i = 2, #ARGV do
  redis.call('ZADD', TICKET_HEARTBEATS, 'XX', ARGV[1], ARGV[i])
end
return cjson.encode(nil)
