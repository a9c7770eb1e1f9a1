-- KEYS[6]: the call. ARGV[4..]: id, to, allowed predecessors (comma-separated), n, n patch
-- pairs, event kind ('' = none), event data, audit pairs (none = no audit entry).
-- Returns reply('ok', event id, id), {'not_found'}, {'conflict', status} or {'no_expiry'}.
local id, to = ARGV[4], ARGV[5]
if redis.call('EXISTS', KEYS[6]) == 0 then return {'not_found'} end
local c = load_call(id)
local ok = false
for s in string.gmatch(ARGV[6], '[^,]+') do
  if s == c.status then ok = true end
end
if not ok then return {'conflict', c.status} end
local n = tonumber(ARGV[7])
local patch = {}
for i = 1, 2 * n do patch[i] = ARGV[7 + i] end
if to == 'awaiting_approval' then
  local exp = c.expires_at_ms
  for i = 1, #patch, 2 do
    if patch[i] == 'expires_at_ms' then exp = patch[i + 1] end
  end
  if not exp then return {'no_expiry'} end
end
local j = 8 + 2 * n
local ev_kind = nil
if ARGV[j] ~= '' then ev_kind = ARGV[j] end
local audit = nil
if #ARGV > j + 1 then
  audit = {}
  for i = j + 2, #ARGV do audit[#audit + 1] = ARGV[i] end
end
-- An owner's edit of a waiting call (awaiting_approval to itself): only while its approval
-- key lives (Redis's clock, not ours, ends the window); the key keeps its TTL, only its hash
-- changes. A dead key reads as expired: nothing is re-armed.
if to == 'awaiting_approval' and c.status == 'awaiting_approval' then
  local exp = tonumber(c.expires_at_ms or '')
  if redis.call('EXISTS', approval_key(id)) == 0 or (not exp) or exp <= NOWN then
    return {'conflict', 'expired'}
  end
  -- The edit replaces the version its author saw: another edit in between is a conflict
  -- (reported as still awaiting approval), never overwritten unseen.
  for i = 1, #patch, 2 do
    if patch[i] == 'expect_args_sha256' then
      if patch[i + 1] ~= c.args_sha256 then return {'conflict', 'awaiting_approval'} end
      table.remove(patch, i)
      table.remove(patch, i)
      break
    end
  end
end
local eid = move(id, c, to, patch, ev_kind, ARGV[j + 1], audit)
return reply('ok', eid, id)
