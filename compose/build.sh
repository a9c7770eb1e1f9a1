#!/usr/bin/env bash
# Builds the stack's images, then removes the build layers earlier builds left behind.
#
# The orchestrator image compiles Airlock in a build stage whose first layer holds the compiled
# dependencies (keyed by a hash of Cargo.lock and the manifests, DEPS_KEY): it is reused until
# they change. The build stage is tagged airlock-build-cache:latest so the layers of the current
# build are kept; layers of earlier builds (and dependency layers for other keys) are removed.
# Only images labelled by compose/Dockerfile or compose/redis/Dockerfile are touched.
#
# Usage: bash compose/build.sh [docker-compose build options]
# Environment: AIRLOCK_COMPOSE_ENV (the env file, default compose/.env), COMPOSE_PROJECT_NAME.
set -euo pipefail
cd "$(dirname "$0")"
# compose's env file (AIRLOCK_COMPOSE_ENV, default .env), without overriding what the
# environment already sets (as compose does).
env_file=${AIRLOCK_COMPOSE_ENV:-.env}
if [ -f "$env_file" ]; then
  while IFS='=' read -r k v; do
    [[ $k =~ ^[A-Z_][A-Z0-9_]*$ ]] && [ -z "${!k+x}" ] && export "$k=$v"
  done < "$env_file"
  env_args=(--env-file "$env_file")
else
  env_args=()
fi
if command -v docker-compose >/dev/null; then compose=(docker-compose); else compose=(docker compose); fi
compose+=("${env_args[@]}")
export DEPS_KEY
DEPS_KEY=$(cd .. && cat Cargo.lock Cargo.toml orchestrator/Cargo.toml executor-image/Cargo.toml \
  tests/Cargo.toml | sha256sum | cut -c1-16)

echo "==> building the orchestrator's build stage (dependency layer key $DEPS_KEY)"
docker build -q --force-rm -f Dockerfile --target build -t airlock-build-cache:latest \
  --build-arg "BUILDER_IMAGE=${BUILDER_IMAGE:-rust:1-bookworm}" \
  --build-arg "DEPS_KEY=$DEPS_KEY" .. >/dev/null
echo "==> building the stack's images"
"${compose[@]}" build --force-rm "$@"

echo "==> removing stale build layers"
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
  [ -n "$ids" ] && [ "$ids" != "${prev:-}" ] || break
  prev=$ids
  # shellcheck disable=SC2086
  docker rmi --no-prune $ids >/dev/null 2>&1 || true
done
echo "==> images built"
