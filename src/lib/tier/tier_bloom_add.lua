-- tier_bloom_add.lua: set a key's Bloom bits (positions from strata_bloom_positions).
-- KEYS[1] st:bloom:{NS}  KEYS[2] st:bloom:{NS}:pending  ARGV = bit positions
-- While the bitmap is absent (being rebuilt) the bits go to the pending key,
-- which the rebuild merges, so no insert made during a rebuild is lost.
local target = KEYS[1]
if redis.call('EXISTS', KEYS[1]) == 0 then
  target = KEYS[2]
end
for i = 1, #ARGV do
  redis.call('SETBIT', target, tonumber(ARGV[i]), 1)
end
if target == KEYS[2] then
  redis.call('PEXPIRE', KEYS[2], 3600000)
end
return 1
