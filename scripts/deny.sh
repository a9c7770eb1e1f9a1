#!/usr/bin/env bash
# Dependency scan: `cargo deny check` (advisories, licenses, bans, sources) with deny.toml.
#
# Runs fully offline by default, against the RustSec advisory-db snapshot kept in shared/
# (a git bundle), because these machines cannot reach the live database's host.
#
#   bash scripts/deny.sh                          # offline, snapshot found automatically
#   AIRLOCK_ADVISORY_DB=/path/to/x.bundle bash scripts/deny.sh   # offline, that snapshot
#   AIRLOCK_ADVISORY_DB=live bash scripts/deny.sh # fetch the live database (needs network)
#
# Extra arguments are passed to `cargo deny check`, e.g. `bash scripts/deny.sh advisories`.
# Exits non-zero if cargo-deny reports any error (warnings, e.g. duplicate versions, pass).
set -euo pipefail

# Pinned so that every machine and CI run interprets deny.toml the same way; bump it together
# with deny.toml (cargo-deny's config schema changes between minor versions).
DENY_VERSION=0.20.2

# The advisory db url in deny.toml, and the directory name cargo-deny derives from it
# (`<last url segment>-<xxhash64(lowercased url, seed 0xca80de71)>`, see url_to_db_path in
# cargo-deny's src/advisories/helpers/db.rs). With --offline, cargo-deny only opens
# <db-path>/<that name>; it never clones, so we must lay the snapshot out there ourselves.
DB_URL=https://github.com/rustsec/advisory-db
DB_DIRNAME=advisory-db-3157b0e258782691

# Work from the repo root, wherever the repo was cloned (deny.toml and Cargo.lock live there).
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

die() { echo "scripts/deny.sh: error: $*" >&2; exit 1; }

# A mismatch here means someone edited db-urls without updating DB_DIRNAME: fail instead of
# letting cargo-deny look in a directory we did not fill.
grep -qF "db-urls = [\"$DB_URL\"]" deny.toml \
  || die "deny.toml's [advisories] db-urls is not [\"$DB_URL\"]; update DB_URL/DB_DIRNAME here"

command -v git >/dev/null || die "git is needed (to unpack the advisory-db snapshot, and by cargo-deny)"

# (a) cargo-deny at the pinned version. `--locked` uses cargo-deny's own Cargo.lock, which is
# what its release was tested with (and builds with our rustc).
installed="$(cargo deny --version 2>/dev/null || true)"
if [[ "$installed" != "cargo-deny $DENY_VERSION" ]]; then
  echo "scripts/deny.sh: installing cargo-deny $DENY_VERSION (found: ${installed:-none}); this takes ~5 min" >&2
  cargo install --locked cargo-deny --version "$DENY_VERSION"
fi

# (b) Which advisory database.
if [[ "${AIRLOCK_ADVISORY_DB:-}" == live ]]; then
  # Live: cargo-deny clones/fetches the database itself into db-path (deny.toml's default,
  # target/advisory-dbs, unless AIRLOCK_DENY_DB_ROOT is set), so repeated runs only fetch.
  echo "scripts/deny.sh: using the live advisory database ($DB_URL)" >&2
  exec cargo deny --locked check "$@"
fi

if [[ -n "${AIRLOCK_ADVISORY_DB:-}" ]]; then
  # Explicitly chosen: never fall back to another copy behind the caller's back.
  [[ -e "$AIRLOCK_ADVISORY_DB" ]] || die "AIRLOCK_ADVISORY_DB=$AIRLOCK_ADVISORY_DB does not exist"
  bundle="$AIRLOCK_ADVISORY_DB"
else
  bundle=""
  # shared/ sits beside the repo (../shared, also in CI's fresh clone); /work/shared covers a
  # clone made anywhere else on this machine, e.g. /tmp/x.
  for candidate in "$repo_root/../shared/advisory-db/rustsec-advisory-db.bundle" \
                   /work/shared/advisory-db/rustsec-advisory-db.bundle; do
    if [[ -f "$candidate" ]]; then bundle="$(readlink -f "$candidate")"; break; fi
  done
  [[ -n "$bundle" ]] || die "no advisory-db snapshot found: looked for
    \$AIRLOCK_ADVISORY_DB (unset)
    $repo_root/../shared/advisory-db/rustsec-advisory-db.bundle
    /work/shared/advisory-db/rustsec-advisory-db.bundle
  Set AIRLOCK_ADVISORY_DB to a snapshot bundle, or AIRLOCK_ADVISORY_DB=live to fetch the live database."
fi

# (c) A fresh clone in a temp dir, in the layout cargo-deny expects. Fresh every run (it takes
# well under a second) because cargo-deny's staleness check (maximum-db-staleness, 90 days)
# reads the clone's .git/HEAD mtime: a clone kept around would go "stale" by itself.
db_root="$(mktemp -d "${TMPDIR:-/tmp}/airlock-advisory-dbs.XXXXXX")"
trap 'rm -rf "$db_root"' EXIT
# The bundle's HEAD names no branch, so a plain clone checks out nothing: ask for main.
git -c init.defaultBranch=main clone --quiet --branch main "$bundle" "$db_root/$DB_DIRNAME" \
  || die "could not clone the advisory-db snapshot $bundle"
[[ -d "$db_root/$DB_DIRNAME/crates" ]] || die "$bundle does not look like RustSec's advisory-db (no crates/)"

# The snapshot only knows advisories up to its commit date: say how old it is, loudly once it
# is older than cargo-deny's own 90-day limit for a database it was not allowed to fetch.
snap_date="$(git -C "$db_root/$DB_DIRNAME" show -s --format=%cs HEAD)"
snap_age_days=$(( ( $(date +%s) - $(git -C "$db_root/$DB_DIRNAME" show -s --format=%ct HEAD) ) / 86400 ))
echo "scripts/deny.sh: advisory db: snapshot $bundle (commit date $snap_date, $snap_age_days days old)" >&2
if (( snap_age_days > 90 )); then
  echo "scripts/deny.sh: WARNING: the advisory snapshot is over 90 days old; advisories published since $snap_date are not checked. Refresh shared/advisory-db, or run with AIRLOCK_ADVISORY_DB=live where the network allows." >&2
fi

# cargo-deny reads `cargo metadata --offline`, which needs every crate in Cargo.lock on disk,
# those of other platforms too (a build fetches only this one's): fetch them all first. This
# is the one step that uses the network (the crates registry), and a no-op once fetched.
cargo fetch --locked --quiet || die "cargo fetch failed: the crates registry is needed once to fetch every locked crate"

# (d) Offline: --offline stops cargo-deny fetching the advisory db (it opens db-path as is)
# and the cargo index/crates (`cargo metadata --offline`); --locked fails rather than touch
# Cargo.lock. cargo-deny exits non-zero on any error-level finding.
AIRLOCK_DENY_DB_ROOT="$db_root" cargo deny --offline --locked check "$@"
