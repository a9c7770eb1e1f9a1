//! Tools: the happy path and every error code of every tool, through the real sandbox.
//! The representative happy paths (and the stale edit) run under both runc and gVisor, where
//! `openat2` is missing and the executor walks paths by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use airlock::protocol::{ChangeKind, EntryKind, ErrorCode, Event, Mode, StreamKind, ABSENT};
use airlock::sandbox::{Runtime, SandboxEvent};
use airlock_tests::{request, runtimes, sandbox, Called, Workspace};
use serde_json::json;

use crate::helpers::{
    call, call_req, change_res, err, list_res, read_res, search_res, sha256_hex, shell_res,
};

const RUNC: Runtime = Runtime::Runc;

fn ten_lines() -> String {
    (1..=10).map(|i| format!("line {i}\n")).collect()
}

// ---------------------------------------------------------------------------------------------
// read_file

#[tokio::test]
async fn read_file_whole_and_ranges_under_both_runtimes() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let text = ten_lines();
    ws.write("dir/lines.txt", &text);
    for rt in runtimes(&ts).await {
        let what = format!("[{rt:?}] whole file");
        let c = call(
            &ts,
            &ws,
            rt,
            "read_file",
            json!({"path": "dir/lines.txt"}),
            Mode::Preview,
        )
        .await;
        let r = read_res(&c, &what);
        assert_eq!(r.path, "dir/lines.txt", "{what}");
        assert_eq!(r.content.as_deref(), Some(text.as_str()), "{what}");
        assert_eq!(r.binary_summary, None, "{what}");
        assert_eq!(r.total_bytes, text.len() as u64, "{what}");
        assert_eq!(r.total_lines, 10, "{what}");
        assert_eq!((r.first_line, r.lines_returned), (1, 10), "{what}");
        assert!(!r.truncated, "{what}");
        assert_eq!(r.sha256, sha256_hex(&text), "{what}");

        let what = format!("[{rt:?}] offset 3 limit 2");
        let c = call(
            &ts,
            &ws,
            rt,
            "read_file",
            json!({"path": "dir/lines.txt", "offset": 3, "limit": 2}),
            Mode::Preview,
        )
        .await;
        let r = read_res(&c, &what);
        assert_eq!(r.content.as_deref(), Some("line 3\nline 4\n"), "{what}");
        assert_eq!((r.first_line, r.lines_returned), (3, 2), "{what}");
        assert!(r.truncated, "{what}: `limit` cut the content short");
        assert_eq!(r.total_lines, 10, "{what}");
        assert_eq!(r.total_bytes, text.len() as u64, "{what}");
        assert_eq!(
            r.sha256,
            sha256_hex(&text),
            "{what}: sha256 is the whole file's"
        );

        let what = format!("[{rt:?}] offset 9 to the end");
        let c = call(
            &ts,
            &ws,
            rt,
            "read_file",
            json!({"path": "./dir//lines.txt", "offset": 9}),
            Mode::Preview,
        )
        .await;
        let r = read_res(&c, &what);
        assert_eq!(r.path, "dir/lines.txt", "{what}: canonical path");
        assert_eq!(r.content.as_deref(), Some("line 9\nline 10\n"), "{what}");
        assert_eq!((r.first_line, r.lines_returned), (9, 2), "{what}");
        assert!(!r.truncated, "{what}");
    }
    ts.finish().await;
}

