-- flashsale_settle.lua: compare-and-set of a user's record in their home shard, the step
-- after a take from another shard (docs/notes/scenarios.md, "Stock shards").
-- KEYS[1] buyers   KEYS[2] pending (zset user -> reservation time ms)   (fs:{SKU#h}:...)
-- ARGV[1] user_id   ARGV[2] the expected record "R:<j>"
-- ARGV[3] the new record: an order id (confirm), "R:<k>" (move on to shard k), "" (release)
-- Reply: {'ok'} when the record is now ARGV[3] (set here, or by an earlier run of the same
--        step: idempotent) | {'changed', current record or ''}.
-- Confirming also accepts an absent record: by the protocol a reservation for j is removed
-- only after a take from j answered sold_out for this user, which then never has an order
-- in j; writing the order back can only make a second purchase impossible.
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local new = ARGV[3]
if cur == new then
  return {'ok'}
end
local confirming = new ~= '' and string.sub(new, 1, 2) ~= 'R:'
if cur ~= ARGV[2] and not (confirming and cur == '') then
  return {'changed', cur}
end
if new == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif confirming then
  redis.call('HSET', KEYS[1], ARGV[1], new)
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], ARGV[1], new)
  redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
             ARGV[1])
end
return {'ok'}
