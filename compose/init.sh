#!/usr/bin/env bash
# Prepares compose/ for `docker-compose up`, keeping whatever exists already:
#   .env                     from .env.example (edit AIRLOCK_WORKSPACES and the base images)
#   secrets/redis_password   a random password for Redis's `airlock` ACL user (mode 0600)
#   the images               built with build.sh when missing (the token below needs one)
#   config/policy.toml       policies/default.toml plus a first admin user, whose token is made
#                            by the orchestrator image's `airlock admin token`
#   the workspaces root      AIRLOCK_WORKSPACES, with the admin's workspace owned by uid 65532
# Prints the URL and the admin token (also kept in secrets/admin-token; delete it once saved).
# Needs root (it chowns the workspace to the sandbox user).
set -euo pipefail
cd "$(dirname "$0")"
# The env file (AIRLOCK_COMPOSE_ENV, default .env); the environment overrides it, as in compose.
env_file=${AIRLOCK_COMPOSE_ENV:-.env}
if [ "$env_file" = .env ] && [ ! -f .env ]; then
  cp .env.example .env
  echo "==> wrote compose/.env (from .env.example): check AIRLOCK_WORKSPACES and the base images"
fi
while IFS='=' read -r k v; do
  [[ $k =~ ^[A-Z_][A-Z0-9_]*$ ]] && [ -z "${!k+x}" ] && export "$k=$v"
done < "$env_file"
admin=${AIRLOCK_ADMIN:-admin}
workspaces=${AIRLOCK_WORKSPACES:?set AIRLOCK_WORKSPACES in compose/.env}
config_dir=${AIRLOCK_CONFIG_DIR:-./config}
pw_file=${AIRLOCK_REDIS_PASSWORD_FILE:-./secrets/redis_password}
image=${AIRLOCK_IMAGE:-airlock:local}
case "$workspaces" in /*) ;; *) echo "AIRLOCK_WORKSPACES must be an absolute host path" >&2; exit 1 ;; esac
case "$admin" in *[!A-Za-z0-9_.-]*|"") echo "AIRLOCK_ADMIN: letters, digits, '.', '_', '-'" >&2; exit 1 ;; esac
if [ "$(id -u)" -ne 0 ]; then
  echo "run init.sh as root: it makes the workspaces and chowns them to the sandbox user" >&2
  exit 1
fi
umask 077

secrets_dir=$(dirname "$pw_file")
mkdir -p "$secrets_dir"
if [ ! -s "$pw_file" ]; then
  # 32 random bytes as hex: no character needs escaping in URLs or ACL files.
  od -An -vtx1 -N32 /dev/urandom | tr -d ' \n' > "$pw_file"
  echo >> "$pw_file"
  chmod 600 "$pw_file"
  echo "==> wrote $pw_file"
fi

if ! docker image inspect "$image" >/dev/null 2>&1; then
  bash build.sh
fi

mkdir -p "$workspaces"
chmod 755 "$workspaces"
mkdir -p "$config_dir"
policy="$config_dir/policy.toml"
if [ ! -e "$policy" ]; then
  uid=65532
  workspace="$workspaces/$admin"
  mkdir -p "$workspace"
  chmod 750 "$workspace"
  chown "$uid:$uid" "$workspace"
  hash_out=$(mktemp)
  token=$(docker run --rm --network none "$image" admin token --user "$admin" 2>"$hash_out")
  hash=$(sed -n 's/^token_sha256 = "\([0-9a-f]\{64\}\)"$/\1/p' "$hash_out")
  rm -f "$hash_out"
  [ -n "$token" ] && [ -n "$hash" ] || { echo "could not make a token with $image" >&2; exit 1; }
  {
    grep -v '^#:schema' ../policies/default.toml
    cat <<POLICY

# The first admin, added by compose/init.sh. Workspaces are HOST paths under
# AIRLOCK_WORKSPACES ($workspaces), owned by the uid:gid given here (never 0).
[[users]]
name = "$admin"
token_sha256 = "$hash"
role = "admin"
workspace = "$workspace"
uid = $uid
gid = $uid
POLICY
  } > "$policy.tmp"
  chmod 644 "$policy.tmp"
  mv "$policy.tmp" "$policy"
  printf '%s\n' "$token" > "$secrets_dir/admin-token"
  echo "==> wrote $policy with the admin \`$admin\` (workspace $workspace)"
fi

cat <<EOF
==> ready: docker-compose up -d
    web UI:      http://127.0.0.1:${AIRLOCK_PORT:-8420}/
    admin token: $(cat "$secrets_dir/admin-token" 2>/dev/null || echo "(printed when the policy was made)")
                 (kept in $secrets_dir/admin-token: delete it once you have stored it)
EOF
