-- ARGV: [1] worker id, [2] "0": without its sessions, else with them
-- Reply: the worker, or null.
return cjson.encode(worker(ARGV[1], ARGV[2] ~= '0'))
