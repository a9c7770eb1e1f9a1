//! Before/after snapshots of the workspace, to report what a `run_shell` command changed.
//!
//! A snapshot records every entry's kind, size, mtime, inode and mode (symlinks are not
//! followed), plus the content of small text files so modifications come with a diff. It is
//! bounded: at most `max_snapshot_files` entries (walked in sorted order, so a truncated snapshot
//! is a prefix of the full one) and [`CONTENT_BUDGET`] bytes of content. Files under a no-access
//! protected path are tracked by metadata only: a change is reported, their content never.
//!
//! Asked to keep previous content (an applied command whose change can be undone), the
//! snapshot before the command also holds the bytes of regular files up to that size, within
//! [`KEEP_BUDGET_FACTOR`] times it; [`Snapshot::undo`] turns the changed ones into an undo
//! record.

use crate::dir::{open_file_in, open_subdir, read_entries, Meta};
use crate::protect::Protections;
use crate::protocol::{
    ChangeKind, EntryKind, ExecLimits, FileChange, NotKept, RevertFile, UndoRecord, ABSENT,
    MAX_UNDO_FILES,
};
use crate::resolve::RelPath;
use crate::text::{as_text, sha256_hex, unified_diff};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

/// Most content bytes one snapshot keeps for diffs.
pub const CONTENT_BUDGET: u64 = 16 * 1024 * 1024;
/// Most diff bytes one change report carries; later changes are reported without a diff.
pub const REPORT_DIFF_BUDGET: usize = 1024 * 1024;
/// Most content bytes a snapshot holds to undo a command, besides the diff budget: this many
/// times the per-call undo limit, at most [`KEEP_BUDGET_MAX`] (it counts against the call's
/// memory limit).
pub const KEEP_BUDGET_FACTOR: u64 = 8;
pub const KEEP_BUDGET_MAX: u64 = 32 * 1024 * 1024;
/// Deepest directory level snapshotted (each level holds one fd open).
const MAX_SNAPSHOT_DEPTH: usize = 256;

#[derive(Debug)]
struct Item {
    meta: Meta,
    /// The file's bytes, when read (for a diff, or kept to undo the change).
    data: Option<Vec<u8>>,
    /// Small enough for a diff (and counted in the diff budget).
    diffable: bool,
    protected: bool,
}

impl Item {
    /// UTF-8 content of a small text file.
    fn text(&self) -> Option<&str> {
        self.data
            .as_deref()
            .filter(|_| self.diffable)
            .and_then(as_text)
    }
}

/// A changed file between two snapshots: its path, and the entry before and after (a missing
/// side: it did not exist).
struct Changed<'a> {
    path: String,
    /// The name is not UTF-8 (`path` is a lossy rendering of it).
    lossy: bool,
    old: Option<&'a Item>,
    new: Option<&'a Item>,
}

/// Entries keyed by path with `/` replaced by NUL, so byte order is the walk's (component) order.
#[derive(Debug, Default)]
pub struct Snapshot {
    items: BTreeMap<Vec<u8>, Item>,
    /// Set when the entry cap stopped the walk; `items` is then a prefix in key order.
    truncated: bool,
}

impl Snapshot {
    /// `keep`: also hold the bytes of regular files up to this size (within [`KEEP_BUDGET`]).
    pub fn take(
        root: BorrowedFd<'_>,
        prot: &Protections,
        limits: &ExecLimits,
        keep: Option<u64>,
    ) -> Snapshot {
        let mut walker = Walker {
            prot,
            limits,
            budget: CONTENT_BUDGET,
            keep: keep.map(|k| (k, k.saturating_mul(KEEP_BUDGET_FACTOR).min(KEEP_BUDGET_MAX))),
            snap: Snapshot::default(),
        };
        walker.walk(root, &RelPath::root(), 0);
        walker.snap
    }

    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Created / modified / deleted non-directories between `self` (before) and `after`.
    fn changed<'a>(&'a self, after: &'a Snapshot) -> Vec<Changed<'a>> {
        // Only compare the part both snapshots cover.
        let limit = [self, after]
            .iter()
            .filter(|s| s.truncated)
            .filter_map(|s| s.items.keys().next_back())
            .min()
            .cloned();
        let covered = |k: &Vec<u8>| limit.as_ref().is_none_or(|l| k <= l);
        let mut keys: Vec<&Vec<u8>> = self
            .items
            .keys()
            .chain(after.items.keys())
            .filter(|k| covered(k))
            .collect();
        keys.sort();
        keys.dedup();

        let mut out = Vec::new();
        for key in keys {
            let old = self
                .items
                .get(key)
                .filter(|i| i.meta.kind != EntryKind::Dir);
            let new = after
                .items
                .get(key)
                .filter(|i| i.meta.kind != EntryKind::Dir);
            match (old, new) {
                (None, None) => continue,
                (Some(o), Some(n)) if o.meta == n.meta && o.text() == n.text() => continue,
                _ => {}
            }
            let path: Vec<u8> = key
                .iter()
                .map(|b| if *b == 0 { b'/' } else { *b })
                .collect();
            let lossy = std::str::from_utf8(&path).is_err();
            let path = String::from_utf8_lossy(&path).into_owned();
            out.push(Changed {
                path,
                lossy,
                old,
                new,
            });
        }
        out
    }

