-- wb_dlq_replay.lua: moves dead-letter entries back to their stream.
-- KEYS[1] the dead-letter stream  KEYS[2] the source stream (same hash tag)
-- ARGV[1] one dlq entry id, or '' for the oldest ARGV[2] entries
-- The dlq_* metadata fields are dropped; the body (with its idempotency id)
-- is appended again, so an event that was applied meanwhile is a duplicate.
-- Returns the number of entries replayed.
local entries
if ARGV[1] == '' then
  entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[2]))
else
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
end
local n = 0
for _, e in ipairs(entries) do
  local fv = {}
  local body = e[2]
  for i = 1, #body, 2 do
    if string.sub(body[i], 1, 4) ~= 'dlq_' then
      fv[#fv + 1] = body[i]
      fv[#fv + 1] = body[i + 1]
    end
  end
  if #fv > 0 then
    redis.call('XADD', KEYS[2], '*', unpack(fv))
  end
  redis.call('XDEL', KEYS[1], e[1])
  n = n + 1
end
return n
