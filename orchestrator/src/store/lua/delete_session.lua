-- KEYS[6..]: the session, then every key that lives and dies with it (its call list first,
-- its events second): calls (with their undo records), events, grants, the agent's history,
-- turn lock and turn cancel request. ARGV[4]: the session id; ARGV[5] (the retention sweeper's): delete only if the
-- session was idle since before this time (ms): created and last event before it, and no
-- call awaiting approval or in flight.
-- Returns 1 if deleted, 0 if there was no such session, 2 if it is not idle.
local sid = ARGV[4]
local owner = redis.call('HGET', KEYS[6], 'owner')
if not owner then return 0 end
local calls = redis.call('LRANGE', KEYS[7], 0, -1)
if ARGV[5] then
  local cutoff = tonumber(ARGV[5])
  if (tonumber(redis.call('HGET', KEYS[6], 'created_at_ms')) or 0) >= cutoff then return 2 end
  local last = redis.call('XREVRANGE', KEYS[8], '+', '-', 'COUNT', 1)
  if #last > 0 and tonumber(string.match(last[1][1], '^(%d+)')) >= cutoff then return 2 end
  for _, cid in ipairs(calls) do
    local st = redis.call('HGET', call_key(cid), 'status')
    if st == 'awaiting_approval' or INFLIGHT[st] then return 2 end
  end
end
for _, cid in ipairs(calls) do
  -- What the session's calls replaced goes with them.
  redis.call('DEL', call_key(cid), approval_key(cid), undo_key(cid))
  redis.call('ZREM', undo_index(owner), cid)
  redis.call('HDEL', undo_sizes(owner), cid)
  redis.call('ZREM', PENDING, cid)
  redis.call('SREM', RUNNING, cid)
  redis.call('HDEL', RUNNERS, cid)
end
for i = 6, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('ZREM', user_key(owner), sid)
return 1