#[tokio::test]
async fn read_file_caps_binary_and_errors() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let big: String = (1..=2000)
        .map(|i| format!("row {i:05} {}\n", "x".repeat(20)))
        .collect();
    ws.write("big.txt", &big);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend((0..4992u32).map(|i| (i % 7) as u8));
    ws.write("image.png", &png);
    ws.write("five_k.txt", "y".repeat(5000));
    ws.mkdir("adir");

    // The byte cap: content is a prefix of the file, at most the cap, and says so.
    let mut req = request("read_file", json!({"path": "big.txt"}), Mode::Preview);
    req.limits.max_read_bytes = 4096;
    let c = call_req(&ts, &ws, RUNC, req).await;
    let r = read_res(&c, "byte cap");
    let content = r.content.as_deref().expect("text content");
    assert!(
        content.len() <= 4096 && content.len() >= 2048,
        "content is {} bytes, cap 4096",
        content.len()
    );
    assert!(big.starts_with(content), "content is a prefix of the file");
    assert!(r.truncated);
    assert_eq!(r.total_bytes, big.len() as u64);
    assert_eq!(r.total_lines, 2000);
    assert_eq!(r.first_line, 1);
    let newlines = content.matches('\n').count() as u64;
    assert!(
        r.lines_returned == newlines || r.lines_returned == newlines + 1,
        "lines_returned {} for {newlines} newlines",
        r.lines_returned
    );
    assert_eq!(r.sha256, sha256_hex(&big));

    // A binary file is summarised, never dumped.
    let c = call(
        &ts,
        &ws,
        RUNC,
        "read_file",
        json!({"path": "image.png"}),
        Mode::Preview,
    )
    .await;
    let r = read_res(&c, "binary");
    assert_eq!(r.content, None, "binary content must not be returned");
    let summary = r.binary_summary.as_deref().expect("a binary summary");
    assert!(
        summary.to_lowercase().contains("binary") && summary.contains("5000"),
        "{summary}"
    );
    assert!(summary.len() < 300, "a summary, not a dump: {summary}");
    assert_eq!(r.total_bytes, 5000);
    assert_eq!(r.sha256, sha256_hex(&png));

    // Files above max_file_bytes are refused.
    let mut req = request("read_file", json!({"path": "five_k.txt"}), Mode::Preview);
    req.limits.max_file_bytes = 1000;
    let c = call_req(&ts, &ws, RUNC, req).await;
    err(&c, ErrorCode::TooLarge, "max_file_bytes");

    for (path, code) in [
        ("missing.txt", ErrorCode::NotFound),
        ("nodir/missing.txt", ErrorCode::NotFound),
        ("adir", ErrorCode::IsADirectory),
        (".", ErrorCode::IsADirectory),
        ("", ErrorCode::InvalidRequest),
        ("big.txt/x", ErrorCode::NotADirectory),
    ] {
        let c = call(
            &ts,
            &ws,
            RUNC,
            "read_file",
            json!({ "path": path }),
            Mode::Preview,
        )
        .await;
        err(&c, code, &format!("read_file {path:?}"));
    }
    ts.finish().await;
}

// ---------------------------------------------------------------------------------------------
// list_dir

fn entries(r: &airlock::protocol::ListDirResult) -> BTreeMap<String, (EntryKind, u64)> {
    r.entries
        .iter()
        .map(|e| (e.name.clone(), (e.kind, e.size)))
        .collect()
}

fn list_ws() -> Workspace {
    let ws = Workspace::new();
    ws.write("a.txt", "abc");
    ws.write("sub/b.txt", "hello\n");
    ws.write("sub/deeper/c.txt", "c");
    ws.mkdir("empty");
    ws.symlink("link", "a.txt");
    ws
}

#[tokio::test]
async fn list_dir_depth_kinds_and_sizes_under_both_runtimes() {
    let ts = sandbox().await;
    let ws = list_ws();
    for rt in runtimes(&ts).await {
        let what = format!("[{rt:?}] list_dir root");
        let c = call(&ts, &ws, rt, "list_dir", json!({}), Mode::Preview).await;
        let r = list_res(&c, &what);
        assert_eq!(r.path, ".", "{what}");
        assert!(!r.truncated, "{what}");
        let e = entries(r);
        let names: Vec<&str> = e.keys().map(String::as_str).collect();
        assert_eq!(names, ["a.txt", "empty", "link", "sub"], "{what}: {r:#?}");
        assert_eq!(e["a.txt"], (EntryKind::File, 3), "{what}");
        assert_eq!(e["empty"].0, EntryKind::Dir, "{what}");
        assert_eq!(e["sub"].0, EntryKind::Dir, "{what}");
        assert_eq!(e["link"].0, EntryKind::Symlink, "{what}");

        let what = format!("[{rt:?}] list_dir depth 2");
        let c = call(&ts, &ws, rt, "list_dir", json!({"depth": 2}), Mode::Preview).await;
        let e = entries(list_res(&c, &what));
        let names: Vec<&str> = e.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["a.txt", "empty", "link", "sub", "sub/b.txt", "sub/deeper"],
            "{what}"
        );
        assert_eq!(e["sub/b.txt"], (EntryKind::File, 6), "{what}");

        let what = format!("[{rt:?}] list_dir depth 3");
        let c = call(&ts, &ws, rt, "list_dir", json!({"depth": 3}), Mode::Preview).await;
        let e = entries(list_res(&c, &what));
        assert_eq!(
            e.get("sub/deeper/c.txt"),
            Some(&(EntryKind::File, 1)),
            "{what}"
        );
        assert_eq!(e.len(), 7, "{what}: {e:?}");

        let what = format!("[{rt:?}] list_dir sub");
        let c = call(
            &ts,
            &ws,
            rt,
            "list_dir",
            json!({"path": "sub"}),
            Mode::Preview,
        )
        .await;
        let r = list_res(&c, &what);
        assert_eq!(r.path, "sub", "{what}");
        let e = entries(r);
        let names: Vec<&str> = e.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["b.txt", "deeper"],
            "{what}: names are relative to `sub`"
        );
    }
    ts.finish().await;
}

