//! The records the store keeps (sessions, calls, stream events, audit entries) and their
//! encoding as Redis hash fields and stream entries.

use std::collections::HashMap;

use redis::streams::StreamId;
use redis::FromRedisValue;
use serde::{Deserialize, Serialize};

use super::{now_ms, StoreError};
use crate::calls::{CallStatus, Decision};
use crate::events::{Event, EventError};

/// A session: one conversation of one owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub owner: String,
    pub created_at_ms: u64,
}

/// One tool call and everything known about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub id: String,
    pub session_id: String,
    pub owner: String,
    pub tool: String,
    pub args: serde_json::Value,
    pub args_sha256: String,
    pub status: CallStatus,
    pub decision: Decision,
    pub rule: String,
    pub policy_sha256: String,
    pub preview: Option<serde_json::Value>,
    pub expected_sha256: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<u64>,
    pub reason: Option<String>,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub outcome: Option<serde_json::Value>,
    /// What an approval of only some hunks approved: `{"hunks": [ids], "sha256": the
    /// resulting content's, "diff": its diff}`; written with the approval, applied exactly.
    pub approved_change: Option<serde_json::Value>,
    /// The owner replaced the proposed content before deciding: `{"by", "at_ms",
    /// "from_args_sha256"}` (the hash of the model's own proposal). `args`, `args_sha256` and
    /// `preview` are then the edited ones.
    pub edited: Option<serde_json::Value>,
    /// An applied call's undo summary, without content: `{"files": [{path, kind}],
    /// "not_kept": [{path, reason}], "expires_at_ms"}` (the content is in `{p}undo:{id}`).
    pub undo: Option<serde_json::Value>,
    /// The revert call that put this call's change back.
    pub reverted_by: Option<String>,
}

/// One event of a session's stream. `id` is the stream entry id (`<ms>-<seq>`), increasing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    pub kind: String,
    pub data: serde_json::Value,
}

impl StoredEvent {
    /// The typed event (an error for a kind this build does not know).
    pub fn event(&self) -> Result<Event, EventError> {
        Event::from_parts(&self.kind, &self.data)
    }
}

/// One entry of the audit stream. Never file contents or tokens: ids, hashes, names, outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub at_ms: u64,
    pub actor: String,
    /// `proposed`, `approved`, `denied`, `expired`, `rejected`, `started`, `finished`, `failed`, …
    pub action: String,
    pub session_id: String,
    pub call_id: String,
    pub tool: String,
    pub args_sha256: String,
    pub outcome: String,
    pub policy_sha256: String,
    /// The policy rule (or session grant) that decided the call, e.g. `defaults.rules[2]`.
    /// With `actor` it says who or what decided: a user's approval of an `ask` rule names both.
    pub rule: String,
    pub detail: Option<String>,
}

impl AuditEntry {
    /// An entry about `call`, stamped now.
    pub fn for_call(
        call: &CallRecord,
        actor: &str,
        action: &str,
        outcome: &str,
        detail: Option<String>,
    ) -> AuditEntry {
        AuditEntry {
            at_ms: now_ms(),
            actor: actor.into(),
            action: action.into(),
            session_id: call.session_id.clone(),
            call_id: call.id.clone(),
            tool: call.tool.clone(),
            args_sha256: call.args_sha256.clone(),
            outcome: outcome.into(),
            policy_sha256: call.policy_sha256.clone(),
            rule: call.rule.clone(),
            detail,
        }
    }

    pub(super) fn to_fields(&self) -> Vec<String> {
        let mut f = vec![
            "at_ms".into(),
            self.at_ms.to_string(),
            "actor".into(),
            self.actor.clone(),
            "action".into(),
            self.action.clone(),
            "session_id".into(),
            self.session_id.clone(),
            "call_id".into(),
            self.call_id.clone(),
            "tool".into(),
            self.tool.clone(),
            "args_sha256".into(),
            self.args_sha256.clone(),
            "outcome".into(),
            self.outcome.clone(),
            "policy_sha256".into(),
            self.policy_sha256.clone(),
            "rule".into(),
            self.rule.clone(),
        ];
        if let Some(d) = &self.detail {
            f.push("detail".into());
            f.push(d.clone());
        }
        f
    }

    pub(super) fn from_fields(m: &HashMap<String, String>) -> Result<AuditEntry, StoreError> {
        let get = |k: &str| {
            m.get(k)
                .cloned()
                .ok_or_else(|| StoreError::Corrupt(format!("audit entry without `{k}`")))
        };
        Ok(AuditEntry {
            at_ms: parse_u64("at_ms", &get("at_ms")?)?,
            actor: get("actor")?,
            action: get("action")?,
            session_id: get("session_id")?,
            call_id: get("call_id")?,
            tool: get("tool")?,
            args_sha256: get("args_sha256")?,
            outcome: get("outcome")?,
            policy_sha256: get("policy_sha256")?,
            rule: get("rule")?,
            detail: m.get("detail").cloned(),
        })
    }
}

