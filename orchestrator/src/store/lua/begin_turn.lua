-- KEYS[1]: the session, KEYS[2]: its turn lock, KEYS[3]: its turn cancel request.
-- ARGV: turn id, ttl ms.
-- Returns {1, id} when taken, {2, holder} when held by another turn, {0, ''} without the session.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local cur = redis.call('GET', KEYS[2])
if cur then return {2, cur} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
return {1, ARGV[1]}
