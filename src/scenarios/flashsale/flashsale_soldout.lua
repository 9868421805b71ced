-- flashsale_soldout.lua: marks a sharded sale sold out once a server saw every shard empty.
-- KEYS[1] fsflag:{SKU}   Reply: 1 changed, 0 already sold out (or no such sale).
-- Written only on the change: every server tracks this key, and each write is an
-- invalidation message to all of them.
if redis.call('GET', KEYS[1]) == 'open' then
  redis.call('SET', KEYS[1], 'soldout')
  return 1
end
return 0
