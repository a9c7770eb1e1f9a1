-- KEYS[5..]: the session, then every key that lives and dies with it (its call list first):
-- calls, events, grants, the agent's history, turn lock and turn cancel request.
-- ARGV[4]: the session id. Returns 1 if deleted, 0 if there was no such session.
local sid = ARGV[4]
local owner = redis.call('HGET', KEYS[5], 'owner')
if not owner then return 0 end
local calls = redis.call('LRANGE', KEYS[6], 0, -1)
for _, cid in ipairs(calls) do
  redis.call('DEL', call_key(cid), approval_key(cid))
  redis.call('ZREM', PENDING, cid)
  redis.call('SREM', RUNNING, cid)
  redis.call('HDEL', RUNNERS, cid)
end
for i = 5, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('ZREM', user_key(owner), sid)
return 1
