//! Proposing a call: validate, ask the policy, preview a change in a read-only container,
//! then deny, wait for approval (preparing its container meanwhile) or run.

use super::run::outcome_message;
use super::*;

impl Engine {
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
            args_sha256: binding_sha256(tool, &args, None),
            status: verdict.decision.next_status(),
            decision: verdict.decision,
            rule: verdict.rule.clone(),
            policy_sha256: policy.sha256.clone(),
            ..CallRecord::new(&id, session_id, &user.name, tool, args.clone(), now)
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
            return self.await_approval(user, &policy, rec, &call).await;
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

    /// Records a call the policy asks about, with its approval request, and starts its
    /// container while the user decides.
    pub(super) async fn await_approval(
        &self,
        user: &User,
        policy: &Policy,
        mut rec: CallRecord,
        call: &ToolCall,
    ) -> Result<CallRecord, EngineError> {
        let ttl = policy
            .approval_ttl_secs(user)
            .unwrap_or(self.limits.approval_ttl_secs);
        let expires_at_ms = rec.created_at_ms + ttl * 1000;
        rec.expires_at_ms = Some(expires_at_ms);
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
                        expires_at_ms,
                    }),
                ],
            )
            .await?;
        self.start_prepare(user, policy, &rec, call);
        if let Some(n) = self.notifier.get() {
            n.approval_required(&rec);
        }
        Ok(rec)
    }

    /// Runs the change in preview mode in a read-only container. The outer error is an
    /// infrastructure failure; the inner one is the tool's own error (e.g. `not_found`).
    pub(super) async fn preview(
        &self,
        user: &User,
        policy: &Policy,
        rec: &CallRecord,
        call: &ToolCall,
    ) -> Result<Result<Value, Value>, EngineError> {
        self.preview_with(user, policy, rec, call, None).await
    }

    /// [`Engine::preview`] of only some hunks, against the base the proposal's preview saw
    /// (`stale_file` when the file changed since).
    pub(super) async fn preview_with(
        &self,
        user: &User,
        policy: &Policy,
        rec: &CallRecord,
        call: &ToolCall,
        hunks: Option<Vec<u32>>,
    ) -> Result<Result<Value, Value>, EngineError> {
        let req = Request {
            mode: Mode::Preview,
            protected: policy.protected_for(user),
            expected_sha256: hunks.as_ref().and(rec.expected_sha256.clone()),
            hunks,
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
                Event::Result {
                    result: ToolResult::Revert(r),
                } => return Ok(Ok(serde_json::to_value(r).expect("serializes"))),
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

    pub(super) fn spec(
        &self,
        user: &User,
        policy: &Policy,
        rec: &CallRecord,
        writable: bool,
    ) -> CallSpec {
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
    pub(super) fn start_prepare(
        &self,
        user: &User,
        policy: &Policy,
        rec: &CallRecord,
        call: &ToolCall,
    ) {
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

    pub(super) fn discard_prepared(&self, call_id: &str) {
        let task = self.prepared.lock().expect("prepared lock").remove(call_id);
        if let Some(task) = task {
            tokio::spawn(async move {
                if let Ok(Ok(p)) = task.await {
                    p.discard().await;
                }
            });
        }
    }
}

/// The `call_proposed` event of a new call.
pub(super) fn proposed_event(rec: &CallRecord) -> ev::Event {
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
