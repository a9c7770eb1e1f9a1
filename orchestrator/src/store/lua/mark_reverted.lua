-- KEYS: the reverted call, its undo record, the owner's undo index and sizes. ARGV: the
-- revert's call id, the reverted call's id.
-- Records who reverted the call (once) and drops its undo record: it is used up.
-- Returns 1, or 0 when the call is gone or was reverted already.
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'reverted_by', ARGV[1])
