-- Extend a lock only if it still holds our token (compare-and-pexpire).
-- Not a registry script: no prelude.
-- KEYS: [1] the lock key.  ARGV: [1] token, [2] ttl in milliseconds
-- Reply: 1 when renewed, 0 when it was not ours (any more).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
