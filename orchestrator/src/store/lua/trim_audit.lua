-- KEYS[6]: the audit checkpoint. ARGV[4..]: the last entry to remove (its stream id, seq and
-- hash, as read just before), the first id to keep (XTRIM MINID), then the pairs of the
-- entry that records the trim. Returns how many entries were removed, or 'changed' when the
-- last entry to remove is no longer what was read (nothing is removed then).
local last, seq, hash, keep_from = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local e = redis.call('XRANGE', AUDIT, last, last)
if #e == 0 then return 'changed' end
local f = e[1][2]
if #f < 6 or f[#f] ~= hash or f[#f - 4] ~= seq then return 'changed' end
local removed = redis.call('XTRIM', AUDIT, 'MINID', keep_from)
redis.call('HSET', KEYS[6], 'seq', seq, 'hash', hash, 'id', last, 'trimmed_at_ms', NOW)
local note = {}
for i = 8, #ARGV do note[#note + 1] = ARGV[i] end
append_audit(note)
return removed
