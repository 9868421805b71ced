-- flashsale_order.lua: one flash-sale purchase in the user's home shard, atomically
-- (docs/notes/scenarios.md).  An unsharded sale has one shard whose keys carry the tag {SKU};
-- shard i of a sale with K > 1 shards carries {SKU#i}.
-- KEYS[1] stock    KEYS[2] buyers (user -> order_id, or "R:<j>" while a take from shard j
--                                 is pending)
-- KEYS[3] seq      KEYS[4] events   KEYS[5] fsflag:{SKU} (unsharded) | pending (sharded: zset
--                                                          user -> reservation time ms)
-- KEYS[6] orders   KEYS[7] buyerbits (Bloom filter of the shard's home buyers, Redis bitmap
--                                     order)
-- KEYS[8] rl:fs:{tag}:<user> (the user's rate limiter: same slot as the shard)
-- KEYS[9] fs:{tag}:req:<token> (this HTTP request's token: the order it recorded, for 2 min)
-- ARGV[1] sku   ARGV[2] user_id   ARGV[3] max events stream length (0 = unbounded)
-- ARGV[4] GCRA emission interval us (0 = no limit)   ARGV[5] GCRA burst tolerance us
-- ARGV[6] order id prefix ("SKU-" unsharded, "SKU-<i>." for shard i)
-- ARGV[7] sharded: the shard to reserve when this one is empty (-1 = none), or "" unsharded
-- ARGV[8..] the user's bit positions in the buyers' Bloom filter (computed by the server)
-- Composed after strata_gcra() (src/lib/protect/gcra.lua) by the server.
-- Reply: {'ok', order_id, stock_left} | {'already', order_id} | {'pending', 'R:<j>'}
--        | {'reserved', 'R:<j>'} | {'sold_out'} | {'unknown_sale'}
--        | {'rate_limited', retry_after_us} | error 'BACKPRESSURE ...'
-- The per-user limiter runs first (the order of checks the API documents),
-- in the same call, so an order costs one round trip.
-- Idempotent per (sale, user): a repeat returns the user's existing order (or
-- the pending reservation, which the server then finishes), so a call whose
-- outcome was unknown (connection lost, failover) is safe to retry; when the
-- order was recorded by this very request (its token key names it), the
-- retry answers 'ok' as the lost reply would have, else 'already'.
-- The buyer check comes first, so a buyer learns of their order even after
-- the sale sold out.  Once sold out, servers answer non-buyers from their L1
-- using the buyers' Bloom filter (which cannot change any more); a possible
-- buyer still comes here and gets 'already'.  A reservation sets the bits too:
-- a user holding one may end up with an order from another shard.
-- The Bloom filter's bits in one BITFIELD call (one redis.call instead of one per bit:
-- each call from Lua costs more than the bit it sets).
local function set_buyer_bits()
  if #ARGV < 8 then
    return
  end
  local ops = {}
  for i = 8, #ARGV do
    ops[#ops + 1] = 'SET'
    ops[#ops + 1] = 'u1'
    ops[#ops + 1] = ARGV[i]
    ops[#ops + 1] = '1'
  end
  redis.call('BITFIELD', KEYS[7], unpack(ops))
end
local interval = tonumber(ARGV[4])
if interval > 0 then
  local g = strata_gcra(KEYS[8], interval, tonumber(ARGV[5]), 1)
  if g[1] == 0 then
    return {'rate_limited', g[3]}
  end
end
local existing = redis.call('HGET', KEYS[2], ARGV[2])
if existing then
  if string.sub(existing, 1, 2) == 'R:' then
    return {'pending', existing}
  end
  if redis.call('GET', KEYS[9]) == existing then
    return {'ok', existing, tonumber(redis.call('GET', KEYS[1]) or '0')}
  end
  return {'already', existing}
end
local stock = tonumber(redis.call('GET', KEYS[1]))
if not stock then
  return {'unknown_sale'}
end
local sharded = ARGV[7] ~= ''
if stock <= 0 then
  local cand = sharded and tonumber(ARGV[7]) or -1
  if cand and cand >= 0 then
    local resv = 'R:' .. cand
    local t = redis.call('TIME')
    redis.call('HSET', KEYS[2], ARGV[2], resv)
    redis.call('ZADD', KEYS[5], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
               ARGV[2])
    set_buyer_bits()
    return {'reserved', resv}
  end
  return {'sold_out'}
end
local maxlen = tonumber(ARGV[3])
if maxlen > 0 and redis.call('XLEN', KEYS[4]) >= maxlen then
  return redis.error_reply('BACKPRESSURE write-behind stream is full')
end
local order_id = ARGV[6] .. redis.call('INCR', KEYS[3])
local left = redis.call('DECR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[2], order_id)
redis.call('HSET', KEYS[6], order_id, ARGV[2])
redis.call('SET', KEYS[9], order_id, 'PX', 120000)
set_buyer_bits()
local t = redis.call('TIME')
local ts_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[4], '*', 'type', 'order', 'id', order_id, 'sku', ARGV[1],
           'user', ARGV[2], 'ts_ms', ts_ms)
if left == 0 and not sharded then
  redis.call('SET', KEYS[5], 'soldout')
end
return {'ok', order_id, left}
