-- ARGV: [1] worker id
-- Reply: the worker, or null.
return cjson.encode(workerSnapshot(ARGV[1]))
