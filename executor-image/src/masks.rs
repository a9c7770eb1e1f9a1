//! Protected paths as the container sees them: the survey that lists the masks a workspace
//! needs, and the check that a container's masks cover every protected path before a tool runs.
//!
//! The orchestrator never opens workspace files, so it cannot find `.env` files itself: it asks
//! an executor (a `survey` request, in a read-only container without masks), mounts a mask over
//! every match in the call's container, and sends the same view with the request. The call's
//! executor walks the workspace again *as its container sees it* and refuses (`stale_sandbox`,
//! nothing runs) if a protected path is not covered — a `.env` created since the survey, or a
//! new hard link to one.
//!
//! What is a match:
//! * a name a `no_access` / `read_only` glob matches (a directory whose every child would match
//!   is one match: `.git/**` gives one read-only view of `.git`);
//! * the target of a symlink whose *name* matches (`.env -> secrets/prod`), when it resolves
//!   inside the workspace (outside, the container only sees its own root filesystem);
//! * a regular file with several links whose inode is a protected file's (a hard link to
//!   `.env` is masked as `.env` is). Hard links are compared by (dev, ino) within one walk:
//!   gVisor numbers inodes per sandbox, so identities never cross containers.
//!
//! The walk never follows symlinks and only reads names and `lstat` data, never content.

use crate::dir::{open_subdir, read_entries, Meta};
use crate::error::{ToolError, ToolResultOr};
use crate::protect::Protections;
use crate::protocol::{EntryKind, ErrorCode, ExecLimits, Mask, MaskKind, Protection, SandboxView};
use crate::resolve::{RelPath, Workspace};
use rustix::fs::{openat, statat, AtFlags, FileType, Mode, OFlags};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd};

/// What a walk found, before any merging.
#[derive(Debug, Default)]
struct Found {
    masks: Vec<Mask>,
    known_links: Vec<String>,
}

struct Walker<'a> {
    ws: &'a Workspace,
    prot: &'a Protections,
    max_entries: u32,
    entries: u32,
    masks: Vec<(RelPath, MaskKind, Protection)>,
    /// (dev, ino) of protected regular files with more than one link.
    protected_ids: HashMap<(u64, u64), Protection>,
    /// Unprotected regular files with more than one link.
    candidates: Vec<((u64, u64), RelPath)>,
}

fn stronger(a: Protection, b: Protection) -> Protection {
    if a == Protection::NoAccess || b == Protection::NoAccess {
        Protection::NoAccess
    } else {
        Protection::ReadOnly
    }
}