#[tokio::test]
async fn list_dir_truncation_and_errors() {
    let ts = sandbox().await;
    let ws = list_ws();
    for i in 0..30 {
        ws.write(&format!("many/f{i:02}.txt"), "x");
    }
    let mut req = request("list_dir", json!({"path": "many"}), Mode::Preview);
    req.limits.max_entries = 10;
    let c = call_req(&ts, &ws, RUNC, req).await;
    let r = list_res(&c, "max_entries");
    assert!(r.truncated, "{r:#?}");
    assert!(
        !r.entries.is_empty() && r.entries.len() <= 10,
        "{} entries for a cap of 10",
        r.entries.len()
    );

    for (path, code) in [
        ("nope", ErrorCode::NotFound),
        ("a.txt", ErrorCode::NotADirectory),
    ] {
        let c = call(
            &ts,
            &ws,
            RUNC,
            "list_dir",
            json!({ "path": path }),
            Mode::Preview,
        )
        .await;
        err(&c, code, &format!("list_dir {path:?}"));
    }
    ts.finish().await;
}

// ---------------------------------------------------------------------------------------------
// search

fn search_ws() -> Workspace {
    let ws = Workspace::new();
    ws.write("src/main.rs", "fn main() {\n    println!(\"hello\");\n}\n");
    ws.write("src/lib.rs", "pub fn hello() {}\n// TODO: x\n");
    ws.write("notes.txt", "TODO: buy milk\nhello world\n");
    ws.write("bin.dat", b"hello\0binary\0hello\n");
    ws
}

fn matches(r: &airlock::protocol::SearchResult) -> BTreeSet<(String, u64, String)> {
    r.matches
        .iter()
        .map(|m| (m.path.clone(), m.line_number, m.line.clone()))
        .collect()
}

fn m(path: &str, n: u64, line: &str) -> (String, u64, String) {
    (path.to_string(), n, line.to_string())
}

#[tokio::test]
async fn search_regex_glob_and_path_under_both_runtimes() {
    let ts = sandbox().await;
    let ws = search_ws();
    for rt in runtimes(&ts).await {
        let what = format!("[{rt:?}] search hel+o");
        let c = call(
            &ts,
            &ws,
            rt,
            "search",
            json!({"pattern": "hel+o"}),
            Mode::Preview,
        )
        .await;
        let r = search_res(&c, &what);
        assert_eq!(
            matches(r),
            BTreeSet::from([
                m("notes.txt", 2, "hello world"),
                m("src/lib.rs", 1, "pub fn hello() {}"),
                m("src/main.rs", 2, "    println!(\"hello\");"),
            ]),
            "{what}: binary files are skipped"
        );
        assert!(!r.truncated, "{what}");
        assert!(r.files_searched >= 3, "{what}: {r:#?}");

        let what = format!("[{rt:?}] search with glob");
        let c = call(
            &ts,
            &ws,
            rt,
            "search",
            json!({"pattern": r"^\s*(pub )?fn \w+", "glob": "**/*.rs"}),
            Mode::Preview,
        )
        .await;
        let r = search_res(&c, &what);
        assert_eq!(
            matches(r),
            BTreeSet::from([
                m("src/lib.rs", 1, "pub fn hello() {}"),
                m("src/main.rs", 1, "fn main() {"),
            ]),
            "{what}"
        );

        let what = format!("[{rt:?}] search under a path");
        let c = call(
            &ts,
            &ws,
            rt,
            "search",
            json!({"pattern": "TODO", "path": "src"}),
            Mode::Preview,
        )
        .await;
        let r = search_res(&c, &what);
        assert_eq!(
            matches(r),
            BTreeSet::from([m("src/lib.rs", 2, "// TODO: x")]),
            "{what}: paths are workspace-relative"
        );
    }
    ts.finish().await;
}

