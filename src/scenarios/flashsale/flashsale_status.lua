-- flashsale_status.lua: a sale's state in one round trip.
-- KEYS[1] fs:{SKU}:stock  KEYS[2] fs:{SKU}:meta  KEYS[3] fsflag:{SKU}
-- Reply: {} when the sale is unknown, else
--        {stock_total, starts_at_ms, ends_at_ms, per_user_limit, stock_left, flag, shards}
-- For a sharded sale (shards > 1) stock_left is "-1": the stock lives in the
-- shards' slots, which one script cannot read in a Cluster; the caller sums them.
local m = redis.call('HMGET', KEYS[2], 'stock_total', 'starts_at_ms', 'ends_at_ms',
                     'per_user_limit', 'shards')
if not m[1] then
  return {}
end
local shards = m[5] or '1'
local left = '-1'
if shards == '1' then
  left = redis.call('GET', KEYS[1]) or '0'
end
local flag = redis.call('GET', KEYS[3]) or 'open'
return {m[1], m[2], m[3], m[4] or '1', left, flag, shards}
