-- KEYS: slots. ARGV: now ms, token, limit ('' = none), ttl ms.
-- Returns {1, n} reserved (n now held), {0, n} full.
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if ARGV[3] ~= '' and n >= tonumber(ARGV[3]) then return {0, n} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, n + 1}
