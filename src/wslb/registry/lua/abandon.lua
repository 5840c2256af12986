-- The caller of assign for request [2] gave up on its answer (IRegistry.
-- abandon): undo that assign, whether it ran already or is still to run.
-- Redis runs one connection's commands in the order they came, so an assign
-- sent on the same connection before this has run by now; one still on its
-- way (sent on a connection since lost, or this abandon retried) finds the
-- request id remembered as abandoned and does nothing. The connection it
-- counted is counted out; a session it bound that no connection holds now is
-- ended, not left in its reconnect grace (its user never had it); the key's
-- ticket, when this request holds it, leaves the queue, or with [5] keeps its
-- place until then, held by nobody.
-- ARGV: [1] key, [2] request id, [3] now, [4] how long to remember it (ms),
--       [5] until when its ticket keeps its place ("": it leaves at once)
-- Reply: the session as it is now, or null (ended, or none).
local key, request, now, keepPlaceUntil = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
redis.call('SET', abandonedKey(request), '1', 'PX', ARGV[4])
local ticket = redis.call('HGET', QUEUE_KEYS, key)
if ticket and redis.call('HGET', ticketKey(ticket), 'holder') == request then
  if keepPlaceUntil ~= '' then abandonTicket(ticket, keepPlaceUntil) else dropTickets({ticket}) end
end
local held = disconnect(key, request, now)
if held and string.sub(held, 1, 1) == '+'
    and redis.call('HGET', sessionKey(key), 'connections') == '0' then
  endSessions({key}, now)
  tellCapacity()
end
return cjson.encode(sessionSnapshot(key))
