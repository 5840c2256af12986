-- One page of workers, ordered by id.
-- ARGV: [1] "0": leave out each worker's sessions (their lists grow with
--       the sessions); otherwise with them, [2] the id after which the
--       page starts ("": the first), [3] at most this many, [4] a state:
--       only workers in it ("": any), [5..] the fields to read
-- Reply: a row per worker: the values of those fields in that order (HMGET:
-- no map is built), then, with sessions, the list of its session keys.
local withSessions, after, limit, state = ARGV[1] ~= '0', ARGV[2], ARGV[3], ARGV[4]
local fields = {unpack(ARGV, 5)}
local ids = redis.call('ZRANGE', state == '' and WORKERS or stateKey(state),
  after == '' and '-' or '(' .. after, '+', 'BYLEX', 'LIMIT', 0, limit)
local rows = {}
for _, id in ipairs(ids) do
  local row = redis.call('HMGET', workerKey(id), unpack(fields))
  if withSessions then table.insert(row, redis.call('SMEMBERS', workerSessionsKey(id))) end
  table.insert(rows, row)
end
return cjson.encode(rows)
