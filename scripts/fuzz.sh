#!/usr/bin/env bash
# Fuzz the parsers that take hostile input (the cargo-fuzz crate in fuzz/).
#
#   scripts/fuzz.sh                     every target, ${FUZZ_SECS:-300} s each
#   scripts/fuzz.sh policy shell        only these targets
#   FUZZ_SECS=60 scripts/fuzz.sh        60 s each
#   scripts/fuzz.sh --ci                CI: 20 s each (unless FUZZ_SECS is set)
#   scripts/fuzz.sh --build-only        install cargo-fuzz and build, run nothing
#   scripts/fuzz.sh --no-build shell    run the binaries built before (fuzz/target), as they are
#
# It installs cargo-fuzz (pinned) when missing, builds every target once, then runs each one
# for FUZZ_SECS seconds on its corpus fuzz/corpus/TARGET (kept between runs, git-ignored) plus
# the committed seeds in fuzz/seeds/TARGET, with the dictionary fuzz/dicts/TARGET.dict when
# there is one. Each target runs even when an earlier one crashed; the script then fails,
# printing every crash artifact (fuzz/artifacts/TARGET/crash-…, oom-…, timeout-…) and the
# command that reproduces it. A target that finished cleanly prints libFuzzer's coverage
# (cov: edges, ft: features) and speed.
#
# The stable toolchain is enough: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly flags.
# No sanitizer (-s none): the code is safe Rust, the targets look for panics, arithmetic
# overflow (debug assertions are on), hangs, runaway memory and broken invariants.
#
# Environment:
#   FUZZ_SECS                  seconds per target (default 300; 20 with --ci)
#   FUZZ_TIMEOUT               seconds one input may take before it counts as a hang (10)
#   FUZZ_RSS_MB                memory limit in MiB before an input counts as an OOM (2048)
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(policy shell executor_request execute resolve)

usage() {
    # The header comment above, without the leading `# `.
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    echo "Targets: ${ALL_TARGETS[*]}"
}

ci=false
build_only=false
no_build=false
targets=()
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        --ci) ci=true ;;
        --build-only) build_only=true ;;
        --no-build) no_build=true ;;
        -*) echo "fuzz.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
        *)
            if [[ " ${ALL_TARGETS[*]} " != *" $arg "* ]]; then
                echo "fuzz.sh: unknown target $arg; targets: ${ALL_TARGETS[*]}" >&2
                exit 2
            fi
            targets+=("$arg")
            ;;
    esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")
if $ci; then
    secs=${FUZZ_SECS:-20}
else
    secs=${FUZZ_SECS:-300}
fi
timeout_secs=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export RUSTC_BOOTSTRAP=1
# The build's flags (also in the printed `cargo fuzz run` commands, which would rebuild
# with other flags).
flags=(--sanitizer none --debug-assertions)

if ! $no_build; then
    # 1. cargo-fuzz, pinned.
    if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
        echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
        cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
    fi
    # 2. Build every target once (fuzz/ is its own workspace, built into fuzz/target). The
    #    runs below start these binaries directly: a source edited meanwhile rebuilds nothing.
    echo "== building the fuzz targets"
    start=$SECONDS
    cargo fuzz build "${flags[@]}"
    echo "== built in $((SECONDS - start)) s"
fi
$build_only && exit 0
bin_dir="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"

# 3. Run each target.
max_len() {
    case "$1" in
        policy) echo 16384 ;; # the shipped policies are ~5 KiB
        *) echo 4096 ;;
    esac
}

failed=()
summary=()
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
for t in "${targets[@]}"; do
    if [[ ! -x "$bin_dir/$t" ]]; then
        echo "fuzz.sh: $bin_dir/$t is not built (run without --no-build)" >&2
        exit 2
    fi
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    dirs=("$corpus")
    [[ -d "fuzz/seeds/$t" ]] && dirs+=("fuzz/seeds/$t")
    args=(
        "-artifact_prefix=fuzz/artifacts/$t/"
        "-max_total_time=$secs"
        "-timeout=$timeout_secs"
        "-rss_limit_mb=$rss_mb"
        "-max_len=$(max_len "$t")"
        -print_final_stats=1
    )
    [[ -f "fuzz/dicts/$t.dict" ]] && args+=("-dict=fuzz/dicts/$t.dict")
    echo "== $t: ${secs} s (corpus ${dirs[*]})"
    log="$logs/$t.log"
    status=0
    "$bin_dir/$t" "${args[@]}" "${dirs[@]}" >"$log" 2>&1 || status=$?
    # The last status line: `#N DONE cov: C ft: F corp: … exec/s: E rss: …`.
    stats=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|INITED|NEW|REDUCE)' "$log" | tail -n 1 || true)
    if [[ $status -eq 0 ]]; then
        summary+=("$t: ok — $(sed -E 's/^#([0-9]+)[[:space:]]+[A-Z]+[[:space:]]+/\1 runs, /' <<<"$stats")")
        echo "   ${summary[-1]}"
        continue
    fi
    tail -n 60 "$log"
    mapfile -t artifacts < <(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log")
    if [[ ${#artifacts[@]} -eq 0 ]]; then
        failed+=("$t: exit $status, no artifact written (see its output above)")
    fi
    for a in "${artifacts[@]}"; do
        failed+=("$t: $a")
        echo "!! $t crashed: $a"
        echo "   reproduce: $bin_dir/$t $a"
        echo "         or:  RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $t $a"
        echo "   minimize:  RUSTC_BOOTSTRAP=1 cargo fuzz tmin ${flags[*]} $t $a"
    done
    summary+=("$t: FAILED (exit $status)")
done

echo "== summary (${secs} s per target)"
printf '   %s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "== crashes:"
    printf '   %s\n' "${failed[@]}"
    exit 1
fi
