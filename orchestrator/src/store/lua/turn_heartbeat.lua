-- KEYS[1]: the turn lock, KEYS[2]: the turn cancel request. ARGV: turn id, ttl ms.
-- Returns 1 held, 2 cancel requested, 0 lost.
local cur = redis.call('GET', KEYS[1])
if cur == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif cur ~= ARGV[1] then
  return 0
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 2 end
return 1
