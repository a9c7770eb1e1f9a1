//! `airlock-executor`: the protocol shared with the orchestrator, and the tool implementations
//! that run inside a sandbox container (no tokio, no network, no Redis: one request, then exit).
//!
//! The binary is the entrypoint of every sandbox container. It reads one JSON [`Request`] line
//! from stdin, runs it against the workspace mounted at [`WORKSPACE_ROOT`], writes JSON-lines
//! [`Event`]s to stdout and exits:
//!
//! | exit | after |
//! |---|---|
//! | 0 | a `result` event |
//! | [`EXIT_TOOL_ERROR`] (3) | an `error` event: the tool failed cleanly (stable [`ErrorCode`]) |
//! | [`EXIT_BAD_REQUEST`] (2) | an `error` event: the request could not be read or parsed |
//!
//! The library entry points, from the outside in:
//!
//! * [`serve`]: the whole binary minus process setup: read the request, run it, write events.
//! * [`run_request`]: run a parsed request, hand every event (the last one is the `result` or
//!   `error`) to a sink, return the exit status.
//! * [`execute`]: run a parsed request, `output` events to a sink, the outcome as a `Result`.
//!
//! Every path argument is resolved beneath the root by the `resolve` module (`openat2` with
//! `RESOLVE_BENEATH`, or an fd-relative walk where the kernel lacks it, e.g. gVisor), and checked
//! against the request's protected-path rules after resolution.

pub mod protocol;

mod dir;
mod error;
pub mod hunks;
mod masks;
mod protect;
mod read;
mod resolve;
mod revert;
mod shell;
mod snapshot;
mod text;
mod write;

#[cfg(test)]
mod testutil;

pub use error::ToolError;
pub use resolve::Strategy;

use protocol::{
    ErrorCode, Event, ExecLimits, Mode, Request, ToolCall, ToolResult, EXIT_BAD_REQUEST,
    EXIT_TOOL_ERROR, PROTOCOL_VERSION,
};
use resolve::Workspace;
use std::io::{BufRead, Read, Write};
use std::path::Path;

/// Where the container mounts the user's workspace; the binary always uses it.
pub const WORKSPACE_ROOT: &str = "/workspace";

/// Largest request line accepted on stdin.
pub const MAX_REQUEST_BYTES: u64 = 32 * 1024 * 1024;

/// What every tool gets: the opened workspace, the compiled protections and the request's knobs.
pub(crate) struct Ctx<'a> {
    pub ws: &'a Workspace,
    pub prot: &'a protect::Protections,
    pub limits: &'a ExecLimits,
    pub mode: Mode,
    pub expected_sha256: Option<&'a str>,
    pub hunks: Option<&'a [u32]>,
    pub expected_new_sha256: Option<&'a str>,
    /// Apply mode with `keep_previous`: the byte budget for what the change replaces.
    pub keep_previous: Option<u64>,
    /// What the applied change replaced, sent as an `undo` event before the result.
    pub undo: std::cell::RefCell<protocol::UndoRecord>,
}

/// Runs `req` against the workspace at `root`. `run_shell` output is passed to `sink` as
/// `output` events while it is produced; the outcome is returned (not sent to `sink`).
///
/// `mode` only matters to `write_file`/`edit_file`; the other tools ignore it.
pub fn execute(
    req: &Request,
    root: &Path,
    sink: &mut dyn FnMut(Event),
) -> Result<ToolResult, ToolError> {
    execute_with(req, root, Strategy::Auto, sink)
}

/// [`execute`] with a chosen path resolver: [`Strategy::WalkOnly`] forces the fd-relative walk
/// that gVisor needs, so tests can run the same cases through both resolvers.
pub fn execute_with(
    req: &Request,
    root: &Path,
    strategy: Strategy,
    sink: &mut dyn FnMut(Event),
) -> Result<ToolResult, ToolError> {
    check_version(req)?;
    let ws = Workspace::open(root, strategy)?;
    let mut prot = protect::Protections::new(&req.protected)?;
    if let Some(view) = &req.sandbox {
        // Before anything else: the container's masks cover every protected path it can see.
        let masks = masks::verify(&ws, &prot, &req.limits, view)?;
        sink(Event::Checked { masks });
        prot = prot.with_masks(&view.masks);
    }
    let ctx = Ctx {
        ws: &ws,
        prot: &prot,
        limits: &req.limits,
        mode: req.mode,
        expected_sha256: req.expected_sha256.as_deref(),
        hunks: req.hunks.as_deref(),
        expected_new_sha256: req.expected_new_sha256.as_deref(),
        keep_previous: req.keep_previous.filter(|_| req.mode == Mode::Apply),
        undo: Default::default(),
    };
    let mut run = || -> Result<ToolResult, ToolError> {
        Ok(match &req.call {
            ToolCall::ReadFile(a) => ToolResult::ReadFile(read::read_file(&ctx, a)?),
            ToolCall::ListDir(a) => ToolResult::ListDir(dir::list_dir(&ctx, a)?),
            ToolCall::Search(a) => ToolResult::Search(dir::search(&ctx, a)?),
            ToolCall::WriteFile(a) => ToolResult::WriteFile(write::write_file(&ctx, a)?),
            ToolCall::EditFile(a) => ToolResult::EditFile(write::edit_file(&ctx, a)?),
            ToolCall::RunShell(a) => ToolResult::RunShell(shell::run_shell(&ctx, a, sink)?),
            ToolCall::Revert(a) => ToolResult::Revert(revert::revert(&ctx, a)?),
        })
    };
    let result = run().map_err(|e| masked_not_found(&ctx, &req.call, e));
    // Also after a failure: what changed before it (a revert's first files, a shell command
    // that timed out) stays revertible.
    let undo = ctx.undo.take();
    if ctx.keep_previous.is_some() && !undo.is_empty() {
        sink(Event::Undo { undo });
    }
    result
}

