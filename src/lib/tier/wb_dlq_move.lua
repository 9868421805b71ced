-- wb_dlq_move.lua: moves one poison write-behind event to its dead-letter stream.
-- KEYS[1] the stream   KEYS[2] its dead-letter stream (<stream>:dlq, same hash tag)
-- ARGV[1] group  ARGV[2] entry id  ARGV[3] error text  ARGV[4] attempts  ARGV[5] node id
-- Copies the entry's fields after dlq_* metadata fields, then XACKs the
-- original, in one atomic step: the event is never in neither place nor
-- acknowledged without its copy.  Returns 1 moved, 0 entry gone (just acked).
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #e == 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], '*', 'dlq_source_id', ARGV[2], 'dlq_error', ARGV[3],
           'dlq_attempts', ARGV[4], 'dlq_node', ARGV[5], 'dlq_ts_ms', ts, unpack(e[1][2]))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