#[tokio::test]
async fn search_caps_and_errors() {
    let ts = sandbox().await;
    let ws = search_ws();
    ws.write(
        "many.txt",
        (0..50).map(|i| format!("match {i}\n")).collect::<String>(),
    );

    let mut req = request("search", json!({"pattern": "^match"}), Mode::Preview);
    req.limits.max_search_results = 5;
    let c = call_req(&ts, &ws, RUNC, req).await;
    let r = search_res(&c, "max_search_results");
    assert_eq!(r.matches.len(), 5, "{r:#?}");
    assert!(r.truncated);

    // A single file as the path.
    let c = call(
        &ts,
        &ws,
        RUNC,
        "search",
        json!({"pattern": "(?i)HELLO WORLD", "path": "notes.txt"}),
        Mode::Preview,
    )
    .await;
    assert_eq!(
        matches(search_res(&c, "search one file")),
        BTreeSet::from([m("notes.txt", 2, "hello world")])
    );

    for (args, code) in [
        (json!({"pattern": "("}), ErrorCode::InvalidRequest),
        (json!({"pattern": "a{99999999}"}), ErrorCode::InvalidRequest),
        (
            json!({"pattern": "x", "glob": "a["}),
            ErrorCode::InvalidRequest,
        ),
        (json!({"pattern": "x", "path": "nope"}), ErrorCode::NotFound),
    ] {
        let c = call(&ts, &ws, RUNC, "search", args.clone(), Mode::Preview).await;
        err(&c, code, &format!("search {args}"));
    }
    ts.finish().await;
}

// ---------------------------------------------------------------------------------------------
// write_file

#[tokio::test]
async fn write_file_preview_writes_nothing_and_apply_writes_under_both_runtimes() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    for rt in runtimes(&ts).await {
        let old = "one\ntwo\nthree\n";
        let new = "one\nTWO\nthree\n";
        ws.write("a.txt", old);
        let _ = std::fs::remove_dir_all(ws.root().join("new"));

        let what = format!("[{rt:?}] preview overwrite");
        let c = call(
            &ts,
            &ws,
            rt,
            "write_file",
            json!({"path": "a.txt", "content": new}),
            Mode::Preview,
        )
        .await;
        let r = change_res(&c, &what);
        assert_eq!(r.path, "a.txt", "{what}");
        assert!(
            r.diff.starts_with("--- a/a.txt\n+++ b/a.txt\n"),
            "{what}: {}",
            r.diff
        );
        assert!(r.diff.contains("-two\n+TWO\n"), "{what}: {}", r.diff);
        assert_eq!(r.old_sha256, sha256_hex(old), "{what}");
        assert_eq!(r.new_sha256, sha256_hex(new), "{what}");
        assert!(!r.created && !r.applied, "{what}");
        assert_eq!(
            ws.read("a.txt").as_deref(),
            Some(old),
            "{what}: nothing written"
        );

        let what = format!("[{rt:?}] preview create");
        let c = call(
            &ts,
            &ws,
            rt,
            "write_file",
            json!({"path": "new/dir/n.txt", "content": "fresh\n"}),
            Mode::Preview,
        )
        .await;
        let r = change_res(&c, &what);
        assert_eq!(r.path, "new/dir/n.txt", "{what}");
        assert!(r.created && !r.applied, "{what}");
        assert_eq!(r.old_sha256, ABSENT, "{what}");
        assert_eq!(r.new_sha256, sha256_hex("fresh\n"), "{what}");
        assert!(r.diff.contains("+fresh\n"), "{what}: {}", r.diff);
        assert!(
            !ws.exists("new"),
            "{what}: a preview creates nothing, not even a directory"
        );

        let what = format!("[{rt:?}] apply overwrite");
        let mut req = request(
            "write_file",
            json!({"path": "a.txt", "content": new}),
            Mode::Apply,
        );
        req.expected_sha256 = Some(sha256_hex(old));
        let c = call_req(&ts, &ws, rt, req).await;
        let r = change_res(&c, &what);
        assert!(r.applied && !r.created, "{what}");
        assert_eq!(ws.read("a.txt").as_deref(), Some(new), "{what}");
        assert_eq!(
            r.new_sha256,
            sha256_hex(ws.read("a.txt").unwrap()),
            "{what}"
        );
        assert_eq!(r.old_sha256, sha256_hex(old), "{what}");
        assert!(r.diff.contains("-two\n+TWO\n"), "{what}: {}", r.diff);

        let what = format!("[{rt:?}] apply create");
        let mut req = request(
            "write_file",
            json!({"path": "new/dir/n.txt", "content": "fresh\n"}),
            Mode::Apply,
        );
        req.expected_sha256 = Some(ABSENT.into());
        let c = call_req(&ts, &ws, rt, req).await;
        let r = change_res(&c, &what);
        assert!(r.applied && r.created, "{what}");
        assert_eq!(
            ws.read("new/dir/n.txt").as_deref(),
            Some("fresh\n"),
            "{what}"
        );
        assert_eq!(r.new_sha256, sha256_hex("fresh\n"), "{what}");
    }
    ts.finish().await;
}

