-- tier_get.lua: read a cached key and hand out its lease (strata/tier.h).
-- KEYS[1] st:{NS:K}, a hash: v ver soft delta neg lt lx minver
-- ARGV[1] now (wall ms)  ARGV[2] lease ms  ARGV[3] token  ARGV[4] XFetch factor
--         (beta * -ln(u), u uniform in (0,1], chosen by the caller)  ARGV[5] leases on (1/0)
-- ARGV[6] stale values served (1/0): with 0 a value past its soft expiry is a miss
-- ARGV[7] refresh admitted (1/0, absent = 1): with 0 (the refresh cap refused it, or
--         was not asked) a value that is still served never gets a refresh lease:
--         'hit' instead of 'refresh', 'stale' instead of 'stale_lease'
-- Reply {state, value, version, neg, soft} where state is
--   hit          fresh value
--   refresh      fresh value, and XFetch chose this caller to refresh it early:
--                it now holds the lease (token ARGV[3])
--   stale        past its soft expiry, someone else holds the lease
--   stale_lease  past its soft expiry, this caller now holds the lease
--   lease        no value: this caller holds the lease and must load
--   wait         no value: another caller holds a live lease
--   miss         no value, leases off: load without a lease
-- The key's PEXPIRE is the hard expiry; a hash holding only a lease expires
-- after two lease times, so a dead holder's lease cannot outlive it for long.
local h = redis.call('HMGET', KEYS[1], 'v', 'ver', 'soft', 'delta', 'neg', 'lt', 'lx')
local now = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])
local v, ver, soft, delta, neg, lt, lx = h[1], h[2], tonumber(h[3]), tonumber(h[4]), h[5], h[6], tonumber(h[7])
local leases = ARGV[5] == '1'
local swr = ARGV[6] == '1'
local may_refresh = ARGV[7] ~= '0'
local free = (not lt) or (not lx) or lx <= now
local function grant()
  redis.call('HSET', KEYS[1], 'lt', ARGV[3], 'lx', now + lease_ms)
  if redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('PEXPIRE', KEYS[1], 2 * lease_ms)
  end
end
if v and ver and soft and (swr or now < soft) then
  local n = (neg == '1') and 1 or 0
  if now < soft then
    if leases and free and may_refresh and delta and now + delta * tonumber(ARGV[4]) >= soft then
      grant()
      return {'refresh', v, ver, n, soft}
    end
    return {'hit', v, ver, n, soft}
  end
  if leases and free and may_refresh then
    grant()
    return {'stale_lease', v, ver, n, soft}
  end
  return {'stale', v, ver, n, soft}
end
if not leases then
  return {'miss', '', '0', 0, 0}
end
if free then
  grant()
  return {'lease', '', '0', 0, 0}
end
return {'wait', '', '0', 0, 0}
