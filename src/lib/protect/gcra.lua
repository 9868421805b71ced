-- gcra.lua: the generic cell rate algorithm in one call (as redis-cell does).
-- Standalone use:  KEYS[1] limiter key
--                  ARGV[1] emission interval T, microseconds (period / rate)
--                  ARGV[2] burst tolerance tau, microseconds (T * (burst - 1))
--                  ARGV[3] cost (requests this call counts as)
-- Reply: {allowed 0|1, remaining, retry_after_us (-1 when allowed), reset_after_us}
-- The key holds the theoretical arrival time (TAT) in microseconds of Redis
-- TIME, so every Strata server shares one clock; it expires when the limiter
-- is back to a full burst.
-- Other scripts reuse strata_gcra() by being composed after the function
-- (strata_gcra_compose: everything above the STRATA_GCRA_CALL line).
local function strata_gcra(key, interval, tau, cost)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local limit = tau + interval
  local tat = tonumber(redis.call('GET', key))
  if not tat or tat < now then tat = now end
  local new_tat = tat + interval * cost
  local allow_at = new_tat - limit
  if allow_at > now then
    -- refused: nothing is stored
    local remaining = math.floor((limit - (tat - now)) / interval)
    if remaining < 0 then remaining = 0 end
    return {0, remaining, allow_at - now, tat - now}
  end
  local ttl_us = new_tat - now
  redis.call('SET', key, new_tat, 'PX', math.ceil(ttl_us / 1000))
  return {1, math.floor((limit - ttl_us) / interval), -1, ttl_us}
end
-- STRATA_GCRA_CALL
return strata_gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
