-- tier_invalidate.lua: the outbox relay's invalidation of one key (strata/tier.h).
-- KEYS[1] st:{NS:K}  ARGV[1] the version the database write produced
-- ARGV[2] how long to remember it (ms)
-- Drops the value and the lease (so an outstanding lease holder's fill is
-- refused) and raises minver, so a fill of any older version loaded before
-- the write is refused too.  Idempotent: a re-delivered row changes nothing more.
local minver = tonumber(redis.call('HGET', KEYS[1], 'minver'))
local ver = tonumber(ARGV[1])
if minver == nil or ver > minver then
  minver = ver
end
redis.call('HDEL', KEYS[1], 'v', 'ver', 'soft', 'delta', 'neg', 'lt', 'lx')
redis.call('HSET', KEYS[1], 'minver', minver)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
