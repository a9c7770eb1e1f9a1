//! The Redis store: sessions, tool calls, per-session event streams, pending approvals and the
//! audit stream — and the atomic state transitions between them.
//!
//! This module owns the key schema and every Redis command Airlock sends. It knows nothing of
//! HTTP or Docker; the call state machine it enforces is [`crate::calls`].
//!
//! # Key schema
//!
//! Every key starts with a configurable prefix (default `airlock:`, written `{p}` below).
//! Ids of sessions and calls are UUIDs (`[A-Za-z0-9-]`, at most 64 characters; anything else is
//! refused before it reaches a key name).
//!
//! | key | type | written by | TTL |
//! |---|---|---|---|
//! | `{p}session:{sid}` | hash `id, owner, created_at_ms` | `create_session` | none |
//! | `{p}user:{owner}:sessions` | sorted set: session ids scored by `created_at_ms` | `create_session`, `delete_session` | none |
//! | `{p}session:{sid}:events` | stream, entries `kind`, `data` (JSON) | `append_event`, `create_call`, `transition`, `decide`, `expire_due` | none (deleted with the session) |
//! | `{p}session:{sid}:calls` | list of call ids, oldest first | `create_call` | none (deleted with the session) |
//! | `{p}call:{cid}` | hash: the [`CallRecord`] fields (JSON fields as JSON text, absent when `None`) | `create_call`, `transition`, `decide`, `expire_due` | none (deleted with the session) |
//! | `{p}approval:{cid}` | string: the `args_sha256` the approval is bound to | entering `awaiting_approval` | `PX` = time left until `expires_at_ms` |
//! | `{p}pending` | sorted set: call ids awaiting approval, scored by `expires_at_ms` | entering / leaving `awaiting_approval` | none |
//! | `{p}running` | set: call ids that are `approved` or `running` (an orchestrator owes them a run) | every transition | none |
//! | `{p}runners` | hash: call id → the instance that moved it in flight (and so runs it); same members as `{p}running` | every transition | none |
//! | `{p}instance:{name}` | string: the holder (`host/pid/uuid`) of instance `name`'s lease, renewed while that orchestrator lives | `claim_instance`, `renew_instance`, `release_instance` | `PX` = [`INSTANCE_LEASE`] |
//! | `{p}user:{name}:slots`, `{p}user:{name}:proposals`, `{p}session:{sid}:grants` | quotas and grants: see `store/quota.rs` | | |
//! | `{p}audit` | stream, entries: the [`AuditEntry`] fields | `create_call`, `transition`, `decide`, `expire_due` | none (append-only, never trimmed) |
//!
//! # Atomicity
//!
//! Every change that touches more than one key is one Lua script (`redis::Script`, sent as
//! `EVALSHA` and re-loaded automatically after a Redis restart), so of two concurrent requests
//! exactly one wins: a call's status is read and checked against
//! [`CallStatus::predecessors`] inside the script that changes it. The scripts derive some key
//! names from the prefix and ids at run time, so the schema targets a single Redis (or a
//! Sentinel-managed primary), not Redis Cluster.
//!
//! # Events
//!
//! The session stream holds [`crate::events::Event`]s as a kind and a JSON object. An event
//! about a call names the call and the status it moved it to; [`Store::create_call`] and
//! [`Store::transition`] refuse one that names another call or status. [`Store::decide`] and
//! [`Store::expire_due`] write their own `approved`, `denied` and `expired` events in Lua, with
//! the data of [`crate::events::CallDecided`].
//!
//! # Connections
//!
//! Ordinary commands share one multiplexed [`ConnectionManager`] (auto-reconnect, response and
//! connection timeouts so a dead Redis gives [`StoreError::Unavailable`] in about two seconds).
//! Blocking `XREAD`s use dedicated connections, see [`Store::wait_events`].

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, ErrorKind, FromRedisValue, RedisError, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::calls::{CallStatus, Decision};
use crate::events::{Event, EventError};

/// The agent's keys (conversation history, turn lock): a separate `impl Store`.
mod history;
pub use history::{AgentStore, Heartbeat, TURN_HEARTBEAT, TURN_LOCK_TTL};

/// Quotas and session grants, shared by every orchestrator on one Redis.
mod quota;
pub use quota::{GrantAdded, Rate, Reservation, RATE_WINDOW, SLOT_TTL};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "airlock:";

/// The instance name a [`Store`] acts for unless told otherwise (the config's default).
pub const DEFAULT_INSTANCE: &str = "default";

/// Errors of the store. `Unavailable` means Redis could not be reached or did not answer in
/// time (the API answers 503); `InvalidEventId` is a client's malformed `after` (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    #[error("not found")]
    NotFound,
    #[error("the call is `{current}`, which does not allow this transition")]
    Conflict { current: CallStatus },
    #[error("malformed event id `{0}` (expected `<ms>-<seq>`)")]
    InvalidEventId(String),
    /// The caller passed something the store refuses (a bug in the caller, not in Redis).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// A record in Redis does not parse.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The Redis URL does not parse or names an unsupported scheme.
    #[error("bad redis url: {0}")]
    BadUrl(String),
    /// Redis answered with an unexpected error (e.g. out of memory, wrong type).
    #[error("redis error: {0}")]
    Redis(String),
}

/// Connection settings. The defaults make a dead Redis fail within about two seconds.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long one command may wait for its answer.
    pub response_timeout: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// At most this many `wait_events` block in Redis at once (each holds a connection).
    pub max_blocking_readers: usize,
    /// Idle blocking-read connections kept for reuse.
    pub max_idle_blocking: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            max_blocking_readers: 1024,
            max_idle_blocking: 32,
        }
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
            detail,
        }
    }

    fn to_fields(&self) -> Vec<String> {
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
        ];
        if let Some(d) = &self.detail {
            f.push("detail".into());
            f.push(d.clone());
        }
        f
    }

    fn from_fields(m: &HashMap<String, String>) -> Result<AuditEntry, StoreError> {
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Names of every key, under one prefix. Mirrors the Lua prelude's key functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.into(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn session(&self, sid: &str) -> String {
        format!("{}session:{sid}", self.prefix)
    }
    pub fn user_sessions(&self, owner: &str) -> String {
        format!("{}user:{owner}:sessions", self.prefix)
    }
    pub fn events(&self, sid: &str) -> String {
        format!("{}session:{sid}:events", self.prefix)
    }
    pub fn session_calls(&self, sid: &str) -> String {
        format!("{}session:{sid}:calls", self.prefix)
    }
    pub fn call(&self, cid: &str) -> String {
        format!("{}call:{cid}", self.prefix)
    }
    /// A request to stop a running call, for whichever orchestrator runs it.
    pub fn call_cancel(&self, cid: &str) -> String {
        format!("{}call:{cid}:cancel", self.prefix)
    }
    pub fn approval(&self, cid: &str) -> String {
        format!("{}approval:{cid}", self.prefix)
    }
    pub fn pending(&self) -> String {
        format!("{}pending", self.prefix)
    }
    pub fn running(&self) -> String {
        format!("{}running", self.prefix)
    }
    pub fn runners(&self) -> String {
        format!("{}runners", self.prefix)
    }
    pub fn instance_lease(&self, instance: &str) -> String {
        format!("{}instance:{instance}", self.prefix)
    }
    pub fn audit(&self) -> String {
        format!("{}audit", self.prefix)
    }
}

