-- flashsale_unlock.lua: releases a segment lock only if we still hold it.
-- KEYS[1] the lock   ARGV[1] our token   Reply: 1 released, 0 not ours (expired)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
