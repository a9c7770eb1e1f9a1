//! The executor's path resolver (executor-image/src/resolve.rs): the security boundary between
//! a caller-given path and the files beneath the workspace root.
//!
//! The module is private to airlock-executor, so this target compiles the very same source
//! file here (`#[path]` below) with the two modules it uses (`error`, and `protocol` from the
//! library). If resolve.rs starts using another crate module, add it the same way (or make the
//! module `#[doc(hidden)] pub` in executor-image/src/lib.rs and use it from there).
//!
//! Once per process a workspace is built in a temp directory: files, directories, a FIFO and
//! symlinks (inside the root, absolute, to `/proc/self/root`, `..` out of the root, into a
//! sibling whose name has the root's name as a prefix, loops, dangling in and out, chains).
//! Outside the root, files hold `MARKER`, which no file inside holds.
//!
//! For each input (a path, UTF-8), with both resolvers (`Strategy::Auto`: `openat2` fast path
//! plus the walk and its confirmation; `Strategy::WalkOnly`: the gVisor fallback), it calls
//! `open_read`, `open_dir` and `resolve_write` (with and without `create_dirs`) and asserts:
//! * a resolved fd is the object at `root/rel` (same device and inode as `lstat`), its
//!   `/proc/self/fd` link is exactly `root/rel`, beneath the root; `rel` is canonical (no `.`,
//!   `..`, empty or symlink component); a regular file read through it never holds `MARKER`;
//! * a write target's parent fd is a directory beneath the root, an ancestor of `root/rel`
//!   (its parent when that exists); `name` is the last component of `rel`; `existing` is the
//!   regular file at `root/rel`; with nothing there, `root/rel` does not exist (lstat);
//! * both resolvers give the same answer: the same `rel` or the same error code;
//! * `create_parents` makes exactly the missing directories beneath the root, and the parent
//!   fd then is `root/rel`'s parent (they are removed again, so every input starts from the
//!   same tree);
//! * nothing outside the root ever changes; the public `execute_with(read_file)` agrees.
#![no_main]

#[allow(dead_code, unused_imports)]
mod protocol {
    pub use airlock_executor::protocol::*;
}
#[allow(dead_code)]
#[path = "../../executor-image/src/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../../executor-image/src/resolve.rs"]
mod resolve;

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use airlock_executor::protocol::{ReadFileArgs, Request, ToolCall, ToolResult};
use libfuzzer_sys::fuzz_target;
use resolve::{RelPath, Resolved, Strategy, Workspace, WriteTarget};

const MARKER: &[u8] = b"AIRLOCK-FUZZ-OUTSIDE-SECRET";

struct Fixture {
    _dir: tempfile::TempDir,
    /// Canonical path of the directory holding the root and its siblings.
    base: PathBuf,
    /// Canonical path of the workspace root.
    root: PathBuf,
    /// Every path in the tree (relative to `base`), as built.
    snapshot: BTreeSet<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = fs::canonicalize(dir.path()).unwrap();
        let root = base.join("ws");
        let secret = [MARKER, b"\n"].concat();
        for d in [
            "ws",
            "outside",
            "ws-evil",
            "ws/sub/deeper",
            "ws/.git",
            "ws/dir.d",
        ] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        fs::write(base.join("outside/secret"), &secret).unwrap();
        fs::write(base.join("ws-evil/secret"), &secret).unwrap();
        for (f, body) in [
            ("hello.txt", "hello\n"),
            ("sub/inner.txt", "inner\n"),
            ("sub/deeper/deep.txt", "deep\n"),
            (".git/config", "[core]\n"),
            (".env", "KEY=not-the-marker\n"),
            ("back\\slash", "bs\n"),
            ("%2e%2e", "pct\n"),
            ("..txt", "dots\n"),
            ("dir.d/f", "f\n"),
        ] {
            fs::write(root.join(f), body).unwrap();
        }
        rustix::fs::mkfifoat(rustix::fs::CWD, root.join("fifo"), rustix::fs::Mode::RUSR).unwrap();
        let links: &[(&str, &str)] = &[
            ("abs_link", "/etc/passwd"),
            ("abs_in", "/proc/self/cwd"),
            ("root_link", "/"),
            ("magic_link", "/proc/self/root"),
            ("etc_link", "/etc"),
            ("up_link", "../../.."),
            ("rel_out", "../outside/secret"),
            ("out_dir", "../outside"),
            ("dangling_out", "../outside/new_file"),
            ("twin", "../ws/hello.txt"),
            ("evil", "../ws-evil/secret"),
            ("evil_dir", "../ws-evil"),
            ("good_link", "sub/inner.txt"),
            ("sub_link", "sub"),
            ("dot_link", "."),
            ("sub_dotdot", "sub/.."),
            ("sub/up_ok", "../hello.txt"),
            ("sub/dotdot", ".."),
            ("sub/deeper/up2", "../../sub"),
            ("sub/deeper/esc", "../../../outside/secret"),
            ("sub/deeper/esc_dir", "../../.."),
            ("loop_a", "loop_b"),
            ("loop_b", "loop_a"),
            ("self_loop", "self_loop"),
            ("dangling_in", "missing_dir/new.txt"),
            ("dangling_up", "sub/../missing2/x"),
            ("fifo_link", "fifo"),
            ("git_link", ".git"),
            ("env_link", ".env"),
            ("chain0", "chain1"),
            ("chain1", "chain2"),
            ("chain2", "sub_link/deeper/up2/inner.txt"),
        ];
        for (name, target) in links {
            symlink(target, root.join(name)).unwrap();
        }
        let snapshot = tree(&base);
        Fixture {
            _dir: dir,
            base,
            root,
            snapshot,
        }
    })
}

