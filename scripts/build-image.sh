#!/usr/bin/env bash
# Builds the static executor and the sandbox image `airlock-executor:latest` (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
triple="$(uname -m)-unknown-linux-gnu"
echo "==> building the static executor"
cargo rustc -q --release -p airlock-executor --bin airlock-executor --target "$triple" \
  -- -C target-feature=+crt-static
echo "==> building the sandbox image"
cargo run -q --release -p airlock -- image build --executor "target/$triple/release/airlock-executor"
