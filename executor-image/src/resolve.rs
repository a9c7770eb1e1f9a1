//! Resolution of caller-given, workspace-relative paths to file descriptors beneath the root.
//!
//! This is the security boundary of the executor. Two resolvers give the same answers, and the
//! kernel double-checks the slow one where it can:
//!
//! * **Fast path**: `openat2(root, path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
//!   RESOLVE_NO_SYMLINKS)`. It only succeeds for paths without any symlink, so the canonical
//!   path is the (already normalized) input and the kernel vouches that it is beneath the root.
//!   Any failure (ENOSYS under gVisor, ELOOP because a symlink is in the way, ENOENT, ...) hands
//!   the path to the walk, which produces the real answer or the precise error.
//! * **Walk**: one component at a time from the root fd with `O_NOFOLLOW`, symlinks read with
//!   `readlinkat` and spliced into the remaining components, `..` popping a stack of directory
//!   fds (a `..` at the root is an escape, never clamped), at most [`MAX_SYMLINK_HOPS`] symlinks.
//!   Every open is relative to an fd the walk already holds, so nothing is checked by name and
//!   then opened again by name; the stack of names is the canonical workspace-relative path used
//!   for the protected-path check. Magic links are never followed: the walk only reads link
//!   text, and absolute targets (`/proc/self/root`, `/etc`) are refused.
//! * **Confirmation**: where `openat2` exists, a walk's result is re-opened by its canonical
//!   path (which has no symlinks) with the flags above and must be the same inode, so the kernel
//!   vouches for symlink-resolved paths too. Under gVisor the walk stands alone.
//!
//! The caller's path is first normalized lexically: absolute paths and a `..` that climbs above
//! the root are refused outright, `a/..` cancels out (so `link/..` means the directory holding
//! `link`, as in a shell's `cd`). `..` inside symlink targets is physical, as in the kernel.
//! Backslashes, `%2e%2e` and other bytes are ordinary name characters: nothing is decoded.

use crate::error::{show, ToolError, ToolResultOr};
use crate::protocol::ErrorCode;
use rustix::fs::{openat, openat2, readlinkat, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// The most symlinks one resolution follows (the kernel's own limit).
pub const MAX_SYMLINK_HOPS: u32 = 40;

/// Which resolver to use; tests force [`Strategy::WalkOnly`] to exercise the gVisor fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// `openat2` when the kernel has it, the walk otherwise (and for symlinks).
    Auto,
    /// The fd-relative walk only.
    WalkOnly,
}

/// A canonical workspace-relative path: `/`-separated names, no `.`/`..`, empty for the root.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    fn from_names<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> RelPath {
        let mut out = Vec::new();
        for n in names {
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(n);
        }
        RelPath(out)
    }

    pub fn join(&self, name: &[u8]) -> RelPath {
        let mut out = self.0.clone();
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(name);
        RelPath(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Lossy text for results and messages; `.` for the root.
    pub fn display(&self) -> String {
        if self.0.is_empty() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(&self.0).into_owned()
        }
    }
}

/// An object resolved beneath the root, opened with the flags the caller asked for.
#[derive(Debug)]
pub struct Resolved {
    pub fd: OwnedFd,
    pub rel: RelPath,
}

/// Where a write lands: a directory fd beneath the root and one name in it, symlinks already
/// resolved (a write through `link -> dir/file` targets `dir/file`).
#[derive(Debug)]
pub struct WriteTarget {
    parent: OwnedFd,
    /// Directories below `parent` that do not exist yet (created by [`WriteTarget::create_parents`]).
    missing_dirs: Vec<Vec<u8>>,
    name: Vec<u8>,
    /// Canonical path of `parent`.
    parent_rel: RelPath,
    /// Canonical path of the file to write.
    pub rel: RelPath,
    /// The current file, opened read-only, when it exists (always a regular file).
    pub existing: Option<File>,
    /// The name holds something that is not a regular file (see [`WriteTarget::check_kind`]).
    not_regular: Option<ToolError>,
}

