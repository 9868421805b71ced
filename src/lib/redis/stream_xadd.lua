-- stream_xadd.lua: XADD with backpressure (Strata write-behind streams).
-- KEYS[1] the stream; ARGV[1] max length (0 = no limit); ARGV[2..] field, value pairs.
-- Past the limit nothing is added and the caller gets an error starting with
-- BACKPRESSURE (mapped to STRATA_EBACKPRESSURE); a write-behind stream is never
-- trimmed by MAXLEN, because that would drop entries not yet persisted.
local max = tonumber(ARGV[1])
if max and max > 0 and redis.call('XLEN', KEYS[1]) >= max then
    return redis.error_reply('BACKPRESSURE stream holds ' .. max .. ' entries or more')
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
