-- flashsale_pending.lua: the reservations of one home shard older than a given age, for the
-- sweeper that finishes what a crashed (or stalled) server left (docs/notes/scenarios.md).
-- KEYS[1] pending (zset user -> reservation time ms)   KEYS[2] buyers   (fs:{SKU#h}:...)
-- ARGV[1] minimum age ms   ARGV[2] at most this many
-- Reply: {pending_total, user1, record1, user2, record2, ...}; entries whose record is no
-- longer a reservation are dropped from the set here.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0,
                         tonumber(ARGV[2]))
local out = {0}
for _, u in ipairs(users) do
  local rec = redis.call('HGET', KEYS[2], u)
  if rec and string.sub(rec, 1, 2) == 'R:' then
    out[#out + 1] = u
    out[#out + 1] = rec
  else
    redis.call('ZREM', KEYS[1], u)
  end
end
out[1] = redis.call('ZCARD', KEYS[1])
return out
