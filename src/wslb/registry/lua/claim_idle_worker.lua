-- Delete a worker only if it has no sessions, so it can be terminated
-- without racing an assignment.
-- ARGV: [1] worker id
-- Reply: true when claimed, false when loaded or unknown.
local id = ARGV[1]
if redis.call('EXISTS', workerKey(id)) == 0
    or redis.call('SCARD', workerSessionsKey(id)) > 0 then
  return cjson.encode(false)
end
forgetWorker(id)
return cjson.encode(true)
