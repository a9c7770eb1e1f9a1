//! The session event vocabulary (pure): every event a session's stream carries, as one
//! serde-tagged enum built by the engine and the agent and parsed by the API's readers, both
//! clients and the tests.
//!
//! On the wire and in Redis an event is a kind (the `type` a client sees) and a JSON object
//! (`data`); [`Event::to_parts`] and [`Event::from_parts`] convert. A call event carries its
//! call's id, and (except `output`) the status the call moved to: whoever builds the event
//! writes them once, and the store checks them against the transition it performs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::calls::{CallStatus, Decision};

/// One event of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Event {
    /// A call was proposed: the policy's decision and, for a change, its preview.
    CallProposed(CallProposed),
    /// The call waits for its owner's decision (written by the same script as `call_proposed`).
    ApprovalRequired(ApprovalRequired),
    /// The owner replaced the proposed content while the call waits: new arguments, hash and
    /// preview (the approval binds to these now).
    CallEdited(CallEdited),
    /// The owner approved the call (written by the store's decide script).
    Approved(CallDecided),
    /// The owner denied the call (written by the store's decide script).
    Denied(CallDecided),
    /// Nobody decided in time (written by the store's expiry script).
    Expired(CallDecided),
    /// The call's container received the request.
    CallStarted(CallState),
    /// Output of a running call, in order.
    Output(CallOutput),
    /// The call ended: `succeeded`, `failed`, `timed_out` or `cancelled`.
    CallFinished(CallFinished),
    /// A pending or running call was cancelled.
    CallCancelled(CallState),
    /// A tool + pattern was approved for the rest of the session.
    SessionGrant(SessionGrant),
    /// A turn started with this message.
    UserMessage(UserMessage),
    /// Streamed model text (coalesced).
    AssistantDelta(AssistantDelta),
    /// One model request's full answer.
    AssistantMessage(AssistantMessage),
    /// What went back to the model for one of its tool calls.
    ToolResult(ToolResult),
    /// A provider fault, retried after `delay_ms`.
    AgentRetry(AgentRetry),
    /// A provider fault or limit that ended the turn.
    AgentError(AgentError),
    /// The turn ended; the session is free again.
    TurnFinished(TurnFinished),
}

/// A stable error: `code` for programs, `message` for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

