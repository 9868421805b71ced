-- flashsale_create.lua: loads a sale's stock and window into Redis once.
-- KEYS[1] fs:{SKU}:stock  KEYS[2] fs:{SKU}:meta  KEYS[3] fsflag:{SKU}
-- ARGV[1] stock  ARGV[2] starts_at_ms  ARGV[3] ends_at_ms (0 = none)  ARGV[4] per_user_limit
-- ARGV[5] shards (1 = the stock is KEYS[1]; K > 1: the server loaded the K stock shards
--         fs:{SKU#i}:stock before this call, and KEYS[1] is not used)
-- Reply: {'ok'} | {'exists'}  (a sale is never reset: its stock is truth)
-- fsflag:{SKU} is the one key of a sale that every server's L1 tracks: it
-- changes twice in a sale's life (open, soldout), so tracking invalidations
-- stay rare while the stock key changes on every order.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'exists'}
end
local shards = tonumber(ARGV[5]) or 1
if shards == 1 then
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('HSET', KEYS[2], 'stock_total', ARGV[1], 'starts_at_ms', ARGV[2],
           'ends_at_ms', ARGV[3], 'per_user_limit', ARGV[4], 'shards', shards)
if tonumber(ARGV[1]) > 0 then
  redis.call('SET', KEYS[3], 'open')
else
  redis.call('SET', KEYS[3], 'soldout')
end
return {'ok'}