#[tokio::test]
async fn write_file_without_expected_sha_and_errors() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    ws.write("a.txt", "old\n");
    ws.mkdir("adir");

    // Without expected_sha256 the apply is unconditional.
    let c = call(
        &ts,
        &ws,
        RUNC,
        "write_file",
        json!({"path": "a.txt", "content": "new\n"}),
        Mode::Apply,
    )
    .await;
    let r = change_res(&c, "unconditional apply");
    assert!(r.applied);
    assert_eq!(ws.read("a.txt").as_deref(), Some("new\n"));
    assert_eq!(r.new_sha256, sha256_hex("new\n"));

    for (path, code) in [
        ("adir", ErrorCode::IsADirectory),
        ("a.txt/x", ErrorCode::NotADirectory),
    ] {
        for mode in [Mode::Preview, Mode::Apply] {
            let c = call(
                &ts,
                &ws,
                RUNC,
                "write_file",
                json!({"path": path, "content": "x"}),
                mode,
            )
            .await;
            err(&c, code, &format!("write_file {path:?} {mode:?}"));
        }
    }
    assert_eq!(ws.read("a.txt").as_deref(), Some("new\n"));
    assert!(ws.root().join("adir").is_dir());
    ts.finish().await;
}

// ---------------------------------------------------------------------------------------------
// edit_file

const CODE: &str = "let a = 1;\nlet b = 2;\nlet c = 1;\n";

fn edit_args(path: &str, edits: serde_json::Value) -> serde_json::Value {
    json!({ "path": path, "edits": edits })
}

#[tokio::test]
async fn edit_file_preview_and_apply_under_both_runtimes() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let edited = "let a = 1;\nlet b = 3;\nlet c = 1;\n";
    for rt in runtimes(&ts).await {
        ws.write("code.rs", CODE);
        let args = edit_args(
            "code.rs",
            json!([{"old_string": "let b = 2;", "new_string": "let b = 3;"}]),
        );

        let what = format!("[{rt:?}] edit preview");
        let c = call(&ts, &ws, rt, "edit_file", args.clone(), Mode::Preview).await;
        let r = change_res(&c, &what);
        assert_eq!(r.path, "code.rs", "{what}");
        assert!(
            r.diff.starts_with("--- a/code.rs\n+++ b/code.rs\n"),
            "{what}: {}",
            r.diff
        );
        assert!(
            r.diff.contains("-let b = 2;\n+let b = 3;\n"),
            "{what}: {}",
            r.diff
        );
        assert_eq!(r.old_sha256, sha256_hex(CODE), "{what}");
        assert_eq!(r.new_sha256, sha256_hex(edited), "{what}");
        assert!(!r.applied && !r.created, "{what}");
        assert_eq!(
            ws.read("code.rs").as_deref(),
            Some(CODE),
            "{what}: nothing written"
        );

        let what = format!("[{rt:?}] edit apply");
        let mut req = request("edit_file", args, Mode::Apply);
        req.expected_sha256 = Some(r.old_sha256.clone());
        let c = call_req(&ts, &ws, rt, req).await;
        let r = change_res(&c, &what);
        assert!(r.applied, "{what}");
        assert_eq!(ws.read("code.rs").as_deref(), Some(edited), "{what}");
        assert_eq!(
            r.new_sha256,
            sha256_hex(ws.read("code.rs").unwrap()),
            "{what}"
        );
    }
    ts.finish().await;
}

