-- Shared by the call scripts (create_call, transition, decide, expire_due, delete_session,
-- trim_audit).
-- KEYS[1..5]: {p}pending, {p}running, {p}runners, {p}audit, {p}audit:head; each script's own
-- keys follow.
-- ARGV[1] = prefix, ARGV[2] = now (ms), ARGV[3] = the orchestrator instance sending it,
-- ARGV[4], ARGV[5] = a link for the next audit entry hashed in Rust (message, hash; '' =
-- none), removed here so that each script's own arguments start at ARGV[4].
-- Keys that depend on what the script reads (the session of a call, the calls of a session)
-- are derived from the prefix here, so the schema targets one Redis, not Redis Cluster.
local P = ARGV[1]
local NOW = ARGV[2]
local INSTANCE = ARGV[3]
local NOWN = tonumber(NOW)
local LINK_MSG = table.remove(ARGV, 4)
local LINK_HASH = table.remove(ARGV, 4)
local PENDING = KEYS[1]
local RUNNING = KEYS[2]
local RUNNERS = KEYS[3]
local AUDIT = KEYS[4]
local AUDIT_HEAD = KEYS[5]
local INFLIGHT = {approved = true, running = true}
local function call_key(id) return P .. 'call:' .. id end
local function approval_key(id) return P .. 'approval:' .. id end
local function session_key(id) return P .. 'session:' .. id end
local function events_key(id) return P .. 'session:' .. id .. ':events' end
local function calls_key(id) return P .. 'session:' .. id .. ':calls' end
local function user_key(owner) return P .. 'user:' .. owner .. ':sessions' end
-- Undo records (store/undo.rs): the record, and its owner's index and sizes.
local function undo_key(id) return P .. 'undo:' .. id end
local function undo_index(owner) return P .. 'user:' .. owner .. ':undo' end
local function undo_sizes(owner) return P .. 'user:' .. owner .. ':undo_bytes' end

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
             'outcome', outcome, 'policy_sha256', c.policy_sha256 or '', 'rule', c.rule or ''}
  if detail and detail ~= '' then
    a[#a + 1] = 'detail'
    a[#a + 1] = detail
  end
  return a
end

-- SHA-256 (FIPS 180-4) over Redis's LuaBitOp: Redis's Lua has only sha1hex, and the audit
-- chain must be computed in the script that writes the entry (store/audit.rs checks it).
local band, bor, bxor = bit.band, bit.bor, bit.bxor
local rshift, ror, tobit = bit.rshift, bit.ror, bit.tobit
local byte = string.byte
local K256 = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2}
-- Tuned for Redis's interpreter, where every bit.* is a C call (measured in redis: 20% less
-- time than the textbook form): choose/majority with one call fewer each, no tobit where a
-- sum stays far below 2^53, big-endian words by arithmetic, the state in locals.
local function sha256_hex(msg)
  local len = #msg
  local bits = len * 8
  local tail = {}
  for i = 7, 0, -1 do tail[#tail + 1] = string.char(math.floor(bits / 256 ^ i) % 256) end
  msg = msg .. '\128' .. string.rep('\0', (64 - (len + 9) % 64) % 64) .. table.concat(tail)
  local h1, h2, h3, h4 = 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a
  local h5, h6, h7, h8 = 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
  local w = {}
  for i = 1, #msg, 64 do
    for j = 0, 15 do
      local k = i + 4 * j
      local b1, b2, b3, b4 = byte(msg, k, k + 3)
      w[j] = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    end
    for j = 16, 63 do
      local x, y = w[j - 15], w[j - 2]
      w[j] = tobit(w[j - 16] + bxor(ror(x, 7), ror(x, 18), rshift(x, 3)) + w[j - 7]
                   + bxor(ror(y, 17), ror(y, 19), rshift(y, 10)))
    end
    local a, b, c, d, e, f, g, h = h1, h2, h3, h4, h5, h6, h7, h8
    for j = 0, 63 do
      local t1 = h + bxor(ror(e, 6), ror(e, 11), ror(e, 25)) + bxor(g, band(e, bxor(f, g)))
                 + K256[j + 1] + w[j]
      local t2 = bxor(ror(a, 2), ror(a, 13), ror(a, 22)) + bor(band(a, b), band(c, bor(a, b)))
      h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
    end
    h1, h2, h3, h4 = tobit(h1 + a), tobit(h2 + b), tobit(h3 + c), tobit(h4 + d)
    h5, h6, h7, h8 = tobit(h5 + e), tobit(h6 + f), tobit(h7 + g), tobit(h8 + h)
  end
  local tohex = bit.tohex
  return tohex(h1, 8) .. tohex(h2, 8) .. tohex(h3, 8) .. tohex(h4, 8)
      .. tohex(h5, 8) .. tohex(h6, 8) .. tohex(h7, 8) .. tohex(h8, 8)
end

-- Appends audit entry `a` (flat field/value pairs) to the hash chain: `seq` and `prev` (the
-- head's hash, or the genesis hash) are added, then `hash` over every pair before it, each
-- as a netstring (len:bytes,). store/audit.rs (`chain_hash`) recomputes exactly this.
local GENESIS = string.rep('0', 64)
local function append_audit(a)
  local head = redis.call('HMGET', AUDIT_HEAD, 'seq', 'hash')
  local seq = string.format('%d', (tonumber(head[1]) or 0) + 1)
  a[#a + 1] = 'seq'
  a[#a + 1] = seq
  a[#a + 1] = 'prev'
  a[#a + 1] = head[2] or GENESIS
  local parts = {'airlock-audit-v1\n'}
  for i = 1, #a do parts[#parts + 1] = #a[i] .. ':' .. a[i] .. ',' end
  local msg = table.concat(parts)
  -- The link hashed in Rust, when it is this exact message (same fields, same head).
  local h
  if msg == LINK_MSG and #LINK_HASH == 64 then h = LINK_HASH else h = sha256_hex(msg) end
  a[#a + 1] = 'hash'
  a[#a + 1] = h
  local id = redis.call('XADD', AUDIT, '*', unpack(a))
  redis.call('HSET', AUDIT_HEAD, 'seq', seq, 'hash', h, 'id', id)
  return id
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
  if to == 'awaiting_approval' and from == 'awaiting_approval' then
    -- An edit: the new binding, under the TTL the key already has (never extended).
    redis.call('SET', approval_key(id), redis.call('HGET', ck, 'args_sha256'), 'XX', 'KEEPTTL')
  elseif to == 'awaiting_approval' then
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
  if audit then append_audit(audit) end
  return eid
end

-- The one expiry path, shared by decide and expire_due. Its data is events::CallDecided's.
local function expire(id, c, detail)
  return move(id, c, 'expired', {}, 'expired', cjson.encode({call_id = id, status = 'expired'}),
              audit_for(id, c, 'system', 'expired', 'expired', detail))
end
