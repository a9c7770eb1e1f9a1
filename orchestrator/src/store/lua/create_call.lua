-- KEYS[6..9]: the session, the call, the session's call list, the session's events.
-- ARGV[4..]: id, owner, n, n field/value pairs, ne, ne (kind, data) pairs, audit pairs.
-- Returns {'ok', id of the first event}, {'no_session'}, {'owner_mismatch'} or {'exists', status}.
local session, call, calls, events = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local id, owner = ARGV[4], ARGV[5]
local sowner = redis.call('HGET', session, 'owner')
if not sowner then return {'no_session'} end
if sowner ~= owner then return {'owner_mismatch'} end
local existing = redis.call('HGET', call, 'status')
if existing then return {'exists', existing} end
local n = tonumber(ARGV[6])
local fields = {}
for i = 1, 2 * n do fields[i] = ARGV[6 + i] end
redis.call('HSET', call, unpack(fields))
redis.call('RPUSH', calls, id)
local c = load_call(id)
if c.status == 'awaiting_approval' then arm_approval(id, c.expires_at_ms, c.args_sha256) end
if INFLIGHT[c.status] then
  redis.call('SADD', RUNNING, id)
  redis.call('HSET', RUNNERS, id, INSTANCE)
end
local j = 7 + 2 * n
local ne = tonumber(ARGV[j])
local eid = ''
for e = 0, ne - 1 do
  local x = redis.call('XADD', events, '*', 'kind', ARGV[j + 1 + 2 * e], 'data', ARGV[j + 2 + 2 * e])
  if e == 0 then eid = x end
end
local audit = {}
for i = j + 1 + 2 * ne, #ARGV do audit[#audit + 1] = ARGV[i] end
append_audit(audit)
return {'ok', eid}
