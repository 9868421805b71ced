-- flashsale_order.lua: one flash-sale purchase, atomically (docs/notes/scenarios.md).
-- KEYS[1] fs:{SKU}:stock    KEYS[2] fs:{SKU}:buyers   KEYS[3] fs:{SKU}:seq
-- KEYS[4] fs:{SKU}:events   KEYS[5] fsflag:{SKU}      KEYS[6] fs:{SKU}:orders
-- KEYS[7] fs:{SKU}:buyerbits (Bloom filter of buyers, Redis bitmap order)
-- KEYS[8] rl:fs:{SKU}:<user> (the user's rate limiter: same slot as the sale)
-- ARGV[1] sku   ARGV[2] user_id   ARGV[3] max events stream length (0 = unbounded)
-- ARGV[4] GCRA emission interval us (0 = no limit)   ARGV[5] GCRA burst tolerance us
-- ARGV[6..] the user's bit positions in the buyers' Bloom filter (computed by the server)
-- Composed after strata_gcra() (src/lib/protect/gcra.lua) by the server.
-- Reply: {'ok', order_id, stock_left} | {'already', order_id} | {'sold_out'}
--        | {'unknown_sale'} | {'rate_limited', retry_after_us} | error 'BACKPRESSURE ...'
-- The per-user limiter runs first (the order of checks the API documents),
-- in the same call, so an order costs one round trip.
-- Idempotent per (sale, user): a repeat returns the user's existing order, so a
-- call whose outcome was unknown (connection lost, failover) is safe to retry.
-- The buyer check comes first, so a buyer learns of their order even after
-- the sale sold out.  Once sold out, servers answer non-buyers from their L1
-- using the buyers' Bloom filter (which cannot change any more); a possible
-- buyer still comes here and gets 'already'.
local interval = tonumber(ARGV[4])
if interval > 0 then
  local g = strata_gcra(KEYS[8], interval, tonumber(ARGV[5]), 1)
  if g[1] == 0 then
    return {'rate_limited', g[3]}
  end
end
local existing = redis.call('HGET', KEYS[2], ARGV[2])
if existing then
  return {'already', existing}
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
local order_id = ARGV[1] .. '-' .. redis.call('INCR', KEYS[3])
local left = redis.call('DECR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[2], order_id)
redis.call('HSET', KEYS[6], order_id, ARGV[2])
for i = 6, #ARGV do
  redis.call('SETBIT', KEYS[7], ARGV[i], 1)
end
local t = redis.call('TIME')
local ts_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[4], '*', 'type', 'order', 'id', order_id, 'sku', ARGV[1],
           'user', ARGV[2], 'ts_ms', ts_ms)
if left == 0 then
  redis.call('SET', KEYS[5], 'soldout')
end
return {'ok', order_id, left}