/// Every path beneath `base` (not following symlinks), with its kind and size.
fn tree(base: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            out.insert(format!("{rel} {:?} {}", m.file_type(), m.len()));
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(base, base, &mut out);
    out
}

fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("readlink /proc/self/fd")
}

/// `rel` as a path beneath the root, after checking it is canonical.
fn abs_of(f: &Fixture, rel: &RelPath, what: &str) -> PathBuf {
    let b = rel.as_bytes();
    if !b.is_empty() {
        for c in b.split(|x| *x == b'/') {
            assert!(
                !c.is_empty() && c != b"." && c != b"..",
                "{what}: rel {:?} is not canonical",
                rel.display()
            );
        }
    }
    let abs = f
        .root
        .join(std::str::from_utf8(b).expect("inputs are UTF-8"));
    // Canonical: no component is a symlink, so canonicalizing the parent changes nothing.
    if let Some(parent) = abs.parent() {
        if let Ok(c) = fs::canonicalize(parent) {
            assert_eq!(
                c, parent,
                "{what}: a directory on the way to {abs:?} is a symlink"
            );
        }
    }
    assert!(
        abs.starts_with(&f.root),
        "{what}: {abs:?} not beneath the root"
    );
    abs
}

fn same_object(fd: BorrowedFd<'_>, abs: &Path, what: &str) {
    let st = rustix::fs::fstat(fd).expect("fstat");
    let m = fs::symlink_metadata(abs).unwrap_or_else(|e| panic!("{what}: lstat {abs:?}: {e}"));
    assert_eq!(
        (st.st_dev, st.st_ino),
        (m.dev(), m.ino()),
        "{what}: the fd is not the object at {abs:?}"
    );
}

fn check_resolved(f: &Fixture, r: &Resolved, what: &str) {
    let abs = abs_of(f, &r.rel, what);
    same_object(r.fd.as_fd(), &abs, what);
    let shown = fd_path(r.fd.as_fd());
    assert_eq!(shown, abs, "{what}: /proc/self/fd says the fd is elsewhere");
    let st = rustix::fs::fstat(&r.fd).unwrap();
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    assert_ne!(
        kind,
        rustix::fs::FileType::Symlink,
        "{what}: resolved to a symlink itself"
    );
    if kind == rustix::fs::FileType::RegularFile {
        let mut buf = [0u8; 256];
        if let Ok(n) = rustix::io::pread(&r.fd, &mut buf[..], 0) {
            assert!(
                !buf[..n].windows(MARKER.len()).any(|w| w == MARKER),
                "{what}: read a file from outside the root"
            );
        }
    }
}

fn check_write(f: &Fixture, t: &WriteTarget, what: &str) {
    let abs = abs_of(f, &t.rel, what);
    assert!(!t.rel.is_root(), "{what}: a write target is never the root");
    let last = t.rel.as_bytes().rsplit(|b| *b == b'/').next().unwrap();
    assert_eq!(t.name(), last, "{what}: name is the last component of rel");
    let parent = fd_path(t.parent());
    assert!(
        parent.starts_with(&f.root),
        "{what}: parent fd {parent:?} outside the root"
    );
    let want_parent = abs.parent().unwrap();
    assert!(
        want_parent.starts_with(&parent),
        "{what}: parent fd {parent:?} is not an ancestor of {abs:?}"
    );
    if fs::symlink_metadata(want_parent).is_ok_and(|m| m.is_dir()) {
        assert_eq!(parent, want_parent, "{what}: parent fd");
    }
    let st = rustix::fs::fstat(t.parent()).unwrap();
    assert_eq!(
        rustix::fs::FileType::from_raw_mode(st.st_mode),
        rustix::fs::FileType::Directory,
        "{what}: the parent fd is not a directory"
    );
    let on_disk = fs::symlink_metadata(&abs);
    match (&t.existing, t.check_kind()) {
        (Some(file), _) => {
            same_object(file.as_fd(), &abs, what);
            assert!(on_disk.unwrap().is_file());
        }
        (None, Ok(())) => assert!(
            on_disk.is_err(),
            "{what}: no existing file, but {abs:?} exists: {on_disk:?}"
        ),
        (None, Err(_)) => {
            let m = on_disk.unwrap_or_else(|e| panic!("{what}: not regular, yet {abs:?}: {e}"));
            assert!(!m.is_file() && !m.file_type().is_symlink(), "{what}: {m:?}");
        }
    }
}

