//! Protected-path rules from the policy, matched against canonical (resolved) paths.
//!
//! A rule matches a path when its glob matches the path itself or any of its parent
//! directories, so `secrets` (a directory) also protects `secrets/key.pem`. Globs use globset's
//! defaults (`*` may cross `/`), which errs on the side of protecting more.

use crate::error::{show, ToolError, ToolResultOr};
use crate::protocol::{ErrorCode, ProtectedPath, Protection};
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
}

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
        })
    }

    /// True when `rel` (or a parent directory of it) may not be read at all.
    pub fn is_no_access(&self, rel: &RelPath) -> bool {
        matches_self_or_parent(&self.no_access, rel)
    }

    /// True when `rel` may not be written (no-access implies read-only).
    pub fn is_read_only(&self, rel: &RelPath) -> bool {
        self.is_no_access(rel) || matches_self_or_parent(&self.read_only, rel)
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