impl ErrorInfo {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            code: code.into(),
            message: message.into(),
        }
    }

    /// As stored in a call record's `error` field.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("an error serializes")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallProposed {
    pub call_id: String,
    pub status: CallStatus,
    pub tool: String,
    pub args: Value,
    pub args_sha256: String,
    pub decision: Decision,
    pub rule: String,
    #[serde(default)]
    pub preview: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEdited {
    pub call_id: String,
    pub status: CallStatus,
    pub args: Value,
    pub args_sha256: String,
    pub preview: Option<Value>,
    pub edited_by: String,
    /// The hash of what the call was before this edit.
    pub from_args_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequired {
    pub call_id: String,
    pub status: CallStatus,
    pub args_sha256: String,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallDecided {
    pub call_id: String,
    pub status: CallStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A call event that says only that the call moved to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallState {
    pub call_id: String,
    pub status: CallStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallOutput {
    pub call_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallFinished {
    pub call_id: String,
    pub status: CallStatus,
    /// The tool's result (see the executor's protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// What the container did; absent when the call failed before it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// What the applied change can be reverted to (the call record's `undo` summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Value>,
}

/// How a call's container ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub exit_code: Option<i64>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub output_truncated: bool,
    pub cancelled: bool,
    pub duration_ms: u64,
    /// How many protected paths the container had masked.
    pub masks: usize,
    /// Directories masked whole (more protected paths than a container may have masks).
    pub masked_directories: Vec<String>,
    /// Whether the workspace was mounted read-write.
    pub writable: bool,
}

impl Outcome {
    /// As stored in a call record's `outcome` field.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("an outcome serializes")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionGrant {
    pub tool: String,
    pub pattern: String,
    /// The commands it allows run with a writable workspace, as their approval did.
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMessage {
    pub turn_id: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssistantDelta {
    pub turn_id: String,
    pub step: u32,
    pub text: String,
}

/// One tool call as the model made it (`arguments` is the model's text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub turn_id: String,
    pub step: u32,
    /// The model's text (empty when it only called tools).
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub tool_calls: Vec<ModelToolCall>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// Token counts of one model request or a whole turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.total_tokens += o.total_tokens;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub turn_id: String,
    pub step: u32,
    pub tool_call_id: String,
    pub tool: String,
    /// The Airlock call, or `None` when none was made.
    #[serde(default)]
    pub call_id: Option<String>,
    /// The call's final status, `rejected` (the arguments did not fit) or `not_run`.
    pub status: String,
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRetry {
    pub turn_id: String,
    pub step: u32,
    pub attempt: u32,
    pub delay_ms: u64,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    pub turn_id: String,
    pub step: u32,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streamed: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnFinished {
    pub turn_id: String,
    /// `completed`, `cancelled`, `failed`, `max_steps` or `interrupted`.
    pub status: String,
    pub steps: u32,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Why the turn did not complete: `{code, message}`, or a text from older servers.
    #[serde(default)]
    pub error: Option<Value>,
}

/// An event that is not of this vocabulary, or whose data does not fit its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event `{kind}`: {message}")]
pub struct EventError {
    pub kind: String,
    pub message: String,
}

impl Event {
    /// Its kind and data, as stored and sent.
    pub fn to_parts(&self) -> (&'static str, Value) {
        let v = serde_json::to_value(self).expect("an event serializes");
        let Value::Object(mut m) = v else {
            unreachable!("an adjacently tagged enum serializes as an object")
        };
        let data = m.remove("data").unwrap_or(Value::Null);
        (self.kind(), data)
    }

    /// Parses a stored or received event. An unknown kind is an error: a client that wants to
    /// tolerate newer servers skips it.
    pub fn from_parts(kind: &str, data: &Value) -> Result<Event, EventError> {
        serde_json::from_value(serde_json::json!({"type": kind, "data": data})).map_err(|e| {
            EventError {
                kind: kind.to_string(),
                message: e.to_string(),
            }
        })
    }

    /// The kind's name, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::CallProposed(_) => "call_proposed",
            Event::ApprovalRequired(_) => "approval_required",
            Event::CallEdited(_) => "call_edited",
            Event::Approved(_) => "approved",
            Event::Denied(_) => "denied",
            Event::Expired(_) => "expired",
            Event::CallStarted(_) => "call_started",
            Event::Output(_) => "output",
            Event::CallFinished(_) => "call_finished",
            Event::CallCancelled(_) => "call_cancelled",
            Event::SessionGrant(_) => "session_grant",
            Event::UserMessage(_) => "user_message",
            Event::AssistantDelta(_) => "assistant_delta",
            Event::AssistantMessage(_) => "assistant_message",
            Event::ToolResult(_) => "tool_result",
            Event::AgentRetry(_) => "agent_retry",
            Event::AgentError(_) => "agent_error",
            Event::TurnFinished(_) => "turn_finished",
        }
    }

    /// The call this event is about, and the status it moved the call to (`None` for output,
    /// which moves nothing). Agent events and grants are about no call.
    pub fn call(&self) -> Option<(&str, Option<CallStatus>)> {
        match self {
            Event::CallProposed(e) => Some((&e.call_id, Some(e.status))),
            Event::ApprovalRequired(e) => Some((&e.call_id, Some(e.status))),
            Event::CallEdited(e) => Some((&e.call_id, Some(e.status))),
            Event::Approved(e) | Event::Denied(e) | Event::Expired(e) => {
                Some((&e.call_id, Some(e.status)))
            }
            Event::CallStarted(e) | Event::CallCancelled(e) => Some((&e.call_id, Some(e.status))),
            Event::CallFinished(e) => Some((&e.call_id, Some(e.status))),
            Event::Output(e) => Some((&e.call_id, None)),
            _ => None,
        }
    }

    /// Whether this event ends the life of call `id` (nothing about it follows).
    pub fn ends_call(&self, id: &str) -> bool {
        matches!(self.call(), Some((c, Some(s))) if c == id && s.is_terminal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_round_trip_and_keep_the_wire_names() {
        let e = Event::CallFinished(CallFinished {
            call_id: "c".into(),
            status: CallStatus::TimedOut,
            result: None,
            error: Some(ErrorInfo::new("sandbox_failed", "stopped")),
            outcome: Some(Outcome {
                exit_code: Some(137),
                timed_out: true,
                ..Default::default()
            }),
            undo: None,
        });
        let (kind, data) = e.to_parts();
        assert_eq!(kind, "call_finished");
        assert_eq!(data["status"], "timed_out");
        assert_eq!(data["error"]["code"], "sandbox_failed");
        assert_eq!(data["outcome"]["exit_code"], 137);
        assert!(data.get("result").is_none(), "{data}");
        assert_eq!(Event::from_parts(kind, &data).unwrap(), e);
        assert!(e.ends_call("c") && !e.ends_call("d"));
    }

    #[test]
    fn every_kind_name_is_the_serde_tag() {
        let call = |s| CallState {
            call_id: "c".into(),
            status: s,
        };
        let decided = CallDecided {
            call_id: "c".into(),
            status: CallStatus::Approved,
            decided_by: Some("alice".into()),
            reason: None,
        };
        let all = [
            Event::CallStarted(call(CallStatus::Running)),
            Event::CallCancelled(call(CallStatus::Cancelled)),
            Event::Approved(decided.clone()),
            Event::Denied(decided.clone()),
            Event::Expired(decided),
            Event::Output(CallOutput {
                call_id: "c".into(),
                stream: "stdout".into(),
                data: "x".into(),
            }),
            Event::SessionGrant(SessionGrant {
                tool: "run_shell".into(),
                pattern: "ls *".into(),
                writable: true,
            }),
            Event::UserMessage(UserMessage {
                turn_id: "t".into(),
                content: "hi".into(),
            }),
            Event::TurnFinished(TurnFinished {
                turn_id: "t".into(),
                status: "completed".into(),
                steps: 1,
                usage: None,
                error: None,
            }),
        ];
        for e in all {
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["type"], e.kind(), "{v}");
            let (kind, data) = e.to_parts();
            assert_eq!(Event::from_parts(kind, &data).unwrap(), e);
        }
    }

    #[test]
    fn what_the_lua_writes_parses() {
        // decide and expire build their data in Lua with cjson.
        let e = Event::from_parts(
            "denied",
            &json!({"call_id": "c", "status": "denied", "decided_by": "bob", "reason": "no"}),
        )
        .unwrap();
        assert!(e.ends_call("c"));
        let e =
            Event::from_parts("expired", &json!({"call_id": "c", "status": "expired"})).unwrap();
        assert_eq!(e.call(), Some(("c", Some(CallStatus::Expired))));
    }

    #[test]
    fn unknown_kinds_and_misfit_data_are_errors() {
        let err = Event::from_parts("teleported", &json!({})).unwrap_err();
        assert_eq!(err.kind, "teleported");
        let err = Event::from_parts("output", &json!({"call_id": "c"})).unwrap_err();
        assert!(err.message.contains("stream"), "{err}");
        assert!(
            Event::from_parts("call_started", &json!({"call_id": "c", "status": "nope"})).is_err()
        );
    }
}
