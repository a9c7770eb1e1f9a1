//! The built binary: request framing on stdin and exit statuses. The binary always works on
//! `/workspace`, which the host usually lacks, so these tests stick to what does not need it.

use airlock_executor::protocol::{ErrorCode, Event, EXIT_BAD_REQUEST, EXIT_TOOL_ERROR};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_airlock-executor");

fn events(stdout: &[u8]) -> Vec<Event> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn malformed_request_exits_2_with_invalid_request() {
    let mut child = Command::new(BIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"call\": {\"tool\": \"read_file\", \"args\": {}}}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(EXIT_BAD_REQUEST));
    match &events(&out.stdout)[..] {
        [Event::Error { code, message }] => {
            assert_eq!(*code, ErrorCode::InvalidRequest);
            assert!(message.contains("missing field `path`"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_stdin_exits_2() {
    let out = Command::new(BIN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_BAD_REQUEST));
    assert!(matches!(
        &events(&out.stdout)[..],
        [Event::Error {
            code: ErrorCode::InvalidRequest,
            ..
        }]
    ));
}

#[test]
fn request_line_is_answered_while_stdin_stays_open() {
    let mut child = Command::new(BIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"{\"call\":{\"tool\":\"list_dir\",\"args\":{}}}\n")
        .unwrap();
    stdin.flush().unwrap();
    // Keep `stdin` open; read the answer on another thread so a hang fails instead of blocking.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        tx.send(line).unwrap();
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("no answer while stdin is open: the executor waits for EOF");
    let status = child.wait().unwrap();
    drop(stdin);
    let event: Event = serde_json::from_str(&line).unwrap();
    match event {
        // A host with a /workspace directory lists it.
        Event::Result { .. } => assert_eq!(status.code(), Some(0)),
        Event::Error { code, message } => {
            assert_eq!(code, ErrorCode::Internal, "{message}");
            assert!(message.contains("/workspace"), "{message}");
            assert_eq!(status.code(), Some(EXIT_TOOL_ERROR));
        }
        other => panic!("{other:?}"),
    }
}
