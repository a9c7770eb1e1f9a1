//! Protected-path rules from the policy, matched against canonical (resolved) paths.
//!
//! A rule matches a path when its glob matches the path itself or any of its parent
//! directories, so `secrets` (a directory) also protects `secrets/key.pem`. Globs use globset's
//! defaults (`*` may cross `/`), which errs on the side of protecting more.

use crate::error::{show, ToolError, ToolResultOr};
use crate::protocol::{ErrorCode, Mask, ProtectedPath, Protection};
use crate::resolve::RelPath;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The compiled rules of one request.
#[derive(Debug)]
pub struct Protections {
    no_access: GlobSet,
    read_only: GlobSet,
    /// The container's masks: (path, protection).
    masks: Vec<(Vec<u8>, Protection)>,
}

/// A name no real file has: a directory whose probe child matches a glob is protected whole
/// (`.git/**` makes `.git` one read-only view rather than one per entry).
const PROBE: &[u8] = b"\x01airlock-probe\x01";

impl Protections {
    pub fn new(rules: &[ProtectedPath]) -> ToolResultOr<Protections> {
        let mut no_access = GlobSetBuilder::new();
        let mut read_only = GlobSetBuilder::new();
        for rule in rules {
            let glob = Glob::new(&rule.glob).map_err(|e| {
                ToolError::invalid(format!("invalid protected-path glob `{}`: {e}", rule.glob))
            })?;
            match rule.protection {
                Protection::NoAccess => no_access.add(glob),
                Protection::ReadOnly => read_only.add(glob),
            };
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| ToolError::invalid(format!("invalid protected-path globs: {e}")))
        };
        Ok(Protections {
            no_access: build(no_access)?,
            read_only: build(read_only)?,
            masks: Vec::new(),
        })
    }

    /// No glob at all: nothing in the workspace is protected.
    pub fn has_no_rules(&self) -> bool {
        self.no_access.is_empty() && self.read_only.is_empty()
    }

    /// Adds the container's masks to the rules.
    pub fn with_masks(mut self, masks: &[Mask]) -> Protections {
        self.masks = masks
            .iter()
            .map(|m| (m.path.as_bytes().to_vec(), m.protection))
            .collect();
        self
    }

    /// The strongest mask on `rel` or one of its parents.
    fn masked(&self, rel: &RelPath) -> Option<Protection> {
        let b = rel.as_bytes();
        let mut best = None;
        for (m, p) in &self.masks {
            let hit = b == m.as_slice() || (b.starts_with(m) && b.get(m.len()) == Some(&b'/'));
            if hit && (best.is_none() || *p == Protection::NoAccess) {
                best = Some(*p);
            }
        }
        best
    }

    /// What the survey protects at `rel` itself (not through a parent, which the walk has
    /// already handled): a glob that matches it, or for a directory one that matches every
    /// name beneath it.
    pub fn survey_match(&self, rel: &RelPath, is_dir: bool) -> Option<Protection> {
        let hits = |set: &GlobSet| {
            if set.is_empty() {
                return false;
            }
            if set.is_match(Path::new(OsStr::from_bytes(rel.as_bytes()))) {
                return true;
            }
            is_dir && set.is_match(Path::new(OsStr::from_bytes(rel.join(PROBE).as_bytes())))
        };
        if hits(&self.no_access) {
            Some(Protection::NoAccess)
        } else if hits(&self.read_only) {
            Some(Protection::ReadOnly)
        } else {
            None
        }
    }

    /// True when `rel` (or a parent directory of it) may not be read at all.
    pub fn is_no_access(&self, rel: &RelPath) -> bool {
        matches_self_or_parent(&self.no_access, rel)
            || self.masked(rel) == Some(Protection::NoAccess)
    }

    /// True when `rel` may not be written (no-access implies read-only).
    pub fn is_read_only(&self, rel: &RelPath) -> bool {
        self.is_no_access(rel)
            || matches_self_or_parent(&self.read_only, rel)
            || self.masked(rel).is_some()
    }

    /// Refuses reading the content of `rel`; `shown` is the path the caller gave.
    pub fn check_read(&self, rel: &RelPath, shown: &str) -> ToolResultOr<()> {
        if self.is_no_access(rel) {
            return Err(refused(rel, shown, "may not be read"));
        }
        Ok(())
    }

    /// Refuses writing `rel`.
    pub fn check_write(&self, rel: &RelPath, shown: &str) -> ToolResultOr<()> {
        if self.is_read_only(rel) {
            return Err(refused(rel, shown, "may not be modified"));
        }
        Ok(())
    }
}

fn refused(rel: &RelPath, shown: &str, what: &str) -> ToolError {
    let via = if rel.display() == shown {
        String::new()
    } else {
        format!(" (it resolves to `{}`)", rel.display())
    };
    ToolError::new(
        ErrorCode::ProtectedPath,
        format!("{}{via} is a protected path and {what}", show(shown)),
    )
}

fn matches_self_or_parent(set: &GlobSet, rel: &RelPath) -> bool {
    if set.is_empty() || rel.is_root() {
        return false;
    }
    let bytes = rel.as_bytes();
    let as_path = |b: &[u8]| Path::new(OsStr::from_bytes(b)).to_path_buf();
    if set.is_match(as_path(bytes)) {
        return true;
    }
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .any(|(i, _)| set.is_match(as_path(&bytes[..i])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::root().join(s.as_bytes())
    }

    fn rules() -> Protections {
        Protections::new(&[
            ProtectedPath {
                glob: "**/.env".into(),
                protection: Protection::NoAccess,
            },
            ProtectedPath {
                glob: ".git/**".into(),
                protection: Protection::ReadOnly,
            },
            ProtectedPath {
                glob: "secrets".into(),
                protection: Protection::NoAccess,
            },
        ])
        .unwrap()
    }

    #[test]
    fn globs_match_resolved_paths_and_parents() {
        let p = rules();
        assert!(p.is_no_access(&rel(".env")));
        assert!(p.is_no_access(&rel("sub/.env")));
        assert!(p.is_no_access(&rel("secrets/key.pem")));
        assert!(!p.is_no_access(&rel("env")));
        assert!(!p.is_no_access(&rel(".git/config")));
        assert!(p.is_read_only(&rel(".git/config")));
        assert!(p.is_read_only(&rel(".env")));
        assert!(!p.is_read_only(&rel("src/main.rs")));
        assert!(!p.is_no_access(&RelPath::root()));
        let e = p.check_read(&rel(".env"), "innocent").unwrap_err();
        assert_eq!(e.code, ErrorCode::ProtectedPath);
        assert!(e.message.contains("resolves to `.env`"), "{}", e.message);
    }

    #[test]
    fn invalid_glob_is_an_invalid_request() {
        let e = Protections::new(&[ProtectedPath {
            glob: "a[".into(),
            protection: Protection::ReadOnly,
        }])
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }
}
