-- ARGV: none
-- Reply: {"length": n, "head_enqueued_at": time or "", "demand": sum of costs}
-- (the demand is a counter kept by enqueue and dropTickets: O(1))
local head = redis.call('ZRANGE', QUEUE, 0, 0)[1]  -- held or not: the longest wait
return cjson.encode({
  length = redis.call('ZCARD', QUEUE),
  head_enqueued_at = head and redis.call('HGET', ticketKey(head), 'enqueued_at') or '',
  demand = tonumber(redis.call('GET', QUEUE_DEMAND) or '0'),
})
