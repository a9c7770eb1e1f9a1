//! The executor's stdin: `airlock_executor::read_request` (one JSON `Request` line, ended by
//! `\n` or EOF, at most `MAX_REQUEST_BYTES`) and `serve`, the binary minus process setup.
//!
//! Invariants:
//! * never panics; reads at most one line (what follows the first `\n` is never looked at);
//! * an accepted request speaks `PROTOCOL_VERSION` and survives a JSON round trip unchanged
//!   (the orchestrator serializes the same types: what one side writes the other reads back);
//! * `serve` writes exactly one JSON-lines event, which parses back as an `Event`: an `error`
//!   with exit 2 when `read_request` refuses the input, and otherwise (the workspace root here
//!   does not exist, so no tool can run) an `error` with exit 3 after exactly one call of the
//!   request hook with the very request `read_request` returned.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use airlock_executor::protocol::{
    Event, Request, EXIT_BAD_REQUEST, EXIT_TOOL_ERROR, PROTOCOL_VERSION,
};
use libfuzzer_sys::fuzz_target;

/// A root that cannot be opened: `Workspace::open` fails before any tool (or `survey`) runs.
const NO_ROOT: &str = "/nonexistent/airlock-fuzz-no-workspace";

fuzz_target!(|data: &[u8]| {
    let parsed = airlock_executor::read_request(&mut Cursor::new(data));

    // Only the first line counts: the same result with garbage after the newline.
    if let Some(nl) = data.iter().position(|b| *b == b'\n') {
        let mut more = data[..=nl].to_vec();
        more.extend_from_slice(b"{\"trailing\": garbage\n");
        let again = airlock_executor::read_request(&mut Cursor::new(&more));
        match (&parsed, &again) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.code, b.code),
            _ => panic!("what follows the first newline changed the result"),
        }
    }

    if let Ok(req) = &parsed {
        assert_eq!(req.version, PROTOCOL_VERSION);
        let json = serde_json::to_string(req).expect("requests serialize");
        let back: Request = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("a request does not read back: {e}\n{json}"));
        assert_eq!(&back, req, "round trip changed the request");
        assert!(!json.contains('\n'), "one request is one line");
    }

    let mut out = Vec::new();
    let mut hooked = Vec::new();
    let code = airlock_executor::serve_with(
        &mut Cursor::new(data),
        &mut out,
        Path::new(NO_ROOT),
        &mut |r| hooked.push(r.clone()),
    );
    let text = std::str::from_utf8(&out).expect("events are UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        text.ends_with('\n') && lines.len() == 1,
        "one event line: {text:?}"
    );
    let event: Event = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("the event does not parse back: {e}: {text}"));
    assert!(matches!(event, Event::Error { .. }), "{event:?}");
    match &parsed {
        Err(_) => {
            assert_eq!(code, EXIT_BAD_REQUEST);
            assert!(hooked.is_empty());
        }
        Ok(req) => {
            assert_eq!(code, EXIT_TOOL_ERROR, "{event:?}");
            assert_eq!(hooked.as_slice(), std::slice::from_ref(req));
        }
    }
});
