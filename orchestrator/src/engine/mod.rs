//! The call engine: policy → preview → approval → sandbox for every tool call, with state
//! kept in the store. The API layer calls this; it never talks to Docker or Redis itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use airlock_executor::protocol::{Event, Mode, Request, StreamKind, ToolCall, ToolResult};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::calls::{finished_status, CallStatus, Decision};
use crate::config::LimitsConfig;
use crate::events::{self as ev, ErrorInfo};
use crate::metrics::Metrics;
use crate::policy::{Grant, Policy, User};
use crate::quota::{CallSlot, QuotaError, Quotas};
use crate::sandbox::{CallSpec, Prepared, Sandbox, SandboxError, SandboxEvent};

use crate::store::{
    now_ms, AgentStore, AuditEntry, CallRecord, ChainedEntry, DecisionResult, GrantAdded,
    SessionRecord, Store, StoreError, StoredEvent,
};

// The engine's work, by concern; each is an `impl Engine` block.
mod decide;
mod mcp;
mod propose;
mod recovery;
mod retention;
mod revert;
mod run;
mod sessions;
pub use decide::Replacement;
pub use retention::RetentionReport;

/// Errors of the engine, mapped to HTTP statuses by the API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Busy(String),
    #[error("state store unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("sandbox unavailable: {0}")]
    Sandbox(#[from] SandboxError),
}

impl From<QuotaError> for EngineError {
    fn from(e: QuotaError) -> EngineError {
        match e {
            QuotaError::Over(m) => EngineError::Busy(m),
            QuotaError::Store(e) => EngineError::Store(e),
        }
    }
}

/// The hash an approval is bound to: the tool, its exact arguments, and the sha256 of the
/// file the preview was computed against (so approving one diff never applies another).
pub fn binding_sha256(tool: &str, args: &Value, preview_base: Option<&str>) -> String {
    // serde_json's map is ordered by key, so this serialisation is canonical.
    let canonical = json!({ "tool": tool, "args": args, "preview_base_sha256": preview_base });
    hex::encode(Sha256::digest(
        serde_json::to_vec(&canonical).expect("values serialize"),
    ))
}

type PrepareTask = JoinHandle<Result<Prepared, SandboxError>>;

/// Most grants one session may hold.
pub const MAX_GRANTS_PER_SESSION: usize = 64;

pub struct Engine {
    store: Store,
    sandbox: Sandbox,
    policy: RwLock<Arc<Policy>>,
    limits: LimitsConfig,
    /// Containers started for calls awaiting approval (design: start during approval).
    prepared: Mutex<HashMap<String, PrepareTask>>,
    /// Cancel tokens of running calls.
    running: Mutex<HashMap<String, CancellationToken>>,
    global: Arc<Semaphore>,
    per_user: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// The policy's per-user limits on concurrent calls and calls per minute.
    quotas: Quotas,
    /// Why the last policy reload was rejected (None after a good one).
    policy_error: Mutex<Option<String>>,
    pub metrics: Metrics,
    tasks: TaskTracker,
    /// Cancelled at shutdown: ends background watchers.
    stop: CancellationToken,
    /// This process's hold on the instance's lease in Redis (set by `server::build`), given
    /// up at shutdown.
    lease: Mutex<Option<String>>,
    /// Approval notifications (webhooks), when configured.
    notifier: std::sync::OnceLock<crate::notify::Notifier>,
    /// How undo records are kept (`[undo]`), when the server set it.
    undo: std::sync::OnceLock<crate::config::UndoConfig>,
}

