-- redpacket_create.lua: stores a pre-split red packet (docs/notes/scenarios.md).
-- KEYS[1] rp:{ID}:shares  KEYS[2] rp:{ID}:meta  KEYS[3] rpflag:{ID} (tracked by every L1)
-- ARGV[1] total_cents  ARGV[2] count  ARGV[3] expires_at_ms  ARGV[4..] the shares
-- Reply: {'ok'} | {'exists'} | {'bad_split'} (shares do not add up: never stored)
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'exists'}
end
local n = #ARGV - 3
if n ~= tonumber(ARGV[2]) then
  return {'bad_split'}
end
local sum = 0
for i = 4, #ARGV do
  local s = tonumber(ARGV[i])
  if not s or s < 1 then
    return {'bad_split'}
  end
  sum = sum + s
end
if sum ~= tonumber(ARGV[1]) then
  return {'bad_split'}
end
for i = 4, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HSET', KEYS[2], 'total_cents', ARGV[1], 'count', ARGV[2], 'expires_at_ms', ARGV[3],
           'status', 'open', 'grabbed_cents', 0, 'grabbed_count', 0, 'refunded_cents', 0)
redis.call('SET', KEYS[3], 'open')
return {'ok'}
