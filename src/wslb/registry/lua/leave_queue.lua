-- Remove a ticket from the queue (its client gave up). Idempotent.
-- ARGV: [1] ticket
-- Reply: null.
dropTickets({ARGV[1]})
return cjson.encode(nil)