impl Walker<'_> {
    fn count(&mut self) -> ToolResultOr<()> {
        self.entries += 1;
        if self.entries > self.max_entries {
            return Err(ToolError::new(
                ErrorCode::TooLarge,
                format!(
                    "the workspace has more than {} entries, so its protected paths cannot be listed and masked; nothing ran (raise max_survey_entries or split the workspace)",
                    self.max_entries
                ),
            ));
        }
        Ok(())
    }

    fn note_id(&mut self, meta: &Meta, p: Protection) {
        if meta.kind == EntryKind::File && meta.nlink > 1 {
            let e = self.protected_ids.entry((meta.dev, meta.ino)).or_insert(p);
            *e = stronger(*e, p);
        }
    }

    /// `inside`: the protection of a read-only view this directory is in.
    fn walk(
        &mut self,
        dir: BorrowedFd<'_>,
        rel: &RelPath,
        inside: Option<Protection>,
    ) -> ToolResultOr<()> {
        let entries = read_entries(dir).map_err(|e| ToolError::from_errno(e, &rel.display()))?;
        for e in entries {
            self.count()?;
            let p = rel.join(&e.name);
            let is_dir = e.meta.kind == EntryKind::Dir;
            let here = self.prot.survey_match(&p, is_dir);
            match (e.meta.kind, here) {
                (EntryKind::Symlink, Some(pr)) => self.link_target(&p, pr),
                (EntryKind::Symlink, None) => {}
                (EntryKind::Dir, Some(Protection::NoAccess)) => {
                    self.masks
                        .push((p.clone(), MaskKind::Dir, Protection::NoAccess));
                    // Its names stay hidden, but hard links out of it must be found.
                    if let Ok(fd) = open_subdir(dir, &e.name) {
                        self.collect(fd.as_fd(), &p, Protection::NoAccess)?;
                    }
                }
                (EntryKind::Dir, pr) => {
                    let view = match (pr, inside) {
                        (Some(Protection::ReadOnly), None) => {
                            self.masks
                                .push((p.clone(), MaskKind::Dir, Protection::ReadOnly));
                            Some(Protection::ReadOnly)
                        }
                        _ => inside,
                    };
                    if let Some(fd) = descend(dir, &e.name, &p)? {
                        self.walk(fd.as_fd(), &p, view)?;
                    }
                }
                (_, Some(Protection::NoAccess)) => {
                    self.masks.push((p, MaskKind::File, Protection::NoAccess));
                    self.note_id(&e.meta, Protection::NoAccess);
                }
                (_, Some(Protection::ReadOnly)) => {
                    if inside.is_none() {
                        self.masks.push((p, MaskKind::File, Protection::ReadOnly));
                    }
                    self.note_id(&e.meta, Protection::ReadOnly);
                }
                (_, None) => {
                    if let Some(v) = inside {
                        self.note_id(&e.meta, v);
                    } else if e.meta.kind == EntryKind::File && e.meta.nlink > 1 {
                        self.candidates.push(((e.meta.dev, e.meta.ino), p));
                    }
                }
            }
        }
        Ok(())
    }

    /// Beneath a `no_access` directory: only the identities of hard-linked files.
    fn collect(&mut self, dir: BorrowedFd<'_>, rel: &RelPath, p: Protection) -> ToolResultOr<()> {
        let Ok(entries) = read_entries(dir) else {
            return Ok(()); // unreadable: nothing in it can be linked out by us either
        };
        for e in entries {
            self.count()?;
            let child = rel.join(&e.name);
            match e.meta.kind {
                EntryKind::Dir => {
                    if let Ok(fd) = open_subdir(dir, &e.name) {
                        self.collect(fd.as_fd(), &child, p)?;
                    }
                }
                _ => self.note_id(&e.meta, p),
            }
        }
        Ok(())
    }

    /// A protected name that is a symlink: what it points to is protected too.
    fn link_target(&mut self, link: &RelPath, p: Protection) {
        let Ok(r) = self.ws.open_read(&link.display()) else {
            return; // dangling, or it leads outside: the container sees nothing of the host there
        };
        if r.rel.is_root() {
            return; // `.env -> .`: the workspace itself cannot be masked from within
        }
        let kind = match rustix::fs::fstat(&r.fd) {
            Ok(st) if FileType::from_raw_mode(st.st_mode as _) == FileType::Directory => {
                MaskKind::Dir
            }
            Ok(_) => MaskKind::File,
            Err(_) => return,
        };
        self.masks.push((r.rel, kind, p));
    }
}

/// Opens a subdirectory to walk it. One this uid may enter but not list (`--x`) could hide a
/// protected file a command can still open by name: the survey fails closed on it. One it can
/// neither list nor enter is skipped (no command of this uid reaches inside either).
fn descend(
    dir: BorrowedFd<'_>,
    name: &[u8],
    rel: &RelPath,
) -> ToolResultOr<Option<std::os::fd::OwnedFd>> {
    match open_subdir(dir, name) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(rustix::io::Errno::ACCESS)
            if rustix::fs::accessat(dir, name, rustix::fs::Access::EXEC_OK, AtFlags::SYMLINK_NOFOLLOW)
                .is_err() =>
        {
            Ok(None)
        }
        Err(e) => Err(ToolError::new(
            ErrorCode::PermissionDenied,
            format!(
                "the directory `{}` cannot be listed ({}), so its protected paths cannot be masked; nothing ran (make it readable, or remove it)",
                rel.display(),
                crate::error::describe(e)
            ),
        )),
    }
}

/// Walks the workspace and lists every protected path, unmerged.
fn find(ws: &Workspace, prot: &Protections, limits: &ExecLimits) -> ToolResultOr<Found> {
    let mut w = Walker {
        ws,
        prot,
        max_entries: limits.max_survey_entries,
        entries: 0,
        masks: Vec::new(),
        protected_ids: HashMap::new(),
        candidates: Vec::new(),
    };
    w.walk(ws.root_fd(), &RelPath::root(), None)?;
    let mut found = Found::default();
    for (id, p) in std::mem::take(&mut w.candidates) {
        match w.protected_ids.get(&id) {
            Some(pr) => w.masks.push((p, MaskKind::File, *pr)),
            None => found.known_links.push(p.display()),
        }
    }
    // One mask per path, the strongest protection; a mask beneath another is kept only when it
    // is stronger (a `no_access` file inside a read-only view).
    let mut by_path: BTreeMap<RelPath, (MaskKind, Protection)> = BTreeMap::new();
    for (p, k, pr) in w.masks {
        let e = by_path.entry(p).or_insert((k, pr));
        e.1 = stronger(e.1, pr);
    }
    for (p, (kind, protection)) in by_path {
        found.masks.push(Mask {
            path: p.display(),
            kind,
            protection,
        });
    }
    // A name that is not UTF-8 cannot be named exactly in a mount: mask its parent instead.
    let raw: Vec<Mask> = std::mem::take(&mut found.masks);
    for m in raw {
        if m.path.contains('\u{FFFD}') {
            let parent = m.path.rsplit_once('/').map(|(a, _)| a.to_string());
            match parent {
                Some(dir) if !dir.contains('\u{FFFD}') => found.masks.push(Mask {
                    path: dir,
                    kind: MaskKind::Dir,
                    protection: Protection::NoAccess,
                }),
                _ => {
                    return Err(ToolError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "the protected path `{}` has a name that is not UTF-8 and cannot be masked; rename it",
                            m.path
                        ),
                    ))
                }
            }
        } else {
            found.masks.push(m);
        }
    }
    Ok(found)
}

