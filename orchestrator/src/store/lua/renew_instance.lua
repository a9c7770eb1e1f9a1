-- KEYS[1]: the instance's lease. ARGV: holder, ttl ms.
-- Returns 1 renewed, 2 taken again after it lapsed, 0 held by another.
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