/// Session and call ids: UUID-like tokens only, so an id can never reach into another key
/// (`x:events`) and every key name stays unambiguous.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Parses a stream entry id `<ms>-<seq>` (both decimal u64).
pub fn parse_event_id(s: &str) -> Option<(u64, u64)> {
    let (ms, seq) = s.split_once('-')?;
    let num = |p: &str| {
        if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            p.parse::<u64>().ok()
        }
    };
    Some((num(ms)?, num(seq)?))
}

pub fn checked_event_id(after: Option<&str>) -> Result<Option<(u64, u64)>, StoreError> {
    match after {
        None => Ok(None),
        Some(s) => parse_event_id(s)
            .map(Some)
            .ok_or_else(|| StoreError::InvalidEventId(s.chars().take(64).collect())),
    }
}

/// A URL with its user-info replaced, fit for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, _) = rest.split_once('/').unwrap_or((rest, ""));
            match auth.rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => "<unparseable url>".into(),
    }
}

fn parse_u64(field: &str, v: &str) -> Result<u64, StoreError> {
    v.parse()
        .map_err(|_| StoreError::Corrupt(format!("`{field}` is not a number: {v:?}")))
}

/// Fields a `transition` patch may set, and how their values are checked.
const PATCH_JSON: &[&str] = &["preview", "result", "error", "outcome"];
const PATCH_U64: &[&str] = &["expires_at_ms", "decided_at_ms"];
const PATCH_TEXT: &[&str] = &["expected_sha256", "decided_by", "reason"];

fn check_patch(patch: &[(&str, String)]) -> Result<(), StoreError> {
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

impl CallRecord {
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
        })
    }

    fn from_flat(flat: &[String]) -> Result<CallRecord, StoreError> {
        CallRecord::from_fields(&pairs(flat))
    }
}