fn covers(m: &Mask, path: &str) -> bool {
    m.path == path
        || (m.kind == MaskKind::Dir
            && path.len() > m.path.len()
            && path.starts_with(&m.path)
            && path.as_bytes()[m.path.len()] == b'/')
}

/// Merges masks into their deepest shared directories until at most `max` remain.
fn merge(mut masks: Vec<Mask>, max: usize) -> ToolResultOr<(Vec<Mask>, Vec<String>)> {
    let mut merged = Vec::new();
    // Masks inside another mask of at least the same strength add nothing.
    let dedup = |masks: Vec<Mask>| -> Vec<Mask> {
        let keep: Vec<bool> = masks
            .iter()
            .map(|m| {
                !masks.iter().any(|o| {
                    o.path != m.path
                        && covers(o, &m.path)
                        && stronger(o.protection, m.protection) == o.protection
                })
            })
            .collect();
        masks
            .into_iter()
            .zip(keep)
            .filter_map(|(m, k)| k.then_some(m))
            .collect()
    };
    masks = dedup(masks);
    while masks.len() > max {
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        for m in &masks {
            let mut rest = m.path.as_str();
            while let Some((dir, _)) = rest.rsplit_once('/') {
                let depth = dir.matches('/').count();
                counts.entry(dir).or_insert((0, depth)).0 += 1;
                rest = dir;
            }
        }
        let best = counts
            .iter()
            .filter(|(_, (n, _))| *n >= 2)
            .max_by_key(|(dir, (n, depth))| (*depth, *n, std::cmp::Reverse(**dir)))
            .map(|(dir, _)| dir.to_string());
        let Some(dir) = best else {
            return Err(ToolError::new(
                ErrorCode::TooLarge,
                format!(
                    "the workspace has {} protected paths at its top level, more than the {max} masks a container may have; nothing ran",
                    masks.len()
                ),
            ));
        };
        let probe = Mask {
            path: dir.clone(),
            kind: MaskKind::Dir,
            protection: Protection::ReadOnly,
        };
        let mut protection = Protection::ReadOnly;
        masks.retain(|m| {
            if covers(&probe, &m.path) {
                protection = stronger(protection, m.protection);
                false
            } else {
                true
            }
        });
        masks.push(Mask {
            path: dir.clone(),
            kind: MaskKind::Dir,
            protection,
        });
        merged.retain(|d: &String| !covers(&probe, d));
        merged.push(dir);
        masks = dedup(masks);
    }
    masks.sort_by(|a, b| a.path.cmp(&b.path));
    merged.sort();
    Ok((masks, merged))
}

/// The `survey` request: the masks a container of this workspace needs.
pub fn survey(
    ws: &Workspace,
    prot: &Protections,
    limits: &ExecLimits,
) -> ToolResultOr<SandboxView> {
    let found = find(ws, prot, limits)?;
    let (masks, merged) = merge(found.masks, limits.max_masks.max(1) as usize)?;
    Ok(SandboxView {
        masks,
        known_links: found.known_links,
        merged,
    })
}

fn stale(what: String) -> ToolError {
    ToolError::new(
        ErrorCode::StaleSandbox,
        format!(
            "{what}; nothing ran (the workspace changed since its protected paths were listed)"
        ),
    )
}

