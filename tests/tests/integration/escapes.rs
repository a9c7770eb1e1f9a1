//! Escapes: no path a caller can write reaches beyond the workspace or into a protected path,
//! for reads, writes, edits, listings and searches, under runc (openat2) and gVisor (where
//! openat2 is ENOSYS and the executor walks paths by hand).
//!
//! Each refused case asserts the exact error code, and every test checks on the host that the
//! directory beside the workspace (`ws.outside()`, holding `secret.txt`) and the workspace's
//! own symlinks are exactly as they were.

use std::collections::BTreeMap;

use airlock::protocol::{EntryKind, ErrorCode, Mode, Protection};
use airlock::sandbox::Runtime;
use airlock_tests::{request, sandbox, with_protected, TestSandbox, Workspace};
use serde_json::json;

use crate::helpers::{call, call_req, change_res, err, list_res, read_res, search_res, snapshot};

use ErrorCode::{InvalidRequest, NotFound, PathOutsideWorkspace as Outside, ProtectedPath};

const SECRET: &str = "outside secret\n";

/// A workspace full of traps. `outside/secret.txt` sits beside it on the host.
fn trap_ws() -> Workspace {
    let ws = Workspace::new();
    let out = ws.outside().display().to_string();
    ws.write("hello.txt", "hello\n");
    ws.write("sub/inner.txt", "inner\n");
    ws.write("%2e%2e/x.txt", "pct\n");
    ws.write(".env", "TOKEN=root-env\n");
    ws.write("sub/.env", "TOKEN=sub-env\n");
    ws.write(".git/config", "[core]\n\tbare = false\n");
    // Leading out: absolute (to the host's sibling dir and to files inside the container),
    // relative, to `/`, to the magic link, through a parent directory, dangling.
    ws.symlink("abs_out", &format!("{out}/secret.txt"));
    ws.symlink("abs_passwd", "/etc/passwd");
    ws.symlink("rel_out", "../outside/secret.txt");
    ws.symlink("rel_passwd", "../etc/passwd");
    ws.symlink("root_link", "/");
    ws.symlink("proc_root", "/proc/self/root");
    ws.symlink("abs_dir", &out);
    ws.symlink("rel_dir", "../outside");
    ws.symlink("sub/deep_out", "../../outside/secret.txt");
    ws.symlink("dangling_rel", "../outside/created.txt");
    ws.symlink("dangling_abs", &format!("{out}/created.txt"));
    ws.symlink("dangling_tmp", "/tmp/pwned");
    ws.symlink("loop_a", "loop_b");
    ws.symlink("loop_b", "loop_a");
    // Staying inside: these work.
    ws.symlink("good_link", "sub/inner.txt");
    ws.symlink("sub/up_ok", "../hello.txt");
    ws.symlink("sub_link", "sub");
    // Inside, but onto protected paths.
    ws.symlink("env_link", ".env");
    ws.symlink("git_link", ".git/config");
    ws.symlink("git_dir", ".git");
    ws
}

/// Lexical traversal: refused before anything is opened.
const TRAVERSAL: &[(&str, ErrorCode)] = &[
    ("/etc/passwd", Outside),
    ("/workspace/hello.txt", Outside),
    ("..", Outside),
    ("../outside/secret.txt", Outside),
    ("a/../../x", Outside),
    ("sub/..//../x", Outside),
    ("./../hello.txt", Outside),
    ("sub/../../ws/hello.txt", Outside),
    ("hello\u{0}.txt", InvalidRequest),
    ("sub\u{0}/../../etc/passwd", InvalidRequest),
];

/// Symlinks that lead out of the workspace, for reads and edits.
const LINKS_OUT: &[&str] = &[
    "abs_out",
    "root_link",
    "abs_passwd",
    "rel_out",
    "rel_passwd",
    "root_link/etc/passwd",
    "proc_root/etc/passwd",
    "proc_root",
    "abs_dir/secret.txt",
    "rel_dir/secret.txt",
    "sub/deep_out",
    "sub_link/deep_out",
    "dangling_rel",
    "loop_a",
];

