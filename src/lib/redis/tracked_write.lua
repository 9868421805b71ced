-- tracked_write.lua: a write to a tracked key that also appends (seq, key) to
-- the sequence stream of its prefix, in one atomic script (issue 5, "make
-- invalidation loss detectable"; reader: redis_tracking.c).
--
-- KEYS[1] the key written; KEYS[2] the sequence stream (in Cluster both must
--         hash to one slot: give them the same {hash tag});
-- ARGV[1] the stream's cap (entries kept, >= 1);
-- ARGV[2] the command (SET, DEL, HSET, EXPIRE ...), ARGV[3..] its arguments
--         after the key.
-- Returns the command's own reply.
--
-- The entry id is `0-<seq>`: XADD's `0-*` form (Redis >= 7.0) makes the
-- sequence dense (1, 2, 3 ...) and it survives trimming (the stream remembers
-- its last id), so a reader can tell "nothing new" from "entries trimmed
-- away before I read them" from "the stream was reset".  The entry is added
-- before the write: if the write fails (WRONGTYPE ...) the only harm is one
-- superfluous invalidation, never a write without its entry.
--
-- Scenario scripts that write tracked keys themselves (they cannot include
-- this file) append the same entry with one line, in the same script:
--   redis.call('XADD', seq_stream, 'MAXLEN', cap, '0-*', 'k', key)
local cap = tonumber(ARGV[1])
if not cap or cap < 1 or not ARGV[2] then
    return redis.error_reply('ERR tracked_write: ARGV[1] cap >= 1 and ARGV[2] command required')
end
redis.call('XADD', KEYS[2], 'MAXLEN', cap, '0-*', 'k', KEYS[1])
return redis.call(ARGV[2], KEYS[1], unpack(ARGV, 3))
