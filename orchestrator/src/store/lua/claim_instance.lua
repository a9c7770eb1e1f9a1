-- KEYS[1]: the instance's lease. ARGV: holder, ttl ms, takeover_from ('' = none).
-- Returns {'claimed'} or {'held', holder, ttl ms}.
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] or (ARGV[3] ~= '' and cur == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'claimed'}
end
return {'held', cur, tostring(redis.call('PTTL', KEYS[1]))}
