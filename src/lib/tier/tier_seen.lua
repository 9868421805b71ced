-- tier_seen.lua: counts a filled key in its namespace's population (D-T11).
-- KEYS[1] st:hll:{NS}:<epoch>  ARGV[1] the user key  ARGV[2] PEXPIRE (ms)
-- The refresh cap (tier_refresh.lua) takes the union of the last epochs.
if redis.call('PFADD', KEYS[1], ARGV[1]) == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
