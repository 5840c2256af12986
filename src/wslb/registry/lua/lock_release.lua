-- Release a lock only if it still holds our token (compare-and-delete).
-- Not a registry script: no prelude.
-- KEYS: [1] the lock key.  ARGV: [1] token
-- Reply: 1 when released, 0 when it was not ours (any more).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
