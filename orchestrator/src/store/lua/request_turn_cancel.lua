-- KEYS[1]: the turn lock, KEYS[2]: the turn cancel request. ARGV[1]: ttl ms.
-- Returns the running turn's id, or nil.
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
redis.call('SET', KEYS[2], cur, 'PX', ARGV[1])
return cur