/// What [`Store::decide`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DecisionResult {
    /// The call is now `approved`; the orchestrator may run it.
    Approved { call: CallRecord, event_id: String },
    /// The call is now `denied`.
    Denied { call: CallRecord, event_id: String },
    /// The approval window had passed: the call is now `expired` (nothing approved).
    Expired { call: CallRecord, event_id: String },
    /// The deciding user does not own the call. Nothing changed.
    NotOwner,
    /// The call is not awaiting approval (someone decided first, or it expired). Nothing changed.
    AlreadyDecided { current: CallStatus },
    /// The decision carried another `args_sha256` than the call's. Nothing changed.
    HashMismatch { call: CallRecord },
}

pub(super) fn parse_u64(field: &str, v: &str) -> Result<u64, StoreError> {
    v.parse()
        .map_err(|_| StoreError::Corrupt(format!("`{field}` is not a number: {v:?}")))
}

/// Fields a `transition` patch may set, and how their values are checked.
const PATCH_JSON: &[&str] = &["preview", "result", "error", "outcome", "undo"];
const PATCH_U64: &[&str] = &["expires_at_ms", "decided_at_ms"];
const PATCH_TEXT: &[&str] = &["expected_sha256", "decided_by", "reason"];

pub(super) fn check_patch(patch: &[(&str, String)]) -> Result<(), StoreError> {
    for (k, v) in patch {
        if PATCH_JSON.contains(k) {
            serde_json::from_str::<serde_json::Value>(v)
                .map_err(|e| StoreError::Invalid(format!("patch field `{k}` is not JSON: {e}")))?;
        } else if PATCH_U64.contains(k) {
            v.parse::<u64>()
                .map_err(|_| StoreError::Invalid(format!("patch field `{k}` is not a u64")))?;
        } else if !PATCH_TEXT.contains(k) {
            return Err(StoreError::Invalid(format!(
                "patch field `{k}` cannot be set by a transition"
            )));
        }
    }
    Ok(())
}

/// The fields of an owner's edit ([`super::Store::edit_pending`]): exactly the new `args`,
/// `args_sha256`, `preview` and `edited`, each well formed. No transition may set the first
/// two (they are what an approval binds to).
pub(super) fn check_edit_patch(patch: &[(&str, String)]) -> Result<(), StoreError> {
    let mut keys: Vec<&str> = patch.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    if keys
        != [
            "args",
            "args_sha256",
            "edited",
            "expect_args_sha256",
            "preview",
        ]
    {
        return Err(StoreError::Invalid(
            "an edit sets exactly args, args_sha256, preview and edited, and names the args_sha256 it replaces (expect_args_sha256)".into(),
        ));
    }
    for (k, v) in patch {
        let ok = match *k {
            "args_sha256" | "expect_args_sha256" => {
                v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
            }
            _ => serde_json::from_str::<serde_json::Value>(v).is_ok_and(|j| j.is_object()),
        };
        if !ok {
            return Err(StoreError::Invalid(format!(
                "edit field `{k}` is malformed"
            )));
        }
    }
    Ok(())
}

