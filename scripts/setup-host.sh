#!/usr/bin/env bash
# Prepares a Debian/Ubuntu Docker host for Airlock: installs what is missing (busybox-static
# for the sandbox image, redis-server for state, runsc for gVisor; with --tests also what the
# tests need: tmux, chromium and chromium-driver with a font for screenshots for the client
# tests, haproxy for the compose socket-proxy test, schemathesis from PyPI for the API contract
# test, the MCP Python SDK 2.x and 1.x in venvs for the MCP tests, and the Debian packages the
# `dev` toolchain image is made of), makes sure the Docker engine answers, and
# registers runsc with it. Idempotent; installing needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

packages=(busybox-static redis-server runsc)
if [ "${1:-}" = --tests ]; then
  packages+=(tmux chromium chromium-driver fonts-dejavu-core haproxy)
  # What `airlock image build --profile dev` copies into the toolchain image (its tests use it).
  packages+=(dash bash coreutils findutils grep sed diffutils tar gzip procps make gcc libc6-dev
    binutils git python3 python3-pip python3-venv python3-pytest curl ca-certificates)
fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} — install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "==> installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The API contract test's fuzzer (pinned: its checks change between releases).
SCHEMATHESIS_VERSION=4.32.5
if [ "${1:-}" = --tests ] && ! schemathesis --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  echo "==> installing schemathesis $SCHEMATHESIS_VERSION (PyPI)"
  python3 -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  command -v schemathesis >/dev/null || { echo "schemathesis is installed but not on PATH ($(python3 -m site --user-base)/bin?)" >&2; exit 1; }
fi

# The MCP tests' clients: the official Python SDK in both protocol eras (2.x speaks 2026-07-28,
# 1.x 2025-11-25), each in its own venv (pinned; the tests find them at these paths).
MCP_VENVS="${AIRLOCK_MCP_VENVS:-/opt/airlock-tests}"
if [ "${1:-}" = --tests ]; then
  for pin in mcp2:2.3.0 mcp1:1.30.0; do
    name="${pin%%:*}"; version="${pin#*:}"; venv="$MCP_VENVS/$name"
    if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$version')" 2>/dev/null; then
      echo "==> installing mcp $version (PyPI) in $venv"
      python3 -m venv "$venv"
      "$venv/bin/python" -m pip install -q --disable-pip-version-check "mcp==$version"
    fi
  done
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v dockerd >/dev/null; then
    echo "the Docker engine is not reachable: start it (systemctl start docker) or set DOCKER_HOST" >&2
    exit 1
  fi
  echo "==> the Docker engine is not reachable; starting dockerd"
  (dockerd >/tmp/dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /tmp/dockerd.log" >&2; exit 1; }
fi

if [ "$(id -u)" -eq 0 ]; then
  bash scripts/enable-gvisor.sh
fi