impl Engine {
    pub fn new(
        store: Store,
        sandbox: Sandbox,
        policy: Policy,
        limits: LimitsConfig,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            quotas: Quotas::new(store.clone()),
            store,
            sandbox,
            policy: RwLock::new(Arc::new(policy)),
            global: Arc::new(Semaphore::new(limits.max_running_total)),
            limits,
            prepared: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            per_user: Mutex::new(HashMap::new()),
            policy_error: Mutex::new(None),
            metrics: Metrics::default(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            lease: Mutex::new(None),
            notifier: std::sync::OnceLock::new(),
            undo: std::sync::OnceLock::new(),
        })
    }

    /// Sends a notification for every call that starts waiting for approval (set once, by
    /// `server::build`).
    pub fn set_notifier(&self, n: crate::notify::Notifier) {
        let _ = self.notifier.set(n);
    }

    /// Records that this process holds the instance's lease as `holder` (renewed by
    /// [`Engine::renew_lease`], released at shutdown).
    pub fn set_lease_holder(&self, holder: String) {
        *self.lease.lock().expect("lease lock") = Some(holder);
    }

    /// Renews the instance's lease. A lease another process holds now means two orchestrators
    /// use the same instance name on one Redis: said loudly, never taken back by force.
    pub async fn renew_lease(&self) {
        let Some(holder) = self.lease.lock().expect("lease lock").clone() else {
            return;
        };
        match self.store.renew_instance(&holder).await {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                instance = %self.store.instance(),
                "another orchestrator holds this instance's lease: each orchestrator sharing a Redis needs its own `instance` name"
            ),
            Err(e) => tracing::debug!(error = %e, "could not renew the instance lease"),
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("policy lock").clone()
    }

    /// Puts a new policy in force (see `server::reload_policy`). Calls awaiting approval are
    /// evaluated again under it when approved; prepared containers whose profile it changes
    /// are replaced before they run anything.
    pub fn set_policy(&self, p: Policy) {
        let changed = self.policy().sha256 != p.sha256;
        *self.policy.write().expect("policy lock") = Arc::new(p);
        *self.policy_error.lock().expect("policy error lock") = None;
        // No call runs in a container made under an older policy. (A SIGHUP that reloads the
        // same file keeps them: it is the same policy.)
        if changed {
            self.sandbox.pool_clear_policy();
        }
    }

    /// Records why a new version of the policy file was rejected (the old one stays).
    pub fn set_policy_error(&self, e: String) {
        *self.policy_error.lock().expect("policy error lock") = Some(e);
    }

    /// Why the last reload of the policy file was rejected, if it was.
    pub fn policy_error(&self) -> Option<String> {
        self.policy_error.lock().expect("policy error lock").clone()
    }

    /// Ends call `id` as `failed` with `error`: the record, its `call_finished` event and
    /// `audit` in one script.
    async fn fail_call(
        &self,
        id: &str,
        error: ErrorInfo,
        audit: Option<&AuditEntry>,
    ) -> Result<CallRecord, StoreError> {
        let patch = [("error", error.to_value().to_string())];
        let event = ev::Event::CallFinished(ev::CallFinished {
            call_id: id.to_string(),
            status: CallStatus::Failed,
            result: None,
            error: Some(error),
            outcome: None,
            undo: None,
        });
        let (rec, _) = self
            .store
            .transition(id, CallStatus::Failed, &patch, Some(event), audit)
            .await?;
        Ok(rec)
    }

    async fn audit_for_id(&self, id: &str, actor: &str, action: &str) -> Option<AuditEntry> {
        let rec = self.store.get_call(id).await.ok().flatten()?;
        Some(self.audit(&rec, actor, action, action))
    }

    fn audit(&self, rec: &CallRecord, actor: &str, action: &str, outcome: &str) -> AuditEntry {
        AuditEntry::for_call(rec, actor, action, outcome, None)
    }

    /// Waits for every spawned call to finish (graceful shutdown).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let tasks: Vec<_> = self
            .prepared
            .lock()
            .expect("prepared lock")
            .drain()
            .collect();
        for (_, t) in tasks {
            if let Ok(Ok(p)) = t.await {
                p.discard().await;
            }
        }
        self.sandbox.close_pool();
        self.sandbox.drain().await;
    }

    /// Gives up the instance's lease (after [`Engine::shutdown`] and the last renewal), so a
    /// successor starts without waiting for it to lapse.
    pub async fn release_lease(&self) {
        let holder = self.lease.lock().expect("lease lock").take();
        if let Some(h) = holder {
            if let Err(e) = self.store.release_instance(&h).await {
                tracing::warn!(error = %e, "could not release the instance lease; it lapses by itself");
            }
        }
    }

    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    // ---- what the front ends read ------------------------------------------------------------

    /// Readiness: Redis answers PING and Docker answers within 3 s, as (redis, docker).
    pub async fn readiness(&self) -> (bool, bool) {
        let (redis, docker) = tokio::join!(self.store.ping(), async {
            tokio::time::timeout(Duration::from_secs(3), self.sandbox.docker().ping()).await
        });
        (redis.is_ok(), matches!(docker, Ok(Ok(_))))
    }

    /// The Prometheus text of `/metrics` (the pending count is left out when Redis is away).
    pub async fn metrics_text(&self) -> String {
        let pending = self.store.pending_count().await.ok();
        let hooks = self
            .notifier
            .get()
            .map(|n| n.metrics_text())
            .unwrap_or_default();
        self.metrics
            .render(self.sandbox.containers_in_use(), pending)
            + &crate::metrics::render_pool(&self.sandbox.pool_stats())
            + &hooks
    }

    /// The calls of a session `user` owns, oldest first.
    pub async fn list_calls(
        &self,
        user: &User,
        session_id: &str,
    ) -> Result<Vec<CallRecord>, EngineError> {
        self.owned_session(user, session_id).await?;
        let mut calls = self.store.list_calls(session_id).await?;
        calls.retain(|c| c.owner == user.name);
        Ok(calls)
    }

    /// Up to `limit` audit entries after `after`, oldest first (admins only).
    pub async fn audit_page(
        &self,
        user: &User,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChainedEntry>, EngineError> {
        if user.role != crate::policy::Role::Admin {
            return Err(EngineError::Forbidden("the audit log is for admins".into()));
        }
        Ok(self.store.read_audit(after, limit).await?)
    }

    /// The events of a session `user` owns after `after`, as they happen: one blocking reader
    /// of its own per subscriber (WebSocket, SSE, the agent waiting for its calls). The stream
    /// keeps its pending read when the caller polls it from a `select!` that other branches
    /// win, so client frames do not cost a Redis reconnect. A malformed `after` is refused now;
    /// the stream yields an error and ends when Redis goes away (the client resumes after the
    /// last id it saw).
    pub async fn follow(
        &self,
        user: &User,
        session_id: &str,
        after: Option<String>,
        block: Duration,
    ) -> Result<EventStream, EngineError> {
        self.owned_session(user, session_id).await?;
        // A malformed resume point is a 400 now rather than a dead stream.
        crate::store::checked_event_id(after.as_deref())?;
        Ok(follow_store(
            self.store.clone(),
            session_id.to_string(),
            after,
            block,
        ))
    }

    /// The agent's handle on its own state: conversation history, turn lock, and appending
    /// its events to a session. It cannot touch calls, approvals or the audit.
    pub fn agent_store(&self) -> AgentStore {
        AgentStore::new(self.store.clone())
    }

    /// Checks that the sandbox can serve `policy` (its runtimes exist, its images are there
    /// and pinned) before it is put in force.
    pub async fn admit_policy(&self, policy: &Policy) -> Result<(), String> {
        admit_policy(&self.sandbox, policy).await
    }
}

