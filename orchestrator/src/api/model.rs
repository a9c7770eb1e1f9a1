//! The API's request and response bodies as types: the handlers build these, and
//! `openapi.rs` derives the OpenAPI document's schemas from the same types (schemars).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::calls::{CallStatus, Decision};
use crate::store::{CallRecord, ChainedEntry, SessionRecord, StoredEvent};

// ---- requests -------------------------------------------------------------------------------

/// `POST /v1/sessions/{id}/tool-calls`. (The document shows one alternative per tool, with
/// that tool's argument schema: `openapi.rs`'s `propose_body`.)
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeBody {
    /// One of the six tools.
    #[schemars(extend("enum" = ["read_file", "list_dir", "search", "write_file", "edit_file", "run_shell"]))]
    pub tool: String,
    /// The tool's arguments (an object; its schema is the tool's, docs/API.md).
    #[serde(default = "empty_object")]
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub args: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// `POST /v1/tool-calls/{id}/decision`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// `hunks` only with `approve` (to approve no hunk is to deny).
#[schemars(extend(
    "if" = {"properties": {"decision": {"const": "deny"}}, "required": ["decision"]},
    "then" = {"properties": {"hunks": {"type": "null"}}}
))]
pub struct DecisionBody {
    /// `approve` or `deny`.
    #[schemars(extend("enum" = ["approve", "deny"]))]
    pub decision: String,
    /// The `args_sha256` of the call as shown to the person deciding: the approval binds to it.
    pub args_sha256: String,
    /// Why; the model is told.
    #[schemars(length(max = 2000))]
    pub reason: Option<String>,
    /// With `approve`, for `write_file`/`edit_file`: approve only these hunks (ids from the
    /// preview's `hunks`). What runs is the base file plus exactly those hunks, and the
    /// approval binds to the resulting content's sha256; the model is told which hunks were
    /// applied (and the reason).
    #[schemars(length(min = 1, max = 1000))]
    pub hunks: Option<Vec<u32>>,
}

/// `POST /v1/tool-calls/{id}/edit`: exactly one of `content` (a `write_file`) and
/// `new_strings` (an `edit_file`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["content"]}, {"required": ["new_strings"]}]))]
pub struct EditBody {
    /// The `args_sha256` of the call as shown when the edit began.
    pub args_sha256: String,
    /// A `write_file`'s whole new content.
    #[serde(default)]
    #[schemars(with = "String")]
    pub content: Option<String>,
    /// An `edit_file`'s new texts, one per edit in order (the texts they replace stay).
    #[serde(default)]
    #[schemars(with = "Vec<String>", length(min = 1, max = 1000))]
    pub new_strings: Option<Vec<String>>,
}

/// `POST /v1/sessions/{id}/grants`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    #[schemars(extend("enum" = ["read_file", "list_dir", "search", "write_file", "edit_file", "run_shell"]))]
    pub tool: String,
    /// A command pattern, e.g. `cargo test *`.
    #[schemars(length(max = 1000))]
    pub pattern: String,
}

/// `POST /v1/sessions/{id}/messages`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// What the user says (not only white space).
    #[schemars(regex(pattern = r"\S"))]
    pub content: String,
}

/// `?after=ID&limit=N`: a resume point in a stream (session events, the audit page).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AfterQuery {
    /// A stream id (`<ms>-<seq>`): only what comes strictly after it.
    #[schemars(regex(pattern = r"^[0-9]{1,20}-[0-9]{1,20}$"))]
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// `GET /v1/sessions/{id}/tool-calls[?status=S]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallsQuery {
    /// Only calls with this status (e.g. `awaiting_approval`).
    pub status: Option<String>,
}

// ---- responses ------------------------------------------------------------------------------

