-- tier_refresh.lua: the refresh-load cap of a namespace (strata/tier.h, D-T11).
-- A GCRA (as gcra.lua) on the CALLER's clock (the tier's, like tier_get.lua:
-- leases and soft expiries use it too, so a manual test clock drives all of
-- them), whose rate follows the namespace's key population:
--   rate = max(floor, pct/100 * n / ttl),   n = distinct keys filled in the
--   last window (PFCOUNT of the HyperLogLogs tier_seen.lua fills), recounted
--   at most once per second of the caller's clock and kept here.
-- KEYS[1] st:rl:{NS}  hash: tat (us), n, nat (ms when n was counted)
-- KEYS[2..] st:hll:{NS}:<epoch>, the epochs covering the window (same slot)
-- ARGV[1] now (ms)  ARGV[2] ttl (ms)  ARGV[3] pct  ARGV[4] floor (loads/s)
-- ARGV[5] urgent (1/0): admitted whatever the budget, but still charged
-- ARGV[6] burst tolerance (us)  ARGV[7] PEXPIRE of KEYS[1] (ms)
-- Reply {allowed 0|1, wait_ms (0 when allowed), rate (loads/s * 1000), n}
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'tat', 'n', 'nat')
local n, nat = tonumber(h[2]), tonumber(h[3])
if not n or not nat or now - nat >= 1000 or now < nat then
  n = 0
  if #KEYS > 1 then
    n = redis.call('PFCOUNT', unpack(KEYS, 2))
  end
  nat = now
end
local rate = tonumber(ARGV[3]) / 100 * n * 1000 / tonumber(ARGV[2])
local floor = tonumber(ARGV[4])
if rate < floor then rate = floor end
local interval = 1000000 / rate
local now_us = now * 1000
local tat = tonumber(h[1])
if not tat or tat < now_us then tat = now_us end
local fmt = function(x) return string.format('%.0f', x) end
if ARGV[5] ~= '1' and tat - now_us > tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[1], 'n', n, 'nat', fmt(nat))
  return {0, math.ceil((tat - now_us - tonumber(ARGV[6])) / 1000), math.floor(rate * 1000), n}
end
redis.call('HSET', KEYS[1], 'tat', fmt(tat + interval), 'n', n, 'nat', fmt(nat))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
return {1, 0, math.floor(rate * 1000), n}
