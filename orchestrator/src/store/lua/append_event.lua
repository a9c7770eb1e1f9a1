-- KEYS[1]: the session, KEYS[2]: its events. ARGV: kind, data.
-- Returns the entry id, or nil without such a session.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], '*', 'kind', ARGV[1], 'data', ARGV[2])
