-- No keys of its own (the due calls come from the pending index). ARGV[4]: how many at most.
-- Returns {scanned, {expired call hash}, ...}.
local ids = redis.call('ZRANGEBYSCORE', PENDING, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {#ids}
for _, id in ipairs(ids) do
  local c = load_call(id)
  if c and c.status == 'awaiting_approval' then
    local exp = tonumber(c.expires_at_ms or '0') or 0
    if exp <= NOWN then
      expire(id, c, 'approval window passed')
      out[#out + 1] = redis.call('HGETALL', call_key(id))
    else
      redis.call('ZADD', PENDING, c.expires_at_ms, id)
    end
  else
    redis.call('ZREM', PENDING, id)
  end
end
return out