fn pairs(flat: &[String]) -> HashMap<String, String> {
    flat.chunks_exact(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// `Invalid` unless `event` is about call `id` and moves it to `status`.
fn check_call_event(event: &Event, id: &str, status: CallStatus) -> Result<(), StoreError> {
    match event.call() {
        Some((c, Some(s))) if c == id && s == status => Ok(()),
        _ => Err(StoreError::Invalid(format!(
            "a `{}` event cannot record call {id} moving to `{status}`",
            event.kind()
        ))),
    }
}

fn event_from_entry(e: &StreamId) -> Result<StoredEvent, StoreError> {
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

// ---------------------------------------------------------------------------------------------
// Lua. Every script gets ARGV[1] = prefix, ARGV[2] = now (ms) and ARGV[3] = the orchestrator
// instance sending it, and starts with this prelude.

const PRELUDE: &str = r#"
local P = ARGV[1]
local NOW = ARGV[2]
local INSTANCE = ARGV[3]
local NOWN = tonumber(NOW)
local PENDING = P .. 'pending'
local RUNNING = P .. 'running'
local RUNNERS = P .. 'runners'
local AUDIT = P .. 'audit'
local INFLIGHT = {approved = true, running = true}
local function call_key(id) return P .. 'call:' .. id end
local function approval_key(id) return P .. 'approval:' .. id end
local function session_key(id) return P .. 'session:' .. id end
local function events_key(id) return P .. 'session:' .. id .. ':events' end
local function calls_key(id) return P .. 'session:' .. id .. ':calls' end
local function user_key(owner) return P .. 'user:' .. owner .. ':sessions' end

local function load_call(id)
  local flat = redis.call('HGETALL', call_key(id))
  if #flat == 0 then return nil end
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m
end

-- {code, event id, field, value, field, value, ...} with the call's current hash.
local function reply(code, eid, id)
  local r = {code, eid}
  local flat = redis.call('HGETALL', call_key(id))
  for i = 1, #flat do r[#r + 1] = flat[i] end
  return r
end

local function audit_for(id, c, actor, action, outcome, detail)
  local a = {'at_ms', NOW, 'actor', actor, 'action', action, 'session_id', c.session_id,
             'call_id', id, 'tool', c.tool, 'args_sha256', c.args_sha256,
             'outcome', outcome, 'policy_sha256', c.policy_sha256 or ''}
  if detail and detail ~= '' then
    a[#a + 1] = 'detail'
    a[#a + 1] = detail
  end
  return a
end

-- The approval binding: a key that dies at expires_at_ms, and the pending index.
local function arm_approval(id, exp, hash)
  redis.call('ZADD', PENDING, exp, id)
  local left = tonumber(exp) - NOWN
  if left > 0 then
    redis.call('SET', approval_key(id), hash, 'PX', string.format('%d', left))
  end
end

-- Moves call `id` (current fields `c`, already checked) to `to`; returns the event id or ''.
local function move(id, c, to, patch, ev_kind, ev_data, audit)
  local ck = call_key(id)
  local from = c.status
  redis.call('HSET', ck, 'status', to, 'updated_at_ms', NOW)
  if #patch > 0 then redis.call('HSET', ck, unpack(patch)) end
  if from == 'awaiting_approval' and to ~= 'awaiting_approval' then
    redis.call('DEL', approval_key(id))
    redis.call('ZREM', PENDING, id)
  end
  if to == 'awaiting_approval' then
    arm_approval(id, redis.call('HGET', ck, 'expires_at_ms'), redis.call('HGET', ck, 'args_sha256'))
  end
  if INFLIGHT[to] then
    redis.call('SADD', RUNNING, id)
    -- Whoever moves a call in flight runs it (the approver's orchestrator, not the proposer's).
    redis.call('HSET', RUNNERS, id, INSTANCE)
  else
    redis.call('SREM', RUNNING, id)
    redis.call('HDEL', RUNNERS, id)
  end
  local eid = ''
  if ev_kind then
    eid = redis.call('XADD', events_key(c.session_id), '*', 'kind', ev_kind, 'data', ev_data)
  end
  if audit then redis.call('XADD', AUDIT, '*', unpack(audit)) end
  return eid
end

-- The one expiry path, shared by decide and expire_due.
local function expire(id, c, detail)
  return move(id, c, 'expired', {}, 'expired', cjson.encode({call_id = id, status = 'expired'}),
              audit_for(id, c, 'system', 'expired', 'expired', detail))
end
"#;

// ARGV: P, NOW, INSTANCE, id, session_id, owner, n, n field/value pairs, ne, ne (kind, data)
// pairs, audit pairs... Returns {'ok', id of the first event}.
const CREATE_CALL: &str = r#"
local id, sid, owner = ARGV[4], ARGV[5], ARGV[6]
local sowner = redis.call('HGET', session_key(sid), 'owner')
if not sowner then return {'no_session'} end
if sowner ~= owner then return {'owner_mismatch'} end
local existing = redis.call('HGET', call_key(id), 'status')
if existing then return {'exists', existing} end
local n = tonumber(ARGV[7])
local fields = {}
for i = 1, 2 * n do fields[i] = ARGV[7 + i] end
redis.call('HSET', call_key(id), unpack(fields))
redis.call('RPUSH', calls_key(sid), id)
local c = load_call(id)
if c.status == 'awaiting_approval' then arm_approval(id, c.expires_at_ms, c.args_sha256) end
if INFLIGHT[c.status] then
  redis.call('SADD', RUNNING, id)
  redis.call('HSET', RUNNERS, id, INSTANCE)
end
local j = 8 + 2 * n
local ne = tonumber(ARGV[j])
local eid = ''
for e = 0, ne - 1 do
  local id = redis.call('XADD', events_key(sid), '*', 'kind', ARGV[j + 1 + 2 * e], 'data', ARGV[j + 2 + 2 * e])
  if e == 0 then eid = id end
end
local audit = {}
for i = j + 1 + 2 * ne, #ARGV do audit[#audit + 1] = ARGV[i] end
redis.call('XADD', AUDIT, '*', unpack(audit))
return {'ok', eid}
"#;

// ARGV: P, NOW, INSTANCE, id, to, allowed (comma-separated), n, n patch pairs, ev_kind ('' = none),
// ev_data, audit pairs (none = no audit entry)
const TRANSITION: &str = r#"
local id, to = ARGV[4], ARGV[5]
local c = load_call(id)
if not c then return {'not_found'} end
local ok = false
for s in string.gmatch(ARGV[6], '[^,]+') do
  if s == c.status then ok = true end
end
if not ok then return {'conflict', c.status} end
local n = tonumber(ARGV[7])
local patch = {}
for i = 1, 2 * n do patch[i] = ARGV[7 + i] end
if to == 'awaiting_approval' then
  local exp = c.expires_at_ms
  for i = 1, #patch, 2 do
    if patch[i] == 'expires_at_ms' then exp = patch[i + 1] end
  end
  if not exp then return {'no_expiry'} end
end
local j = 8 + 2 * n
local ev_kind = nil
if ARGV[j] ~= '' then ev_kind = ARGV[j] end
local audit = nil
if #ARGV > j + 1 then
  audit = {}
  for i = j + 2, #ARGV do audit[#audit + 1] = ARGV[i] end
end
local eid = move(id, c, to, patch, ev_kind, ARGV[j + 1], audit)
return reply('ok', eid, id)
"#;

// ARGV: P, NOW, INSTANCE, id, user, presented hash, 'approved'|'denied', reason ('' = none),
// audit detail of a hash mismatch, audit detail of a decision (the reason, shortened)
const DECIDE: &str = r#"
local id, user, presented, to, reason = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local c = load_call(id)
if not c then return {'not_found'} end
if c.owner ~= user then
  redis.call('XADD', AUDIT, '*', unpack(audit_for(id, c, user, 'rejected', 'not_owner', 'decision by a user who does not own the call')))
  return {'not_owner'}
end
if c.status ~= 'awaiting_approval' then
  redis.call('XADD', AUDIT, '*', unpack(audit_for(id, c, user, 'rejected', 'already_decided', 'call is ' .. c.status)))
  return {'already_decided', c.status}
end
local bound = redis.call('GET', approval_key(id))
local exp = tonumber(c.expires_at_ms or '')
if (not bound) or (not exp) or exp <= NOWN then
  local eid = expire(id, c, 'approval window passed before ' .. user .. ' decided')
  return reply('expired', eid, id)
end
if bound ~= presented or c.args_sha256 ~= presented then
  redis.call('XADD', AUDIT, '*', unpack(audit_for(id, c, user, 'rejected', 'hash_mismatch', ARGV[9])))
  return reply('hash_mismatch', '', id)
end
local patch = {'decided_by', user, 'decided_at_ms', NOW}
local data = {call_id = id, status = to, decided_by = user}
if reason ~= '' then
  patch[#patch + 1] = 'reason'
  patch[#patch + 1] = reason
  data.reason = reason
end
local eid = move(id, c, to, patch, to, cjson.encode(data),
                 audit_for(id, c, user, to, to, ARGV[10]))
return reply(to, eid, id)
"#;

// ARGV: P, NOW, INSTANCE, limit. Returns {scanned, {expired call hash}, ...}.
const EXPIRE_DUE: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', PENDING, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {#ids}
for _, id in ipairs(ids) do
  local c = load_call(id)
  if c and c.status == 'awaiting_approval' then
    local exp = tonumber(c.expires_at_ms or '0') or 0
    if exp <= NOWN then
      expire(id, c, 'approval window passed')
      out[#out + 1] = redis.call('HGETALL', call_key(id))
    else
      redis.call('ZADD', PENDING, c.expires_at_ms, id)
    end
  else
    redis.call('ZREM', PENDING, id)
  end
end
return out
"#;

// ARGV: P, NOW, INSTANCE, session id. Returns 1 if deleted, 0 if there was no such session.
const DELETE_SESSION: &str = r#"
local sid = ARGV[4]
local owner = redis.call('HGET', session_key(sid), 'owner')
if not owner then return 0 end
local calls = redis.call('LRANGE', calls_key(sid), 0, -1)
for _, cid in ipairs(calls) do
  redis.call('DEL', call_key(cid), approval_key(cid))
  redis.call('ZREM', PENDING, cid)
  redis.call('SREM', RUNNING, cid)
  redis.call('HDEL', RUNNERS, cid)
end
redis.call('DEL', session_key(sid), calls_key(sid), events_key(sid), session_key(sid) .. ':grants')
redis.call('ZREM', user_key(owner), sid)
return 1
"#;

// ARGV: P, NOW, INSTANCE, session id, kind, data. Returns the entry id, or nil without such a session.
const APPEND_EVENT: &str = r#"
if redis.call('EXISTS', session_key(ARGV[4])) == 0 then return false end
return redis.call('XADD', events_key(ARGV[4]), '*', 'kind', ARGV[5], 'data', ARGV[6])
"#;

struct Scripts {
    create_call: Script,
    transition: Script,
    decide: Script,
    expire_due: Script,
    delete_session: Script,
    append_event: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
    Scripts {
        create_call: s(CREATE_CALL),
        transition: s(TRANSITION),
        decide: s(DECIDE),
        expire_due: s(EXPIRE_DUE),
        delete_session: s(DELETE_SESSION),
        append_event: s(APPEND_EVENT),
    }
});

/// How long an instance's lease lasts unless its orchestrator renews it.
pub const INSTANCE_LEASE: Duration = Duration::from_secs(15);
/// How often a live orchestrator renews its lease (several renewals fit in one lease).
pub const INSTANCE_RENEW: Duration = Duration::from_secs(3);

/// What [`Store::claim_instance`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease is ours.
    Claimed,
    /// Another process holds it, for `ttl_ms` more unless it renews.
    Held { holder: String, ttl_ms: u64 },
}

/// A lease holder string for this process: `host/pid/random`. The host and pid let a restarted
/// process recognise its dead predecessor (same host, a pid that is gone or is its own).
pub fn lease_holder() -> String {
    format!(
        "{}/{}/{}",
        host_name(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// This machine's (or container's) host name, `unknown` if it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "unknown".into())
}

/// Whether `holder` (from [`lease_holder`]) was a process on this host that no longer runs:
/// its pid is gone, or is this process's own (a pid is not reused while its owner lives, so an
/// earlier holder with our pid is dead — as after a container restart, where the server is
/// always pid 1). A holder on another host is never judged dead here: its lease must lapse.
pub fn holder_is_dead_here(holder: &str) -> bool {
    let mut parts = holder.splitn(3, '/');
    let (Some(host), Some(pid), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if host != host_name() || pid == 0 {
        return false;
    }
    pid == std::process::id() || !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

// The lease scripts take their key as an argument (no prelude).
// ARGV: key, holder, ttl ms, takeover_from ('' = none)
const CLAIM_INSTANCE: &str = r#"
local cur = redis.call('GET', ARGV[1])
if (not cur) or cur == ARGV[2] or (ARGV[4] ~= '' and cur == ARGV[4]) then
  redis.call('SET', ARGV[1], ARGV[2], 'PX', ARGV[3])
  return {'claimed'}
end
return {'held', cur, tostring(redis.call('PTTL', ARGV[1]))}
"#;

// ARGV: key, holder, ttl ms. 1 renewed, 2 taken again after it lapsed, 0 held by another.
const RENEW_INSTANCE: &str = r#"
local cur = redis.call('GET', ARGV[1])
if cur == ARGV[2] then
  redis.call('PEXPIRE', ARGV[1], ARGV[3])
  return 1
end
if not cur then
  redis.call('SET', ARGV[1], ARGV[2], 'PX', ARGV[3])
  return 2
end
return 0
"#;

// ARGV: key, holder. 1 released, 0 not ours.
const RELEASE_INSTANCE: &str = r#"
if redis.call('GET', ARGV[1]) == ARGV[2] then
  redis.call('DEL', ARGV[1])
  return 1
end
return 0
"#;

struct LeaseScripts {
    claim: Script,
    renew: Script,
    release: Script,
}

static LEASE_SCRIPTS: LazyLock<LeaseScripts> = LazyLock::new(|| LeaseScripts {
    claim: Script::new(CLAIM_INSTANCE),
    renew: Script::new(RENEW_INSTANCE),
    release: Script::new(RELEASE_INSTANCE),
});

/// Expired approvals handled per script run by `expire_due` (keeps each run short).
const EXPIRE_BATCH: usize = 100;
/// How long a request to cancel a running call waits for its orchestrator to see it.
pub const CALL_CANCEL_TTL: Duration = Duration::from_secs(60);

/// Longest block a `wait_events` may ask for.
pub const MAX_BLOCK: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------

/// Dedicated connections for blocking `XREAD`s.
///
/// A blocking `XREAD` occupies its connection on the server side until it returns: on the shared
/// multiplexed connection every other command would queue behind it, so one idle WebSocket would
/// stall the whole orchestrator. Each waiter therefore takes a connection of its own — reused from
/// a small idle list, because opening one costs a handshake (TCP, AUTH, and for `rediss://` TLS) —
/// and gives it back only after Redis has answered. A waiter that is cancelled mid-`XREAD` drops
/// its connection (it is still blocked server-side and must not be reused). A semaphore bounds
/// how many connections block at once; a waiter that cannot get a permit within its block time
/// falls back to a plain, non-blocking read.
struct BlockingReaders {
    client: redis::Client,
    config: AsyncConnectionConfig,
    idle: Mutex<Vec<MultiplexedConnection>>,
    permits: Semaphore,
    max_idle: usize,
}

impl BlockingReaders {
    fn take_idle(&self) -> Option<MultiplexedConnection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give_back(&self, conn: MultiplexedConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
}

struct Inner {
    conn: ConnectionManager,
    keys: Keys,
    blocking: BlockingReaders,
    /// Strings that must never appear in an error message (the URL's password).
    secrets: Vec<String>,
    /// Where Redis is, without credentials (for messages).
    endpoint: String,
    opts: StoreOptions,
}

/// The Redis store. Cheap to clone (one shared connection manager inside).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// The orchestrator instance this handle acts for: it is recorded as the runner of every
    /// call this handle moves in flight (see [`Store::with_instance`]).
    instance: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("endpoint", &self.inner.endpoint)
            .field("prefix", &self.inner.keys.prefix)
            .field("instance", &self.instance)
            .finish()
    }
}

fn endpoint_of(info: &redis::ConnectionInfo) -> String {
    match &info.addr {
        redis::ConnectionAddr::Tcp(h, p) => format!("redis://{h}:{p}"),
        redis::ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}"),
        redis::ConnectionAddr::Unix(p) => format!("unix://{}", p.display()),
    }
}

impl Store {
    /// Connects with default [`StoreOptions`]. `url`: `redis://[user:pass@]host[:port][/db]`,
    /// `rediss://…` (TLS) or `unix:///path/to/socket`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, prefix, StoreOptions::default()).await
    }

    pub async fn connect_with(
        url: &str,
        prefix: &str,
        opts: StoreOptions,
    ) -> Result<Store, StoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            // The parser's messages never echo the URL, but be certain.
            StoreError::BadUrl(format!(
                "{} ({})",
                e.to_string().replace(url, "<url>"),
                redact_url(url)
            ))
        })?;
        let info = client.get_connection_info();
        let endpoint = endpoint_of(info);
        let mut secrets = Vec::new();
        if let Some(p) = info.redis.password.as_ref().filter(|p| !p.is_empty()) {
            secrets.push(p.clone());
        }
        if let Some((_, rest)) = url.split_once("://") {
            if let Some(at) = rest.split('/').next().and_then(|a| a.rfind('@')) {
                let userinfo = &rest[..at];
                if let Some((_, raw_pw)) = userinfo.split_once(':') {
                    if !raw_pw.is_empty() {
                        secrets.push(raw_pw.to_string());
                    }
                }
            }
        }
        // No retries inside the manager: its backoff starts at one second (plus jitter) whatever
        // the factor, so a retry would make every request against a dead Redis take 1-2 s
        // longer. Each reconnect is one attempt bounded by `connect_timeout`; `run` retries a
        // refused connection once, which picks up the reconnect started by the failure.
        let cm_config = ConnectionManagerConfig::new()
            .set_connection_timeout(opts.connect_timeout)
            .set_response_timeout(opts.response_timeout)
            .set_number_of_retries(0);
        let unavailable =
            |e: RedisError| StoreError::Unavailable(redact(&format!("{endpoint}: {e}"), &secrets));
        let conn = tokio::time::timeout(
            opts.connect_timeout * 2 + opts.response_timeout + Duration::from_secs(1),
            ConnectionManager::new_with_config(client.clone(), cm_config),
        )
        .await
        .map_err(|_| StoreError::Unavailable(format!("{endpoint}: connecting timed out")))?
        .map_err(unavailable)?;
        let blocking = BlockingReaders {
            client,
            config: AsyncConnectionConfig::new().set_connection_timeout(opts.connect_timeout),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(opts.max_blocking_readers.max(1)),
            max_idle: opts.max_idle_blocking,
        };
        Ok(Store {
            inner: Arc::new(Inner {
                conn,
                keys: Keys::new(prefix),
                blocking,
                secrets,
                endpoint,
                opts,
            }),
            instance: Arc::from(DEFAULT_INSTANCE),
        })
    }

    /// The same store, acting for orchestrator `instance` (the config's `instance`; default
    /// [`DEFAULT_INSTANCE`]). Several orchestrators may share one Redis only under distinct
    /// instance names: the name says who owes a call its run (see [`Store::claim_instance`]).
    pub fn with_instance(&self, instance: &str) -> Store {
        Store {
            inner: self.inner.clone(),
            instance: Arc::from(instance),
        }
    }

    /// The instance this handle acts for.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The key names this store uses.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Where Redis is (no credentials).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    // --- plumbing ------------------------------------------------------------------------------

    fn map_err(&self, e: RedisError) -> StoreError {
        let msg = redact(
            &format!("{}: {e}", self.inner.endpoint),
            &self.inner.secrets,
        );
        let unavailable_code = matches!(
            e.code(),
            Some("NOAUTH" | "WRONGPASS" | "LOADING" | "MASTERDOWN" | "READONLY")
        );
        if e.is_io_error()
            || unavailable_code
            || matches!(
                e.kind(),
                ErrorKind::AuthenticationFailed
                    | ErrorKind::BusyLoadingError
                    | ErrorKind::ClusterDown
                    | ErrorKind::MasterDown
                    | ErrorKind::TryAgain
                    | ErrorKind::ReadOnly
            )
        {
            StoreError::Unavailable(msg)
        } else {
            StoreError::Redis(msg)
        }
    }

    /// Upper bound of one operation, whatever the client library does.
    fn deadline(&self) -> Duration {
        let o = &self.inner.opts;
        o.connect_timeout * 2 + o.response_timeout + Duration::from_secs(1)
    }

    /// Runs one request on the shared connection. A connection refusal is retried once: the
    /// command was certainly not sent, and the manager has started reconnecting meanwhile (so
    /// the first request after Redis comes back does not fail on the stale refusal).
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            match f(self.inner.conn.clone()).await {
                Err(e) if e.is_connection_refusal() => f(self.inner.conn.clone()).await,
                other => other,
            }
        };
        match tokio::time::timeout(self.deadline(), attempt).await {
            Ok(r) => r.map_err(|e| self.map_err(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "{}: no answer within {:?}",
                self.inner.endpoint,
                self.deadline()
            ))),
        }
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        script: &Script,
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut inv = script.prepare_invoke();
        for a in args {
            inv.arg(a);
        }
        let inv = &inv;
        self.run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await
    }

    fn base_args(&self) -> Vec<String> {
        vec![
            self.inner.keys.prefix.clone(),
            now_ms().to_string(),
            self.instance.to_string(),
        ]
    }

    // --- health --------------------------------------------------------------------------------

    /// Readiness: Redis answers PING.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Redis(format!("PING answered {pong:?}")))
        }
    }

    /// Calls awaiting approval (for metrics).
    pub async fn pending_count(&self) -> Result<u64, StoreError> {
        self.query(redis::cmd("ZCARD").arg(self.inner.keys.pending()))
            .await
    }

    // --- sessions ------------------------------------------------------------------------------

    /// Creates a session (id: a new UUID v4).
    pub async fn create_session(&self, owner: &str) -> Result<SessionRecord, StoreError> {
        let rec = SessionRecord {
            id: uuid::Uuid::new_v4().to_string(),
            owner: owner.into(),
            created_at_ms: now_ms(),
        };
        let k = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                k.session(&rec.id),
                &[
                    ("id", rec.id.clone()),
                    ("owner", rec.owner.clone()),
                    ("created_at_ms", rec.created_at_ms.to_string()),
                ],
            )
            .ignore()
            .zadd(k.user_sessions(owner), &rec.id, rec.created_at_ms)
            .ignore();
        let pipe = &pipe;
        self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await?;
        Ok(rec)
    }

    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let m: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.inner.keys.session(id)))
            .await?;
        if m.is_empty() {
            return Ok(None);
        }
        session_from_fields(&m).map(Some)
    }

    /// The owner's sessions, newest first.
    pub async fn list_sessions(&self, owner: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let ids: Vec<String> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.inner.keys.user_sessions(owner))
                    .arg(0)
                    .arg(-1)
                    .arg("REV"),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.inner.keys.session(id));
        }
        let pipe = &pipe;
        let maps: Vec<HashMap<String, String>> = self
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        maps.iter()
            .filter(|m| !m.is_empty())
            .map(session_from_fields)
            .collect()
    }

    /// Deletes a session with its events, calls and pending approvals. `NotFound` if absent.
    pub async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        if !valid_id(id) {
            return Err(StoreError::NotFound);
        }
        let mut args = self.base_args();
        args.push(id.into());
        let n: i64 = self.invoke(&SCRIPTS.delete_session, &args).await?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    // --- events --------------------------------------------------------------------------------

    /// Appends an event to a session's stream; returns its id. `NotFound` without the session.
    pub async fn append_event(
        &self,
        session_id: &str,
        event: &Event,
    ) -> Result<String, StoreError> {
        if !valid_id(session_id) {
            return Err(StoreError::NotFound);
        }
        let (kind, data) = event.to_parts();
        let mut args = self.base_args();
        args.extend([session_id.into(), kind.into(), data.to_string()]);
        let id: Option<String> = self.invoke(&SCRIPTS.append_event, &args).await?;
        id.ok_or(StoreError::NotFound)
    }

    /// Up to `count` events strictly after `after` (from the start when `None`), oldest first.
    pub async fn read_events(
        &self,
        session_id: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let after = checked_event_id(after)?;
        if !valid_id(session_id) || count == 0 {
            return Ok(Vec::new());
        }
        let start = match after {
            None => "-".to_string(),
            Some((u64::MAX, u64::MAX)) => return Ok(Vec::new()),
            Some((ms, seq)) => format!("({ms}-{seq}"),
        };
        let reply: StreamRangeReply = self
            .query(
                redis::cmd("XRANGE")
                    .arg(self.inner.keys.events(session_id))
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        reply.ids.iter().map(event_from_entry).collect()
    }

    /// The session's events whose ids fall between `from_ms` and `to_ms` (inclusive; `None`:
    /// up to the newest), at most `count`. Stream ids start with Redis's clock in ms.
    pub async fn read_events_between(
        &self,
        session_id: &str,
        from_ms: u64,
        to_ms: Option<u64>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        if !valid_id(session_id) || count == 0 {
            return Ok(Vec::new());
        }
        let end = to_ms.map_or_else(|| "+".to_string(), |t| format!("{t}-{}", u64::MAX));
        let reply: StreamRangeReply = self
            .query(
                redis::cmd("XRANGE")
                    .arg(self.inner.keys.events(session_id))
                    .arg(format!("{from_ms}-0"))
                    .arg(end)
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        reply.ids.iter().map(event_from_entry).collect()
    }

    /// Like [`Store::read_events`], but when nothing is there yet waits up to `block` (at most
    /// [`MAX_BLOCK`]) for the next event with `XREAD BLOCK`. Returns an empty list on timeout.
    /// Runs on a dedicated connection (see [`BlockingReaders`]).
    pub async fn wait_events(
        &self,
        session_id: &str,
        after: Option<&str>,
        count: usize,
        block: Duration,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let parsed = checked_event_id(after)?;
        if !valid_id(session_id) || count == 0 {
            return Ok(Vec::new());
        }
        let block = block.min(MAX_BLOCK);
        let block_ms = block.as_millis() as u64;
        if block_ms == 0 {
            // BLOCK 0 would mean "forever".
            return self.read_events(session_id, after, count).await;
        }
        let b = &self.inner.blocking;
        let Ok(Ok(_permit)) = tokio::time::timeout(block, b.permits.acquire()).await else {
            // Too many blocked readers: answer with what is there now.
            return self.read_events(session_id, after, count).await;
        };
        let from = match parsed {
            None => "0-0".to_string(),
            Some((ms, seq)) => format!("{ms}-{seq}"),
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(self.inner.keys.events(session_id))
            .arg(from);
        let limit = block + self.inner.opts.response_timeout;
        // A reused connection may have died with a Redis restart: then try once more on a fresh
        // one before reporting Redis unavailable.
        let mut reused = b.take_idle();
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(c) => c,
                None => {
                    let fresh = tokio::time::timeout(
                        self.inner.opts.connect_timeout + Duration::from_millis(500),
                        b.client
                            .get_multiplexed_async_connection_with_config(&b.config),
                    )
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable(format!(
                            "{}: connecting timed out",
                            self.inner.endpoint
                        ))
                    })?;
                    fresh.map_err(|e| self.map_err(e))?
                }
            };
            let res =
                tokio::time::timeout(limit, cmd.query_async::<Option<StreamReadReply>>(&mut conn))
                    .await;
            match res {
                Ok(Ok(reply)) => {
                    b.give_back(conn);
                    let mut out = Vec::new();
                    for k in reply.map(|r| r.keys).unwrap_or_default() {
                        for e in &k.ids {
                            out.push(event_from_entry(e)?);
                        }
                    }
                    return Ok(out);
                }
                Ok(Err(e)) if was_reused && e.is_io_error() => continue,
                Ok(Err(e)) => return Err(self.map_err(e)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "{}: XREAD gave no answer within {limit:?}",
                        self.inner.endpoint
                    )))
                }
            }
        }
    }

    // --- audit ---------------------------------------------------------------------------------

    /// Up to `count` audit entries strictly after `after` (from the start when `None`).
    pub async fn read_audit(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<(String, AuditEntry)>, StoreError> {
        let after = checked_event_id(after)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let start = match after {
            None => "-".to_string(),
            Some((u64::MAX, u64::MAX)) => return Ok(Vec::new()),
            Some((ms, seq)) => format!("({ms}-{seq}"),
        };
        let reply: StreamRangeReply = self
            .query(
                redis::cmd("XRANGE")
                    .arg(self.inner.keys.audit())
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        reply
            .ids
            .iter()
            .map(|e| {
                let mut m = HashMap::new();
                for (k, v) in &e.map {
                    let v = String::from_redis_value(v)
                        .map_err(|_| StoreError::Corrupt(format!("audit {} field `{k}`", e.id)))?;
                    m.insert(k.clone(), v);
                }
                Ok((e.id.clone(), AuditEntry::from_fields(&m)?))
            })
            .collect()
    }

    // --- calls ---------------------------------------------------------------------------------

    pub async fn get_call(&self, id: &str) -> Result<Option<CallRecord>, StoreError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let m: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.inner.keys.call(id)))
            .await?;
        if m.is_empty() {
            return Ok(None);
        }
        CallRecord::from_fields(&m).map(Some)
    }

    /// The session's calls, oldest first.
    pub async fn list_calls(&self, session_id: &str) -> Result<Vec<CallRecord>, StoreError> {
        if !valid_id(session_id) {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = self
            .query(
                redis::cmd("LRANGE")
                    .arg(self.inner.keys.session_calls(session_id))
                    .arg(0)
                    .arg(-1),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.inner.keys.call(id));
        }
        let pipe = &pipe;
        let maps: Vec<HashMap<String, String>> = self
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        maps.iter()
            .filter(|m| !m.is_empty())
            .map(CallRecord::from_fields)
            .collect()
    }

    /// Stores a new call in one script: the call hash, its place in the session's call list,
    /// `event` on the session stream, an audit entry `proposed` (actor: the owner) and, for a
    /// call awaiting approval, the approval key (TTL until `expires_at_ms`) and the pending
    /// index. Returns the event id.
    ///
    /// The status must be `proposed` or one of its successors; `awaiting_approval` requires
    /// `expires_at_ms` (no approval without expiry). `NotFound` without the session, `Invalid`
    /// when the call's owner is not the session's, `Conflict` when the call id exists.
    pub async fn create_call(&self, call: &CallRecord, event: Event) -> Result<String, StoreError> {
        self.create_call_with(call, vec![event]).await
    }

    /// [`Store::create_call`] writing several events in the same script (a call that waits
    /// for approval: `call_proposed` then `approval_required`), each about this call and its
    /// status. Returns the first event's id.
    pub async fn create_call_with(
        &self,
        call: &CallRecord,
        events: Vec<Event>,
    ) -> Result<String, StoreError> {
        if events.is_empty() {
            return Err(StoreError::Invalid("a new call needs an event".into()));
        }
        for e in &events {
            check_call_event(e, &call.id, call.status)?;
        }
        if !valid_id(&call.id) || !valid_id(&call.session_id) {
            return Err(StoreError::Invalid(
                "call and session ids must be UUIDs".into(),
            ));
        }
        let initial = call.status == CallStatus::Proposed
            || CallStatus::Proposed.successors().contains(&call.status);
        if !initial {
            return Err(StoreError::Invalid(format!(
                "a new call cannot start as `{}`",
                call.status
            )));
        }
        if call.status == CallStatus::AwaitingApproval && call.expires_at_ms.is_none() {
            return Err(StoreError::Invalid(
                "a call awaiting approval needs expires_at_ms".into(),
            ));
        }
        let fields = call.to_fields();
        let mut args = self.base_args();
        args.extend([
            call.id.clone(),
            call.session_id.clone(),
            call.owner.clone(),
            fields.len().to_string(),
        ]);
        for (k, v) in fields {
            args.push(k.into());
            args.push(v);
        }
        args.push(events.len().to_string());
        for e in &events {
            let (kind, data) = e.to_parts();
            args.push(kind.into());
            args.push(data.to_string());
        }
        let detail = format!(
            "decision={} rule={}",
            call.decision.as_str(),
            call.rule
        );
        let audit = AuditEntry::for_call(
            call,
            &call.owner,
            "proposed",
            call.status.as_str(),
            Some(detail),
        );
        args.extend(audit.to_fields());
        let r: Vec<String> = self.invoke(&SCRIPTS.create_call, &args).await?;
        match r.first().map(String::as_str) {
            Some("ok") => r
                .get(1)
                .cloned()
                .ok_or_else(|| StoreError::Redis("create_call: no event id".into())),
            Some("no_session") => Err(StoreError::NotFound),
            Some("owner_mismatch") => Err(StoreError::Invalid(
                "the call's owner is not the session's owner".into(),
            )),
            Some("exists") => Err(StoreError::Conflict {
                current: status_of(r.get(1))?,
            }),
            _ => Err(StoreError::Redis(format!("create_call: reply {r:?}"))),
        }
    }

    /// Moves a call to `to` if its current status is one of `CallStatus::predecessors(to)`,
    /// else `Conflict { current }` and nothing changes. In the same script: sets `status`,
    /// `updated_at_ms` and the `patch` fields, appends `event` (which must be about this call
    /// moving to `to`) and `audit`, keeps the approval key / pending index / running set in step.
    ///
    /// Patchable fields: `preview`, `result`, `error`, `outcome` (JSON text),
    /// `expires_at_ms`, `decided_at_ms` (decimal), `expected_sha256`, `decided_by`, `reason`.
    /// Entering `awaiting_approval` requires `expires_at_ms` (on the call or in the patch).
    pub async fn transition(
        &self,
        call_id: &str,
        to: CallStatus,
        patch: &[(&str, String)],
        event: Option<Event>,
        audit: Option<&AuditEntry>,
    ) -> Result<(CallRecord, Option<String>), StoreError> {
        if !valid_id(call_id) {
            return Err(StoreError::NotFound);
        }
        if let Some(e) = &event {
            check_call_event(e, call_id, to)?;
        }
        check_patch(patch)?;
        let allowed: Vec<&str> = CallStatus::predecessors(to)
            .iter()
            .map(|s| s.as_str())
            .collect();
        let mut args = self.base_args();
        args.extend([
            call_id.into(),
            to.as_str().into(),
            allowed.join(","),
            patch.len().to_string(),
        ]);
        for (k, v) in patch {
            args.push((*k).into());
            args.push(v.clone());
        }
        match event {
            Some(e) => {
                let (kind, data) = e.to_parts();
                args.push(kind.into());
                args.push(data.to_string());
            }
            None => {
                args.push(String::new());
                args.push(String::new());
            }
        }
        if let Some(a) = audit {
            args.extend(a.to_fields());
        }
        let r: Vec<String> = self.invoke(&SCRIPTS.transition, &args).await?;
        match r.first().map(String::as_str) {
            Some("ok") => {
                let eid = r.get(1).filter(|e| !e.is_empty()).cloned();
                Ok((CallRecord::from_flat(&r[2..])?, eid))
            }
            Some("not_found") => Err(StoreError::NotFound),
            Some("conflict") => Err(StoreError::Conflict {
                current: status_of(r.get(1))?,
            }),
            Some("no_expiry") => Err(StoreError::Invalid(
                "a call awaiting approval needs expires_at_ms".into(),
            )),
            _ => Err(StoreError::Redis(format!("transition: reply {r:?}"))),
        }
    }

    /// The owner's decision on a call awaiting approval, in one script, failing closed — see
    /// [`DecisionResult`]. `args_sha256` is the hash the user was shown; `now_ms` decides expiry
    /// together with the approval key's TTL. Rejected attempts are audited as `rejected`.
    pub async fn decide(
        &self,
        call_id: &str,
        user: &str,
        args_sha256: &str,
        approve: bool,
        reason: Option<&str>,
        now_ms: u64,
    ) -> Result<DecisionResult, StoreError> {
        if !valid_id(call_id) {
            return Err(StoreError::NotFound);
        }
        let to = if approve {
            CallStatus::Approved
        } else {
            CallStatus::Denied
        };
        let shown = if args_sha256.len() == 64 && args_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            args_sha256.to_string()
        } else {
            "<malformed>".into()
        };
        let args = vec![
            self.inner.keys.prefix.clone(),
            now_ms.to_string(),
            self.instance.to_string(),
            call_id.into(),
            user.into(),
            args_sha256.into(),
            to.as_str().into(),
            reason.unwrap_or("").into(),
            format!("decision carried args_sha256 {shown}"),
            truncate_chars(reason.unwrap_or(""), AUDIT_REASON_CHARS).to_string(),
        ];
        let r: Vec<String> = self.invoke(&SCRIPTS.decide, &args).await?;
        let call = || CallRecord::from_flat(r.get(2..).unwrap_or_default());
        let eid = || r.get(1).cloned().unwrap_or_default();
        match r.first().map(String::as_str) {
            Some("not_found") => Err(StoreError::NotFound),
            Some("not_owner") => Ok(DecisionResult::NotOwner),
            Some("already_decided") => Ok(DecisionResult::AlreadyDecided {
                current: status_of(r.get(1))?,
            }),
            Some("expired") => Ok(DecisionResult::Expired {
                call: call()?,
                event_id: eid(),
            }),
            Some("hash_mismatch") => Ok(DecisionResult::HashMismatch { call: call()? }),
            Some("approved") => Ok(DecisionResult::Approved {
                call: call()?,
                event_id: eid(),
            }),
            Some("denied") => Ok(DecisionResult::Denied {
                call: call()?,
                event_id: eid(),
            }),
            _ => Err(StoreError::Redis(format!("decide: reply {r:?}"))),
        }
    }

    /// Moves every call whose approval window ended at or before `now_ms` to `expired` (event
    /// and audit entry each, through the same script path as `decide`'s expiry, so a racing
    /// approval and expiry resolve to exactly one). Returns the calls it expired.
    pub async fn expire_due(&self, now_ms: u64) -> Result<Vec<CallRecord>, StoreError> {
        let mut out = Vec::new();
        loop {
            let args = vec![
                self.inner.keys.prefix.clone(),
                now_ms.to_string(),
                self.instance.to_string(),
                EXPIRE_BATCH.to_string(),
            ];
            let v: redis::Value = self.invoke(&SCRIPTS.expire_due, &args).await?;
            let items: Vec<redis::Value> = FromRedisValue::from_redis_value(&v)
                .map_err(|e| StoreError::Redis(format!("expire_due reply: {e}")))?;
            let scanned: usize = match items.first() {
                Some(v) => FromRedisValue::from_redis_value(v)
                    .map_err(|e| StoreError::Redis(format!("expire_due reply: {e}")))?,
                None => 0,
            };
            for item in items.iter().skip(1) {
                let flat: Vec<String> = FromRedisValue::from_redis_value(item)
                    .map_err(|e| StoreError::Redis(format!("expire_due reply: {e}")))?;
                out.push(CallRecord::from_flat(&flat)?);
            }
            if scanned < EXPIRE_BATCH {
                return Ok(out);
            }
        }
    }

    /// Ids of calls that are `approved` or `running`: after a restart, none of them is being
    /// run by anyone (with a single orchestrator), see [`Store::fail_interrupted`].
    pub async fn running_calls(&self) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.inner.keys.running()))
            .await?;
        ids.sort();
        Ok(ids)
    }

    /// Asks whichever orchestrator runs call `id` to stop it: each looks for such requests at
    /// every sweep ([`INSTANCE_RENEW`]). The request expires by itself.
    pub async fn request_call_cancel(&self, id: &str) -> Result<(), StoreError> {
        if !valid_id(id) {
            return Ok(());
        }
        self.query::<()>(
            redis::cmd("SET")
                .arg(self.inner.keys.call_cancel(id))
                .arg(&*self.instance)
                .arg("PX")
                .arg(CALL_CANCEL_TTL.as_millis() as u64),
        )
        .await
    }

    /// Which of `ids` someone asked to stop (see [`Store::request_call_cancel`]).
    pub async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let ids: Vec<&String> = ids.iter().filter(|i| valid_id(i)).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|i| self.inner.keys.call_cancel(i)).collect();
        let found: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
        Ok(ids
            .into_iter()
            .zip(found)
            .filter_map(|(i, f)| f.map(|_| i.clone()))
            .collect())
    }

    /// Every call in flight (`approved` or `running`) with the instance that runs it (`None`
    /// for a call moved in flight before runners were recorded), sorted by id.
    pub async fn inflight_calls(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let ids = self.running_calls().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let runners: Vec<Option<String>> = self
            .query(redis::cmd("HMGET").arg(self.inner.keys.runners()).arg(&ids))
            .await?;
        Ok(ids.into_iter().zip(runners).collect())
    }

    /// Takes the lease of this handle's instance for `holder` (a string unique to this process,
    /// see [`lease_holder`]). Succeeds when nobody holds it, when `holder` already does, or when
    /// the current holder is `takeover_from` (a predecessor known to be dead); otherwise says
    /// who holds it and for how much longer.
    pub async fn claim_instance(
        &self,
        holder: &str,
        takeover_from: Option<&str>,
    ) -> Result<Claim, StoreError> {
        let args = [
            self.inner.keys.instance_lease(&self.instance),
            holder.to_string(),
            INSTANCE_LEASE.as_millis().to_string(),
            takeover_from.unwrap_or("").to_string(),
        ];
        let r: Vec<String> = self.invoke(&LEASE_SCRIPTS.claim, &args).await?;
        match r.first().map(String::as_str) {
            Some("claimed") => Ok(Claim::Claimed),
            Some("held") => Ok(Claim::Held {
                holder: r.get(1).cloned().unwrap_or_default(),
                ttl_ms: r
                    .get(2)
                    .and_then(|t| t.parse::<i64>().ok())
                    .unwrap_or(0)
                    .max(0) as u64,
            }),
            _ => Err(StoreError::Redis(format!("claim_instance: reply {r:?}"))),
        }
    }

    /// Renews the lease `holder` holds (taking it again if it lapsed meanwhile, e.g. during a
    /// Redis outage). `Ok(false)`: another process holds it now.
    pub async fn renew_instance(&self, holder: &str) -> Result<bool, StoreError> {
        let args = [
            self.inner.keys.instance_lease(&self.instance),
            holder.to_string(),
            INSTANCE_LEASE.as_millis().to_string(),
        ];
        let r: i64 = self.invoke(&LEASE_SCRIPTS.renew, &args).await?;
        Ok(r != 0)
    }

    /// Gives the lease up if `holder` holds it (a clean stop: a successor need not wait).
    pub async fn release_instance(&self, holder: &str) -> Result<(), StoreError> {
        let args = [
            self.inner.keys.instance_lease(&self.instance),
            holder.to_string(),
        ];
        let _: i64 = self.invoke(&LEASE_SCRIPTS.release, &args).await?;
        Ok(())
    }

    /// Whether some orchestrator holds `instance`'s lease (is alive, as far as Redis knows).
    pub async fn instance_alive(&self, instance: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .query(redis::cmd("EXISTS").arg(self.inner.keys.instance_lease(instance)))
            .await?;
        Ok(n == 1)
    }
}