impl WriteTarget {
    /// Refuses a target that exists but is not a regular file (a directory, a device).
    pub fn check_kind(&self) -> ToolResultOr<()> {
        match &self.not_regular {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Creates the missing parent directories, fd-relative, and moves `parent` to the last one.
    pub fn create_parents(&mut self) -> Result<(), Errno> {
        for dir in std::mem::take(&mut self.missing_dirs) {
            match rustix::fs::mkdirat(&self.parent, dir.as_slice(), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
            // O_NOFOLLOW: if something raced a symlink in, this fails instead of following it.
            self.parent = openat(
                &self.parent,
                dir.as_slice(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
        }
        Ok(())
    }

    pub fn parent(&self) -> BorrowedFd<'_> {
        self.parent.as_fd()
    }

    pub fn name(&self) -> &[u8] {
        &self.name
    }
}

/// The workspace root, held open; every resolution starts from this fd.
#[derive(Debug)]
pub struct Workspace {
    root: OwnedFd,
    /// Cleared when `openat2` returns ENOSYS (gVisor), so it is tried once per process.
    openat2_usable: Cell<bool>,
}

enum Goal {
    /// Resolve the whole path, symlinks included, and open it with these flags.
    Open(OFlags),
    /// Resolve the parent and the final name for writing.
    Write { create_dirs: bool },
}

enum Outcome {
    Open(Resolved),
    Write(WriteTarget),
}

/// One component opened relative to a directory fd, without following it.
enum Step {
    Opened(OwnedFd),
    Symlink(Vec<u8>),
    Missing,
    Failed(Errno),
    /// The name held another object by the time it was checked (a concurrent rename).
    Changed,
}

const READ_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::NONBLOCK);

fn open_component(dir: BorrowedFd<'_>, name: &[u8], flags: OFlags) -> Step {
    match openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => check_not_followed(dir, name, fd),
        // O_NOFOLLOW on a symlink gives ELOOP, or ENOTDIR together with O_DIRECTORY. gVisor may
        // instead follow the link and fail at its target (ENOENT for a dangling or absolute
        // one): whatever the error, a name that is a symlink is resolved by hand.
        Err(e) => match readlinkat(dir, name, Vec::new()) {
            Ok(target) => Step::Symlink(target.into_bytes()),
            Err(_) if e == Errno::NOENT => Step::Missing,
            Err(_) => Step::Failed(e),
        },
    }
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)` that holds under gVisor too: ELOOP when
/// `name` is a symlink (even where the runtime followed it), EAGAIN when the name changed
/// while it was checked. For walks that descend into entries they listed.
pub fn openat_nofollow(dir: BorrowedFd<'_>, name: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    match open_component(dir, name, flags) {
        Step::Opened(fd) => Ok(fd),
        Step::Symlink(_) => Err(Errno::LOOP),
        Step::Missing => Err(Errno::NOENT),
        Step::Failed(e) => Err(e),
        Step::Changed => Err(Errno::AGAIN),
    }
}

/// Requires the fd `openat(O_NOFOLLOW)` returned to be the very object `name` holds, not the
/// target of a symlink. The kernel guarantees that, but gVisor does not: there
/// `openat(dir, "link", O_RDONLY | O_DIRECTORY | O_NOFOLLOW)` follows a symlink to a directory
/// (`link -> /` opens the container's root). So: `lstat` the name; a symlink is resolved by
/// hand like any other, and anything else must have the fd's device and inode.
fn check_not_followed(dir: BorrowedFd<'_>, name: &[u8], fd: OwnedFd) -> Step {
    let named = match rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Step::Changed,
        Err(e) => return Step::Failed(e),
    };
    if FileType::from_raw_mode(named.st_mode) == FileType::Symlink {
        drop(fd);
        return match readlinkat(dir, name, Vec::new()) {
            Ok(target) => Step::Symlink(target.into_bytes()),
            Err(Errno::NOENT | Errno::INVAL) => Step::Changed,
            Err(e) => Step::Failed(e),
        };
    }
    match rustix::fs::fstat(&fd) {
        Ok(opened) if (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino) => {
            Step::Opened(fd)
        }
        Ok(_) => Step::Changed,
        Err(e) => Step::Failed(e),
    }
}

fn changed(shown: &str) -> ToolError {
    ToolError::new(
        ErrorCode::Io,
        format!(
            "{} changed while it was being resolved; try again",
            show(shown)
        ),
    )
}

fn outside(shown: &str, why: String) -> ToolError {
    ToolError::new(
        ErrorCode::PathOutsideWorkspace,
        format!("{} resolves outside the workspace: {why}", show(shown)),
    )
}

/// Lexical normalization of a caller-given path (see the module docs).
pub fn normalize(path: &str) -> ToolResultOr<Vec<Vec<u8>>> {
    if path.contains('\0') {
        return Err(ToolError::invalid(format!(
            "path {:?} contains a NUL byte",
            path
        )));
    }
    if path.starts_with('/') {
        return Err(ToolError::new(
            ErrorCode::PathOutsideWorkspace,
            format!(
                "{} is an absolute path; paths are relative to the workspace root",
                show(path)
            ),
        ));
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in path.as_bytes().split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(outside(path, "`..` climbs above the workspace root".into()));
                }
            }
            name => out.push(name.to_vec()),
        }
    }
    Ok(out)
}

fn target_components(target: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    target
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

impl Workspace {
    /// Opens the workspace root (`/workspace` in the container).
    pub fn open(root: &Path, strategy: Strategy) -> ToolResultOr<Workspace> {
        let fd = openat(
            rustix::fs::CWD,
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            ToolError::new(
                ErrorCode::Internal,
                format!(
                    "cannot open the workspace root {}: {}",
                    root.display(),
                    crate::error::describe(e)
                ),
            )
        })?;
        Ok(Workspace {
            root: fd,
            openat2_usable: Cell::new(strategy == Strategy::Auto),
        })
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Resolves `path` (symlinks followed, kept beneath the root) and opens it with `flags`
    /// (`O_NOFOLLOW` and `O_CLOEXEC` are added). The empty path is the root.
    pub fn open_path(&self, path: &str, flags: OFlags) -> ToolResultOr<Resolved> {
        match self.resolve(path, Goal::Open(flags))? {
            Outcome::Open(r) => Ok(r),
            Outcome::Write(_) => unreachable!("Goal::Open yields Outcome::Open"),
        }
    }

    /// Resolves `path` for reading: a read-only, non-blocking fd (a FIFO never blocks us).
    pub fn open_read(&self, path: &str) -> ToolResultOr<Resolved> {
        self.open_path(path, READ_FLAGS)
    }

    /// Resolves a directory (`O_RDONLY | O_DIRECTORY`, so it can be listed).
    pub fn open_dir(&self, path: &str) -> ToolResultOr<Resolved> {
        self.open_path(path, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// Resolves where a write to `path` lands. Nothing is created here: missing parent
    /// directories are recorded (when `create_dirs`) and made by [`WriteTarget::create_parents`]
    /// once the caller has checked the protected paths.
    pub fn resolve_write(&self, path: &str, create_dirs: bool) -> ToolResultOr<WriteTarget> {
        match self.resolve(path, Goal::Write { create_dirs })? {
            Outcome::Write(t) => Ok(t),
            Outcome::Open(_) => unreachable!("Goal::Write yields Outcome::Write"),
        }
    }

    fn resolve(&self, path: &str, goal: Goal) -> ToolResultOr<Outcome> {
        let comps = normalize(path)?;
        if let Some(done) = self.fast_path(path, &comps, &goal) {
            return done;
        }
        self.walk(path, comps, goal)
    }

    /// `openat2` without symlinks; `None` means "ask the walk".
    fn openat2_beneath(&self, comps: &[Vec<u8>], flags: OFlags) -> Option<OwnedFd> {
        if !self.openat2_usable.get() {
            return None;
        }
        let joined = RelPath::from_names(comps.iter().map(|c| c.as_slice()));
        let p: &[u8] = if joined.is_root() {
            b"."
        } else {
            joined.as_bytes()
        };
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS;
        match openat2(
            &self.root,
            p,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => Some(fd),
            Err(Errno::NOSYS) => {
                self.openat2_usable.set(false);
                None
            }
            Err(_) => None,
        }
    }

    fn fast_path(
        &self,
        shown: &str,
        comps: &[Vec<u8>],
        goal: &Goal,
    ) -> Option<ToolResultOr<Outcome>> {
        match goal {
            Goal::Open(flags) => {
                let fd = self.openat2_beneath(comps, *flags | OFlags::NOFOLLOW)?;
                let rel = RelPath::from_names(comps.iter().map(|c| c.as_slice()));
                Some(Ok(Outcome::Open(Resolved { fd, rel })))
            }
            Goal::Write { .. } => {
                let (name, parents) = comps.split_last()?;
                let parent = self.openat2_beneath(parents, OFlags::PATH | OFlags::DIRECTORY)?;
                let names: Vec<&[u8]> = parents.iter().map(|c| c.as_slice()).collect();
                match open_component(parent.as_fd(), name, READ_FLAGS) {
                    // A symlink as the final name: the walk resolves it by hand.
                    Step::Symlink(_) => None,
                    step => {
                        Some(finish_write(shown, parent, &names, name, step).map(Outcome::Write))
                    }
                }
            }
        }
    }

    /// The walk, its result confirmed by `openat2` when the kernel has it.
    fn walk(&self, shown: &str, comps: Vec<Vec<u8>>, goal: Goal) -> ToolResultOr<Outcome> {
        let outcome = self.walk_components(shown, comps, goal)?;
        match &outcome {
            Outcome::Open(r) => self.confirm(shown, r.fd.as_fd(), &r.rel)?,
            Outcome::Write(t) => self.confirm(shown, t.parent.as_fd(), &t.parent_rel)?,
        }
        Ok(outcome)
    }

    /// Re-opens the walk's canonical path with `openat2` (beneath the root, no symlinks at all:
    /// a canonical path has none) and requires the very object the walk opened. So where the
    /// kernel can check, it vouches for symlink-resolved paths too. A mismatch means the tree
    /// changed under the walk (or the walk is wrong): refuse rather than guess.
    fn confirm(&self, shown: &str, fd: BorrowedFd<'_>, rel: &RelPath) -> ToolResultOr<()> {
        if !self.openat2_usable.get() {
            return Ok(());
        }
        let p: &[u8] = if rel.is_root() { b"." } else { rel.as_bytes() };
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS;
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let same = match openat2(&self.root, p, flags, Mode::empty(), resolve) {
            Ok(check) => match (rustix::fs::fstat(fd), rustix::fs::fstat(&check)) {
                (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
                _ => false,
            },
            // No openat2 after all (ENOSYS), or a seccomp profile that forbids it (EPERM).
            Err(Errno::NOSYS | Errno::PERM) => {
                self.openat2_usable.set(false);
                return Ok(());
            }
            Err(_) => false,
        };
        if same {
            Ok(())
        } else {
            Err(ToolError::new(
                ErrorCode::Io,
                format!(
                    "{} changed while it was being resolved (now `{}`); try again",
                    show(shown),
                    rel.display()
                ),
            ))
        }
    }

    fn walk_components(
        &self,
        shown: &str,
        comps: Vec<Vec<u8>>,
        goal: Goal,
    ) -> ToolResultOr<Outcome> {
        let mut queue: VecDeque<Vec<u8>> = comps.into();
        // Directories entered below the root, and their names (the canonical path).
        let mut dirs: Vec<OwnedFd> = Vec::new();
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0u32;

        while let Some(c) = queue.pop_front() {
            if c == b".." {
                // Only symlink targets still contain `..`; popping past the root is an escape.
                if dirs.pop().is_none() {
                    return Err(outside(
                        shown,
                        "a symlink's `..` climbs above the workspace root".into(),
                    ));
                }
                names.pop();
                continue;
            }
            let top = dirs.last().map(|d| d.as_fd()).unwrap_or(self.root.as_fd());
            let last = queue.is_empty();
            let flags = match (&goal, last) {
                (Goal::Open(flags), true) => *flags,
                (Goal::Write { .. }, true) => READ_FLAGS,
                (_, false) => OFlags::PATH | OFlags::DIRECTORY,
            };
            let here = || RelPath::from_names(names.iter().map(|n| n.as_slice()));
            match (open_component(top, &c, flags), &goal, last) {
                (Step::Symlink(target), _, _) => {
                    hops += 1;
                    let link = here().join(&c);
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(outside(
                            shown,
                            format!(
                                "too many levels of symbolic links (more than \
                                 {MAX_SYMLINK_HOPS}, a loop?) at `{}`",
                                link.display()
                            ),
                        ));
                    }
                    if target.first() == Some(&b'/') {
                        return Err(outside(
                            shown,
                            format!(
                                "symlink `{}` points to the absolute path `{}`",
                                link.display(),
                                String::from_utf8_lossy(&target)
                            ),
                        ));
                    }
                    for part in target_components(&target).rev() {
                        queue.push_front(part.to_vec());
                    }
                }
                (Step::Opened(fd), Goal::Open(_), true) => {
                    let rel = here().join(&c);
                    return Ok(Outcome::Open(Resolved { fd, rel }));
                }
                (step, Goal::Write { .. }, true) => {
                    let parent = self.dup_top(&dirs)?;
                    let names: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
                    return finish_write(shown, parent, &names, &c, step).map(Outcome::Write);
                }
                (Step::Opened(fd), _, false) => {
                    dirs.push(fd);
                    names.push(c);
                }
                (Step::Missing, Goal::Write { create_dirs: true }, false) => {
                    let name = queue.pop_back().expect("not the last component");
                    let mut missing = vec![c];
                    missing.extend(queue.drain(..));
                    if name == b".." || missing.iter().any(|m| m == b"..") {
                        return Err(ToolError::new(
                            ErrorCode::NotFound,
                            format!(
                                "{}: cannot create missing directories through a symlink \
                                 whose target contains `..`",
                                show(shown)
                            ),
                        ));
                    }
                    let mut rel = here();
                    for m in &missing {
                        rel = rel.join(m);
                    }
                    return Ok(Outcome::Write(WriteTarget {
                        parent: self.dup_top(&dirs)?,
                        parent_rel: here(),
                        rel: rel.join(&name),
                        missing_dirs: missing,
                        name,
                        existing: None,
                        not_regular: None,
                    }));
                }
                (Step::Missing, _, _) => {
                    let msg = if last {
                        format!("{} does not exist", show(shown))
                    } else {
                        format!(
                            "{} does not exist (no directory `{}`)",
                            show(shown),
                            here().join(&c).display()
                        )
                    };
                    return Err(ToolError::new(ErrorCode::NotFound, msg));
                }
                (Step::Failed(e), _, _) => return Err(ToolError::from_errno(e, shown)),
                (Step::Changed, _, _) => return Err(changed(shown)),
            }
        }

        // Every component was consumed by `..`/directories: the result is a directory.
        let rel = RelPath::from_names(names.iter().map(|n| n.as_slice()));
        match goal {
            Goal::Open(flags) => {
                let top = dirs.last().map(|d| d.as_fd()).unwrap_or(self.root.as_fd());
                let fd = openat(top, ".", flags | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| ToolError::from_errno(e, shown))?;
                Ok(Outcome::Open(Resolved { fd, rel }))
            }
            Goal::Write { .. } => Err(ToolError::new(
                ErrorCode::IsADirectory,
                format!("{} is a directory", show(shown)),
            )),
        }
    }

    fn dup_top(&self, dirs: &[OwnedFd]) -> ToolResultOr<OwnedFd> {
        let top = dirs.last().map(|d| d.as_fd()).unwrap_or(self.root.as_fd());
        top.try_clone_to_owned()
            .map_err(|e| ToolError::new(ErrorCode::Io, format!("dup failed: {e}")))
    }
}

/// The final name of a write, opened read-only without following: shared by both resolvers.
fn finish_write(
    shown: &str,
    parent: OwnedFd,
    names: &[&[u8]],
    name: &[u8],
    step: Step,
) -> ToolResultOr<WriteTarget> {
    let parent_rel = RelPath::from_names(names.iter().copied());
    let rel = parent_rel.join(name);
    let mut not_regular = None;
    let existing = match step {
        Step::Missing => None,
        Step::Opened(fd) => {
            let st = rustix::fs::fstat(&fd).map_err(|e| ToolError::from_errno(e, shown))?;
            // Reported after the protected-path check: a masked `.env` is a device in the
            // container, and the caller should hear "protected", not "not a regular file".
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Some(File::from(fd)),
                FileType::Directory => {
                    not_regular = Some(ToolError::new(
                        ErrorCode::IsADirectory,
                        format!("{} is a directory", show(shown)),
                    ));
                    None
                }
                other => {
                    not_regular = Some(ToolError::invalid(format!(
                        "{} is not a regular file ({other:?})",
                        show(shown)
                    )));
                    None
                }
            }
        }
        Step::Failed(Errno::NXIO) => {
            return Err(ToolError::invalid(format!(
                "{} is not a regular file (a socket or device)",
                show(shown)
            )))
        }
        Step::Failed(e) => return Err(ToolError::from_errno(e, shown)),
        Step::Changed => return Err(changed(shown)),
        Step::Symlink(_) => unreachable!("symlinks are followed by the caller"),
    };
    Ok(WriteTarget {
        parent,
        missing_dirs: Vec::new(),
        name: name.to_vec(),
        parent_rel,
        rel,
        existing,
        not_regular,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    /// A workspace in a temp dir, plus an "outside" directory next to it holding a secret.
    pub(crate) struct Fixture {
        pub dir: tempfile::TempDir,
    }

    impl Fixture {
        pub fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("ws")).unwrap();
            fs::create_dir(dir.path().join("outside")).unwrap();
            fs::write(dir.path().join("outside/secret"), "top secret\n").unwrap();
            let ws = dir.path().join("ws");
            fs::create_dir_all(ws.join("sub/deeper")).unwrap();
            fs::write(ws.join("hello.txt"), "hello\n").unwrap();
            fs::write(ws.join("sub/inner.txt"), "inner\n").unwrap();
            fs::write(ws.join("back\\slash"), "bs\n").unwrap();
            fs::write(ws.join("%2e%2e"), "pct\n").unwrap();
            symlink("/etc/passwd", ws.join("abs_link")).unwrap();
            symlink("../../..", ws.join("up_link")).unwrap();
            symlink("/", ws.join("root_link")).unwrap();
            symlink("/proc/self/root", ws.join("magic_link")).unwrap();
            symlink("/etc", ws.join("etc_link")).unwrap();
            symlink("../outside/secret", ws.join("rel_out")).unwrap();
            symlink("../outside/new_file", ws.join("dangling_out")).unwrap();
            symlink("sub/inner.txt", ws.join("good_link")).unwrap();
            symlink("../hello.txt", ws.join("sub/up_ok")).unwrap();
            symlink("sub", ws.join("sub_link")).unwrap();
            symlink("loop_b", ws.join("loop_a")).unwrap();
            symlink("loop_a", ws.join("loop_b")).unwrap();
            symlink("self_loop", ws.join("self_loop")).unwrap();
            symlink("missing_dir/new.txt", ws.join("dangling_in")).unwrap();
            Fixture { dir }
        }

        pub fn ws(&self) -> std::path::PathBuf {
            self.dir.path().join("ws")
        }

        pub fn workspace(&self, strategy: Strategy) -> Workspace {
            Workspace::open(&self.ws(), strategy).unwrap()
        }
    }

    const BOTH: [Strategy; 2] = [Strategy::Auto, Strategy::WalkOnly];

    fn read(ws: &Workspace, p: &str) -> Result<(String, String), ErrorCode> {
        let r = ws.open_read(p).map_err(|e| e.code)?;
        let mut s = String::new();
        File::from(r.fd)
            .read_to_string(&mut s)
            .map_err(|_| ErrorCode::IsADirectory)?;
        Ok((r.rel.display(), s))
    }

    #[test]
    fn openat2_is_available_on_the_test_host() {
        // Not a requirement of the executor, but without it the fast path goes untested.
        let f = Fixture::new();
        let ws = f.workspace(Strategy::Auto);
        let fd = ws.openat2_beneath(&[b"hello.txt".to_vec()], OFlags::RDONLY);
        if fd.is_none() {
            eprintln!("warning: openat2 unavailable here; only the walk is exercised");
        }
    }

    #[test]
    fn fast_path_handles_plain_paths_and_defers_symlinks() {
        let f = Fixture::new();
        let ws = f.workspace(Strategy::Auto);
        if ws.openat2_beneath(&[], OFlags::PATH).is_none() {
            return;
        }
        let comps = normalize("sub/inner.txt").unwrap();
        assert!(ws
            .fast_path("sub/inner.txt", &comps, &Goal::Open(READ_FLAGS))
            .is_some());
        for p in ["good_link", "sub_link/inner.txt", "abs_link"] {
            let comps = normalize(p).unwrap();
            assert!(
                ws.fast_path(p, &comps, &Goal::Open(READ_FLAGS)).is_none(),
                "{p}"
            );
        }
        let comps = normalize("good_link").unwrap();
        assert!(ws
            .fast_path("good_link", &comps, &Goal::Write { create_dirs: false })
            .is_none());
        let walk = f.workspace(Strategy::WalkOnly);
        assert!(walk
            .fast_path(
                "hello.txt",
                &normalize("hello.txt").unwrap(),
                &Goal::Open(READ_FLAGS)
            )
            .is_none());
    }

    #[test]
    fn escape_matrix_for_reads() {
        let f = Fixture::new();
        let cases: &[(&str, ErrorCode)] = &[
            ("/etc/passwd", ErrorCode::PathOutsideWorkspace),
            ("../outside/secret", ErrorCode::PathOutsideWorkspace),
            ("..", ErrorCode::PathOutsideWorkspace),
            ("a/../../x", ErrorCode::PathOutsideWorkspace),
            ("./../x", ErrorCode::PathOutsideWorkspace),
            ("sub/../../outside/secret", ErrorCode::PathOutsideWorkspace),
            ("abs_link", ErrorCode::PathOutsideWorkspace),
            ("up_link", ErrorCode::PathOutsideWorkspace),
            ("up_link/etc/passwd", ErrorCode::PathOutsideWorkspace),
            ("root_link/etc/passwd", ErrorCode::PathOutsideWorkspace),
            ("magic_link", ErrorCode::PathOutsideWorkspace),
            ("magic_link/etc/passwd", ErrorCode::PathOutsideWorkspace),
            ("etc_link/passwd", ErrorCode::PathOutsideWorkspace),
            ("rel_out", ErrorCode::PathOutsideWorkspace),
            ("dangling_out", ErrorCode::PathOutsideWorkspace),
            ("loop_a", ErrorCode::PathOutsideWorkspace),
            ("self_loop", ErrorCode::PathOutsideWorkspace),
            ("nul\0byte", ErrorCode::InvalidRequest),
            ("missing.txt", ErrorCode::NotFound),
            ("missing_dir/x", ErrorCode::NotFound),
            ("dangling_in", ErrorCode::NotFound),
            ("hello.txt/x", ErrorCode::NotADirectory),
        ];
        for strategy in BOTH {
            let ws = f.workspace(strategy);
            for (p, code) in cases {
                assert_eq!(read(&ws, p).map(|_| ()), Err(*code), "{strategy:?} {p:?}");
            }
        }
    }

    #[test]
    fn ordinary_and_in_workspace_symlink_paths_resolve() {
        let f = Fixture::new();
        let cases: &[(&str, &str, &str)] = &[
            ("hello.txt", "hello.txt", "hello\n"),
            ("./hello.txt", "hello.txt", "hello\n"),
            ("sub/../hello.txt", "hello.txt", "hello\n"),
            ("missing/../hello.txt", "hello.txt", "hello\n"),
            ("sub//inner.txt", "sub/inner.txt", "inner\n"),
            ("back\\slash", "back\\slash", "bs\n"),
            ("%2e%2e", "%2e%2e", "pct\n"),
            ("good_link", "sub/inner.txt", "inner\n"),
            ("sub/up_ok", "hello.txt", "hello\n"),
            ("sub_link/inner.txt", "sub/inner.txt", "inner\n"),
            ("sub_link/up_ok", "hello.txt", "hello\n"),
        ];
        for strategy in BOTH {
            let ws = f.workspace(strategy);
            for (p, rel, content) in cases {
                assert_eq!(
                    read(&ws, p),
                    Ok((rel.to_string(), content.to_string())),
                    "{strategy:?} {p:?}"
                );
            }
        }
    }

    #[test]
    fn directories_resolve_with_their_canonical_path() {
        let f = Fixture::new();
        for strategy in BOTH {
            let ws = f.workspace(strategy);
            assert_eq!(ws.open_dir("").unwrap().rel, RelPath::root());
            assert_eq!(ws.open_dir(".").unwrap().rel, RelPath::root());
            assert_eq!(ws.open_dir("sub/..").unwrap().rel, RelPath::root());
            assert_eq!(ws.open_dir("sub_link").unwrap().rel.display(), "sub");
            assert_eq!(
                ws.open_dir("sub_link/deeper").unwrap().rel.display(),
                "sub/deeper"
            );
            assert_eq!(
                ws.open_dir("hello.txt").unwrap_err().code,
                ErrorCode::NotADirectory
            );
            assert_eq!(
                ws.open_dir("etc_link").unwrap_err().code,
                ErrorCode::PathOutsideWorkspace
            );
        }
    }

    #[test]
    fn write_targets_follow_symlinks_beneath_the_root_only() {
        let f = Fixture::new();
        for strategy in BOTH {
            let ws = f.workspace(strategy);
            let t = ws.resolve_write("hello.txt", false).unwrap();
            assert_eq!(t.rel.display(), "hello.txt");
            assert!(t.existing.is_some());

            let t = ws.resolve_write("good_link", false).unwrap();
            assert_eq!(t.rel.display(), "sub/inner.txt");
            assert!(t.existing.is_some());

            let t = ws.resolve_write("new.txt", false).unwrap();
            assert_eq!(t.rel.display(), "new.txt");
            assert!(t.existing.is_none());

            let t = ws.resolve_write("a/b/c.txt", true).unwrap();
            assert_eq!(t.rel.display(), "a/b/c.txt");
            assert_eq!(t.missing_dirs, vec![b"a".to_vec(), b"b".to_vec()]);
            assert_eq!(
                ws.resolve_write("a/b/c.txt", false).unwrap_err().code,
                ErrorCode::NotFound
            );

            // A dangling link inside the workspace: the write creates its target.
            let t = ws.resolve_write("dangling_in", true).unwrap();
            assert_eq!(t.rel.display(), "missing_dir/new.txt");

            for p in [
                "dangling_out",
                "abs_link",
                "rel_out",
                "etc_link/passwd",
                "up_link/x",
                "magic_link",
                "loop_a",
                "/tmp/x",
                "../x",
            ] {
                assert_eq!(
                    ws.resolve_write(p, true).unwrap_err().code,
                    ErrorCode::PathOutsideWorkspace,
                    "{strategy:?} {p}"
                );
            }
            for p in ["", ".", "sub", "sub_link", "sub/.."] {
                assert_eq!(
                    ws.resolve_write(p, true)
                        .and_then(|t| t.check_kind())
                        .unwrap_err()
                        .code,
                    ErrorCode::IsADirectory,
                    "{strategy:?} {p}"
                );
            }
        }
        assert!(!f.dir.path().join("outside/new_file").exists());
    }

    #[test]
    fn create_parents_makes_directories_beneath_the_parent() {
        let f = Fixture::new();
        for (i, strategy) in BOTH.into_iter().enumerate() {
            let ws = f.workspace(strategy);
            let p = format!("made{i}/x/y.txt");
            let mut t = ws.resolve_write(&p, true).unwrap();
            t.create_parents().unwrap();
            assert!(f.ws().join(format!("made{i}/x")).is_dir());
            assert_eq!(t.name(), b"y.txt");
        }
    }

    #[test]
    fn confirm_refuses_a_walk_result_that_is_not_its_canonical_path() {
        let f = Fixture::new();
        let ws = f.workspace(Strategy::Auto);
        if ws.openat2_beneath(&[], OFlags::PATH).is_none() {
            return;
        }
        let r = ws.open_read("good_link").unwrap();
        assert_eq!(r.rel.display(), "sub/inner.txt");
        ws.confirm("good_link", r.fd.as_fd(), &r.rel).unwrap();
        let wrong = RelPath::root().join(b"hello.txt");
        let e = ws.confirm("good_link", r.fd.as_fd(), &wrong).unwrap_err();
        assert_eq!(e.code, ErrorCode::Io);
        let missing = RelPath::root().join(b"nope");
        assert!(ws.confirm("good_link", r.fd.as_fd(), &missing).is_err());
    }

    #[test]
    fn symlink_hop_limit_matches_the_kernel() {
        let f = Fixture::new();
        let ws_dir = f.ws();
        // chain0 -> chain1 -> ... -> chain40 -> hello.txt: 41 links, one too many.
        for i in 0..=MAX_SYMLINK_HOPS {
            let target = if i == MAX_SYMLINK_HOPS {
                "hello.txt".to_string()
            } else {
                format!("chain{}", i + 1)
            };
            symlink(target, ws_dir.join(format!("chain{i}"))).unwrap();
        }
        for strategy in BOTH {
            let ws = f.workspace(strategy);
            assert_eq!(read(&ws, "chain1").unwrap().0, "hello.txt", "{strategy:?}");
            let e = ws.open_read("chain0").unwrap_err();
            assert_eq!(e.code, ErrorCode::PathOutsideWorkspace, "{strategy:?}");
            assert!(e.message.contains("too many levels"), "{}", e.message);
        }
    }

    #[test]
    fn an_fd_that_followed_a_symlink_is_caught() {
        // gVisor's openat(O_RDONLY | O_DIRECTORY | O_NOFOLLOW) follows a symlink to a
        // directory. Simulate that here by following on purpose: the check must see the link.
        let f = Fixture::new();
        let ws = f.workspace(Strategy::WalkOnly);
        let root = ws.root_fd();
        for (name, target) in [("root_link", b"/".as_slice()), ("sub_link", b"sub")] {
            let followed = openat(
                root,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
            match check_not_followed(root, name.as_bytes(), followed) {
                Step::Symlink(t) => assert_eq!(t, target, "{name}"),
                _ => panic!("{name}: a followed symlink was accepted"),
            }
        }
        // The object itself passes; another object under the same name does not.
        let sub = openat(
            root,
            "sub",
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        assert!(matches!(
            check_not_followed(root, b"sub", sub),
            Step::Opened(_)
        ));
        let other = openat(root, "sub/deeper", OFlags::RDONLY, Mode::empty()).unwrap();
        assert!(matches!(
            check_not_followed(root, b"sub", other),
            Step::Changed
        ));
    }

    #[test]
    fn normalize_is_lexical_and_refuses_escapes() {
        assert_eq!(normalize("a/./b//c/").unwrap().len(), 3);
        assert_eq!(normalize("a/..").unwrap().len(), 0);
        assert_eq!(normalize("").unwrap().len(), 0);
        assert_eq!(
            normalize("a/../..").unwrap_err().code,
            ErrorCode::PathOutsideWorkspace
        );
        let e = normalize("../etc/passwd").unwrap_err();
        assert!(e.message.contains("`../etc/passwd`"), "{}", e.message);
        assert_eq!(normalize("%2e%2e/x").unwrap()[0], b"%2e%2e".to_vec());
        assert_eq!(normalize("..\\x").unwrap()[0], b"..\\x".to_vec());
    }
}
