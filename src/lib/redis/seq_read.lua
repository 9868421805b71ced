-- seq_read.lua: one poll of a sequence stream written by tracked_write.lua
-- (reader: redis_tracking.c).
--
-- KEYS[1] the sequence stream; ARGV[1] the last sequence the reader applied
-- (0 = none yet); ARGV[2] the most entries to return (>= 1).
-- Returns { top, id1, key1, id2, key2, ... }: `top` is the id of the newest
-- entry ("" when the stream does not exist or is empty), then the entries
-- after `0-<last>` in order.  The reader finds a gap when the first entry is
-- not last + 1 (trimmed away or skipped) and a reset when top < last.
local last = ARGV[1]
local count = tonumber(ARGV[2]) or 512
local out = { '' }
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top == 0 then
    return out
end
out[1] = top[1][1]
local es = redis.call('XRANGE', KEYS[1], '(0-' .. last, '+', 'COUNT', count)
for i = 1, #es do
    local id, fv = es[i][1], es[i][2]
    local key = ''
    for j = 1, #fv, 2 do
        if fv[j] == 'k' then
            key = fv[j + 1]
        end
    end
    out[#out + 1] = id
    out[#out + 1] = key
end
return out
