-- One page of workers, ordered by id.
-- ARGV: [1] "0": leave out each worker's sessions (their lists grow with
--       the sessions); otherwise with them, [2] the id after which the
--       page starts ("": the first), [3] at most this many, [4] a state:
--       only workers in it ("": any)
-- Reply: the workers.
local withSessions, after, limit, state = ARGV[1] ~= '0', ARGV[2], ARGV[3], ARGV[4]
local ids = redis.call('ZRANGE', state == '' and WORKERS or stateKey(state),
  after == '' and '-' or '(' .. after, '+', 'BYLEX', 'LIMIT', 0, limit)
local workers = {}
for _, id in ipairs(ids) do
  table.insert(workers, worker(id, withSessions))
end
return cjson.encode(workers)
