//! Running a call: its slots, its container, its output streamed to the session, and the
//! record of how it ended.

use super::*;

impl Engine {
    pub(super) async fn slots(
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
    pub(super) async fn execute(self: Arc<Self>, user: User, rec: CallRecord, slot: CallSlot) {
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
                // Only a revert whose undo record is gone fails this way here.
                EngineError::Gone(m) => Some(("undo_unavailable".to_string(), m.clone())),
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

    pub(super) async fn execute_inner(
        &self,
        user: &User,
        rec: &CallRecord,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let _slots = self.slots(&user.name).await?;
        let policy = self.policy();
        let call =
            ToolCall::from_record(&rec.tool, rec.args.clone()).map_err(EngineError::BadRequest)?;
        let call = self.with_revert_content(user, call).await?;
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
            // Some hunks approved: exactly those, and exactly the content they made.
            hunks: rec
                .approved_change
                .as_ref()
                .and_then(|c| serde_json::from_value(c.get("hunks")?.clone()).ok()),
            expected_new_sha256: rec
                .approved_change
                .as_ref()
                .and_then(|c| c.get("sha256")?.as_str().map(str::to_string)),
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
        let undo_cfg = self.undo_config();
        let req = Request {
            // What an applied change replaces is kept so its owner can revert it.
            keep_previous: (undo_cfg.enabled && writable && call.mutates())
                .then_some(undo_cfg.max_call_bytes),
            ..req
        };
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
                // Allowed read-only calls take a warm container when the pool has one.
                self.sandbox.acquire(&profile, &spec).await?
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
        let mut undo = None;
        // File tools are finished when the executor reports: their container's exit status,
        // OOM flag and removal add nothing but ~40 ms of Docker round trips, so they are left
        // to a background drain. So is a shell command the executor saw exit 0 with no OOM
        // kill in its container (it reads the memory cgroup's counter); any other run_shell
        // waits for the full outcome (OOM, timeout, the container's exit status).
        let is_shell = matches!(call, ToolCall::RunShell(_));
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
                // Only what this request asked for. A command cannot reach the executor's
                // stdout (it is not dumpable); should anything else write a record, one nobody
                // asked for is never stored.
                SandboxEvent::Executor(Event::Undo { undo: u }) if req.keep_previous.is_some() => {
                    undo = Some(u)
                }
                SandboxEvent::Executor(Event::Undo { .. }) => {
                    tracing::warn!(call_id = %rec.id, "an undo record nobody asked for was dropped");
                }
                SandboxEvent::Executor(Event::Checked { .. } | Event::Survey { .. }) => {}
            }
            let clean_exit = matches!(
                result.as_ref(),
                Some(r) if r.get("exit_code") == Some(&json!(0))
                    && r.get("signal").is_none()
                    && r.get("oom_kills") == Some(&json!(0))
            );
            if last && (!is_shell || clean_exit) {
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
        // Kept even when a shell command failed: it may have changed files all the same.
        let mut undo_summary = None;
        if let Some(u) = undo.as_ref().filter(|u| !u.is_empty()) {
            undo_summary = self.keep_undo(rec, u).await;
            if let Some(summary) = &undo_summary {
                patch.push(("undo", summary.to_string()));
            }
        }
        if let (ToolCall::Revert(a), CallStatus::Succeeded) = (&call, status) {
            // The reverted call's record is used up (a second revert cannot replay it), and it
            // says so before anyone sees the revert succeed.
            if let Err(e) = self
                .store
                .mark_reverted(&a.reverts, &rec.owner, &rec.id)
                .await
            {
                tracing::warn!(call_id = %a.reverts, error = %e, "could not mark the call reverted");
            }
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
                    undo: undo_summary,
                })),
                Some(&audit),
            )
            .await?;
        self.metrics.count_call(&rec.tool, status.as_str());
        self.metrics.observe_latency(started.elapsed());
        Ok(())
    }
}

pub(super) fn outcome_message(o: &crate::sandbox::Outcome) -> String {
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
