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
//! | `{p}session:{sid}:history`, `{p}session:{sid}:turn`, `{p}session:{sid}:turn_cancel` | the agent's conversation and turn lock: see `store/history.rs` | | deleted with the session, in the same script |
//! | `{p}user:{owner}:mcp:{digest}` | string: the session an MCP conversation runs in (`digest` = sha256 of the client's name and conversation id) | `bind_mcp_conversation` | `EX` = 30 days, renewed on use |
//! | `{p}mcp:state_key` | string: 32 random bytes (hex) that sign MCP `requestState` on every replica | `mcp_state_key` (`SET NX`) | none |
//! | `{p}audit` | stream, entries: the [`AuditEntry`] fields | `create_call`, `transition`, `decide`, `expire_due` | none (append-only, never trimmed) |
//!
//! # Atomicity
//!
//! Every change that touches more than one key is one Lua script (`redis::Script`, sent as
//! `EVALSHA` and re-loaded automatically after a Redis restart), so of two concurrent requests
//! exactly one wins: a call's status is read and checked against
//! [`CallStatus::predecessors`] inside the script that changes it. The scripts live in
//! `store/lua/*.lua` (loaded with `include_str!`), each starting with a comment that lists its
//! `KEYS` and `ARGV`. Every key known before a script runs is passed in `KEYS`; the call
//! scripts derive the keys that depend on what they read (the session of a call, the calls of
//! a deleted session) from the prefix, so the schema targets a single Redis (or a
//! Sentinel-managed primary), not Redis Cluster.
//!
//! # Code map
//!
//! `keys.rs` (key names, id checks), `codec.rs` (records and their hash/stream encoding),
//! `sessions.rs`, `stream.rs` (session events, blocking reads), `calls.rs` (the call state
//! machine's writes), `audit.rs`, `leases.rs` (instance leases), `history.rs` (the agent's
//! handle), `quota.rs` (slots, proposal windows, grants).
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

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ErrorKind, FromRedisValue, RedisError, Script};
use tokio::sync::Semaphore;

use crate::calls::CallStatus;

/// The agent's keys (conversation history, turn lock): a separate `impl Store`.
mod history;
pub use history::{AgentStore, Heartbeat, TURN_HEARTBEAT, TURN_LOCK_TTL};

/// Quotas and session grants, shared by every orchestrator on one Redis.
mod quota;
pub use quota::{GrantAdded, Rate, Reservation, RATE_WINDOW, SLOT_TTL};

mod audit;
mod calls;
mod codec;
mod keys;
mod leases;
mod mcp;
pub mod probe;
mod sessions;
mod stream;
mod undo;
pub use audit::{
    chain_hash, ChainPoint, ChainProblem, ChainReport, ChainedEntry, TrimReport, GENESIS_HASH,
};
pub use calls::CALL_CANCEL_TTL;
pub use codec::{AuditEntry, CallRecord, DecisionResult, SessionRecord, StoredEvent};
pub use keys::{checked_event_id, parse_event_id, valid_id, Keys};
pub use leases::{
    holder_is_dead_here, host_name, lease_holder, Claim, INSTANCE_LEASE, INSTANCE_RENEW,
};
pub use stream::MAX_BLOCK;
pub use undo::StoredUndo;

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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

    /// Runs a Lua script with its `KEYS` and `ARGV`.
    async fn invoke<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        let inv = &inv;
        self.run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await
    }

    /// Every hash in `keys`, in one pipeline (an absent key reads as an empty map).
    async fn hgetall_many(
        &self,
        keys: impl Iterator<Item = String>,
    ) -> Result<Vec<std::collections::HashMap<String, String>>, StoreError> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.hgetall(k);
        }
        let pipe = &pipe;
        self.run(|mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    /// `KEYS[1..5]` of every script built on `prelude.lua`, then `more`.
    fn call_keys(&self, more: &[String]) -> Vec<String> {
        let k = &self.inner.keys;
        let mut v = vec![
            k.pending(),
            k.running(),
            k.runners(),
            k.audit(),
            k.audit_head(),
        ];
        v.extend_from_slice(more);
        v
    }

    /// `ARGV[1..5]` of every script built on `prelude.lua`: the prefix, now, the instance and
    /// no precomputed audit link (see [`Store::link_audit`]).
    fn base_args(&self) -> Vec<String> {
        self.args_at(now_ms())
    }

    /// [`Store::base_args`] with `now` given.
    fn args_at(&self, now: u64) -> Vec<String> {
        vec![
            self.inner.keys.prefix.clone(),
            now.to_string(),
            self.instance.to_string(),
            String::new(),
            String::new(),
        ]
    }

    /// Puts into `args` (from [`Store::base_args`]) the link of an audit entry with `fields`
    /// after the head as it is now (`audit::put_link`). The head cannot be read → no link:
    /// the script hashes in Lua, or fails on its own terms.
    async fn link_audit(&self, args: &mut [String], fields: &[String]) {
        let head: Option<(Option<String>, Option<String>)> = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.inner.keys.audit_head())
                    .arg("seq")
                    .arg("hash"),
            )
            .await
            .ok();
        if let Some(head) = head {
            audit::put_link(args, head, fields);
        }
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
}

