-- ARGV: none
-- Reply: {"length": n, "head_enqueued_at": time or "", "demand": sum of costs}
local tickets = redis.call('ZRANGE', QUEUE, 0, -1)
local demand = 0
for _, ticket in ipairs(tickets) do
  demand = demand + tonumber(redis.call('HGET', ticketKey(ticket), 'cost'))
end
local head = ''
if tickets[1] then head = redis.call('HGET', ticketKey(tickets[1]), 'enqueued_at') end
return cjson.encode({length = #tickets, head_enqueued_at = head, demand = demand})