/// What the comparison between the two resolvers looks at.
fn summary<T>(r: &Result<T, error::ToolError>, rel: impl Fn(&T) -> String) -> String {
    match r {
        Ok(v) => format!("ok {}", rel(v)),
        Err(e) => format!("err {}", e.code),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let mut answers: Vec<Vec<String>> = Vec::new();
    for strategy in [Strategy::Auto, Strategy::WalkOnly] {
        let ws = Workspace::open(&f.root, strategy).expect("open the root");
        let what = |op: &str| format!("{strategy:?} {op}({path:?})");
        let mut mine = Vec::new();

        let r = ws.open_read(path);
        if let Ok(r) = &r {
            check_resolved(f, r, &what("open_read"));
        }
        mine.push(summary(&r, |r| r.rel.display()));

        let r = ws.open_dir(path);
        if let Ok(r) = &r {
            check_resolved(f, r, &what("open_dir"));
            let st = rustix::fs::fstat(&r.fd).unwrap();
            assert_eq!(
                rustix::fs::FileType::from_raw_mode(st.st_mode),
                rustix::fs::FileType::Directory,
                "{}: not a directory",
                what("open_dir")
            );
        }
        mine.push(summary(&r, |r| r.rel.display()));

        for create_dirs in [false, true] {
            let op = format!("resolve_write[create_dirs={create_dirs}]");
            let r = ws.resolve_write(path, create_dirs);
            if let Ok(t) = &r {
                check_write(f, t, &what(&op));
            }
            mine.push(summary(&r, |t| t.rel.display()));
            if let (true, Strategy::Auto, Ok(mut t)) = (create_dirs, strategy, r) {
                create_and_remove(f, &mut t, &what(&op));
            }
        }

        // The public API on the same path: read_file through execute_with.
        let req = Request::new(ToolCall::ReadFile(ReadFileArgs {
            path: path.to_string(),
            offset: None,
            limit: None,
        }));
        let public = match strategy {
            Strategy::Auto => airlock_executor::Strategy::Auto,
            Strategy::WalkOnly => airlock_executor::Strategy::WalkOnly,
        };
        let out = airlock_executor::execute_with(&req, &f.root, public, &mut |_| {});
        if let Ok(ToolResult::ReadFile(r)) = &out {
            let content = r.content.as_deref().unwrap_or("");
            assert!(!content.contains(std::str::from_utf8(MARKER).unwrap()));
            let rel = if r.path == "." { "" } else { r.path.as_str() };
            let abs = f.root.join(rel);
            assert!(
                fs::canonicalize(&abs).is_ok_and(|c| c == abs),
                "read_file path {abs:?}"
            );
        }
        mine.push(match &out {
            Ok(ToolResult::ReadFile(r)) => format!("ok {}", r.path),
            Ok(other) => panic!("read_file gave {other:?}"),
            Err(e) => format!("err {}", e.code),
        });
        answers.push(mine);
    }
    assert_eq!(
        answers[0], answers[1],
        "Auto and WalkOnly disagree on {path:?} (open_read, open_dir, resolve_write x2, read_file)"
    );
    let now = tree(&f.base);
    assert!(
        now == f.snapshot,
        "the tree changed: {:?}",
        now.symmetric_difference(&f.snapshot).collect::<Vec<_>>()
    );
});

/// Runs `create_parents`, checks what it made, and removes it again.
fn create_and_remove(f: &Fixture, t: &mut WriteTarget, what: &str) {
    let abs = abs_of(f, &t.rel, what);
    let want_parent = abs.parent().unwrap().to_path_buf();
    let before = fd_path(t.parent());
    // The directories that do not exist yet, deepest first.
    let missing: Vec<PathBuf> = want_parent
        .ancestors()
        .take_while(|a| *a != before.as_path())
        .map(Path::to_path_buf)
        .collect();
    for m in &missing {
        assert!(
            m.starts_with(&f.root) && *m != f.root,
            "{what}: would create {m:?}"
        );
        assert!(
            fs::symlink_metadata(m).is_err(),
            "{what}: {m:?} exists yet is missing"
        );
    }
    if t.create_parents().is_ok() {
        assert_eq!(
            fd_path(t.parent()),
            want_parent,
            "{what}: parent after create_parents"
        );
        for m in &missing {
            assert!(
                fs::symlink_metadata(m).is_ok_and(|m| m.is_dir()),
                "{what}: {m:?}"
            );
        }
    }
    for m in &missing {
        let _ = fs::remove_dir(m);
    }
}
