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
    now_ms, AgentStore, AuditEntry, CallRecord, DecisionResult, GrantAdded, SessionRecord, Store,
    StoreError, StoredEvent,
};

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
        })
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
        *self.policy.write().expect("policy lock") = Arc::new(p);
        *self.policy_error.lock().expect("policy error lock") = None;
    }

    /// Records why a new version of the policy file was rejected (the old one stays).
    pub fn set_policy_error(&self, e: String) {
        *self.policy_error.lock().expect("policy error lock") = Some(e);
    }

    /// Why the last reload of the policy file was rejected, if it was.
    pub fn policy_error(&self) -> Option<String> {
        self.policy_error.lock().expect("policy error lock").clone()
    }

    /// After a restart: calls this instance was running (and calls of instances that are gone)
    /// are failed, this instance's leftover containers removed. Pending approvals stay pending;
    /// approving one starts a fresh container. Calls that another live orchestrator is running
    /// are left to it.
    pub async fn recover(&self) -> Result<(usize, usize), EngineError> {
        let failed = self.fail_orphaned(true).await?;
        let reaped = self.sandbox.reap().await?;
        Ok((failed, reaped))
    }

    /// Fails the calls in flight whose orchestrator is gone (its lease lapsed): run
    /// periodically by every live orchestrator, so a call never stays `running` forever when
    /// the instance running it died and does not come back.
    pub async fn fail_orphans(&self) -> Result<usize, EngineError> {
        self.fail_orphaned(false).await
    }

    /// Fails the calls in flight nobody runs any more: those of instances without a lease and,
    /// `at_start`, this instance's own and those with no recorded runner (moved in flight by a
    /// version that did not record runners; a restart replaced it). Otherwise this process
    /// tracks its own calls. The containers of other instances' calls are removed (nobody
    /// enforces their deadlines); this instance's are reaped by label at start-up.
    async fn fail_orphaned(&self, at_start: bool) -> Result<usize, EngineError> {
        let me = self.store.instance();
        let mut failed = 0;
        let mut alive: HashMap<String, bool> = HashMap::new();
        for (id, runner) in self.store.inflight_calls().await? {
            let orphaned = match runner.as_deref() {
                None => at_start,
                Some(r) if r == me => at_start,
                Some(r) => match alive.get(r) {
                    Some(a) => !a,
                    None => {
                        let a = self.store.instance_alive(r).await?;
                        alive.insert(r.to_string(), a);
                        !a
                    }
                },
            };
            if !orphaned || !self.fail_interrupted(&id, runner.as_deref()).await {
                continue;
            }
            failed += 1;
            if runner.as_deref() != Some(me) {
                tracing::warn!(call_id = %id, instance = ?runner, "failed a call whose orchestrator is gone");
                if let Err(e) = self.sandbox.reap_call(&id).await {
                    tracing::warn!(call_id = %id, error = %e, "could not remove the orphaned call's container");
                }
            }
        }
        Ok(failed)
    }

    /// What other orchestrators decided about this one's calls, applied here (every sweep):
    /// running calls someone asked to cancel are stopped, and containers prepared for
    /// approvals that were decided (or expired, or cancelled) elsewhere are removed.
    pub async fn reconcile(&self) -> Result<(), EngineError> {
        // The user's places held by calls this process runs stay taken while it lives.
        self.quotas.renew().await?;
        let running: Vec<String> = self
            .running
            .lock()
            .expect("running lock")
            .keys()
            .cloned()
            .collect();
        for id in self.store.cancel_requested(&running).await? {
            if let Some(t) = self.running.lock().expect("running lock").get(&id) {
                tracing::info!(call_id = %id, "cancelled from another orchestrator");
                t.cancel();
            }
        }
        let prepared: Vec<String> = self
            .prepared
            .lock()
            .expect("prepared lock")
            .keys()
            .cloned()
            .collect();
        if prepared.is_empty() {
            return Ok(());
        }
        let me = self.store.instance().to_string();
        let runners: HashMap<String, Option<String>> =
            self.store.inflight_calls().await?.into_iter().collect();
        for id in prepared {
            let Some(rec) = self.store.get_call(&id).await? else {
                self.discard_prepared(&id);
                continue;
            };
            let elsewhere = match runners.get(&id) {
                Some(Some(r)) => *r != me,
                _ => false,
            };
            if rec.status.is_terminal() || elsewhere {
                self.discard_prepared(&id);
            }
        }
        Ok(())
    }

    /// Moves an in-flight call to `failed` (`interrupted`, outcome unknown); `runner` is the
    /// instance that was running it.
    async fn fail_interrupted(&self, id: &str, runner: Option<&str>) -> bool {
        let message = match runner {
            Some(r) if r != self.store.instance() => format!(
                "the orchestrator instance `{r}` running this call stopped; its outcome is unknown"
            ),
            _ => "the orchestrator restarted while the call was running; its outcome is unknown"
                .to_string(),
        };
        let audit = self.audit_for_id(id, "system", "interrupted").await;
        self.fail_call(id, ErrorInfo::new("interrupted", message), audit.as_ref())
            .await
            .is_ok()
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
        AuditEntry {
            at_ms: now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            session_id: rec.session_id.clone(),
            call_id: rec.id.clone(),
            tool: rec.tool.clone(),
            args_sha256: rec.args_sha256.clone(),
            outcome: outcome.to_string(),
            policy_sha256: rec.policy_sha256.clone(),
            detail: None,
        }
    }

    // ---- sessions -------------------------------------------------------------------------

    pub async fn create_session(&self, user: &User) -> Result<SessionRecord, EngineError> {
        Ok(self.store.create_session(&user.name).await?)
    }

    pub async fn list_sessions(&self, user: &User) -> Result<Vec<SessionRecord>, EngineError> {
        Ok(self.store.list_sessions(&user.name).await?)
    }

    /// The session if it exists and belongs to `user` (another user's session is "not found").
    pub async fn owned_session(&self, user: &User, id: &str) -> Result<SessionRecord, EngineError> {
        match self.store.get_session(id).await? {
            Some(s) if s.owner == user.name => Ok(s),
            _ => Err(EngineError::NotFound("session")),
        }
    }

    pub async fn delete_session(&self, user: &User, id: &str) -> Result<(), EngineError> {
        self.owned_session(user, id).await?;
        // One script: the agent's conversation and turn lock go with the session's events and
        // calls (and a turn still running cannot write them back: its appends need the session).
        self.store.delete_session(id).await?;
        Ok(())
    }

    pub async fn history(
        &self,
        user: &User,
        id: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, EngineError> {
        self.owned_session(user, id).await?;
        Ok(self.store.read_events(id, after, count).await?)
    }

    /// The call if it belongs to `user`.
    pub async fn owned_call(&self, user: &User, id: &str) -> Result<CallRecord, EngineError> {
        match self.store.get_call(id).await? {
            Some(c) if c.owner == user.name => Ok(c),
            _ => Err(EngineError::NotFound("tool call")),
        }
    }

    // ---- session grants ---------------------------------------------------------------------

    /// Approves `tool` + `pattern` (a path glob, or a command pattern for run_shell) for the
    /// rest of session `session_id`: later calls the policy would ask about and that match it
    /// run without asking. Refused unless the user's policy allows session grants; a grant
    /// never lifts a deny or an ask whose rule forbids grants, and it stops working as soon
    /// as a new policy forbids grants. Kept in this orchestrator's memory (a restart forgets
    /// it: the user is asked again).
    pub async fn add_grant(
        &self,
        user: &User,
        session_id: &str,
        tool: &str,
        pattern: &str,
    ) -> Result<Value, EngineError> {
        self.owned_session(user, session_id).await?;
        if !self.policy().session_grants_allowed(user) {
            return Err(EngineError::Forbidden(
                "your policy does not allow approving calls for the rest of a session".into(),
            ));
        }
        let g = Grant::new(tool, pattern).map_err(EngineError::BadRequest)?;
        // `writable`: what the grant allows runs with the mount its approval had.
        let shown = ev::SessionGrant {
            tool: g.tool.as_str().to_string(),
            pattern: g.pattern.clone(),
            writable: g.write,
        };
        match self
            .store
            .add_grant(session_id, &shown, MAX_GRANTS_PER_SESSION)
            .await?
        {
            GrantAdded::Added | GrantAdded::Exists => {
                Ok(serde_json::to_value(&shown).expect("a grant serializes"))
            }
            GrantAdded::Full => Err(EngineError::Conflict(format!(
                "this session already has {MAX_GRANTS_PER_SESSION} grants"
            ))),
            GrantAdded::NoSession => Err(EngineError::NotFound("session")),
        }
    }

    /// The session's grants, from Redis (shared by every orchestrator). A stored grant that
    /// no longer compiles (a newer Airlock changed the pattern syntax) is left out: the user
    /// is asked again.
    async fn grants(&self, session_id: &str) -> Result<Vec<Grant>, EngineError> {
        Ok(self
            .store
            .grants(session_id)
            .await?
            .into_iter()
            .filter_map(|(tool, pattern)| match Grant::new(&tool, &pattern) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(session_id, tool, error = %e, "ignoring a stored grant that does not compile");
                    None
                }
            })
            .collect())
    }

    /// The session's grants.
    pub async fn list_grants(&self, user: &User, session_id: &str) -> Result<Value, EngineError> {
        self.owned_session(user, session_id).await?;
        let list: Vec<Value> = self
            .grants(session_id)
            .await?
            .iter()
            .map(|g| json!({"tool": g.tool.as_str(), "pattern": g.pattern}))
            .collect();
        Ok(json!({
            "grants": list,
            "allowed": self.policy().session_grants_allowed(user),
        }))
    }

    /// The output a call has produced so far, in order. Only the session's events from the
    /// call's own lifetime are read (with a margin for clocks that differ between this host
    /// and Redis), not the whole session.
    pub async fn call_output(&self, rec: &CallRecord) -> Result<Vec<Value>, EngineError> {
        const SKEW_MS: u64 = 5 * 60 * 1000;
        let to = rec
            .status
            .is_terminal()
            .then_some(rec.updated_at_ms.saturating_add(SKEW_MS));
        let events = self
            .store
            .read_events_between(
                &rec.session_id,
                rec.created_at_ms.saturating_sub(SKEW_MS),
                to,
                100_000,
            )
            .await?;
        Ok(events
            .iter()
            .filter_map(|e| match e.event() {
                Ok(ev::Event::Output(o)) if o.call_id == rec.id => {
                    Some(json!({"stream": o.stream, "data": o.data}))
                }
                _ => None,
            })
            .collect())
    }

    // ---- proposing --------------------------------------------------------------------------

    /// Proposes a call: validates it, asks the policy, computes the preview of a change, and
    /// either denies it, waits for approval (starting its container meanwhile) or runs it.
    pub async fn propose(
        self: &Arc<Self>,
        user: &User,
        session_id: &str,
        tool: &str,
        args: Value,
    ) -> Result<CallRecord, EngineError> {
        self.propose_waiting(user, session_id, tool, args, Duration::from_secs(10))
            .await
    }

    /// [`Engine::propose`], waiting at most `wait` for a call the policy allows to finish (the
    /// API waits 10 s; the agent follows the call's events itself and passes zero).
    pub async fn propose_waiting(
        self: &Arc<Self>,
        user: &User,
        session_id: &str,
        tool: &str,
        args: Value,
        wait: Duration,
    ) -> Result<CallRecord, EngineError> {
        self.owned_session(user, session_id).await?;
        let size = serde_json::to_vec(&args)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.limits.max_args_bytes {
            return Err(EngineError::BadRequest(format!(
                "the arguments are {size} bytes; the limit is {} bytes",
                self.limits.max_args_bytes
            )));
        }
        let call = ToolCall::from_parts(tool, args.clone()).map_err(EngineError::BadRequest)?;
        let policy = self.policy();
        let (concurrent, per_minute) = policy.call_limits(user);
        self.quotas.check_rate(&user.name, per_minute).await?;
        let verdict = policy.evaluate_with_grants(user, &call, &self.grants(session_id).await?);
        // A call that runs at once needs a place among the user's concurrent calls now.
        let slot = match verdict.decision {
            Decision::Allow => Some(self.quotas.reserve(&user.name, concurrent).await?),
            _ => None,
        };
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let mut rec = CallRecord {
            id: id.clone(),
            session_id: session_id.to_string(),
            owner: user.name.clone(),
            tool: tool.to_string(),
            args: args.clone(),
            args_sha256: binding_sha256(tool, &args, None),
            status: verdict.decision.next_status(),
            decision: verdict.decision,
            rule: verdict.rule.clone(),
            policy_sha256: policy.sha256.clone(),
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
        };
        if verdict.decision == Decision::Deny {
            rec.reason = Some(format!("denied by policy rule `{}`", verdict.rule));
            self.metrics.count_call(tool, "denied");
            self.store.create_call(&rec, proposed_event(&rec)).await?;
            return Ok(rec);
        }
        if call.has_preview() {
            match self.preview(user, &policy, &rec, &call).await? {
                Ok(change) => {
                    let base = change
                        .get("old_sha256")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    rec.args_sha256 = binding_sha256(tool, &args, base.as_deref());
                    rec.expected_sha256 = base;
                    rec.preview = Some(change);
                }
                Err(error) => {
                    rec.status = CallStatus::Failed;
                    rec.error = Some(error);
                    self.metrics.count_call(tool, "failed");
                    self.store.create_call(&rec, proposed_event(&rec)).await?;
                    return Ok(rec);
                }
            }
        }
        if verdict.decision == Decision::Ask {
            let ttl = policy
                .approval_ttl_secs(user)
                .unwrap_or(self.limits.approval_ttl_secs);
            rec.expires_at_ms = Some(now + ttl * 1000);
            // One script: a call that exists always has its approval request.
            self.store
                .create_call_with(
                    &rec,
                    vec![
                        proposed_event(&rec),
                        ev::Event::ApprovalRequired(ev::ApprovalRequired {
                            call_id: rec.id.clone(),
                            status: rec.status,
                            args_sha256: rec.args_sha256.clone(),
                            expires_at_ms: now + ttl * 1000,
                        }),
                    ],
                )
                .await?;
            self.start_prepare(user, &policy, &rec, &call);
            return Ok(rec);
        }
        // Allowed without asking: run now and answer with the finished call when it is quick.
        if let Err(e) = self.store.create_call(&rec, proposed_event(&rec)).await {
            if matches!(e, StoreError::Unavailable(_)) {
                // Only this request knows the new id: if the call turns up, it is ours.
                self.settle_unconfirmed(id.clone(), |_| true);
            }
            return Err(e.into());
        }
        let this = self.clone();
        let (u, r) = (user.clone(), rec.clone());
        let slot = slot.expect("an allowed call has a slot");
        let done = self
            .tasks
            .spawn(async move { this.execute(u, r, slot).await });
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait, done).await;
        }
        Ok(self.store.get_call(&id).await?.unwrap_or(rec))
    }

    /// Runs the change in preview mode in a read-only container. The outer error is an
    /// infrastructure failure; the inner one is the tool's own error (e.g. `not_found`).
    async fn preview(
        &self,
        user: &User,
        policy: &Policy,
        rec: &CallRecord,
        call: &ToolCall,
    ) -> Result<Result<Value, Value>, EngineError> {
        let req = Request {
            mode: Mode::Preview,
            protected: policy.protected_for(user),
            ..Request::new(call.clone())
        };
        let spec = self.spec(user, policy, rec, false);
        let profile = policy.profile_for(user);
        let handle = match self.sandbox.run(&profile, &spec, &req).await {
            Ok(h) => h,
            Err(e) => match e.as_tool_error() {
                Some((code, message)) => return Ok(Err(json!({"code": code, "message": message}))),
                None => return Err(e.into()),
            },
        };
        let (events, outcome) = handle.collect().await;
        for e in events {
            match e {
                Event::Result {
                    result: ToolResult::WriteFile(c) | ToolResult::EditFile(c),
                } => return Ok(Ok(serde_json::to_value(c).expect("serializes"))),
                Event::Error { code, message } => {
                    return Ok(Err(json!({"code": code, "message": message})))
                }
                _ => {}
            }
        }
        Ok(Err(json!({
            "code": "sandbox_failed",
            "message": outcome_message(&outcome),
        })))
    }

    fn spec(&self, user: &User, policy: &Policy, rec: &CallRecord, writable: bool) -> CallSpec {
        CallSpec {
            workspace: user.workspace.clone(),
            writable,
            session_id: rec.session_id.clone(),
            call_id: rec.id.clone(),
            tool: rec.tool.clone(),
            protected: policy.protected_for(user),
        }
    }

    /// Starts the call's container while the user decides; the executor waits on stdin.
    fn start_prepare(&self, user: &User, policy: &Policy, rec: &CallRecord, call: &ToolCall) {
        let mut map = self.prepared.lock().expect("prepared lock");
        // Bounded, and never every container slot: calls that run (and the survey a container
        // with read-only views waits for under its workspace's lock) always find one.
        let cap = self
            .limits
            .max_prepared
            .min(self.limits.max_containers.saturating_sub(1));
        if map.len() >= cap {
            return; // the approval will start its container cold
        }
        let sandbox = self.sandbox.clone();
        let profile = policy.profile_for(user);
        // Only an approved call gets here: it runs with the mount its tool needs.
        let spec = self.spec(user, policy, rec, call.mutates());
        let task = tokio::spawn(async move { sandbox.prepare(&profile, &spec).await });
        map.insert(rec.id.clone(), task);
    }

    fn discard_prepared(&self, call_id: &str) {
        let task = self.prepared.lock().expect("prepared lock").remove(call_id);
        if let Some(task) = task {
            tokio::spawn(async move {
                if let Ok(Ok(p)) = task.await {
                    p.discard().await;
                }
            });
        }
    }

    // ---- deciding ---------------------------------------------------------------------------

    /// The owner's decision. Fails closed: anything unexpected leaves the call unapproved.
    pub async fn decide(
        self: &Arc<Self>,
        user: &User,
        call_id: &str,
        approve: bool,
        args_sha256: &str,
        reason: Option<&str>,
    ) -> Result<CallRecord, EngineError> {
        let now = now_ms();
        // Approving starts the call: it needs a place among the user's concurrent calls
        // first, or the approval is refused (429) and the call stays pending.
        let slot = if approve {
            let (concurrent, _) = self.policy().call_limits(user);
            Some(self.quotas.reserve(&user.name, concurrent).await?)
        } else {
            None
        };
        let res = match self
            .store
            .decide(call_id, &user.name, args_sha256, approve, reason, now)
            .await
        {
            Err(StoreError::NotFound) => return Err(EngineError::NotFound("tool call")),
            Err(e @ StoreError::Unavailable(_)) => {
                // The decision carries `now` as its decided_at_ms: that marks it as this one.
                let name = user.name.clone();
                self.settle_unconfirmed(call_id.to_string(), move |c| {
                    c.decided_at_ms == Some(now) && c.decided_by.as_deref() == Some(name.as_str())
                });
                return Err(e.into());
            }
            other => other?,
        };
        match res {
            DecisionResult::NotOwner => Err(EngineError::NotFound("tool call")),
            DecisionResult::HashMismatch { .. } => Err(EngineError::Conflict(
                "args_sha256 does not match this call: refresh it and decide on what it really does".into(),
            )),
            DecisionResult::AlreadyDecided { current } => Err(EngineError::Conflict(format!(
                "this call was already decided: it is `{current}`"
            ))),
            DecisionResult::Expired { call: rec, .. } => {
                self.discard_prepared(call_id);
                self.metrics.count_call(&rec.tool, "expired");
                Err(EngineError::Gone(
                    "the approval expired: the call was denied; propose it again".into(),
                ))
            }
            DecisionResult::Denied { call: rec, .. } => {
                self.discard_prepared(call_id);
                self.metrics.count_call(&rec.tool, "denied");
                Ok(rec)
            }
            DecisionResult::Approved { call: rec, .. } => {
                // The policy may have changed while the call waited: evaluate it again under
                // the policy in force now, before anything runs. From here on the audit
                // records that policy's hash.
                let policy = self.policy();
                let call = ToolCall::from_parts(&rec.tool, rec.args.clone())
                    .map_err(EngineError::BadRequest)?;
                let grants = self.grants(&rec.session_id).await?;
                let verdict = policy.evaluate_with_grants(user, &call, &grants);
                let mut audited = rec.clone();
                audited.policy_sha256 = policy.sha256.clone();
                if verdict.decision == Decision::Deny {
                    self.discard_prepared(call_id);
                    let error = ErrorInfo::new(
                        "policy_changed",
                        format!(
                            "the policy in force now denies this call (rule `{}`)",
                            verdict.rule
                        ),
                    );
                    let audit =
                        self.audit(&audited, "policy", "failed", "denied by the current policy");
                    let rec = self.fail_call(call_id, error, Some(&audit)).await?;
                    self.metrics.count_call(&rec.tool, "denied");
                    return Ok(rec);
                }
                let this = self.clone();
                let u = user.clone();
                let slot = slot.expect("an approval reserved a slot");
                self.tasks
                    .spawn(async move { this.execute(u, audited, slot).await });
                Ok(rec)
            }
        }
    }

    /// Redis did not confirm a write in time (the API answered 503, "nothing was changed"), but
    /// the command may still sit in a connection and be applied once Redis answers again. This
    /// watches the call for a while and undoes such a late write in the fail-closed direction:
    /// a call it approved, which nobody will run, is failed; a decided call's prepared container
    /// is stopped. `is_ours` recognises the unconfirmed write in the stored record.
    fn settle_unconfirmed(
        self: &Arc<Self>,
        call_id: String,
        is_ours: impl Fn(&CallRecord) -> bool + Send + 'static,
    ) {
        let this = self.clone();
        self.tasks.spawn(async move {
            // Give up after Redis has answered this many times without the write showing up,
            // or after the outage lasts longer than `GIVE_UP`.
            const ANSWERS: u32 = 20;
            const GIVE_UP: Duration = Duration::from_secs(600);
            let started = Instant::now();
            let mut answers = 0;
            while answers < ANSWERS && started.elapsed() < GIVE_UP {
                tokio::select! {
                    _ = this.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                let rec = match this.store.get_call(&call_id).await {
                    Err(_) => continue,
                    Ok(None) => {
                        answers += 1;
                        continue;
                    }
                    Ok(Some(rec)) => rec,
                };
                if rec.status == CallStatus::Approved && is_ours(&rec) {
                    this.discard_prepared(&call_id);
                    let error = ErrorInfo::new("unconfirmed", "Redis did not confirm the approval in time, so the call was not run; propose it again");
                    let audit = this.audit(&rec, "system", "failed", "unconfirmed");
                    let r = this.fail_call(&call_id, error, Some(&audit)).await;
                    if r.is_ok() {
                        this.metrics.count_call(&rec.tool, "failed");
                    }
                    return;
                }
                if rec.status.is_terminal() {
                    this.discard_prepared(&call_id);
                    return;
                }
                if rec.status != CallStatus::AwaitingApproval {
                    return; // approved and run by a confirmed decision
                }
                answers += 1;
            }
        });
    }

    /// Moves due approvals to `expired` and stops their containers.
    pub async fn expire_due(&self) -> Result<usize, EngineError> {
        let expired = self.store.expire_due(now_ms()).await?;
        for rec in &expired {
            self.discard_prepared(&rec.id);
            self.metrics.count_call(&rec.tool, "expired");
        }
        Ok(expired.len())
    }

    /// Cancels a running or pending call of `user`.
    pub async fn cancel(&self, user: &User, call_id: &str) -> Result<CallRecord, EngineError> {
        let rec = self.owned_call(user, call_id).await?;
        if rec.status == CallStatus::Running {
            let here = self
                .running
                .lock()
                .expect("running lock")
                .get(call_id)
                .cloned();
            match here {
                Some(t) => t.cancel(),
                // Another orchestrator runs it: it sees the request at its next sweep.
                None => self.store.request_call_cancel(call_id).await?,
            }
            return Ok(rec);
        }
        let audit = self.audit(&rec, &user.name, "cancelled", "cancelled");
        let (rec, _) = self
            .store
            .transition(
                call_id,
                CallStatus::Cancelled,
                &[],
                Some(ev::Event::CallCancelled(ev::CallState {
                    call_id: call_id.to_string(),
                    status: CallStatus::Cancelled,
                })),
                Some(&audit),
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict { current } => EngineError::Conflict(format!(
                    "the call is `{current}` and cannot be cancelled"
                )),
                other => other.into(),
            })?;
        self.discard_prepared(call_id);
        Ok(rec)
    }

    // ---- running ----------------------------------------------------------------------------

    async fn slots(
        &self,
        user: &str,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), EngineError> {
        let per_user = self
            .per_user
            .lock()
            .expect("per-user lock")
            .entry(user.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.max_running_per_user)))
            .clone();
        let wait = Duration::from_secs(self.limits.queue_wait_secs);
        let u = tokio::time::timeout(wait, per_user.acquire_owned())
            .await
            .map_err(|_| {
                EngineError::Busy(format!(
                    "you already have {} calls running; try again when one finishes",
                    self.limits.max_running_per_user
                ))
            })?
            .expect("never closed");
        let g = tokio::time::timeout(wait, self.global.clone().acquire_owned())
            .await
            .map_err(|_| {
                EngineError::Busy(
                    "the server is at its limit of running calls; try again shortly".into(),
                )
            })?
            .expect("never closed");
        Ok((u, g))
    }

    /// Runs an approved call to the end, streaming its output into the session's events.
    async fn execute(self: Arc<Self>, user: User, rec: CallRecord, slot: CallSlot) {
        // The user's place among their concurrent calls is held until the call is done.
        let _slot = slot;
        let id = rec.id.clone();
        if let Err(e) = self.execute_inner(&user, &rec).await {
            tracing::warn!(call_id = %id, error = %e, "call failed before it could finish");
            self.discard_prepared(&id);
            // The workspace's own faults (stale masks twice, a survey that failed) keep their
            // stable code; anything else is internal.
            let (code, msg) = match &e {
                EngineError::Sandbox(s) => s.as_tool_error(),
                _ => None,
            }
            .unwrap_or_else(|| ("internal".to_string(), e.to_string()));
            let audit = self.audit(&rec, "system", "failed", "error");
            let _ = self
                .fail_call(&id, ErrorInfo::new(code, msg), Some(&audit))
                .await;
            self.metrics.count_call(&rec.tool, "failed");
        }
    }

    async fn execute_inner(&self, user: &User, rec: &CallRecord) -> Result<(), EngineError> {
        let started = Instant::now();
        let _slots = self.slots(&user.name).await?;
        let policy = self.policy();
        let call =
            ToolCall::from_parts(&rec.tool, rec.args.clone()).map_err(EngineError::BadRequest)?;
        let audit = self.audit(rec, &user.name, "started", "running");
        self.store
            .transition(
                &rec.id,
                CallStatus::Running,
                &[],
                Some(ev::Event::CallStarted(ev::CallState {
                    call_id: rec.id.clone(),
                    status: CallStatus::Running,
                })),
                Some(&audit),
            )
            .await?;
        let req = Request {
            mode: if call.mutates() {
                Mode::Apply
            } else {
                Mode::Preview
            },
            expected_sha256: rec.expected_sha256.clone(),
            protected: policy.protected_for(user),
            ..Request::new(call.clone())
        };
        let prepared = self.prepared.lock().expect("prepared lock").remove(&rec.id);
        let prepared = match prepared {
            Some(task) => match task.await {
                Ok(Ok(p)) => Some(p),
                _ => None,
            },
            None => None,
        };
        // What nobody approved cannot write: a shell command the policy allows runs with a
        // read-only workspace unless the rule (or the session grant) that allowed it says
        // `write`. An approved call, and an allowed write_file/edit_file, write.
        let writable = match &call {
            ToolCall::RunShell(_) if rec.decision == Decision::Allow => {
                // Grants Redis cannot give now count as none: read-only (fail closed).
                let grants = self.grants(&rec.session_id).await.unwrap_or_default();
                policy.evaluate_with_grants(user, &call, &grants).write
            }
            _ => call.mutates(),
        };
        let spec = self.spec(user, &policy, rec, writable);
        // A container prepared under another policy (other limits, runtime, image, uid:gid,
        // workspace or protected paths) is replaced: the call runs with what the policy in
        // force says.
        let profile = policy.profile_for(user);
        let prepared = match prepared {
            Some(p)
                if *p.profile() == profile
                    && p.workspace() == user.workspace
                    && p.protected() == spec.protected.as_slice() =>
            {
                p
            }
            stale => {
                if let Some(old) = stale {
                    tokio::spawn(old.discard());
                }
                self.sandbox.prepare(&profile, &spec).await?
            }
        };
        let sent = Instant::now();
        let mut handle = self.sandbox.send(prepared, &profile, &spec, &req).await?;
        self.running
            .lock()
            .expect("running lock")
            .insert(rec.id.clone(), handle.cancel_token());
        let mut result = None;
        let mut error = None;
        let mut outcome = None;
        // File tools are finished when the executor reports: their container's exit status,
        // OOM flag and removal add nothing but ~40 ms of Docker round trips, so they are left
        // to a background drain. run_shell waits for the full outcome (OOM, timeout).
        let early_finish = !matches!(call, ToolCall::RunShell(_));
        let masks = handle.masks();
        let merged = handle.merged_masks().to_vec();
        while let Some(ev) = handle.next().await {
            let last = matches!(
                ev,
                SandboxEvent::Executor(Event::Result { .. } | Event::Error { .. })
            );
            match ev {
                SandboxEvent::Executor(Event::Output { stream, data }) => {
                    let _ = self
                        .store
                        .append_event(
                            &rec.session_id,
                            &ev::Event::Output(ev::CallOutput {
                                call_id: rec.id.clone(),
                                stream: match stream {
                                    StreamKind::Stdout => "stdout",
                                    StreamKind::Stderr => "stderr",
                                }
                                .to_string(),
                                data,
                            }),
                        )
                        .await;
                }
                SandboxEvent::Executor(Event::Result { result: r }) => {
                    result = Some(serde_json::to_value(r).expect("serializes"))
                }
                SandboxEvent::Executor(Event::Error { code, message }) => {
                    error = Some(ErrorInfo::new(code.as_str(), message))
                }
                SandboxEvent::Finished(o) => outcome = Some(o),
                SandboxEvent::Executor(Event::Checked { .. } | Event::Survey { .. }) => {}
            }
            if last && early_finish {
                outcome = Some(crate::sandbox::Outcome {
                    exit_code: Some(if error.is_some() { 3 } else { 0 }),
                    duration: sent.elapsed(),
                    ..Default::default()
                });
                // The driver still removes the container; keep its stream read to the end.
                tokio::spawn(async move { while handle.next().await.is_some() {} });
                break;
            }
        }
        self.running.lock().expect("running lock").remove(&rec.id);
        let o = outcome.unwrap_or_default();
        let shell_failed = matches!(
            result.as_ref().and_then(|r| r.get("exit_code")),
            Some(c) if c != &json!(0)
        );
        if result.is_none() && error.is_none() {
            error = Some(ErrorInfo::new("sandbox_failed", outcome_message(&o)));
        }
        let status = finished_status(error.is_some() || shell_failed, o.timed_out, o.cancelled);
        let outcome = ev::Outcome {
            exit_code: o.exit_code,
            timed_out: o.timed_out,
            oom_killed: o.oom_killed,
            output_truncated: o.output_truncated,
            cancelled: o.cancelled,
            duration_ms: o.duration.as_millis() as u64,
            masks: masks as usize,
            masked_directories: merged,
            writable,
        };
        let mut patch = vec![("outcome", outcome.to_value().to_string())];
        if let Some(r) = &result {
            patch.push(("result", r.to_string()));
        }
        if let Some(e) = &error {
            patch.push(("error", e.to_value().to_string()));
        }
        let mut audit = self.audit(rec, "system", "finished", status.as_str());
        audit.detail = Some(format!(
            "{masks} masks over protected paths; {} workspace",
            if writable { "writable" } else { "read-only" }
        ));
        self.store
            .transition(
                &rec.id,
                status,
                &patch,
                Some(ev::Event::CallFinished(ev::CallFinished {
                    call_id: rec.id.clone(),
                    status,
                    result,
                    error,
                    outcome: Some(outcome),
                })),
                Some(&audit),
            )
            .await?;
        self.metrics.count_call(&rec.tool, status.as_str());
        self.metrics.observe_latency(started.elapsed());
        Ok(())
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
        self.metrics
            .render(self.sandbox.containers_in_use(), pending)
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
    ) -> Result<Vec<(String, AuditEntry)>, EngineError> {
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

/// The `call_proposed` event of a new call.
fn proposed_event(rec: &CallRecord) -> ev::Event {
    ev::Event::CallProposed(ev::CallProposed {
        call_id: rec.id.clone(),
        status: rec.status,
        tool: rec.tool.clone(),
        args: rec.args.clone(),
        args_sha256: rec.args_sha256.clone(),
        decision: rec.decision,
        rule: rec.rule.clone(),
        preview: rec.preview.clone(),
        error: rec.error.clone(),
        expires_at_ms: rec.expires_at_ms,
    })
}

fn outcome_message(o: &crate::sandbox::Outcome) -> String {
    if o.timed_out {
        "the call hit its time limit and was stopped".into()
    } else if o.oom_killed {
        "the call ran out of memory and was stopped".into()
    } else if o.output_truncated {
        "the call exceeded its output limit and was stopped".into()
    } else if o.cancelled {
        "the call was cancelled".into()
    } else {
        o.protocol_error
            .clone()
            .unwrap_or_else(|| "the sandbox ended without a result".into())
    }
}