/// Before a tool runs: every protected path this container can see is covered by one of its
/// masks (or, for `read_only`, by a read-only workspace), and every mask is really mounted.
/// Returns the number of masks.
pub fn verify(
    ws: &Workspace,
    prot: &Protections,
    limits: &ExecLimits,
    view: &SandboxView,
) -> ToolResultOr<u32> {
    if prot.has_no_rules() && view.masks.is_empty() {
        return Ok(0); // nothing is protected: no walk
    }
    let root = ws.root_fd();
    let root_dev = statat(root, "", AtFlags::EMPTY_PATH)
        .map_err(|e| {
            ToolError::new(
                ErrorCode::Internal,
                format!("cannot stat the workspace: {e}"),
            )
        })?
        .st_dev;
    let workspace_read_only = is_read_only_mount(root, ".");
    // The masks the orchestrator says it mounted are there.
    for m in &view.masks {
        let st = statat(root, m.path.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|_| stale(format!("the mask over `{}` is missing", m.path)))?;
        let ft = FileType::from_raw_mode(st.st_mode as _);
        let ok = match (m.protection, m.kind) {
            (Protection::NoAccess, MaskKind::File) => ft == FileType::CharacterDevice,
            (Protection::NoAccess, MaskKind::Dir) => {
                ft == FileType::Directory && st.st_dev != root_dev
            }
            (Protection::ReadOnly, _) => {
                workspace_read_only || is_read_only_mount(root, m.path.as_str())
            }
        };
        if !ok {
            return Err(stale(format!("the mask over `{}` is not in place", m.path)));
        }
    }
    let found = find(ws, prot, limits)?;
    for need in &found.masks {
        if need.protection == Protection::ReadOnly && workspace_read_only {
            continue;
        }
        let covered = view.masks.iter().any(|m| {
            covers(m, &need.path) && stronger(m.protection, need.protection) == m.protection
        });
        if !covered {
            return Err(stale(format!(
                "`{}` is protected but not masked",
                need.path
            )));
        }
    }
    // A set: a pnpm-style workspace has thousands of hard-linked files.
    let known_links: std::collections::HashSet<&str> =
        view.known_links.iter().map(String::as_str).collect();
    for link in &found.known_links {
        let known =
            known_links.contains(link.as_str()) || view.masks.iter().any(|m| covers(m, link));
        if !known {
            return Err(stale(format!(
                "`{link}` is a hard link that was not there when the protected paths were listed"
            )));
        }
    }
    Ok(view.masks.len() as u32)
}

