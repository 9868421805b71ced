-- redpacket_status.lua: a packet's state in one round trip.
-- KEYS[1] rp:{ID}:shares  KEYS[2] rp:{ID}:meta
-- Reply: {} when unknown, else {total_cents, count, expires_at_ms, status,
--        grabbed_cents, grabbed_count, refunded_cents, remaining_count}
local m = redis.call('HMGET', KEYS[2], 'total_cents', 'count', 'expires_at_ms', 'status',
                     'grabbed_cents', 'grabbed_count', 'refunded_cents')
if not m[1] then
  return {}
end
m[8] = tostring(redis.call('LLEN', KEYS[1]))
return m
