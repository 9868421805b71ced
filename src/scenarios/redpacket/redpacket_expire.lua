-- redpacket_expire.lua: the open -> expired transition, exactly once: the
-- ungrabbed remainder is refunded in the same call that closes the packet.
-- KEYS[1] rp:{ID}:shares  KEYS[2] rp:{ID}:meta  KEYS[3] rp:{ID}:grabs  KEYS[4] rp:{ID}:events
-- KEYS[5] rpflag:{ID}
-- ARGV[1] packet id  ARGV[2] now_ms (server clock)
-- Reply: {'refunded', cents} | {'already', cents} | {'not_expired'} | {'unknown'}
local meta = redis.call('HMGET', KEYS[2], 'status', 'expires_at_ms', 'refunded_cents')
if not meta[1] then
  return {'unknown'}
end
if meta[1] == 'expired' then
  return {'already', tonumber(meta[3])}
end
if tonumber(ARGV[2]) < tonumber(meta[2]) then
  return {'not_expired'}
end
local sum = 0
for _, s in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  sum = sum + tonumber(s)
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'status', 'expired', 'refunded_cents', sum)
redis.call('SET', KEYS[5], 'gone')
local t = redis.call('TIME')
local ts_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[4], '*', 'type', 'refund', 'id', ARGV[1] .. ':refund',
           'packet', ARGV[1], 'amount', sum, 'ts_ms', ts_ms)
return {'refunded', sum}
