-- stream_trim.lua: trim what every consumer group has acknowledged, nothing more.
-- KEYS[1] the stream.  For each group the first entry still needed is the
-- oldest pending one (delivered, not acknowledged) or, with nothing pending,
-- the last delivered one (everything after it is undelivered).  XTRIM MINID
-- keeps every entry at or above the lowest of those.  A stream with no group
-- is never trimmed: nobody has persisted anything yet.  Returns entries removed.
if redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
    return 0
end
local function parse(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(ms), tonumber(seq)
end
local function less(a, b)
    local am, as = parse(a)
    local bm, bs = parse(b)
    if am ~= bm then
        return am < bm
    end
    return as < bs
end
local min = nil
for _, g in ipairs(groups) do
    local name, last
    for i = 1, #g, 2 do
        if g[i] == 'name' then
            name = g[i + 1]
        elseif g[i] == 'last-delivered-id' then
            last = g[i + 1]
        end
    end
    local cand = last
    local p = redis.call('XPENDING', KEYS[1], name)
    if p[1] > 0 and less(p[2], cand) then
        cand = p[2]
    end
    if min == nil or less(cand, min) then
        min = cand
    end
end
return redis.call('XTRIM', KEYS[1], 'MINID', min)
