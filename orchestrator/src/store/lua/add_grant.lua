-- KEYS: session, grants, events. ARGV: field, now ms, max grants, event kind, event data.
-- Returns 'added' (and the event is written), 'exists', 'full' or 'no_session'.
if redis.call('EXISTS', KEYS[1]) == 0 then return 'no_session' end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 'exists' end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[3]) then return 'full' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'kind', ARGV[4], 'data', ARGV[5])
return 'added'
