-- Shared by the call scripts (create_call, transition, decide, expire_due, delete_session).
-- KEYS[1..4]: {p}pending, {p}running, {p}runners, {p}audit; each script's own keys follow.
-- ARGV[1] = prefix, ARGV[2] = now (ms), ARGV[3] = the orchestrator instance sending it.
-- Keys that depend on what the script reads (the session of a call, the calls of a session)
-- are derived from the prefix here, so the schema targets one Redis, not Redis Cluster.
local P = ARGV[1]
local NOW = ARGV[2]
local INSTANCE = ARGV[3]
local NOWN = tonumber(NOW)
local PENDING = KEYS[1]
local RUNNING = KEYS[2]
local RUNNERS = KEYS[3]
local AUDIT = KEYS[4]
local INFLIGHT = {approved = true, running = true}
local function call_key(id) return P .. 'call:' .. id end
local function approval_key(id) return P .. 'approval:' .. id end
local function session_key(id) return P .. 'session:' .. id end
local function events_key(id) return P .. 'session:' .. id .. ':events' end
local function calls_key(id) return P .. 'session:' .. id .. ':calls' end
local function user_key(owner) return P .. 'user:' .. owner .. ':sessions' end

local function load_call(id)
  local flat = redis.call('HGETALL', call_key(id))
  if #flat == 0 then return nil end
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m
end

-- {code, event id, field, value, field, value, ...} with the call's current hash.
local function reply(code, eid, id)
  local r = {code, eid}
  local flat = redis.call('HGETALL', call_key(id))
  for i = 1, #flat do r[#r + 1] = flat[i] end
  return r
end

local function audit_for(id, c, actor, action, outcome, detail)
  local a = {'at_ms', NOW, 'actor', actor, 'action', action, 'session_id', c.session_id,
             'call_id', id, 'tool', c.tool, 'args_sha256', c.args_sha256,
             'outcome', outcome, 'policy_sha256', c.policy_sha256 or ''}
  if detail and detail ~= '' then
    a[#a + 1] = 'detail'
    a[#a + 1] = detail
  end
  return a
end

-- The approval binding: a key that dies at expires_at_ms, and the pending index.
local function arm_approval(id, exp, hash)
  redis.call('ZADD', PENDING, exp, id)
  local left = tonumber(exp) - NOWN
  if left > 0 then
    redis.call('SET', approval_key(id), hash, 'PX', string.format('%d', left))
  end
end

-- Moves call `id` (current fields `c`, already checked) to `to`; returns the event id or ''.
local function move(id, c, to, patch, ev_kind, ev_data, audit)
  local ck = call_key(id)
  local from = c.status
  redis.call('HSET', ck, 'status', to, 'updated_at_ms', NOW)
  if #patch > 0 then redis.call('HSET', ck, unpack(patch)) end
  if from == 'awaiting_approval' and to ~= 'awaiting_approval' then
    redis.call('DEL', approval_key(id))
    redis.call('ZREM', PENDING, id)
  end
  if to == 'awaiting_approval' then
    arm_approval(id, redis.call('HGET', ck, 'expires_at_ms'), redis.call('HGET', ck, 'args_sha256'))
  end
  if INFLIGHT[to] then
    redis.call('SADD', RUNNING, id)
    -- Whoever moves a call in flight runs it (the approver's orchestrator, not the proposer's).
    redis.call('HSET', RUNNERS, id, INSTANCE)
  else
    redis.call('SREM', RUNNING, id)
    redis.call('HDEL', RUNNERS, id)
  end
  local eid = ''
  if ev_kind then
    eid = redis.call('XADD', events_key(c.session_id), '*', 'kind', ev_kind, 'data', ev_data)
  end
  if audit then redis.call('XADD', AUDIT, '*', unpack(audit)) end
  return eid
end

-- The one expiry path, shared by decide and expire_due. Its data is events::CallDecided's.
local function expire(id, c, detail)
  return move(id, c, 'expired', {}, 'expired', cjson.encode({call_id = id, status = 'expired'}),
              audit_for(id, c, 'system', 'expired', 'expired', detail))
end
