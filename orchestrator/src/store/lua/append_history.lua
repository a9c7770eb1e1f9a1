-- KEYS[1]: the session, KEYS[2]: its history. ARGV[1]: the entry.
-- Returns the new length, or nil without the session.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('RPUSH', KEYS[2], ARGV[1])
