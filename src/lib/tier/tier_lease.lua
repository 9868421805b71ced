-- tier_lease.lua: extend or release a lease its holder still holds.
-- KEYS[1] st:{NS:K}  ARGV[1] token  ARGV[2] 'extend' | 'release'  ARGV[3] now (wall ms)
-- ARGV[4] lease ms.  Returns 1 when the token was the lease, 0 otherwise.
if redis.call('HGET', KEYS[1], 'lt') ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'release' then
  redis.call('HDEL', KEYS[1], 'lt', 'lx')
else
  redis.call('HSET', KEYS[1], 'lx', tonumber(ARGV[3]) + tonumber(ARGV[4]))
  if redis.call('PTTL', KEYS[1]) < 2 * tonumber(ARGV[4]) then
    redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[4]))
  end
end
return 1