/// A path that leads into a masked directory finds nothing there (the mask is empty): say it
/// is protected, as the same path said before it was masked, rather than `not_found`.
fn masked_not_found(ctx: &Ctx<'_>, call: &ToolCall, e: ToolError) -> ToolError {
    if e.code != ErrorCode::NotFound {
        return e;
    }
    let path = match call {
        ToolCall::ReadFile(a) => a.path.as_str(),
        ToolCall::EditFile(a) => a.path.as_str(),
        ToolCall::WriteFile(a) => a.path.as_str(),
        ToolCall::ListDir(a) => a.path.as_deref().unwrap_or(""),
        ToolCall::Search(a) => a.path.as_deref().unwrap_or(""),
        ToolCall::RunShell(_) | ToolCall::Revert(_) => return e,
    };
    let parts: Vec<&str> = path.split('/').collect();
    for n in (1..parts.len()).rev() {
        let prefix = parts[..n].join("/");
        if let Ok(r) = ctx.ws.open_read(&prefix) {
            if ctx.prot.is_no_access(&r.rel) {
                return ToolError::new(
                    ErrorCode::ProtectedPath,
                    format!(
                        "{} is beneath `{}`, a protected path that may not be read",
                        error::show(path),
                        r.rel.display()
                    ),
                );
            }
        }
    }
    e
}

/// The `survey` request: the masks a container of the workspace at `root` needs.
pub fn survey(
    req: &Request,
    root: &Path,
    strategy: Strategy,
) -> Result<protocol::SandboxView, ToolError> {
    check_version(req)?;
    let ws = Workspace::open(root, strategy)?;
    let prot = protect::Protections::new(&req.protected)?;
    masks::survey(&ws, &prot, &req.limits)
}

fn check_version(req: &Request) -> Result<(), ToolError> {
    if req.version != PROTOCOL_VERSION {
        return Err(ToolError::invalid(format!(
            "protocol version {} is not supported (this executor speaks version {PROTOCOL_VERSION})",
            req.version
        )));
    }
    Ok(())
}

/// Runs `req` and passes every event to `sink`: `output` chunks, then exactly one `result` or
/// `error`. Returns the exit status for that ending (0 or [`EXIT_TOOL_ERROR`]).
pub fn run_request(req: &Request, root: &Path, sink: &mut dyn FnMut(Event)) -> i32 {
    if req.survey {
        return match survey(req, root, Strategy::Auto) {
            Ok(view) => {
                sink(Event::Survey { view });
                0
            }
            Err(e) => {
                sink(Event::Error {
                    code: e.code,
                    message: e.message,
                });
                EXIT_TOOL_ERROR
            }
        };
    }
    match execute(req, root, sink) {
        Ok(result) => {
            sink(Event::Result { result });
            0
        }
        Err(e) => {
            sink(Event::Error {
                code: e.code,
                message: e.message,
            });
            EXIT_TOOL_ERROR
        }
    }
}

/// Reads the one request: a JSON line ended by `\n` (or by EOF). It returns as soon as the
/// newline arrives; the orchestrator keeps stdin open. Over [`MAX_REQUEST_BYTES`] is `too_large`.
pub fn read_request(input: &mut dyn BufRead) -> Result<Request, ToolError> {
    let mut line = Vec::new();
    input
        .take(MAX_REQUEST_BYTES + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| ToolError::new(ErrorCode::Io, format!("cannot read the request: {e}")))?;
    if line.len() as u64 > MAX_REQUEST_BYTES {
        return Err(ToolError::new(
            ErrorCode::TooLarge,
            format!("the request exceeds {MAX_REQUEST_BYTES} bytes"),
        ));
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(ToolError::invalid(
            "no request on stdin (expected one JSON request on one line)",
        ));
    }
    let req: Request = serde_json::from_slice(&line)
        .map_err(|e| ToolError::invalid(format!("the request is not valid: {e}")))?;
    check_version(&req)?;
    Ok(req)
}

