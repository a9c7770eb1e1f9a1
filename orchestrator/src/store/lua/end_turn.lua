-- KEYS[1]: the turn lock, KEYS[2]: the turn cancel request. ARGV[1]: turn id.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
