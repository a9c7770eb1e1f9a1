#!/bin/sh
# Starts Redis for Airlock:
# - the `default` user is off; the only user is `airlock`, with the password from the secret
#   file (only its SHA-256 is written to the ACL file, on a tmpfs), limited to Airlock's keys
#   (~airlock:*) and to commands outside @dangerous (plus INFO, for `airlock doctor`);
# - AOF persistence in /data (fsync every second), no RDB snapshots of its own;
# - runs as uid 999 once the secret is read (the container starts as root without capabilities
#   other than CHOWN, SETUID and SETGID).
# Extra arguments go to redis-server.
set -eu
secret=${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}
prefix=${AIRLOCK_REDIS_PREFIX:-airlock:}
pw=$(head -n 1 "$secret" | tr -d '\r\n')
if [ -z "$pw" ]; then
  echo "the Redis password file $secret is empty (compose/init.sh writes one)" >&2
  exit 1
fi
hash=$(printf %s "$pw" | sha256sum | cut -d ' ' -f 1)
umask 077
mkdir -p /run/redis
# Without CAP_DAC_OVERRIDE root cannot enter a 0700 directory it does not own: take /run/redis
# back (it is 999's after a restart), write the file, then hand both to 999, file first.
chown 0:0 /run/redis
printf 'user default off\nuser airlock on #%s ~%s* &* +@all -@dangerous +info\n' \
  "$hash" "$prefix" > /run/redis/users.acl
chown 999:999 /run/redis/users.acl
chown 999:999 /run/redis /data
# By path: a busybox shell would run its own (smaller) setpriv applet for a bare name.
exec /usr/bin/setpriv --reuid=999 --regid=999 --clear-groups \
  redis-server \
  --port 6379 \
  --protected-mode no \
  --aclfile /run/redis/users.acl \
  --dir /data \
  --appendonly yes \
  --appendfsync everysec \
  --save '' \
  "$@"
