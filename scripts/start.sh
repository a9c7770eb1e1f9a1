#!/usr/bin/env bash
# The quick start: from a fresh Debian/Ubuntu Docker host to a running Airlock, in one command.
#
#   bash scripts/start.sh
#
# 1. Installs what is missing (needs root for that): a C toolchain and Rust (rustup) when there
#    is no cargo, then busybox-static, redis-server and runsc (scripts/setup-host.sh).
# 2. Builds airlock (release) and the executor image (scripts/build-image.sh; no registry).
# 3. On the first run, makes the data dir: a config (airlock.toml), a policy (policies/default.toml
#    plus a first admin user whose token is made by `airlock admin token`), and that user's
#    workspace, owned by a non-root uid.
# 4. Prints the web UI URL and the admin token, then runs `airlock serve` in the foreground
#    (this script's process becomes the server: Ctrl-C or SIGTERM stops it). No Redis URL is
#    configured, so the server starts its own redis-server (unix socket and AOF in DATA/redis).
#
# Settings (environment):
#   AIRLOCK_DATA_DIR    data dir (default: /var/lib/airlock as root, else ~/.local/share/airlock)
#   AIRLOCK_LISTEN      address to listen on, first run only (default 127.0.0.1:8420)
#   AIRLOCK_ADMIN       name of the first admin user, first run only (default admin)
#   AIRLOCK_INSTANCE    label of this server's containers, first run only (default "default")
#   AIRLOCK_SKIP_BUILD  1: install and build nothing, use AIRLOCK_BIN (default target/release/airlock)
#   AIRLOCK_INIT_ONLY   1: prepare the data dir and print the token, but do not start the server
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

root=0
[ "$(id -u)" -eq 0 ] && root=1
if [ $root -eq 1 ]; then
  data=${AIRLOCK_DATA_DIR:-/var/lib/airlock}
else
  data=${AIRLOCK_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/airlock}
fi
listen=${AIRLOCK_LISTEN:-127.0.0.1:8420}
admin=${AIRLOCK_ADMIN:-admin}
instance=${AIRLOCK_INSTANCE:-default}
bin=${AIRLOCK_BIN:-target/release/airlock}

if [ "${AIRLOCK_SKIP_BUILD:-0}" != 1 ]; then
  # A C toolchain (the linker; libc.a for the static executor) and Rust.
  need=()
  command -v cc >/dev/null || need+=(gcc)
  [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e "/usr/lib/$(uname -m)-linux-gnu/libc.a" ] \
    || need+=(libc6-dev)
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null; then
    command -v curl >/dev/null || need+=(curl ca-certificates)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    if [ $root -ne 1 ]; then
      echo "missing: ${need[*]} — install them with: sudo apt-get install ${need[*]}" >&2
      exit 1
    fi
    echo "==> installing ${need[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
  if ! command -v cargo >/dev/null; then
    echo "==> installing Rust (rustup, minimal profile)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  # busybox-static, redis-server, runsc; a running Docker engine; gVisor registered.
  bash scripts/setup-host.sh
  echo "==> building airlock (release)"
  cargo build -q --release -p airlock
  bash scripts/build-image.sh
fi

if [ ! -x "$bin" ]; then
  echo "no airlock binary at $bin: run without AIRLOCK_SKIP_BUILD, or set AIRLOCK_BIN" >&2
  exit 1
fi
command -v redis-server >/dev/null || {
  echo "redis-server is not installed: apt-get install redis-server (or run without AIRLOCK_SKIP_BUILD as root)" >&2
  exit 1
}

port=${listen##*:}
host=${listen%:*}
case "$host" in 0.0.0.0|"[::]"|"") url_host=127.0.0.1 ;; *) url_host=$host ;; esac
url="http://$url_host:$port/"

umask 077
mkdir -p "$data"
data=$(cd "$data" && pwd)
config="$data/airlock.toml"
policy="$data/policy.toml"
token_file="$data/admin-token"

if [ ! -e "$policy" ]; then
  echo "==> first run: making $data"
  case "$admin" in
    *[!A-Za-z0-9_.-]*|"") echo "AIRLOCK_ADMIN must be letters, digits, '.', '_' or '-'" >&2; exit 1 ;;
  esac
  # Tools run as a non-root uid that owns the workspace: the sandbox user when we are root,
  # else whoever runs this.
  if [ $root -eq 1 ]; then uid=65532; gid=65532; else uid=$(id -u); gid=$(id -g); fi
  workspace="$data/workspaces/$admin"
  mkdir -p "$workspace"
  chmod 755 "$data/workspaces"
  chmod 750 "$workspace"
  [ $root -eq 1 ] && chown "$uid:$gid" "$workspace"
  # The token comes from the binary (`admin token`): printed once on stdout, its hash on stderr.
  hash_out=$(mktemp)
  token=$("$bin" admin token --user "$admin" 2>"$hash_out")
  hash=$(sed -n 's/^token_sha256 = "\([0-9a-f]\{64\}\)"$/\1/p' "$hash_out")
  rm -f "$hash_out"
  if [ -z "$token" ] || [ -z "$hash" ]; then
    echo "could not make a token with $bin admin token" >&2
    exit 1
  fi
  {
    grep -v '^#:schema' policies/default.toml
    cat <<EOF

# The first admin, added by scripts/start.sh. Add more users the same way: \`airlock admin
# token --user NAME\` prints a token and its token_sha256 line. The server reloads this file
# when it changes.
[[users]]
name = "$admin"
token_sha256 = "$hash"
role = "admin"
workspace = "$workspace"
uid = $uid
gid = $gid
EOF
  } > "$policy.tmp"
  mv "$policy.tmp" "$policy"
  cat > "$config" <<EOF
# Written by scripts/start.sh on the first run. Every key and its default: docs/OPERATIONS.md.
listen = "$listen"
data_dir = "."                 # this directory (relative paths are relative to this file)
policy = "policy.toml"
allowed_origins = ["http://127.0.0.1:$port", "http://localhost:$port"]
instance = "$instance"

# No [redis] url: airlock serve starts its own redis-server (unix socket and AOF in redis/).
EOF
  # Kept so this script can show it again; delete it once you have stored the token elsewhere.
  printf '%s\n' "$token" > "$token_file"
fi

if [ -r "$token_file" ]; then
  token=$(head -n1 "$token_file")
  token_line="$token    (user \`$admin\`; also in $token_file — delete that file once you have it)"
else
  token_line="printed on the first run (make a new one: $bin admin token --user NAME)"
fi

cat <<EOF
==> Airlock
    web UI:      $url
    admin token: $token_line
    data:        $data (config airlock.toml, policy policy.toml, Redis in redis/)
    workspaces:  $data/workspaces
    check:       $bin doctor --config $config
EOF

if [ "${AIRLOCK_INIT_ONLY:-0}" = 1 ]; then
  exit 0
fi
echo "==> starting the server (Ctrl-C stops it)"
exec "$bin" serve --config "$config"