impl CallRecord {
    /// The unified diff of the change's preview (write_file, edit_file), or "".
    pub fn preview_diff(&self) -> &str {
        self.preview
            .as_ref()
            .and_then(|p| p.get("diff"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    }

    /// A call as proposed, before the policy's say: status `proposed`, decision `deny` (fail
    /// closed until someone sets it), no hash, rule, preview or outcome yet, stamped `now`.
    /// The one place a record is built from nothing; callers set what they know with
    /// `CallRecord { field, ..CallRecord::new(…) }`.
    pub fn new(
        id: &str,
        session_id: &str,
        owner: &str,
        tool: &str,
        args: serde_json::Value,
        now: u64,
    ) -> CallRecord {
        CallRecord {
            id: id.into(),
            session_id: session_id.into(),
            owner: owner.into(),
            tool: tool.into(),
            args,
            args_sha256: String::new(),
            status: CallStatus::Proposed,
            decision: Decision::Deny,
            rule: String::new(),
            policy_sha256: String::new(),
            preview: None,
            expected_sha256: None,
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: None,
            decided_by: None,
            decided_at_ms: None,
            reason: None,
            result: None,
            error: None,
            outcome: None,
            approved_change: None,
            edited: None,
            undo: None,
            reverted_by: None,
        }
    }

    /// The hash fields (absent options are left out).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("session_id", self.session_id.clone()),
            ("owner", self.owner.clone()),
            ("tool", self.tool.clone()),
            ("args", self.args.to_string()),
            ("args_sha256", self.args_sha256.clone()),
            ("status", self.status.as_str().into()),
            ("decision", self.decision.as_str().into()),
            ("rule", self.rule.clone()),
            ("policy_sha256", self.policy_sha256.clone()),
            ("created_at_ms", self.created_at_ms.to_string()),
            ("updated_at_ms", self.updated_at_ms.to_string()),
        ];
        let mut opt = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                f.push((k, v));
            }
        };
        opt("preview", self.preview.as_ref().map(|v| v.to_string()));
        opt("expected_sha256", self.expected_sha256.clone());
        opt("expires_at_ms", self.expires_at_ms.map(|v| v.to_string()));
        opt("decided_by", self.decided_by.clone());
        opt("decided_at_ms", self.decided_at_ms.map(|v| v.to_string()));
        opt("reason", self.reason.clone());
        opt("result", self.result.as_ref().map(|v| v.to_string()));
        opt("error", self.error.as_ref().map(|v| v.to_string()));
        opt("outcome", self.outcome.as_ref().map(|v| v.to_string()));
        opt(
            "approved_change",
            self.approved_change.as_ref().map(|v| v.to_string()),
        );
        opt("edited", self.edited.as_ref().map(|v| v.to_string()));
        opt("undo", self.undo.as_ref().map(|v| v.to_string()));
        opt("reverted_by", self.reverted_by.clone());
        f
    }

    /// Parses the hash fields back (see [`CallRecord::to_fields`]).
    pub fn from_fields(m: &HashMap<String, String>) -> Result<CallRecord, StoreError> {
        let get = |k: &str| {
            m.get(k)
                .cloned()
                .ok_or_else(|| StoreError::Corrupt(format!("call record without `{k}`")))
        };
        let json = |k: &str| -> Result<Option<serde_json::Value>, StoreError> {
            m.get(k)
                .map(|v| {
                    serde_json::from_str(v)
                        .map_err(|e| StoreError::Corrupt(format!("call field `{k}`: {e}")))
                })
                .transpose()
        };
        let num = |k: &str| m.get(k).map(|v| parse_u64(k, v)).transpose();
        let status = get("status")?;
        let decision = get("decision")?;
        Ok(CallRecord {
            id: get("id")?,
            session_id: get("session_id")?,
            owner: get("owner")?,
            tool: get("tool")?,
            args: json("args")?.ok_or_else(|| StoreError::Corrupt("call without args".into()))?,
            args_sha256: get("args_sha256")?,
            status: CallStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?,
            decision: Decision::parse(&decision)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown decision {decision:?}")))?,
            rule: get("rule")?,
            policy_sha256: get("policy_sha256")?,
            preview: json("preview")?,
            expected_sha256: m.get("expected_sha256").cloned(),
            created_at_ms: parse_u64("created_at_ms", &get("created_at_ms")?)?,
            updated_at_ms: parse_u64("updated_at_ms", &get("updated_at_ms")?)?,
            expires_at_ms: num("expires_at_ms")?,
            decided_by: m.get("decided_by").cloned(),
            decided_at_ms: num("decided_at_ms")?,
            reason: m.get("reason").cloned(),
            result: json("result")?,
            error: json("error")?,
            outcome: json("outcome")?,
            approved_change: json("approved_change")?,
            edited: json("edited")?,
            undo: json("undo")?,
            reverted_by: m.get("reverted_by").cloned(),
        })
    }

    pub(super) fn from_flat(flat: &[String]) -> Result<CallRecord, StoreError> {
        CallRecord::from_fields(&pairs(flat))
    }
}

pub(super) fn pairs(flat: &[String]) -> HashMap<String, String> {
    flat.chunks_exact(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

pub(super) fn event_from_entry(e: &StreamId) -> Result<StoredEvent, StoreError> {
    let field = |k: &str| -> Result<String, StoreError> {
        let v = e
            .map
            .get(k)
            .ok_or_else(|| StoreError::Corrupt(format!("event {} without `{k}`", e.id)))?;
        String::from_redis_value(v)
            .map_err(|_| StoreError::Corrupt(format!("event {} field `{k}`", e.id)))
    };
    let data = field("data")?;
    Ok(StoredEvent {
        id: e.id.clone(),
        kind: field("kind")?,
        data: serde_json::from_str(&data)
            .map_err(|err| StoreError::Corrupt(format!("event {} data: {err}", e.id)))?,
    })
}

pub(super) fn status_of(s: Option<&String>) -> Result<CallStatus, StoreError> {
    s.and_then(|s| CallStatus::parse(s))
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
}

pub(super) fn session_from_fields(
    m: &HashMap<String, String>,
) -> Result<SessionRecord, StoreError> {
    let get = |k: &str| {
        m.get(k)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("session without `{k}`")))
    };
    Ok(SessionRecord {
        id: get("id")?,
        owner: get("owner")?,
        created_at_ms: parse_u64("created_at_ms", &get("created_at_ms")?)?,
    })
}
