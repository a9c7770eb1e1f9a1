-- KEYS: proposals. ARGV: now ms, member, limit ('' = none), window ms, max remembered.
-- Returns {1} counted, {0, oldest score} limited.
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if ARGV[3] ~= '' then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= tonumber(ARGV[3]) then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, oldest[2] or tostring(now)}
  end
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[5]) - 1)
redis.call('PEXPIRE', KEYS[1], window + 1000)
return {1}