#[tokio::test]
async fn edit_file_not_found_not_unique_replace_all_and_errors() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    ws.write("code.rs", CODE);
    ws.write("blob.bin", b"\x7fELF\0\0\0binary let a = 1;");
    ws.write("big.rs", "let a = 1;\n".repeat(500));
    ws.mkdir("adir");

    let cases = [
        (
            "missing file",
            edit_args(
                "missing.rs",
                json!([{"old_string": "a", "new_string": "b"}]),
            ),
            ErrorCode::NotFound,
        ),
        (
            "missing old_string",
            edit_args(
                "code.rs",
                json!([{"old_string": "let z", "new_string": "x"}]),
            ),
            ErrorCode::NotFound,
        ),
        (
            "ambiguous old_string",
            edit_args(
                "code.rs",
                json!([{"old_string": "= 1;", "new_string": "= 9;"}]),
            ),
            ErrorCode::NotUnique,
        ),
        (
            "second edit fails: nothing applied",
            edit_args(
                "code.rs",
                json!([
                    {"old_string": "let b = 2;", "new_string": "let b = 5;"},
                    {"old_string": "not there", "new_string": "x"}
                ]),
            ),
            ErrorCode::NotFound,
        ),
        (
            "binary file",
            edit_args(
                "blob.bin",
                json!([{"old_string": "binary", "new_string": "text"}]),
            ),
            ErrorCode::BinaryFile,
        ),
        (
            "directory",
            edit_args("adir", json!([{"old_string": "a", "new_string": "b"}])),
            ErrorCode::IsADirectory,
        ),
    ];
    for (what, args, code) in cases {
        let c = call(&ts, &ws, RUNC, "edit_file", args, Mode::Apply).await;
        err(&c, code, what);
        assert_eq!(
            ws.read("code.rs").as_deref(),
            Some(CODE),
            "{what}: file unchanged"
        );
    }

    let mut req = request(
        "edit_file",
        edit_args(
            "big.rs",
            json!([{"old_string": "absent text", "new_string": "x"}]),
        ),
        Mode::Apply,
    );
    req.limits.max_file_bytes = 1000;
    let c = call_req(&ts, &ws, RUNC, req).await;
    err(&c, ErrorCode::TooLarge, "edit above max_file_bytes");

    // replace_all replaces every occurrence; several edits apply in order.
    let c = call(
        &ts,
        &ws,
        RUNC,
        "edit_file",
        edit_args(
            "code.rs",
            json!([
                {"old_string": "= 1;", "new_string": "= 9;", "replace_all": true},
                {"old_string": "let b = 2;", "new_string": "let b = 0;"}
            ]),
        ),
        Mode::Apply,
    )
    .await;
    let r = change_res(&c, "replace_all");
    let want = "let a = 9;\nlet b = 0;\nlet c = 9;\n";
    assert!(r.applied);
    assert_eq!(ws.read("code.rs").as_deref(), Some(want));
    assert_eq!(r.old_sha256, sha256_hex(CODE));
    assert_eq!(r.new_sha256, sha256_hex(want));
    ts.finish().await;
}

// ---------------------------------------------------------------------------------------------
// stale previews

#[tokio::test]
async fn stale_edit_and_write_are_refused_under_both_runtimes() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    for rt in runtimes(&ts).await {
        // edit_file: the preview binds the approval to the file it saw.
        ws.write("s.txt", "v1\n");
        let args = edit_args("s.txt", json!([{"old_string": "v1", "new_string": "v2"}]));
        let c = call(&ts, &ws, rt, "edit_file", args.clone(), Mode::Preview).await;
        let preview = change_res(&c, &format!("[{rt:?}] stale: preview")).clone();
        assert_eq!(preview.old_sha256, sha256_hex("v1\n"));

        // Someone changes the file; the edit would still apply textually.
        ws.write("s.txt", "v1 changed elsewhere\n");
        let mut req = request("edit_file", args, Mode::Apply);
        req.expected_sha256 = Some(preview.old_sha256.clone());
        let c = call_req(&ts, &ws, rt, req).await;
        err(&c, ErrorCode::StaleFile, &format!("[{rt:?}] stale edit"));
        assert_eq!(
            ws.read("s.txt").as_deref(),
            Some("v1 changed elsewhere\n"),
            "[{rt:?}] nothing written"
        );

        // write_file: the preview saw no file; one appeared since.
        let _ = std::fs::remove_file(ws.root().join("n.txt"));
        let wargs = json!({"path": "n.txt", "content": "mine\n"});
        let c = call(&ts, &ws, rt, "write_file", wargs.clone(), Mode::Preview).await;
        let preview = change_res(&c, &format!("[{rt:?}] stale write: preview")).clone();
        assert_eq!(preview.old_sha256, ABSENT);
        ws.write("n.txt", "theirs\n");
        let mut req = request("write_file", wargs, Mode::Apply);
        req.expected_sha256 = Some(preview.old_sha256);
        let c = call_req(&ts, &ws, rt, req).await;
        err(&c, ErrorCode::StaleFile, &format!("[{rt:?}] stale write"));
        assert_eq!(ws.read("n.txt").as_deref(), Some("theirs\n"));
    }
    ts.finish().await;
}

