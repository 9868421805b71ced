-- tier_bloom_swap.lua: install a rebuilt Bloom bitmap, merged with the bits
-- inserts set while it was being rebuilt.
-- KEYS[1] st:bloom:{NS}  KEYS[2] st:bloom:{NS}:pending  ARGV[1] the bitmap bytes
redis.call('SET', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('BITOP', 'OR', KEYS[1], KEYS[1], KEYS[2])
  redis.call('DEL', KEYS[2])
end
return 1