fn status_of(s: Option<&String>) -> Result<CallStatus, StoreError> {
    s.and_then(|s| CallStatus::parse(s))
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
}

fn session_from_fields(m: &HashMap<String, String>) -> Result<SessionRecord, StoreError> {
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

/// How much of a decision's reason the audit entry keeps.
const AUDIT_REASON_CHARS: usize = 256;

/// The first `n` characters of `s` (never splits a UTF-8 sequence).
fn truncate_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn redact(msg: &str, secrets: &[String]) -> String {
    let mut out = msg.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_lease_holder_is_dead_only_when_this_host_can_tell() {
        let me = lease_holder();
        let parts: Vec<&str> = me.split('/').collect();
        assert_eq!(parts.len(), 3, "{me}");
        assert_eq!(parts[0], host_name());
        assert_eq!(parts[1], std::process::id().to_string());
        // Our own pid: an earlier process with it is gone (a restarted container's pid 1).
        assert!(holder_is_dead_here(&me));
        // A live process of this host (our parent) is not dead.
        let parent = std::os::unix::process::parent_id();
        assert!(!holder_is_dead_here(&format!("{}/{parent}/x", host_name())));
        // A process that has exited is.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(holder_is_dead_here(&format!("{}/{pid}/x", host_name())));
        // Another host, or anything unparseable, must wait for its lease to lapse.
        assert!(!holder_is_dead_here(&format!(
            "not-{}/{pid}/x",
            host_name()
        )));
        for bad in [
            "",
            "h",
            "h/1",
            "h/notapid/x",
            &format!("{}/0/x", host_name()),
        ] {
            assert!(!holder_is_dead_here(bad), "{bad:?}");
        }
    }

    fn call() -> CallRecord {
        CallRecord {
            id: "c1".into(),
            session_id: "s1".into(),
            owner: "alice".into(),
            tool: "read_file".into(),
            args: json!({"path": "a.txt"}),
            args_sha256: "ab".repeat(32),
            status: CallStatus::AwaitingApproval,
            decision: Decision::Ask,
            rule: "ask-reads".into(),
            policy_sha256: "cd".repeat(32),
            preview: Some(json!({"diff": "--- a\n+++ b\n"})),
            expected_sha256: None,
            created_at_ms: 1,
            updated_at_ms: 2,
            expires_at_ms: Some(3),
            decided_by: None,
            decided_at_ms: None,
            reason: Some("why: not".into()),
            result: None,
            error: Some(json!({"code": "x"})),
            outcome: None,
        }
    }

    #[test]
    fn call_records_round_trip_through_hash_fields() {
        let c = call();
        let m: HashMap<String, String> = c
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert!(!m.contains_key("result") && !m.contains_key("decided_by"));
        assert_eq!(m["status"], "awaiting_approval");
        assert_eq!(m["decision"], "ask");
        assert_eq!(CallRecord::from_fields(&m).unwrap(), c);
        let mut bad = m.clone();
        bad.insert("status".into(), "approve".into());
        assert!(matches!(
            CallRecord::from_fields(&bad),
            Err(StoreError::Corrupt(_))
        ));
        bad = m;
        bad.remove("args");
        assert!(matches!(
            CallRecord::from_fields(&bad),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn key_names() {
        let k = Keys::new("airlock:");
        assert_eq!(k.session("s"), "airlock:session:s");
        assert_eq!(k.user_sessions("bob"), "airlock:user:bob:sessions");
        assert_eq!(k.events("s"), "airlock:session:s:events");
        assert_eq!(k.session_calls("s"), "airlock:session:s:calls");
        assert_eq!(k.call("c"), "airlock:call:c");
        assert_eq!(k.approval("c"), "airlock:approval:c");
        assert_eq!(k.pending(), "airlock:pending");
        assert_eq!(k.running(), "airlock:running");
        assert_eq!(k.audit(), "airlock:audit");
    }

    #[test]
    fn ids_are_checked_before_they_become_keys() {
        assert!(valid_id(&uuid::Uuid::new_v4().to_string()));
        for bad in ["", "a:events", "a b", "../x", "x*", &"a".repeat(65), "é"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn event_ids_parse_strictly() {
        assert_eq!(parse_event_id("1732420000000-0"), Some((1732420000000, 0)));
        assert_eq!(parse_event_id("0-0"), Some((0, 0)));
        for bad in [
            "",
            "1",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "+1-0",
            "1-+0",
            "1-0-0",
            " 1-0",
            "1-0 ",
            "99999999999999999999999-0",
            "(1-0",
            "$",
            ">",
        ] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
        assert!(matches!(
            checked_event_id(Some("nope")),
            Err(StoreError::InvalidEventId(_))
        ));
        assert_eq!(checked_event_id(None), Ok(None));
    }

    #[test]
    fn urls_and_messages_are_redacted() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://:pw@h"), "rediss://***@h");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(
            redact_url("unix:///run/redis.sock"),
            "unix:///run/redis.sock"
        );
        assert_eq!(
            redact("auth failed for s3cret", &["s3cret".into()]),
            "auth failed for ***"
        );
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("ab", 5), "ab");
        assert_eq!(truncate_chars(&"é".repeat(300), 256).chars().count(), 256);
    }

    #[test]
    fn patches_are_checked() {
        assert!(check_patch(&[("result", "{\"ok\":1}".into()), ("reason", "x".into())]).is_ok());
        assert!(check_patch(&[("result", "not json".into())]).is_err());
        assert!(check_patch(&[("expires_at_ms", "soon".into())]).is_err());
        for forbidden in ["status", "owner", "id", "session_id", "args", "args_sha256"] {
            assert!(
                matches!(
                    check_patch(&[(forbidden, "x".into())]),
                    Err(StoreError::Invalid(_))
                ),
                "{forbidden}"
            );
        }
    }

    #[test]
    fn call_events_must_name_the_call_and_its_new_status() {
        use crate::events::CallState;
        let e = Event::CallStarted(CallState {
            call_id: "c".into(),
            status: CallStatus::Running,
        });
        assert_eq!(check_call_event(&e, "c", CallStatus::Running), Ok(()));
        assert!(check_call_event(&e, "d", CallStatus::Running).is_err());
        assert!(check_call_event(&e, "c", CallStatus::Failed).is_err());
    }

    #[test]
    fn audit_entries_round_trip() {
        let a = AuditEntry::for_call(&call(), "alice", "approved", "approved", None);
        let m = pairs(&a.to_fields());
        assert_eq!(AuditEntry::from_fields(&m).unwrap(), a);
        assert!(!m.contains_key("detail"));
    }
}