// ---------------------------------------------------------------------------------------------
// run_shell

/// `(stream, data)` of every output event, in order.
fn outputs(c: &Called) -> Vec<(StreamKind, String)> {
    c.events
        .iter()
        .filter_map(|e| match e {
            Event::Output { stream, data } => Some((*stream, data.clone())),
            _ => None,
        })
        .collect()
}

fn position(out: &[(StreamKind, String)], stream: StreamKind, needle: &str) -> usize {
    out.iter()
        .position(|(s, d)| *s == stream && d.contains(needle))
        .unwrap_or_else(|| panic!("no {stream:?} event containing {needle:?} in {out:#?}"))
}

#[tokio::test]
async fn run_shell_streams_exit_code_cwd_and_changes_under_both_runtimes() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    ws.write("sub/inner.txt", "x\n");
    for rt in runtimes(&ts).await {
        // stdout and stderr arrive as separate events, in the order they were produced.
        let what = format!("[{rt:?}] streams");
        let c = call(
            &ts,
            &ws,
            rt,
            "run_shell",
            json!({"command": "echo out1; echo err1 >&2; sleep 1; echo out2; echo err2 >&2; exit 7"}),
            Mode::Preview,
        )
        .await;
        let r = shell_res(&c, &what);
        assert_eq!(r.exit_code, Some(7), "{what}");
        assert_eq!(r.signal, None, "{what}");
        assert!(r.changes.is_empty(), "{what}: {r:#?}");
        assert_eq!(c.stdout(), "out1\nout2\n", "{what}");
        assert_eq!(c.output(StreamKind::Stderr), "err1\nerr2\n", "{what}");
        let out = outputs(&c);
        assert!(
            position(&out, StreamKind::Stderr, "err1") < position(&out, StreamKind::Stdout, "out2"),
            "{what}: {out:#?}"
        );
        assert!(
            position(&out, StreamKind::Stdout, "out1") < position(&out, StreamKind::Stderr, "err2"),
            "{what}: {out:#?}"
        );
        assert!(
            matches!(c.events.last(), Some(Event::Result { .. })),
            "{what}: the result comes last"
        );

        let what = format!("[{rt:?}] cwd");
        let c = call(
            &ts,
            &ws,
            rt,
            "run_shell",
            json!({"command": "pwd; ls", "cwd": "sub"}),
            Mode::Preview,
        )
        .await;
        assert_eq!(shell_res(&c, &what).exit_code, Some(0), "{what}");
        assert_eq!(c.stdout(), "/workspace/sub\ninner.txt\n", "{what}");

        // Applied: the change report lists what the command created, modified, deleted.
        let what = format!("[{rt:?}] changes");
        ws.write("keep.txt", "same\n");
        ws.write("mod.txt", "a\n");
        ws.write("del.txt", "bye\n");
        let _ = std::fs::remove_file(ws.root().join("created.txt"));
        let _ = std::fs::remove_dir_all(ws.root().join("made"));
        let c = call(
            &ts,
            &ws,
            rt,
            "run_shell",
            json!({"command": "echo new > created.txt && echo b >> mod.txt && rm del.txt && mkdir made && echo deep > made/deep.txt"}),
            Mode::Apply,
        )
        .await;
        let r = shell_res(&c, &what);
        assert_eq!(r.exit_code, Some(0), "{what}: {c:#?}");
        assert!(!r.changes_truncated, "{what}");
        let changes: BTreeMap<&str, (ChangeKind, Option<&str>)> = r
            .changes
            .iter()
            .filter(|ch| ch.path != "made")
            .map(|ch| (ch.path.as_str(), (ch.kind, ch.diff.as_deref())))
            .collect();
        let paths: Vec<&str> = changes.keys().copied().collect();
        assert_eq!(
            paths,
            ["created.txt", "del.txt", "made/deep.txt", "mod.txt"],
            "{what}: {r:#?}"
        );
        assert_eq!(changes["created.txt"].0, ChangeKind::Created, "{what}");
        assert_eq!(changes["made/deep.txt"].0, ChangeKind::Created, "{what}");
        assert_eq!(changes["mod.txt"].0, ChangeKind::Modified, "{what}");
        assert_eq!(changes["del.txt"].0, ChangeKind::Deleted, "{what}");
        let diff = changes["mod.txt"].1.expect("a diff for a small text file");
        assert!(
            diff.contains("--- a/mod.txt") && diff.contains("+b\n"),
            "{what}: {diff}"
        );
        let diff = changes["created.txt"].1.expect("a diff for a created file");
        assert!(diff.contains("+new\n"), "{what}: {diff}");
        assert_eq!(ws.read("created.txt").as_deref(), Some("new\n"), "{what}");
        assert_eq!(ws.read("mod.txt").as_deref(), Some("a\nb\n"), "{what}");
        assert!(!ws.exists("del.txt"), "{what}");

        // Preview mode mounts the workspace read-only: the shell cannot write.
        let what = format!("[{rt:?}] read-only workspace");
        let c = call(
            &ts,
            &ws,
            rt,
            "run_shell",
            json!({"command": "echo x > ro.txt; echo rc=$?; rm keep.txt; echo rm=$?; exit 0"}),
            Mode::Preview,
        )
        .await;
        let r = shell_res(&c, &what);
        assert!(r.changes.is_empty(), "{what}: {r:#?}");
        let stdout = c.stdout();
        assert!(
            !stdout.contains("rc=0") && !stdout.contains("rm=0"),
            "{what}: {stdout}"
        );
        let stderr = c.output(StreamKind::Stderr);
        assert!(stderr.contains("Read-only file system"), "{what}: {stderr}");
        assert!(!ws.exists("ro.txt"), "{what}");
        assert_eq!(ws.read("keep.txt").as_deref(), Some("same\n"), "{what}");
    }
    ts.finish().await;
}

