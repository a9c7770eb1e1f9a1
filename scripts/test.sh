#!/usr/bin/env bash
# Runs all of Airlock's tests: builds the static executor and the sandbox image, then runs the
# whole workspace's tests against the real Docker engine (and real redis-server processes the
# tests start themselves). Needs: a running Docker engine, busybox-static, redis-server; runsc
# for the gVisor tests (`.ci/run` installs all of them).
set -euo pipefail
cd "$(dirname "$0")/.."
triple="$(uname -m)-unknown-linux-gnu"
echo "==> building the static executor"
cargo rustc --release -p airlock-executor --bin airlock-executor --target "$triple" \
  -- -C target-feature=+crt-static
echo "==> building the sandbox image"
cargo run -q -p airlock -- image build --executor "target/$triple/release/airlock-executor"
echo "==> running the tests"
cargo test --workspace --no-fail-fast "$@"