/// The binary without its process setup: reads one request from `input`, runs it against
/// `root`, writes JSON-lines events to `output` (flushed after each line) and returns the exit
/// status. A request that cannot be read or parsed gets an `error` event and
/// [`EXIT_BAD_REQUEST`].
pub fn serve(input: &mut dyn BufRead, output: &mut dyn Write, root: &Path) -> i32 {
    serve_with(input, output, root, &mut |_| {})
}

/// [`serve`], calling `on_request` with the parsed request before it runs (the binary arms its
/// own deadline there).
pub fn serve_with(
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    root: &Path,
    on_request: &mut dyn FnMut(&Request),
) -> i32 {
    // Once the reader is gone, keep running to completion but stop writing.
    let mut broken = false;
    let mut emit = |event: Event| {
        if broken {
            return;
        }
        let mut line = serde_json::to_vec(&event).expect("events serialize");
        line.push(b'\n');
        broken = output
            .write_all(&line)
            .and_then(|()| output.flush())
            .is_err();
    };
    match read_request(input) {
        Ok(req) => {
            on_request(&req);
            run_request(&req, root, &mut emit)
        }
        Err(e) => {
            emit(Event::Error {
                code: e.code,
                message: e.message,
            });
            EXIT_BAD_REQUEST
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;
    use std::io::Cursor;

    fn serve_str(input: &str, root: &Path) -> (i32, Vec<Event>) {
        let mut out = Vec::new();
        let code = serve(&mut Cursor::new(input.as_bytes().to_vec()), &mut out, root);
        let events = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (code, events)
    }

    #[test]
    fn serve_runs_one_request_and_ignores_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "hi\n").unwrap();
        let line = r#"{"call":{"tool":"read_file","args":{"path":"a.txt"}}}"#;
        let (code, events) = serve_str(&format!("{line}\nGARBAGE"), dir.path());
        assert_eq!(code, 0);
        assert_eq!(events.len(), 1);
        let Event::Result {
            result: ToolResult::ReadFile(r),
        } = &events[0]
        else {
            panic!("{events:?}")
        };
        assert_eq!(r.content.as_deref(), Some("hi\n"));
        // EOF instead of a newline works too.
        assert_eq!(serve_str(line, dir.path()).0, 0);
    }

    #[test]
    fn serve_reports_bad_requests() {
        let dir = tempfile::tempdir().unwrap();
        for (input, code) in [
            ("", ErrorCode::InvalidRequest),
            ("\n", ErrorCode::InvalidRequest),
            ("{not json\n", ErrorCode::InvalidRequest),
            (
                r#"{"call":{"tool":"rm_rf","args":{}}}"#,
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"version":99,"call":{"tool":"list_dir","args":{}}}"#,
                ErrorCode::InvalidRequest,
            ),
        ] {
            let (exit, events) = serve_str(input, dir.path());
            assert_eq!(exit, EXIT_BAD_REQUEST, "{input}");
            match &events[..] {
                [Event::Error { code: c, message }] => {
                    assert_eq!(*c, code, "{input}");
                    assert!(!message.is_empty());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn oversized_request_is_too_large() {
        let mut input = Cursor::new(vec![b' '; MAX_REQUEST_BYTES as usize + 10]);
        let e = read_request(&mut input).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
    }

    #[test]
    fn tool_errors_exit_3_and_results_exit_0() {
        let dir = tempfile::tempdir().unwrap();
        let req = Request::new(ToolCall::ReadFile(ReadFileArgs {
            path: "../x".into(),
            offset: None,
            limit: None,
        }));
        let mut events = Vec::new();
        assert_eq!(
            run_request(&req, dir.path(), &mut |e| events.push(e)),
            EXIT_TOOL_ERROR
        );
        assert!(matches!(
            events[..],
            [Event::Error {
                code: ErrorCode::PathOutsideWorkspace,
                ..
            }]
        ));
        let req = Request::new(ToolCall::ListDir(ListDirArgs {
            path: None,
            depth: None,
        }));
        assert_eq!(run_request(&req, dir.path(), &mut |_| {}), 0);
        let missing = dir.path().join("missing");
        let e = execute(&req, &missing, &mut |_| {}).unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
    }

    #[test]
    fn invalid_protected_glob_is_an_invalid_request() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = Request::new(ToolCall::ListDir(ListDirArgs {
            path: None,
            depth: None,
        }));
        req.protected.push(ProtectedPath {
            glob: "[".into(),
            protection: Protection::NoAccess,
        });
        let e = execute(&req, dir.path(), &mut |_| {}).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }
}
