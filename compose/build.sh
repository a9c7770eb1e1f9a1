#!/usr/bin/env bash
# Builds the stack's images (the same as `docker-compose build`, with two additions), then
# removes the build layers earlier builds left behind.
#
# - The orchestrator image compiles Airlock in a build stage whose first layer holds the
#   compiled dependencies, keyed by a hash of Cargo.lock, the manifests and the builder image
#   (DEPS_KEY): it is reused until they change. The build stage is tagged
#   airlock-build-cache:latest so the current build's layers are kept as cache; earlier builds'
#   layers (and dependency layers for other keys) are removed. Only images labelled by
#   compose/Dockerfile or compose/redis/Dockerfile are touched.
# - AIRLOCK_BUILD_CPU_SHARES (e.g. 256) lowers the compile's CPU priority on a busy host.
#
# Environment: AIRLOCK_COMPOSE_ENV (the env file, default compose/.env; the environment
# overrides it, as in compose), and the variables of .env.example.
set -euo pipefail
cd "$(dirname "$0")"
env_file=${AIRLOCK_COMPOSE_ENV:-.env}
if [ -f "$env_file" ]; then
  while IFS='=' read -r k v; do
    [[ $k =~ ^[A-Z_][A-Z0-9_]*$ ]] && [ -z "${!k+x}" ] && export "$k=$v"
  done < "$env_file"
fi
builder=${BUILDER_IMAGE:-rust:1-bookworm}
DEPS_KEY=$( (cd .. && cat Cargo.lock Cargo.toml orchestrator/Cargo.toml executor-image/Cargo.toml \
  tests/Cargo.toml; docker image inspect -f '{{.Id}}' "$builder" 2>/dev/null || true) \
  | sha256sum | cut -c1-16)
common=(--force-rm)
[ -z "${AIRLOCK_BUILD_CPU_SHARES:-}" ] || common+=(--cpu-shares "$AIRLOCK_BUILD_CPU_SHARES")
args=(--build-arg "BUILDER_IMAGE=$builder"
      --build-arg "RUNTIME_IMAGE=${RUNTIME_IMAGE:-debian:bookworm-slim}"
      --build-arg "DEPS_KEY=$DEPS_KEY")

echo "==> compiling Airlock (build stage; dependency layer key $DEPS_KEY)"
docker build "${common[@]}" "${args[@]}" -f Dockerfile --target build \
  -t airlock-build-cache:latest ..
echo "==> building ${AIRLOCK_IMAGE:-airlock:local}"
docker build "${common[@]}" "${args[@]}" -f Dockerfile -t "${AIRLOCK_IMAGE:-airlock:local}" ..
echo "==> building ${AIRLOCK_REDIS_IMAGE:-airlock-redis:local}"
docker build "${common[@]}" --build-arg "REDIS_IMAGE=${REDIS_IMAGE:-redis:7-bookworm}" \
  -t "${AIRLOCK_REDIS_IMAGE:-airlock-redis:local}" redis

echo "==> removing stale build layers"
prev=
for _ in $(seq 1 100); do
  # Earlier builds' layers: untagged leaves labelled by our Dockerfiles. --no-prune keeps their
  # parents until they are leaves themselves, so the current dependency layer stays.
  ids=$(docker images -q --no-trunc -f dangling=true -f label=io.airlock.compose-build=1)
  # Dependency layers for other keys.
  for id in $(docker images -q --no-trunc -f dangling=true -f label=io.airlock.compose-deps); do
    key=$(docker image inspect -f '{{index .Config.Labels "io.airlock.compose-deps"}}' "$id" 2>/dev/null || true)
    [ -n "$key" ] && [ "$key" != "$DEPS_KEY" ] && ids="$ids $id"
  done
  ids=$(echo $ids | tr ' ' '\n' | sort -u)
  [ -n "$ids" ] && [ "$ids" != "$prev" ] || break
  prev=$ids
  # shellcheck disable=SC2086
  docker rmi --no-prune $ids >/dev/null 2>&1 || true
done
echo "==> images built"
