-- redpacket_grab.lua: one grab, atomically: LPOP a share, record the grabber,
-- append the write-behind event.
-- KEYS[1] rp:{ID}:shares  KEYS[2] rp:{ID}:meta  KEYS[3] rp:{ID}:grabs  KEYS[4] rp:{ID}:events
-- KEYS[5] rpflag:{ID} (set to 'gone' when the last share is taken)
-- KEYS[6] rl:rp:{ID}:<user> (the user's rate limiter: same slot as the packet)
-- ARGV[1] packet id  ARGV[2] user_id  ARGV[3] now_ms (server clock)  ARGV[4] max stream length
-- ARGV[5] GCRA emission interval us (0 = no limit)  ARGV[6] GCRA burst tolerance us
-- Composed after strata_gcra() (src/lib/protect/gcra.lua) by the server.
-- Reply: {'ok', amount} | {'already', amount} | {'gone'} | {'expired'} | {'unknown'}
--        | {'rate_limited', retry_after_us}
--        | error 'BACKPRESSURE ...' (maps to STRATA_EBACKPRESSURE: HTTP 503)
-- Idempotent per (packet, user): a repeat returns the same amount.
local interval = tonumber(ARGV[5])
if interval > 0 then
  local g = strata_gcra(KEYS[6], interval, tonumber(ARGV[6]), 1)
  if g[1] == 0 then
    return {'rate_limited', g[3]}
  end
end
local amount = redis.call('HGET', KEYS[3], ARGV[2])
if amount then
  return {'already', tonumber(amount)}
end
local meta = redis.call('HMGET', KEYS[2], 'status', 'expires_at_ms')
if not meta[1] then
  return {'unknown'}
end
if meta[1] ~= 'open' then
  return {'gone'}
end
if tonumber(ARGV[3]) >= tonumber(meta[2]) then
  return {'expired'}
end
local maxlen = tonumber(ARGV[4])
if maxlen > 0 and redis.call('XLEN', KEYS[4]) >= maxlen then
  return redis.error_reply('BACKPRESSURE write-behind stream is full')
end
local share = redis.call('LPOP', KEYS[1])
if not share then
  return {'gone'}
end
redis.call('HSET', KEYS[3], ARGV[2], share)
redis.call('HINCRBY', KEYS[2], 'grabbed_cents', share)
redis.call('HINCRBY', KEYS[2], 'grabbed_count', 1)
local t = redis.call('TIME')
local ts_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[4], '*', 'type', 'grab', 'id', ARGV[1] .. ':' .. ARGV[2],
           'packet', ARGV[1], 'user', ARGV[2], 'amount', share, 'ts_ms', ts_ms)
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('SET', KEYS[5], 'gone')
end
return {'ok', tonumber(share)}