/// A session's events as they happen; see [`Engine::follow`].
pub type EventStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<StoredEvent, EngineError>> + Send>>;

fn follow_store(
    store: Store,
    session_id: String,
    after: Option<String>,
    block: Duration,
) -> EventStream {
    let state = (
        store,
        session_id,
        after,
        std::collections::VecDeque::new(),
        false,
    );
    Box::pin(futures_util::stream::unfold(
        state,
        move |(store, sid, mut after, mut buf, failed)| async move {
            if failed {
                return None;
            }
            loop {
                if let Some(e) = buf.pop_front() {
                    let e: StoredEvent = e;
                    after = Some(e.id.clone());
                    return Some((Ok(e), (store, sid, after, buf, false)));
                }
                match store.wait_events(&sid, after.as_deref(), 100, block).await {
                    Ok(evs) => buf.extend(evs),
                    Err(e) => return Some((Err(e.into()), (store, sid, after, buf, true))),
                }
            }
        },
    ))
}

/// The policy's runtimes and images exist on this Docker engine (images are pinned).
pub async fn admit_policy(sandbox: &Sandbox, policy: &Policy) -> Result<(), String> {
    for rt in policy.runtimes() {
        if !sandbox.has_runtime(rt) {
            return Err(format!(
                "{}: the policy uses the OCI runtime `{rt}`, which the Docker engine does not have (see `docker info` → Runtimes; for runsc: scripts/enable-gvisor.sh)",
                policy.path
            ));
        }
    }
    for image in policy.images() {
        sandbox
            .pin_image(&image)
            .await
            .map_err(|e| format!("{}: image `{image}`: {e}", policy.path))?;
    }
    Ok(())
}
