//! Small helpers shared by the tool, escape and exhaustion tests: typed access to results,
//! strict checks of how a call ended, and host-side snapshots of what lies outside the workspace.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use airlock::protocol::{
    ChangeResult, ErrorCode, ListDirResult, Mode, ReadFileResult, Request, RunShellResult,
    SearchResult, ToolResult, EXIT_TOOL_ERROR,
};
use airlock::sandbox::Runtime;
use airlock_tests::{request, wait_until, Called, TestSandbox, Workspace};
use sha2::{Digest, Sha256};

pub fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(data.as_ref()))
}

/// Runs `tool` with `args` in `mode` under `runtime` with the workspace's default profile.
pub async fn call(
    ts: &TestSandbox,
    ws: &Workspace,
    runtime: Runtime,
    tool: &str,
    args: serde_json::Value,
    mode: Mode,
) -> Called {
    ts.call(ws, request(tool, args, mode), &ws.profile(runtime))
        .await
}

/// Runs a prepared request under `runtime` with the workspace's default profile.
pub async fn call_req(ts: &TestSandbox, ws: &Workspace, runtime: Runtime, req: Request) -> Called {
    ts.call(ws, req, &ws.profile(runtime)).await
}

/// Asserts the container ended normally: no sandbox kill, no protocol trouble.
pub fn assert_clean_end(c: &Called, what: &str) {
    let o = &c.outcome;
    assert!(
        !o.timed_out && !o.output_truncated && !o.cancelled && !o.oom_killed,
        "{what}: the sandbox had to intervene: {c:#?}"
    );
    assert_eq!(o.protocol_error, None, "{what}: {c:#?}");
}

/// The call succeeded: a result, the executor exited 0.
pub fn ok<'a>(c: &'a Called, what: &str) -> &'a ToolResult {
    assert_clean_end(c, what);
    let r = c.events.iter().find_map(|e| match e {
        airlock::protocol::Event::Result { result } => Some(result),
        _ => None,
    });
    let r = r.unwrap_or_else(|| panic!("{what}: expected a result, got {c:#?}"));
    assert_eq!(c.outcome.exit_code, Some(0), "{what}: {c:#?}");
    r
}

/// The call failed cleanly with `code`; returns the message.
pub fn err<'a>(c: &'a Called, code: ErrorCode, what: &str) -> &'a str {
    assert_clean_end(c, what);
    let (got, msg) = c
        .events
        .iter()
        .find_map(|e| match e {
            airlock::protocol::Event::Error { code, message } => Some((*code, message.as_str())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{what}: expected error `{code}`, got {c:#?}"));
    assert_eq!(got, code, "{what}: message: {msg}");
    assert!(!msg.trim().is_empty(), "{what}: empty error message");
    assert_eq!(
        c.outcome.exit_code,
        Some(EXIT_TOOL_ERROR as i64),
        "{what}: {c:#?}"
    );
    msg
}

pub fn read_res<'a>(c: &'a Called, what: &str) -> &'a ReadFileResult {
    match ok(c, what) {
        ToolResult::ReadFile(r) => r,
        other => panic!("{what}: expected a read_file result, got {other:#?}"),
    }
}

pub fn list_res<'a>(c: &'a Called, what: &str) -> &'a ListDirResult {
    match ok(c, what) {
        ToolResult::ListDir(r) => r,
        other => panic!("{what}: expected a list_dir result, got {other:#?}"),
    }
}

pub fn search_res<'a>(c: &'a Called, what: &str) -> &'a SearchResult {
    match ok(c, what) {
        ToolResult::Search(r) => r,
        other => panic!("{what}: expected a search result, got {other:#?}"),
    }
}

pub fn change_res<'a>(c: &'a Called, what: &str) -> &'a ChangeResult {
    match ok(c, what) {
        ToolResult::WriteFile(r) | ToolResult::EditFile(r) => r,
        other => panic!("{what}: expected a write_file/edit_file result, got {other:#?}"),
    }
}

pub fn shell_res<'a>(c: &'a Called, what: &str) -> &'a RunShellResult {
    match ok(c, what) {
        ToolResult::RunShell(r) => r,
        other => panic!("{what}: expected a run_shell result, got {other:#?}"),
    }
}

/// The number `field` of Redis's `INFO section` (`stats`, `clients`…), asked on a connection
/// of its own.
pub async fn redis_info(url: &str, section: &str, field: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO {section}: {info}"))
}

/// Waits until at least `n` clients of the Redis at `url` are blocked (in `XREAD BLOCK`: the
/// event streams' reads).
pub async fn wait_redis_blocked(url: &str, n: u64) {
    let what = format!("{n} client(s) blocked in Redis");
    wait_until(&what, Duration::from_secs(10), || async {
        match redis_info(url, "clients", "blocked_clients").await {
            b if b >= n => Ok(()),
            b => Err(format!("{b} blocked")),
        }
    })
    .await
}

/// Every entry below `dir` (not following symlinks): relative path → file content, symlink
/// target or `<dir>`. Used to prove that nothing outside the workspace changed.
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, format!("<symlink to {}>", t.display()));
            } else if meta.is_dir() {
                out.insert(rel, "<dir>".into());
                walk(base, &p, out);
            } else {
                let data = std::fs::read(&p).unwrap();
                out.insert(rel, String::from_utf8_lossy(&data).into_owned());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}