/// `{"error": {"code", "message"}}`: every failure, with a stable code.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// Stable: `unauthorized`, `forbidden`, `not_found`, `invalid_request`, `conflict`, …
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Readiness {
    /// `ok` or `unavailable`.
    pub redis: String,
    /// `ok` or `unavailable`.
    pub docker: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Session {
    pub id: String,
    pub owner: String,
    pub created_at_ms: u64,
}

impl From<&SessionRecord> for Session {
    fn from(s: &SessionRecord) -> Session {
        Session {
            id: s.id.clone(),
            owner: s.owner.clone(),
            created_at_ms: s.created_at_ms,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

/// One event of a session's stream (the same shape the WebSocket and SSE carry).
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionEvent {
    /// The stream id (`<ms>-<seq>`), increasing: `?after=` resumes after it.
    pub id: String,
    /// The event kind (`call_proposed`, `approval_required`, `output`, …; docs/API.md).
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
}

impl From<&StoredEvent> for SessionEvent {
    fn from(e: &StoredEvent) -> SessionEvent {
        SessionEvent {
            id: e.id.clone(),
            kind: e.kind.clone(),
            data: e.data.clone(),
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub session: Session,
    pub events: Vec<SessionEvent>,
}

/// A tool call as the API shows it to its owner.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Call {
    pub id: String,
    pub session_id: String,
    pub tool: String,
    pub args: Value,
    pub args_sha256: String,
    pub status: CallStatus,
    pub decision: Decision,
    /// The policy rule (or session grant) that decided.
    pub rule: String,
    pub policy_sha256: String,
    /// The diff or command shown for approval, computed before anything ran.
    pub preview: Option<Value>,
    pub expires_at_ms: Option<u64>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub outcome: Option<Value>,
    /// The owner replaced the model's content before deciding: `{"by", "at_ms",
    /// "from_args_sha256"}`; `args` and `preview` are the edited ones.
    pub edited: Option<Value>,
    /// For an applied change that can be undone: `{"files": [{"path", "kind"}], "not_kept":
    /// [{"path", "reason"}], "expires_at_ms"}` — what `POST /v1/tool-calls/{id}/revert` would
    /// put back until then (no content).
    pub undo: Option<Value>,
    /// The revert call that put this call's change back.
    pub reverted_by: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl From<&CallRecord> for Call {
    fn from(c: &CallRecord) -> Call {
        Call {
            id: c.id.clone(),
            session_id: c.session_id.clone(),
            tool: c.tool.clone(),
            args: c.args.clone(),
            args_sha256: c.args_sha256.clone(),
            status: c.status,
            decision: c.decision,
            rule: c.rule.clone(),
            policy_sha256: c.policy_sha256.clone(),
            preview: c.preview.clone(),
            expires_at_ms: c.expires_at_ms,
            decided_by: c.decided_by.clone(),
            reason: c.reason.clone(),
            result: c.result.clone(),
            error: c.error.clone(),
            outcome: c.outcome.clone(),
            edited: c.edited.clone(),
            undo: c.undo.clone(),
            reverted_by: c.reverted_by.clone(),
            created_at_ms: c.created_at_ms,
            updated_at_ms: c.updated_at_ms,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CallDetail {
    #[serde(flatten)]
    pub call: Call,
    /// The output events' data so far, in order.
    pub output: Vec<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CallList {
    pub session_id: String,
    pub calls: Vec<Call>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Grant {
    pub tool: String,
    pub pattern: String,
}

/// A grant as added: `writable` says whether what it allows runs with a writable workspace.
#[derive(Debug, Serialize, JsonSchema)]
pub struct GrantAdded {
    pub tool: String,
    pub pattern: String,
    pub writable: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct GrantList {
    pub grants: Vec<Grant>,
    /// Whether the policy lets this user grant at all.
    pub allowed: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TurnStarted {
    pub session_id: String,
    pub turn_id: String,
    pub status: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Messages {
    pub session_id: String,
    /// The running turn, if any.
    pub turn_id: Option<String>,
    /// The stored conversation, oldest first (docs/API.md).
    pub entries: Vec<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TurnCancelled {
    pub session_id: String,
    pub turn_id: Option<String>,
    pub cancelled: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditPage {
    pub entries: Vec<ChainedEntry>,
    /// Pass as `after` for the next page.
    pub last_id: Option<String>,
}
