#!/usr/bin/env bash
# Builds the base images the compose stack needs from this Debian/Ubuntu host's own files, for
# machines with no registry (`docker import` of root filesystems made by local-bases/make-base.py;
# nothing is downloaded):
#
#   airlock-local/builder:latest   the host's Rust toolchain, gcc, libc6-dev and busybox-static
#                                  (airlock-local/builder-base), plus a layer with the host's
#                                  cargo registry cache, refreshed on every run (it builds
#                                  offline: CARGO_NET_OFFLINE=true)
#   airlock-local/runtime:latest   glibc + libgcc: the orchestrator image's final stage
#   airlock-local/redis:latest     redis-server, redis-cli, setpriv, their libraries, busybox
#   airlock-local/haproxy:latest   only when asked for (`haproxy`): haproxy and its libraries,
#                                  for docker-compose.socket-proxy.yml (apt-get install haproxy)
#
# Then build the stack with them (compose/.env, see .env.example):
#   BUILDER_IMAGE=airlock-local/builder:latest
#   RUNTIME_IMAGE=airlock-local/runtime:latest
#   REDIS_IMAGE=airlock-local/redis:latest
#
# Where a registry is reachable, skip this: the defaults are rust:1-bookworm,
# debian:bookworm-slim and redis:7-bookworm.
#
# The cargo registry cache must hold every crate of Cargo.lock: build the workspace on this host
# once (scripts/test.sh does) before building the stack.
#
# Usage: bash compose/local-bases.sh [--force] [builder] [runtime] [redis] [haproxy]
#   (no names: the first three; an imported image that exists is kept unless --force)
set -euo pipefail
cd "$(dirname "$0")"
force=0
kinds=()
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    builder|runtime|redis|haproxy) kinds+=("$a") ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
[ ${#kinds[@]} -gt 0 ] || kinds=(builder runtime redis)

need=()
command -v python3 >/dev/null || need+=(python3)
command -v redis-server >/dev/null || need+=(redis-server)
command -v busybox >/dev/null || need+=(busybox-static)
command -v cc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
  echo "missing on this host: ${need[*]} — install them with: apt-get install ${need[*]}" >&2
  exit 1
fi
cargo_home=${CARGO_HOME:-$HOME/.cargo}
if [[ " ${kinds[*]} " == *" haproxy "* ]] && ! command -v haproxy >/dev/null; then
  echo "haproxy is not installed on this host: apt-get install haproxy" >&2
  exit 1
fi
if [[ " ${kinds[*]} " == *" builder "* ]]; then
  command -v rustc >/dev/null || { echo "no Rust toolchain on this host (rustc): install it with rustup" >&2; exit 1; }
  [ -d "$cargo_home/registry/index" ] && [ -d "$cargo_home/registry/cache" ] || {
    echo "no cargo registry cache in $cargo_home/registry: build the workspace here first (cargo build)" >&2
    exit 1
  }
fi

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/airlock-bases.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Imports a root filesystem as TAG (unless it exists and no --force), removing the image the tag
# named before.
import() {
  local kind=$1 tag=$2
  shift 2
  if [ $force -eq 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "==> $tag exists (--force rebuilds it)"
    return
  fi
  echo "==> making the $kind root filesystem"
  python3 local-bases/make-base.py "$kind" "$tmp/$kind.tar"
  echo "==> importing $tag ($(du -h "$tmp/$kind.tar" | cut -f1))"
  local old
  old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  docker import --change 'LABEL io.airlock.local-base=1' "$@" "$tmp/$kind.tar" "$tag" >/dev/null
  rm -f "$tmp/$kind.tar"
  [ -z "$old" ] || docker rmi "$old" >/dev/null 2>&1 || true
}

path='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
for kind in "${kinds[@]}"; do
  case "$kind" in
    runtime) import runtime airlock-local/runtime:latest --change "$path" ;;
    redis) import redis airlock-local/redis:latest --change "$path" --change 'CMD ["redis-server"]' ;;
    haproxy) import haproxy airlock-local/haproxy:latest --change "$path" ;;
    builder)
      import builder airlock-local/builder-base:latest \
        --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV CARGO_NET_OFFLINE=true'
      # The registry cache as a layer of its own: rebuilt only when the host's cache changed.
      echo "==> adding the cargo registry cache ($cargo_home/registry) to airlock-local/builder"
      mkdir -p "$tmp/ctx"
      printf 'FROM airlock-local/builder-base:latest\nCOPY index /usr/local/cargo/registry/index\nCOPY cache /usr/local/cargo/registry/cache\n' \
        > "$tmp/ctx/Dockerfile"
      old=$(docker image inspect -f '{{.Id}}' airlock-local/builder:latest 2>/dev/null || true)
      tar -C "$cargo_home/registry" -cf "$tmp/ctx.tar" index cache
      tar -C "$tmp/ctx" -rf "$tmp/ctx.tar" Dockerfile
      docker build -q --force-rm -t airlock-local/builder:latest - < "$tmp/ctx.tar" >/dev/null
      rm -f "$tmp/ctx.tar"
      new=$(docker image inspect -f '{{.Id}}' airlock-local/builder:latest)
      if [ -n "$old" ] && [ "$old" != "$new" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
      ;;
  esac
done
echo "==> local base images ready"
