#!/usr/bin/env bash
# Runs all of Airlock's tests against the real Docker engine (and real redis-server processes
# the tests start themselves): prepares the host, builds the sandbox image from this tree, then
# runs the whole workspace's tests. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh --tests
triple="$(uname -m)-unknown-linux-gnu"
echo "==> dependency scan (cargo deny, offline advisory snapshot)"
bash scripts/deny.sh
echo "==> fuzzing each parser briefly (cargo fuzz)"
bash scripts/fuzz.sh --ci
echo "==> building the static executor"
cargo rustc -q --release -p airlock-executor --bin airlock-executor --target "$triple" \
  -- -C target-feature=+crt-static
echo "==> building the sandbox images (each is kept when its inputs did not change)"
cargo run -q -p airlock -- image build --executor "target/$triple/release/airlock-executor"
cargo run -q -p airlock -- image build --profile dev --executor "target/$triple/release/airlock-executor"
echo "==> running the tests"
cargo test --workspace --no-fail-fast "$@"