fn redact(msg: &str, secrets: &[String]) -> String {
    let mut out = msg.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Lua, in `store/lua/`. The call scripts share `prelude.lua` (KEYS[1..5]: the shared indexes;
// ARGV[1..5]: the prefix, now, the instance and an audit link, the last two removed by the
// prelude); the others stand alone.

const PRELUDE: &str = include_str!("lua/prelude.lua");

struct Scripts {
    create_call: Script,
    transition: Script,
    decide: Script,
    expire_due: Script,
    delete_session: Script,
    trim_audit: Script,
    append_event: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
    Scripts {
        create_call: s(include_str!("lua/create_call.lua")),
        transition: s(include_str!("lua/transition.lua")),
        decide: s(include_str!("lua/decide.lua")),
        expire_due: s(include_str!("lua/expire_due.lua")),
        delete_session: s(include_str!("lua/delete_session.lua")),
        trim_audit: s(include_str!("lua/trim_audit.lua")),
        append_event: Script::new(include_str!("lua/append_event.lua")),
    }
});

struct LeaseScripts {
    claim: Script,
    renew: Script,
    release: Script,
}

static LEASE_SCRIPTS: LazyLock<LeaseScripts> = LazyLock::new(|| LeaseScripts {
    claim: Script::new(include_str!("lua/claim_instance.lua")),
    renew: Script::new(include_str!("lua/renew_instance.lua")),
    release: Script::new(include_str!("lua/release_instance.lua")),
});

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::calls::{check_call_event, truncate_chars};
    use super::codec::{check_patch, pairs};
    use super::*;
    use crate::calls::Decision;
    use crate::events::Event;
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
            args_sha256: "ab".repeat(32),
            status: CallStatus::AwaitingApproval,
            decision: Decision::Ask,
            rule: "ask-reads".into(),
            policy_sha256: "cd".repeat(32),
            preview: Some(json!({"diff": "--- a\n+++ b\n"})),
            updated_at_ms: 2,
            expires_at_ms: Some(3),
            reason: Some("why: not".into()),
            error: Some(json!({"code": "x"})),
            ..CallRecord::new(
                "c1",
                "s1",
                "alice",
                "read_file",
                json!({"path": "a.txt"}),
                1,
            )
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
    fn an_edit_sets_exactly_its_four_well_formed_fields_and_names_what_it_replaces() {
        use super::codec::check_edit_patch;
        let sha = "a".repeat(64);
        let good = |sha: &str| {
            vec![
                ("args", "{\"path\":\"f\"}".to_string()),
                ("args_sha256", sha.to_string()),
                ("preview", "{\"diff\":\"\"}".to_string()),
                ("edited", "{\"by\":\"alice\"}".to_string()),
                ("expect_args_sha256", "b".repeat(64)),
            ]
        };
        assert!(check_edit_patch(&good(&sha)).is_ok());
        assert!(check_edit_patch(&good("not a hash")).is_err());
        let mut more = good(&sha);
        more.push(("status", "approved".into()));
        assert!(check_edit_patch(&more).is_err());
        assert!(check_edit_patch(&good(&sha)[..4]).is_err());
        assert!(check_edit_patch(&good(&sha)[1..]).is_err());
        let mut bad = good(&sha);
        bad[0].1 = "[1]".into();
        assert!(check_edit_patch(&bad).is_err());
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
