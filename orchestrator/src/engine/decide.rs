//! Deciding: approvals bound to the hash the owner saw, expiry, and cancellation.

use super::*;

impl Engine {
    /// The owner's decision. Fails closed: anything unexpected leaves the call unapproved.
    pub async fn decide(
        self: &Arc<Self>,
        user: &User,
        call_id: &str,
        approve: bool,
        args_sha256: &str,
        reason: Option<&str>,
    ) -> Result<CallRecord, EngineError> {
        self.decide_hunks(user, call_id, approve, args_sha256, reason, None)
            .await
    }

    /// [`Engine::decide`], approving only some hunks of a change: the base plus exactly those
    /// hunks is previewed first (in a read-only container, against the base the proposal
    /// saw), and the approval carries the resulting content's sha256, which the write must
    /// produce.
    pub async fn decide_hunks(
        self: &Arc<Self>,
        user: &User,
        call_id: &str,
        approve: bool,
        args_sha256: &str,
        reason: Option<&str>,
        hunks: Option<&[u32]>,
    ) -> Result<CallRecord, EngineError> {
        let approved_change = match (approve, hunks) {
            (true, Some(ids)) => Some(self.partial_change(user, call_id, args_sha256, ids).await?),
            _ => None,
        };
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
            .decide(
                call_id,
                &user.name,
                args_sha256,
                approve,
                reason,
                approved_change.as_ref(),
                now,
            )
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
                let call = ToolCall::from_record(&rec.tool, rec.args.clone())
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
    pub(super) fn settle_unconfirmed(
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

    /// The change that approving `ids` of call `call_id`'s hunks would make:
    /// `{"hunks", "sha256", "diff"}`, computed in a read-only container.
    async fn partial_change(
        &self,
        user: &User,
        call_id: &str,
        args_sha256: &str,
        ids: &[u32],
    ) -> Result<Value, EngineError> {
        let rec = self.owned_call(user, call_id).await?;
        if rec.status != CallStatus::AwaitingApproval {
            return Err(EngineError::Conflict(format!(
                "this call was already decided: it is `{}`",
                rec.status
            )));
        }
        if rec.args_sha256 != args_sha256 {
            return Err(EngineError::Conflict(
                "args_sha256 does not match this call: refresh it and decide on what it really does".into(),
            ));
        }
        let call =
            ToolCall::from_record(&rec.tool, rec.args.clone()).map_err(EngineError::BadRequest)?;
        if !call.has_preview() || matches!(call, ToolCall::Revert(_)) {
            return Err(EngineError::BadRequest(
                "only write_file and edit_file changes have hunks".into(),
            ));
        }
        let policy = self.policy();
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        match self
            .preview_with(user, &policy, &rec, &call, Some(ids.clone()))
            .await?
        {
            Ok(change) => Ok(json!({
                "hunks": ids,
                "sha256": change["new_sha256"],
                "diff": change["diff"],
            })),
            // The file changed since the proposal: nothing is approved, as for a whole change.
            Err(e) if e["code"] == "stale_file" => Err(EngineError::Conflict(format!(
                "stale_file: {}",
                e["message"]
                    .as_str()
                    .unwrap_or("the file changed since the preview")
            ))),
            Err(e) => Err(EngineError::BadRequest(format!(
                "these hunks cannot be approved: {}",
                e["message"].as_str().unwrap_or("the preview failed")
            ))),
        }
    }

    /// The owner's own version of a change awaiting approval: the proposal's arguments with
    /// `replacement` put in, previewed in a read-only container against the file the proposal
    /// saw (`stale_file` if it changed since). The call keeps waiting, now bound to the new
    /// arguments: approving takes the hash of this version, and the old hash is refused.
    pub async fn edit_call(
        self: &Arc<Self>,
        user: &User,
        call_id: &str,
        args_sha256: &str,
        replacement: Replacement,
    ) -> Result<CallRecord, EngineError> {
        let rec = self.owned_call(user, call_id).await?;
        if rec.status != CallStatus::AwaitingApproval {
            return Err(EngineError::Conflict(format!(
                "only a call awaiting approval can be edited: this one is `{}`",
                rec.status
            )));
        }
        if rec.args_sha256 != args_sha256 {
            return Err(EngineError::Conflict(
                "args_sha256 does not match this call: refresh it and edit what it does now".into(),
            ));
        }
        let args = replacement.apply(&rec.tool, &rec.args)?;
        if args == rec.args {
            return Err(EngineError::BadRequest(
                "the edit changes nothing: approve the call as it is".into(),
            ));
        }
        let size = serde_json::to_vec(&args).map_or(usize::MAX, |v| v.len());
        if size > self.limits.max_args_bytes {
            return Err(EngineError::BadRequest(format!(
                "the edited arguments are {size} bytes; the limit is {} bytes",
                self.limits.max_args_bytes
            )));
        }
        let call =
            ToolCall::from_parts(&rec.tool, args.clone()).map_err(EngineError::BadRequest)?;
        let policy = self.policy();
        let verdict =
            policy.evaluate_with_grants(user, &call, &self.grants(&rec.session_id).await?);
        if verdict.decision == Decision::Deny {
            return Err(EngineError::Forbidden(format!(
                "the policy denies the edited call (rule `{}`)",
                verdict.rule
            )));
        }
        let change = match self.preview(user, &policy, &rec, &call).await? {
            Ok(c) => c,
            Err(e) => {
                return Err(EngineError::BadRequest(format!(
                    "the edited change cannot be applied: {}",
                    e["message"].as_str().unwrap_or("the preview failed")
                )))
            }
        };
        // Previewed against the file as it is now: it must still be the one the proposal saw.
        if change.get("old_sha256").and_then(Value::as_str) != rec.expected_sha256.as_deref() {
            return Err(EngineError::Conflict(format!(
                "stale_file: {} changed since the proposal; deny this call and let the agent propose again",
                rec.args["path"].as_str().unwrap_or("the file")
            )));
        }
        let new_hash = binding_sha256(&rec.tool, &args, rec.expected_sha256.as_deref());
        // Edited twice: still named after the model's own proposal.
        let from = rec
            .edited
            .as_ref()
            .and_then(|e| e["from_args_sha256"].as_str())
            .unwrap_or(&rec.args_sha256)
            .to_string();
        let edited = json!({"by": user.name, "at_ms": now_ms(), "from_args_sha256": from});
        let mut audited = rec.clone();
        audited.args_sha256 = new_hash.clone();
        let mut audit = self.audit(&audited, &user.name, "edited", "awaiting_approval");
        audit.detail = Some(format!("replaced args_sha256 {}", rec.args_sha256));
        let event = ev::Event::CallEdited(ev::CallEdited {
            call_id: rec.id.clone(),
            status: CallStatus::AwaitingApproval,
            args: args.clone(),
            args_sha256: new_hash.clone(),
            preview: Some(change.clone()),
            edited_by: user.name.clone(),
            from_args_sha256: rec.args_sha256.clone(),
        });
        let patch = [
            ("args", args.to_string()),
            ("args_sha256", new_hash),
            ("preview", change.to_string()),
            ("edited", edited.to_string()),
            // Checked in the script: an edit made meanwhile is never overwritten unseen.
            ("expect_args_sha256", rec.args_sha256.clone()),
        ];
        self.store
            .edit_pending(call_id, &patch, event, &audit)
            .await
            .map_err(|e| match e {
                StoreError::Conflict {
                    current: CallStatus::Expired,
                } => EngineError::Conflict(
                    "the approval window expired before the edit: this call can no longer be approved; let the agent propose it again".into(),
                ),
                StoreError::Conflict {
                    current: CallStatus::AwaitingApproval,
                } => EngineError::Conflict(
                    "the change was edited meanwhile (its args_sha256 changed): refresh it and edit what it is now".into(),
                ),
                StoreError::Conflict { current } => EngineError::Conflict(format!(
                    "this call was already decided: it is `{current}`"
                )),
                other => other.into(),
            })
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
}

/// What the owner puts in place of a proposed change ([`Engine::edit_call`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replacement {
    /// A `write_file`'s whole content.
    Content(String),
    /// An `edit_file`'s new texts, one per edit in order; the texts they replace stay the
    /// model's (they name where the edit goes).
    NewTexts(Vec<String>),
}

impl Replacement {
    /// `args` of a `tool` call with this replacement put in.
    pub fn apply(&self, tool: &str, args: &Value) -> Result<Value, EngineError> {
        let mut args = args.clone();
        match (tool, self) {
            ("write_file", Replacement::Content(c)) => args["content"] = json!(c),
            ("edit_file", Replacement::NewTexts(texts)) => {
                let edits = args
                    .get_mut("edits")
                    .and_then(Value::as_array_mut)
                    .ok_or_else(|| EngineError::BadRequest("this edit_file has no edits".into()))?;
                if edits.len() != texts.len() {
                    return Err(EngineError::BadRequest(format!(
                        "this edit_file makes {} edit(s): give {} new text(s), in order",
                        edits.len(),
                        edits.len()
                    )));
                }
                for (e, t) in edits.iter_mut().zip(texts) {
                    e["new_string"] = json!(t);
                }
            }
            ("write_file", _) => {
                return Err(EngineError::BadRequest(
                    "a write_file is edited with `content` (the whole new content)".into(),
                ))
            }
            ("edit_file", _) => {
                return Err(EngineError::BadRequest(
                    "an edit_file is edited with `new_strings` (one per edit, in order)".into(),
                ))
            }
            _ => {
                return Err(EngineError::BadRequest(
                    "only write_file and edit_file changes can be edited before approval".into(),
                ))
            }
        }
        Ok(args)
    }
}
