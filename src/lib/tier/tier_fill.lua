-- tier_fill.lua: compare-and-set fill of a cached key (strata/tier.h).
-- KEYS[1] st:{NS:K}
-- ARGV[1] lease token ('' when leases are off)  ARGV[2] version  ARGV[3] value
-- ARGV[4] soft expiry (wall ms)  ARGV[5] hard TTL (ms from now)  ARGV[6] compute time (ms)
-- ARGV[7] negative (1/0)
-- Refused ('lost') when the token is no longer the lease: a delete (the outbox
-- relay) or a takeover invalidated it.  Refused ('older') when Redis already
-- knows a newer version (a newer fill, or the version an invalidation recorded
-- in minver): a fill never overwrites a newer version.  Otherwise 'ok'.
local h = redis.call('HMGET', KEYS[1], 'lt', 'ver', 'minver')
if ARGV[1] ~= '' and h[1] ~= ARGV[1] then
  return 'lost'
end
local ver = tonumber(ARGV[2])
local cur = tonumber(h[2])
local minver = tonumber(h[3])
if (cur and cur > ver) or (minver and minver > ver) then
  if ARGV[1] ~= '' then
    redis.call('HDEL', KEYS[1], 'lt', 'lx')
  end
  return 'older'
end
if minver == nil or ver > minver then
  minver = ver
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'ver', ARGV[2], 'soft', ARGV[4], 'delta', ARGV[6],
           'neg', ARGV[7], 'minver', minver)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
return 'ok'