#[tokio::test]
async fn run_shell_output_arrives_while_the_command_runs() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let req = request(
        "run_shell",
        json!({"command": "echo first; sleep 3; echo second"}),
        Mode::Preview,
    );
    let spec = ws.spec(&req.call, false);
    let mut h = ts
        .sandbox
        .run(&ws.profile(RUNC), &spec, &req)
        .await
        .expect("start");
    let mut first_at = None;
    let mut result_at = None;
    let mut stdout = String::new();
    while let Some(ev) = h.next().await {
        match ev {
            SandboxEvent::Executor(Event::Output { data, .. }) => {
                if data.contains("first") && first_at.is_none() {
                    first_at = Some(Instant::now());
                }
                stdout.push_str(&data);
            }
            SandboxEvent::Executor(Event::Result { .. }) => result_at = Some(Instant::now()),
            SandboxEvent::Executor(other) => panic!("unexpected {other:?}"),
            SandboxEvent::Finished(o) => assert!(!o.timed_out, "{o:?}"),
        }
    }
    assert_eq!(stdout, "first\nsecond\n");
    let gap = result_at.expect("a result") - first_at.expect("`first` streamed");
    assert!(
        gap >= Duration::from_millis(1500),
        "`first` must arrive while the command sleeps, not with the result (gap {gap:?})"
    );
    ts.finish().await;
}

#[tokio::test]
async fn run_shell_timeout_and_errors() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    ws.write("a.txt", "x\n");

    // The command's own timeout kills it (background children included) and says so.
    let started = Instant::now();
    let c = call(
        &ts,
        &ws,
        RUNC,
        "run_shell",
        json!({"command": "echo before; (sleep 40; echo late) & sleep 40", "timeout_secs": 2}),
        Mode::Preview,
    )
    .await;
    let elapsed = started.elapsed();
    err(&c, ErrorCode::Timeout, "timeout_secs");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    assert!(
        !c.outcome.timed_out,
        "the executor's timeout, not the sandbox's"
    );
    assert_eq!(c.stdout(), "before\n", "output before the timeout is kept");

    for (args, code) in [
        (
            json!({"command": "pwd", "cwd": "nope"}),
            ErrorCode::NotFound,
        ),
        (
            json!({"command": "pwd", "cwd": "a.txt"}),
            ErrorCode::NotADirectory,
        ),
        (
            json!({"command": "pwd", "cwd": "../"}),
            ErrorCode::PathOutsideWorkspace,
        ),
        (
            json!({"command": "pwd", "cwd": "/tmp"}),
            ErrorCode::PathOutsideWorkspace,
        ),
    ] {
        let c = call(&ts, &ws, RUNC, "run_shell", args.clone(), Mode::Preview).await;
        err(&c, code, &format!("run_shell {args}"));
    }
    ts.finish().await;
}
