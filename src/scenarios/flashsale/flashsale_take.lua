-- flashsale_take.lua: takes one unit from shard j of a sharded sale for a user whose home
-- shard is sold out and who holds the reservation "R:<j>" in their home shard
-- (docs/notes/scenarios.md, "Stock shards").  Idempotent per user: the shard's `taken` hash
-- remembers the order, so a repeat (an unknown outcome retried, another request of the same
-- user, the sweeper finishing a crashed server's reservation) returns the same order.
-- KEYS[1] stock   KEYS[2] taken (user -> order_id)   KEYS[3] seq   KEYS[4] events
-- KEYS[5] orders   KEYS[6] req:<token> (the HTTP request's token; all fs:{SKU#j}:...)
-- ARGV[1] sku   ARGV[2] user_id   ARGV[3] max events stream length (0 = unbounded)
-- ARGV[4] order id prefix "SKU-<j>."
-- Reply: {'ok', order_id, stock_left} | {'repeat', order_id} | {'sold_out'} | {'unknown_sale'}
--        | error 'BACKPRESSURE ...'
-- A repeat of the very request that took (its token key names the order: a retried call
-- whose reply was lost) answers 'ok' again, so that request can answer 201.
-- A stock never grows, so once this answers sold_out for a user it can never
-- answer ok for that user: that is what makes releasing the reservation safe.
local got = redis.call('HGET', KEYS[2], ARGV[2])
if got then
  if redis.call('GET', KEYS[6]) == got then
    return {'ok', got, tonumber(redis.call('GET', KEYS[1]) or '0')}
  end
  return {'repeat', got}
end
local stock = tonumber(redis.call('GET', KEYS[1]))
if not stock then
  return {'unknown_sale'}
end
if stock <= 0 then
  return {'sold_out'}
end
local maxlen = tonumber(ARGV[3])
if maxlen > 0 and redis.call('XLEN', KEYS[4]) >= maxlen then
  return redis.error_reply('BACKPRESSURE write-behind stream is full')
end
local order_id = ARGV[4] .. redis.call('INCR', KEYS[3])
local left = redis.call('DECR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[2], order_id)
redis.call('HSET', KEYS[5], order_id, ARGV[2])
redis.call('SET', KEYS[6], order_id, 'PX', 120000)
local t = redis.call('TIME')
local ts_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[4], '*', 'type', 'order', 'id', order_id, 'sku', ARGV[1],
           'user', ARGV[2], 'ts_ms', ts_ms)
return {'ok', order_id, left}