/// Write targets that lead out: the links above plus dangling links and new names in
/// directories outside.
const WRITE_OUT: &[&str] = &[
    "abs_out",
    "abs_passwd",
    "rel_out",
    "rel_passwd",
    "root_link",
    "root_link/tmp/pwned",
    "proc_root/tmp/pwned",
    "abs_dir/secret.txt",
    "rel_dir/secret.txt",
    "rel_dir/new.txt",
    "sub/deep_out",
    "dangling_rel",
    "dangling_abs",
    "dangling_tmp",
    "loop_a",
];

/// What must never change, whatever the executor is asked: the sibling directory and the
/// workspace itself (its symlinks included).
struct Untouched {
    outside: BTreeMap<String, String>,
    workspace: BTreeMap<String, String>,
}

impl Untouched {
    fn take(ws: &Workspace) -> Untouched {
        let outside = snapshot(&ws.outside());
        assert_eq!(outside.get("secret.txt").map(String::as_str), Some(SECRET));
        Untouched {
            outside,
            workspace: snapshot(&ws.root()),
        }
    }

    fn check(&self, ws: &Workspace, what: &str) {
        assert_eq!(
            snapshot(&ws.outside()),
            self.outside,
            "{what}: the directory outside the workspace changed"
        );
        assert_eq!(
            snapshot(&ws.root()),
            self.workspace,
            "{what}: the workspace changed"
        );
    }
}

