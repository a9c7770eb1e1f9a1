-- KEYS: the call's undo record, the user's undo index (sorted set: call id by expiry ms), the
-- user's undo sizes (hash: call id -> bytes). ARGV: record JSON, now ms, ttl ms, most bytes the
-- user may hold, call id, the undo key prefix (`{p}undo:`).
-- Keeps the record and drops the user's oldest ones while the user holds more than the budget
-- (never the new one). Returns the ids dropped.
local now, ttl, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
-- Records whose key expired leave the index here.
for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[3], c)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
redis.call('HSET', KEYS[3], ARGV[5], #ARGV[1])
-- The books count only records that still exist (a deleted session took its own).
local total = 0
local sizes = redis.call('HGETALL', KEYS[3])
for i = 1, #sizes, 2 do
  if redis.call('EXISTS', ARGV[6] .. sizes[i]) == 1 then
    total = total + tonumber(sizes[i + 1])
  else
    redis.call('HDEL', KEYS[3], sizes[i])
    redis.call('ZREM', KEYS[2], sizes[i])
  end
end
local dropped = {}
while total > budget do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not oldest or oldest == ARGV[5] then break end
  total = total - tonumber(redis.call('HGET', KEYS[3], oldest) or '0')
  redis.call('DEL', ARGV[6] .. oldest)
  redis.call('ZREM', KEYS[2], oldest)
  redis.call('HDEL', KEYS[3], oldest)
  table.insert(dropped, oldest)
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return dropped
