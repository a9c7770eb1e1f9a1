-- KEYS: slots keys, one per token. ARGV: now ms, ttl ms, tokens in KEYS order.
-- Renews the tokens still present (a released slot is not brought back).
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, 'XX', now + ttl, ARGV[2 + i])
  redis.call('PEXPIRE', k, ttl)
end
return #KEYS