    /// Created / modified / deleted non-directories between `self` (before) and `after`.
    pub fn changes(&self, after: &Snapshot) -> Vec<FileChange> {
        let mut budget = REPORT_DIFF_BUDGET;
        let mut out = Vec::new();
        for Changed { path, old, new, .. } in self.changed(after) {
            let (kind, old_text, new_text) = match (old, new) {
                (None, None) => continue,
                (None, Some(n)) => (ChangeKind::Created, Some(""), n.text()),
                (Some(o), None) => (ChangeKind::Deleted, o.text(), Some("")),
                (Some(o), Some(n)) => (ChangeKind::Modified, o.text(), n.text()),
            };
            let protected = old.is_some_and(|i| i.protected) || new.is_some_and(|i| i.protected);
            let diff = match (protected, old_text, new_text) {
                (false, Some(a), Some(b)) if a != b => Some(unified_diff(a, b, &path)),
                _ => None,
            }
            .filter(|d| {
                let fits = d.len() <= budget;
                if fits {
                    budget -= d.len();
                }
                fits
            });
            out.push(FileChange { path, kind, diff });
        }
        out
    }

    /// The undo record of the change from `self` (taken with `keep`) to `after`: for each
    /// changed regular file, its previous content (at most `budget` bytes in all) and the
    /// sha256 it has now (`hash_now` reads the file; `None`: it cannot be read or is too large).
    pub fn undo(
        &self,
        after: &Snapshot,
        budget: u64,
        hash_now: &mut dyn FnMut(&str) -> Result<String, String>,
    ) -> UndoRecord {
        let mut left = budget;
        let mut undo = UndoRecord::default();
        let changed = self.changed(after);
        let total = changed.len();
        for (n, c) in changed.into_iter().enumerate() {
            let Changed {
                path,
                lossy,
                old,
                new,
            } = c;
            if n >= MAX_UNDO_FILES {
                undo.not_kept.push(NotKept {
                    path: "…".into(),
                    reason: format!(
                        "{} more changed files: at most {MAX_UNDO_FILES} are kept",
                        total - n
                    ),
                });
                break;
            }
            let not_kept = |reason: String| NotKept {
                path: path.clone(),
                reason,
            };
            if old.is_some_and(|i| i.protected) || new.is_some_and(|i| i.protected) {
                undo.not_kept.push(not_kept(
                    "a protected path: its content is never kept".into(),
                ));
                continue;
            }
            if lossy {
                // Putting it back would create another name.
                undo.not_kept.push(not_kept("its name is not UTF-8".into()));
                continue;
            }
            let regular = |i: Option<&Item>| i.is_none_or(|i| i.meta.kind == EntryKind::File);
            if !regular(old) || !regular(new) {
                undo.not_kept.push(not_kept(
                    "not a regular file (only files' content is kept)".into(),
                ));
                continue;
            }
            let restore = match old {
                None => None,
                Some(o) => match &o.data {
                    Some(d) if d.len() as u64 <= left => Some((d, o.meta.mode)),
                    _ => {
                        undo.not_kept.push(not_kept(format!(
                            "its previous content ({} bytes) was over the undo limit ({budget} bytes for a call)",
                            o.meta.size
                        )));
                        continue;
                    }
                },
            };
            let expected = match new {
                None => ABSENT.to_string(),
                Some(n) => match n.data.as_deref().filter(|d| d.len() as u64 == n.meta.size) {
                    Some(d) => sha256_hex(d),
                    None => match hash_now(&path) {
                        Ok(sha) => sha,
                        Err(reason) => {
                            undo.not_kept.push(not_kept(reason));
                            continue;
                        }
                    },
                },
            };
            if let Some((d, _)) = restore {
                left -= d.len() as u64;
            }
            undo.files.push(RevertFile {
                path,
                expected_sha256: expected,
                restore_sha256: restore.map_or_else(|| ABSENT.to_string(), |(d, _)| sha256_hex(d)),
                content_base64: restore.map(|(d, _)| BASE64.encode(d)),
                mode: restore.map(|(_, m)| m & 0o777),
            });
        }
        undo
    }
}

struct Walker<'a> {
    prot: &'a Protections,
    limits: &'a ExecLimits,
    budget: u64,
    /// Largest file kept for undo, and the bytes left to keep.
    keep: Option<(u64, u64)>,
    snap: Snapshot,
}