/// True when `path` beneath `root` is on a read-only mount: `access(W_OK)` answers EROFS for
/// a read-only mount whatever the permissions (gVisor does not report the flag in statvfs).
fn is_read_only_mount(root: BorrowedFd<'_>, path: &str) -> bool {
    let by_access = matches!(
        rustix::fs::accessat(
            root,
            path,
            rustix::fs::Access::WRITE_OK,
            AtFlags::SYMLINK_NOFOLLOW
        ),
        Err(rustix::io::Errno::ROFS)
    );
    by_access
        || match openat(
            root,
            path,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => rustix::fs::fstatvfs(&fd)
                .map(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
                .unwrap_or(false),
            Err(_) => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtectedPath;
    use crate::resolve::Strategy;
    use crate::testutil::T;

    fn open(t: &T, strategy: Strategy) -> Workspace {
        Workspace::open(&t.root(), strategy).unwrap()
    }

    fn prot() -> Protections {
        Protections::new(&[
            ProtectedPath {
                glob: "**/.env".into(),
                protection: Protection::NoAccess,
            },
            ProtectedPath {
                glob: "**/id_*".into(),
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

    fn paths(v: &SandboxView) -> Vec<(String, MaskKind, Protection)> {
        v.masks
            .iter()
            .map(|m| (m.path.clone(), m.kind, m.protection))
            .collect()
    }

    #[test]
    fn survey_finds_names_views_link_targets_and_hard_links() {
        for strategy in [Strategy::Auto, Strategy::WalkOnly] {
            let t = T::new(strategy);
            t.write(".env", "S=1\n");
            t.write("config/.env", "S=2\n");
            t.write("deploy/id_rsa", "KEY\n");
            t.write(".git/config", "[core]\n");
            t.write(".git/objects/ab/cd", "obj");
            t.write("secrets/a/b", "x");
            t.write("prod.txt", "P=1\n");
            t.mkdir("app");
            t.symlink("../prod.txt", "app/.env");
            t.symlink(".env", "innocent");
            t.write("src/main.rs", "fn main() {}\n");
            std::fs::hard_link(t.path(".env"), t.path("alias")).unwrap();
            std::fs::hard_link(t.path("src/main.rs"), t.path("copy.rs")).unwrap();
            let ws = open(&t, strategy);
            let v = survey(&ws, &prot(), &ExecLimits::default()).unwrap();
            use MaskKind::*;
            use Protection::*;
            assert_eq!(
                paths(&v),
                vec![
                    (".env".into(), File, NoAccess),
                    (".git".into(), Dir, ReadOnly),
                    ("alias".into(), File, NoAccess),
                    ("config/.env".into(), File, NoAccess),
                    ("deploy/id_rsa".into(), File, NoAccess),
                    ("prod.txt".into(), File, NoAccess),
                    ("secrets".into(), Dir, NoAccess),
                ],
                "{strategy:?}"
            );
            let mut links = v.known_links.clone();
            links.sort();
            assert_eq!(links, vec!["copy.rs", "src/main.rs"]);
            assert!(v.merged.is_empty());
        }
    }

    #[test]
    fn hard_links_out_of_a_no_access_directory_are_masked() {
        let t = T::new(Strategy::Auto);
        t.write("secrets/k", "K");
        std::fs::hard_link(t.path("secrets/k"), t.path("k2")).unwrap();
        let ws = open(&t, Strategy::Auto);
        let v = survey(&ws, &prot(), &ExecLimits::default()).unwrap();
        assert!(v.masks.iter().any(|m| m.path == "k2"), "{v:?}");
    }

    #[test]
    fn many_matches_merge_into_directories_and_say_so() {
        let t = T::new(Strategy::Auto);
        for i in 0..120 {
            t.write(&format!("packages/p{i}/.env"), "S");
            t.write(&format!("packages/p{i}/src.rs"), "code");
        }
        t.write("top/.env", "S");
        t.write("top/b/.env", "S");
        let ws = open(&t, Strategy::Auto);
        let limits = ExecLimits {
            max_masks: 8,
            ..ExecLimits::default()
        };
        let v = survey(&ws, &prot(), &limits).unwrap();
        assert!(v.masks.len() <= 8, "{v:?}");
        assert!(v.merged.contains(&"packages".to_string()), "{v:?}");
        // What was merged still covers every match.
        let found = find(&ws, &prot(), &limits).unwrap();
        for need in &found.masks {
            assert!(v.masks.iter().any(|m| covers(m, &need.path)), "{need:?}");
        }
        assert!(v.masks.iter().any(|m| m.path == "top/.env"), "{v:?}");
    }

    #[test]
    fn too_many_entries_fails_closed() {
        let t = T::new(Strategy::Auto);
        for i in 0..20 {
            t.write(&format!("f{i}"), "x");
        }
        let ws = open(&t, Strategy::Auto);
        let limits = ExecLimits {
            max_survey_entries: 10,
            ..ExecLimits::default()
        };
        let e = survey(&ws, &prot(), &limits).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
    }

    #[test]
    fn verify_refuses_unmasked_matches_and_new_links() {
        // Outside a container nothing is mounted: a view naming no masks is stale as soon as
        // a protected file exists, and a view naming masks is refused as "not in place".
        let t = T::new(Strategy::Auto);
        t.write("src/a.rs", "a");
        let ws = open(&t, Strategy::Auto);
        let empty = SandboxView::default();
        assert_eq!(
            verify(&ws, &prot(), &ExecLimits::default(), &empty).unwrap(),
            0
        );
        t.write("config/.env", "S");
        let e = verify(&ws, &prot(), &ExecLimits::default(), &empty).unwrap_err();
        assert_eq!(e.code, ErrorCode::StaleSandbox);
        assert!(e.message.contains("config/.env"), "{}", e.message);
        std::fs::remove_file(t.path("config/.env")).unwrap();
        std::fs::hard_link(t.path("src/a.rs"), t.path("b.rs")).unwrap();
        let e = verify(&ws, &prot(), &ExecLimits::default(), &empty).unwrap_err();
        assert!(e.message.contains("hard link"), "{}", e.message);
        let known = SandboxView {
            known_links: vec!["b.rs".into(), "src/a.rs".into()],
            ..SandboxView::default()
        };
        assert!(verify(&ws, &prot(), &ExecLimits::default(), &known).is_ok());
        let claimed = SandboxView {
            masks: vec![Mask {
                path: "src/a.rs".into(),
                kind: MaskKind::File,
                protection: Protection::NoAccess,
            }],
            ..known
        };
        let e = verify(&ws, &prot(), &ExecLimits::default(), &claimed).unwrap_err();
        assert!(e.message.contains("not in place"), "{}", e.message);
    }

    #[test]
    fn masked_paths_are_refused_by_the_file_rules() {
        let p = prot().with_masks(&[Mask {
            path: "alias".into(),
            kind: MaskKind::File,
            protection: Protection::NoAccess,
        }]);
        assert!(p.is_no_access(&RelPath::root().join(b"alias")));
        assert!(!p.is_no_access(&RelPath::root().join(b"aliased")));
    }
}
