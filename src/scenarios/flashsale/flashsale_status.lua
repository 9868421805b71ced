-- flashsale_status.lua: a sale's state in one round trip.
-- KEYS[1] fs:{SKU}:stock  KEYS[2] fs:{SKU}:meta  KEYS[3] fsflag:{SKU}
-- Reply: {} when the sale is unknown, else
--        {stock_total, starts_at_ms, ends_at_ms, per_user_limit, stock_left, flag}
local m = redis.call('HMGET', KEYS[2], 'stock_total', 'starts_at_ms', 'ends_at_ms', 'per_user_limit')
if not m[1] then
  return {}
end
local left = redis.call('GET', KEYS[1]) or '0'
local flag = redis.call('GET', KEYS[3]) or 'open'
return {m[1], m[2], m[3], m[4] or '1', left, flag}
