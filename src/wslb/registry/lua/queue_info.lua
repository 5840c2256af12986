-- ARGV: none
-- Reply: {"length": n, "head_enqueued_at": time or "", "demand": sum of costs}
-- (the demand is a counter kept by enqueue and dropTickets: O(1))
local head = queueHead()
return cjson.encode({
  length = redis.call('ZCARD', QUEUE),
  head_enqueued_at = head and redis.call('HGET', ticketKey(head), 'enqueued_at') or '',
  demand = tonumber(redis.call('GET', QUEUE_DEMAND) or '0'),
})
