-- Refresh the heartbeat of tickets an instance still holds; one abandoned
-- meanwhile (by another holder of its key) is held again. Unknown ones are
-- ignored.
-- ARGV: [1] now, [2..n] tickets
-- Reply: null.
for i = 2, #ARGV do
  if redis.call('ZADD', TICKET_HEARTBEATS, 'XX', 'CH', ARGV[1], ARGV[i]) == 0
      and redis.call('ZSCORE', QUEUE_ABSENT, ARGV[i]) then
    holdTicket(ARGV[i], ARGV[1], nil, nil)
  end
end
return cjson.encode(nil)
