-- KEYS[6]: the call, KEYS[7]: its approval binding.
-- ARGV[4..]: id, user, presented hash, 'approved'|'denied', reason ('' = none), audit detail
-- of a hash mismatch, audit detail of a decision (the reason, shortened), the approved change
-- when only some hunks are approved (JSON, '' = the whole change).
-- The event's data is events::CallDecided's.
local id, user, presented, to, reason = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if redis.call('EXISTS', KEYS[6]) == 0 then return {'not_found'} end
local c = load_call(id)
if c.owner ~= user then
  append_audit(audit_for(id, c, user, 'rejected', 'not_owner', 'decision by a user who does not own the call'))
  return {'not_owner'}
end
if c.status ~= 'awaiting_approval' then
  append_audit(audit_for(id, c, user, 'rejected', 'already_decided', 'call is ' .. c.status))
  return {'already_decided', c.status}
end
local bound = redis.call('GET', KEYS[7])
local exp = tonumber(c.expires_at_ms or '')
if (not bound) or (not exp) or exp <= NOWN then
  local eid = expire(id, c, 'approval window passed before ' .. user .. ' decided')
  return reply('expired', eid, id)
end
if bound ~= presented or c.args_sha256 ~= presented then
  append_audit(audit_for(id, c, user, 'rejected', 'hash_mismatch', ARGV[9]))
  return reply('hash_mismatch', '', id)
end
local patch = {'decided_by', user, 'decided_at_ms', NOW}
local data = {call_id = id, status = to, decided_by = user}
if reason ~= '' then
  patch[#patch + 1] = 'reason'
  patch[#patch + 1] = reason
  data.reason = reason
end
if to == 'approved' and ARGV[11] ~= '' then
  patch[#patch + 1] = 'approved_change'
  patch[#patch + 1] = ARGV[11]
end
local eid = move(id, c, to, patch, to, cjson.encode(data),
                 audit_for(id, c, user, to, to, ARGV[10]))
return reply(to, eid, id)