async fn refused(
    ts: &TestSandbox,
    ws: &Workspace,
    rt: Runtime,
    tool: &str,
    args: serde_json::Value,
    mode: Mode,
    code: ErrorCode,
) {
    let what = format!("[{rt:?}] {tool} {mode:?} {args}");
    let c = call(ts, ws, rt, tool, args, mode).await;
    let msg = err(&c, code, &what);
    assert!(
        !msg.contains("root:x:0") && !msg.contains(SECRET.trim()),
        "{what}: the message leaks content: {msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// read_file

async fn read_escapes(rt: Runtime) {
    let ts = sandbox().await;
    let ws = trap_ws();
    let before = Untouched::take(&ws);
    for (path, code) in TRAVERSAL {
        refused(
            &ts,
            &ws,
            rt,
            "read_file",
            json!({ "path": path }),
            Mode::Preview,
            *code,
        )
        .await;
    }
    for path in LINKS_OUT {
        refused(
            &ts,
            &ws,
            rt,
            "read_file",
            json!({ "path": path }),
            Mode::Preview,
            Outside,
        )
        .await;
    }
    // Backslashes are ordinary name characters, never separators: no such file here.
    for path in [
        "..\\..\\outside\\secret.txt",
        "sub\\..\\..\\x",
        "..\\../hello.txt",
    ] {
        refused(
            &ts,
            &ws,
            rt,
            "read_file",
            json!({ "path": path }),
            Mode::Preview,
            NotFound,
        )
        .await;
    }

    // What stays inside works: `%2e%2e` is a name, never decoded; in-workspace symlinks resolve
    // to their canonical path.
    for (path, canonical, content) in [
        ("%2e%2e/x.txt", "%2e%2e/x.txt", "pct\n"),
        ("good_link", "sub/inner.txt", "inner\n"),
        ("sub/up_ok", "hello.txt", "hello\n"),
        ("sub_link/inner.txt", "sub/inner.txt", "inner\n"),
        ("sub_link/up_ok", "hello.txt", "hello\n"),
        ("sub/../hello.txt", "hello.txt", "hello\n"),
    ] {
        let what = format!("[{rt:?}] read_file {path}");
        let c = call(
            &ts,
            &ws,
            rt,
            "read_file",
            json!({ "path": path }),
            Mode::Preview,
        )
        .await;
        let r = read_res(&c, &what);
        assert_eq!(r.path, canonical, "{what}");
        assert_eq!(r.content.as_deref(), Some(content), "{what}");
    }
    before.check(&ws, &format!("[{rt:?}] reads"));
    ts.finish().await;
}

#[tokio::test]
async fn read_file_escapes_runc() {
    read_escapes(Runtime::Runc).await;
}

#[tokio::test]
async fn read_file_escapes_runsc() {
    read_escapes(Runtime::Runsc).await;
}

// ---------------------------------------------------------------------------------------------
// write_file (apply)

async fn write_escapes(rt: Runtime) {
    let ts = sandbox().await;
    let ws = trap_ws();
    let before = Untouched::take(&ws);
    let write = |path: &str| json!({ "path": path, "content": "PWNED\n" });
    for (path, code) in TRAVERSAL {
        refused(&ts, &ws, rt, "write_file", write(path), Mode::Apply, *code).await;
    }
    for path in WRITE_OUT {
        refused(
            &ts,
            &ws,
            rt,
            "write_file",
            write(path),
            Mode::Apply,
            Outside,
        )
        .await;
    }
    // A preview is refused the same way.
    refused(
        &ts,
        &ws,
        rt,
        "write_file",
        write("rel_out"),
        Mode::Preview,
        Outside,
    )
    .await;
    before.check(&ws, &format!("[{rt:?}] refused writes"));

    // Writes that stay inside work: through an in-workspace symlink (which stays a symlink),
    // into a directory literally named `%2e%2e`, and to a name containing backslashes.
    let what = format!("[{rt:?}] write through good_link");
    let c = call(&ts, &ws, rt, "write_file", write("good_link"), Mode::Apply).await;
    let r = change_res(&c, &what);
    assert_eq!(r.path, "sub/inner.txt", "{what}");
    assert_eq!(
        ws.read("sub/inner.txt").as_deref(),
        Some("PWNED\n"),
        "{what}"
    );
    assert_eq!(
        std::fs::read_link(ws.root().join("good_link")).unwrap(),
        std::path::Path::new("sub/inner.txt"),
        "{what}: the link itself is untouched"
    );

    let what = format!("[{rt:?}] write into %2e%2e");
    let c = call(
        &ts,
        &ws,
        rt,
        "write_file",
        write("%2e%2e/new.txt"),
        Mode::Apply,
    )
    .await;
    assert_eq!(change_res(&c, &what).path, "%2e%2e/new.txt", "{what}");
    assert_eq!(
        ws.read("%2e%2e/new.txt").as_deref(),
        Some("PWNED\n"),
        "{what}"
    );

    let what = format!("[{rt:?}] write to a backslash name");
    let c = call(
        &ts,
        &ws,
        rt,
        "write_file",
        write("..\\..\\x.txt"),
        Mode::Apply,
    )
    .await;
    assert_eq!(change_res(&c, &what).path, "..\\..\\x.txt", "{what}");
    assert_eq!(
        ws.read("..\\..\\x.txt").as_deref(),
        Some("PWNED\n"),
        "{what}"
    );

    assert_eq!(
        snapshot(&ws.outside()),
        before.outside,
        "[{rt:?}] nothing outside changed"
    );
    ts.finish().await;
}

#[tokio::test]
async fn write_file_escapes_runc() {
    write_escapes(Runtime::Runc).await;
}

#[tokio::test]
async fn write_file_escapes_runsc() {
    write_escapes(Runtime::Runsc).await;
}

// ---------------------------------------------------------------------------------------------
// edit_file (apply)

async fn edit_escapes(rt: Runtime) {
    let ts = sandbox().await;
    let ws = trap_ws();
    let before = Untouched::take(&ws);
    let edit = |path: &str| json!({ "path": path, "edits": [{"old_string": "secret", "new_string": "PWNED"}] });
    for (path, code) in TRAVERSAL {
        refused(&ts, &ws, rt, "edit_file", edit(path), Mode::Apply, *code).await;
    }
    for path in LINKS_OUT {
        refused(&ts, &ws, rt, "edit_file", edit(path), Mode::Apply, Outside).await;
    }
    before.check(&ws, &format!("[{rt:?}] refused edits"));

    // An edit through an in-workspace symlinked directory works.
    let what = format!("[{rt:?}] edit through sub_link");
    let c = call(
        &ts,
        &ws,
        rt,
        "edit_file",
        json!({"path": "sub_link/inner.txt", "edits": [{"old_string": "inner", "new_string": "edited"}]}),
        Mode::Apply,
    )
    .await;
    assert_eq!(change_res(&c, &what).path, "sub/inner.txt", "{what}");
    assert_eq!(
        ws.read("sub/inner.txt").as_deref(),
        Some("edited\n"),
        "{what}"
    );
    assert_eq!(snapshot(&ws.outside()), before.outside, "{what}");
    ts.finish().await;
}

#[tokio::test]
async fn edit_file_escapes_runc() {
    edit_escapes(Runtime::Runc).await;
}

#[tokio::test]
async fn edit_file_escapes_runsc() {
    edit_escapes(Runtime::Runsc).await;
}

// ---------------------------------------------------------------------------------------------
// list_dir and search

async fn list_and_search_escapes(rt: Runtime) {
    let ts = sandbox().await;
    let ws = trap_ws();
    let before = Untouched::take(&ws);
    let dirs_out: &[(&str, ErrorCode)] = &[
        ("/", Outside),
        ("/etc", Outside),
        ("..", Outside),
        ("../outside", Outside),
        ("a/../../x", Outside),
        ("sub/..//..", Outside),
        ("root_link", Outside),
        ("root_link/etc", Outside),
        ("proc_root", Outside),
        ("abs_dir", Outside),
        ("rel_dir", Outside),
        ("sub\u{0}", InvalidRequest),
    ];
    for (path, code) in dirs_out {
        refused(
            &ts,
            &ws,
            rt,
            "list_dir",
            json!({ "path": path }),
            Mode::Preview,
            *code,
        )
        .await;
    }
    for path in ["abs_dir", "rel_dir", "../outside", "root_link", "proc_root"] {
        refused(
            &ts,
            &ws,
            rt,
            "search",
            json!({ "pattern": "secret", "path": path }),
            Mode::Preview,
            Outside,
        )
        .await;
    }
    // run_shell's working directory is resolved the same way (the shell itself may `cd`
    // anywhere in its container; the point is that the executor never resolves out).
    for cwd in [
        "root_link",
        "proc_root",
        "abs_dir",
        "rel_dir",
        "/",
        "sub/../..",
    ] {
        refused(
            &ts,
            &ws,
            rt,
            "run_shell",
            json!({ "command": "pwd", "cwd": cwd }),
            Mode::Preview,
            Outside,
        )
        .await;
    }

    // A deep listing of the root shows the links as links and never descends through them.
    let what = format!("[{rt:?}] list_dir depth 4");
    let c = call(&ts, &ws, rt, "list_dir", json!({"depth": 4}), Mode::Preview).await;
    let r = list_res(&c, &what);
    let kinds: BTreeMap<&str, EntryKind> = r
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind))
        .collect();
    for link in [
        "abs_dir",
        "rel_dir",
        "root_link",
        "proc_root",
        "sub_link",
        "abs_out",
    ] {
        assert_eq!(kinds.get(link), Some(&EntryKind::Symlink), "{what}: {link}");
        assert!(
            !kinds.keys().any(|k| k.starts_with(&format!("{link}/"))),
            "{what}: descended into {link}: {kinds:?}"
        );
    }
    assert_eq!(kinds.get("%2e%2e/x.txt"), Some(&EntryKind::File), "{what}");

    // An in-workspace symlinked directory can be listed.
    let what = format!("[{rt:?}] list_dir sub_link");
    let c = call(
        &ts,
        &ws,
        rt,
        "list_dir",
        json!({"path": "sub_link"}),
        Mode::Preview,
    )
    .await;
    let r = list_res(&c, &what);
    assert_eq!(r.path, "sub", "{what}");
    assert!(
        r.entries.iter().any(|e| e.name == "inner.txt"),
        "{what}: {r:#?}"
    );

    // A search of the whole workspace never follows links out.
    let what = format!("[{rt:?}] search everything");
    let c = call(
        &ts,
        &ws,
        rt,
        "search",
        json!({"pattern": "outside secret|root:x:0|^sandbox:"}),
        Mode::Preview,
    )
    .await;
    let r = search_res(&c, &what);
    assert!(r.matches.is_empty(), "{what}: {r:#?}");
    before.check(&ws, &format!("[{rt:?}] listings"));
    ts.finish().await;
}