impl Walker<'_> {
    fn walk(&mut self, dir: BorrowedFd<'_>, rel: &RelPath, depth: usize) {
        // An unreadable directory is recorded (by its parent) but its content is not.
        let Ok(entries) = read_entries(dir) else {
            return;
        };
        for entry in entries {
            if self.snap.truncated {
                return;
            }
            if self.snap.items.len() >= self.limits.max_snapshot_files as usize {
                self.snap.truncated = true;
                return;
            }
            let child = rel.join(&entry.name);
            let protected = self.prot.is_no_access(&child);
            let (data, diffable) = match entry.meta.kind {
                EntryKind::File if !protected => self.read_content(dir, &entry.name, &entry.meta),
                _ => (None, false),
            };
            let key: Vec<u8> = child
                .as_bytes()
                .iter()
                .map(|b| if *b == b'/' { 0 } else { *b })
                .collect();
            self.snap.items.insert(
                key,
                Item {
                    meta: entry.meta,
                    data,
                    diffable,
                    protected,
                },
            );
            if entry.meta.kind == EntryKind::Dir {
                if depth + 1 >= MAX_SNAPSHOT_DEPTH {
                    self.snap.truncated = true;
                    return;
                }
                if let Ok(sub) = open_subdir(dir, &entry.name) {
                    self.walk(sub.as_fd(), &child, depth + 1);
                }
            }
        }
    }

    /// The file's bytes when it is small enough for a diff (text only) or to keep for undo.
    fn read_content(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
    ) -> (Option<Vec<u8>>, bool) {
        let for_diff = meta.size <= self.limits.max_diff_file_bytes && meta.size <= self.budget;
        let to_keep = self
            .keep
            .is_some_and(|(max, left)| meta.size <= max && meta.size <= left);
        if !for_diff && !to_keep {
            return (None, false);
        }
        let Ok(file) = open_file_in(dir, name) else {
            return (None, false);
        };
        let mut data = Vec::new();
        if file.take(meta.size + 1).read_to_end(&mut data).is_err()
            || data.len() as u64 != meta.size
        {
            return (None, false);
        }
        let diffable = for_diff && as_text(&data).is_some();
        if diffable {
            self.budget -= meta.size;
        }
        if to_keep {
            if let Some((_, left)) = &mut self.keep {
                *left -= meta.size;
            }
        } else if !diffable {
            return (None, false);
        }
        (Some(data), diffable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ProtectedPath, Protection};
    use crate::testutil::*;

    fn snap(t: &T, limits: &ExecLimits) -> Snapshot {
        let ws =
            crate::resolve::Workspace::open(&t.root(), crate::resolve::Strategy::Auto).unwrap();
        let prot = Protections::new(&[ProtectedPath {
            glob: "**/.env".into(),
            protection: Protection::NoAccess,
        }])
        .unwrap();
        Snapshot::take(ws.root_fd(), &prot, limits, None)
    }

    #[test]
    fn reports_created_modified_deleted_with_diffs() {
        let t = T::new(crate::resolve::Strategy::Auto);
        let limits = ExecLimits::default();
        t.write("keep.txt", "same\n");
        t.write("mod.txt", "a\nb\n");
        t.write("del.txt", "bye\n");
        t.write(".env", "OLD=1\n");
        t.write_bytes("bin", b"\0\x01");
        t.mkdir("olddir");
        let before = snap(&t, &limits);
        t.write("mod.txt", "a\nB\n");
        std::fs::remove_file(t.path("del.txt")).unwrap();
        t.write("sub/new.txt", "hello\n");
        t.write(".env", "NEW=2\n");
        t.write_bytes("bin", b"\0\x02\x03");
        std::fs::remove_dir(t.path("olddir")).unwrap();
        let after = snap(&t, &limits);
        let changes = before.changes(&after);
        let got: Vec<(&str, ChangeKind)> =
            changes.iter().map(|c| (c.path.as_str(), c.kind)).collect();
        assert_eq!(
            got,
            vec![
                (".env", ChangeKind::Modified),
                ("bin", ChangeKind::Modified),
                ("del.txt", ChangeKind::Deleted),
                ("mod.txt", ChangeKind::Modified),
                ("sub/new.txt", ChangeKind::Created),
            ]
        );
        assert_eq!(changes[0].diff, None, "protected content leaked");
        assert_eq!(changes[1].diff, None);
        assert!(changes[2].diff.as_deref().unwrap().contains("-bye"));
        assert!(changes[3].diff.as_deref().unwrap().contains("-b\n+B\n"));
        assert!(changes[4].diff.as_deref().unwrap().contains("+hello"));
    }

    #[test]
    fn truncated_snapshots_compare_only_the_common_prefix() {
        let t = T::new(crate::resolve::Strategy::Auto);
        let limits = ExecLimits {
            max_snapshot_files: 3,
            ..ExecLimits::default()
        };
        for n in ["a", "b", "c", "d", "e"] {
            t.write(n, n);
        }
        let before = snap(&t, &limits);
        assert!(before.is_truncated());
        t.write("a", "changed");
        t.write("e", "changed");
        std::fs::remove_file(t.path("b")).unwrap();
        let after = snap(&t, &limits);
        let got: Vec<(String, ChangeKind)> = before
            .changes(&after)
            .into_iter()
            .map(|c| (c.path, c.kind))
            .collect();
        // `d` slid into the second snapshot's window: not a creation; `e` is beyond both.
        assert_eq!(
            got,
            vec![
                ("a".into(), ChangeKind::Modified),
                ("b".into(), ChangeKind::Deleted)
            ]
        );
    }
}