#[tokio::test]
async fn list_dir_and_search_escapes_runc() {
    list_and_search_escapes(Runtime::Runc).await;
}

#[tokio::test]
async fn list_dir_and_search_escapes_runsc() {
    list_and_search_escapes(Runtime::Runsc).await;
}

// ---------------------------------------------------------------------------------------------
// protected paths

const RULES: &[(&str, Protection)] = &[
    ("**/.env", Protection::NoAccess),
    (".git/**", Protection::ReadOnly),
];

async fn protected(
    ts: &TestSandbox,
    ws: &Workspace,
    rt: Runtime,
    tool: &str,
    args: serde_json::Value,
    mode: Mode,
) -> airlock_tests::Called {
    call_req(ts, ws, rt, with_protected(request(tool, args, mode), RULES)).await
}

async fn protected_paths(rt: Runtime) {
    let ts = sandbox().await;
    let ws = trap_ws();
    let before = Untouched::take(&ws);

    // NoAccess: not even read, directly or through a symlink or a detour.
    for path in [
        ".env",
        "sub/.env",
        "env_link",
        "./sub/../.env",
        "sub_link/.env",
    ] {
        let what = format!("[{rt:?}] read {path}");
        let c = protected(
            &ts,
            &ws,
            rt,
            "read_file",
            json!({ "path": path }),
            Mode::Preview,
        )
        .await;
        let msg = err(&c, ProtectedPath, &what);
        assert!(!msg.contains("TOKEN"), "{what}: {msg}");
    }
    // ReadOnly: readable, directly and through symlinks.
    for path in [".git/config", "git_link", "git_dir/config"] {
        let what = format!("[{rt:?}] read {path}");
        let c = protected(
            &ts,
            &ws,
            rt,
            "read_file",
            json!({ "path": path }),
            Mode::Preview,
        )
        .await;
        let r = read_res(&c, &what);
        assert_eq!(r.path, ".git/config", "{what}");
        assert_eq!(
            r.content.as_deref(),
            Some("[core]\n\tbare = false\n"),
            "{what}"
        );
    }

    // Neither may be written or edited, whichever way the path is spelled; a refused write
    // creates no directory either.
    for path in [
        ".env",
        "sub/.env",
        "env_link",
        "new_dir/.env",
        ".git/config",
        ".git/hooks/pre-commit",
        "git_link",
        "git_dir/config",
        "git_dir/new_file",
        "sub/../.git/config",
        "sub_link/../.git/config",
    ] {
        let what = format!("[{rt:?}] write {path}");
        let args = json!({ "path": path, "content": "PWNED\n" });
        let c = protected(&ts, &ws, rt, "write_file", args, Mode::Apply).await;
        err(&c, ProtectedPath, &what);
    }
    // A preview is refused the same way.
    for path in [".env", "env_link", ".git/config", "git_dir/new_file"] {
        let what = format!("[{rt:?}] preview write {path}");
        let args = json!({ "path": path, "content": "PWNED\n" });
        let c = protected(&ts, &ws, rt, "write_file", args, Mode::Preview).await;
        err(&c, ProtectedPath, &what);
    }
    for (path, old) in [
        (".env", "TOKEN"),
        ("env_link", "TOKEN"),
        ("sub/.env", "TOKEN"),
        (".git/config", "bare"),
        ("git_link", "bare"),
        ("git_dir/config", "bare"),
    ] {
        let what = format!("[{rt:?}] edit {path}");
        let c = protected(
            &ts,
            &ws,
            rt,
            "edit_file",
            json!({ "path": path, "edits": [{"old_string": old, "new_string": "PWNED"}] }),
            Mode::Apply,
        )
        .await;
        err(&c, ProtectedPath, &what);
    }

    // A search never reads a NoAccess file.
    let what = format!("[{rt:?}] search protected");
    let c = protected(
        &ts,
        &ws,
        rt,
        "search",
        json!({ "pattern": "TOKEN" }),
        Mode::Preview,
    )
    .await;
    let r = search_res(&c, &what);
    assert!(r.matches.is_empty(), "{what}: {r:#?}");

    before.check(&ws, &format!("[{rt:?}] protected paths"));
    ts.finish().await;
}

#[tokio::test]
async fn protected_paths_runc() {
    protected_paths(Runtime::Runc).await;
}

#[tokio::test]
async fn protected_paths_runsc() {
    protected_paths(Runtime::Runsc).await;
}
