//! Undo: keeping what an applied call replaced, and proposing its revert as a new call —
//! previewed in a read-only container, bound to the files' hashes as the call left them, and
//! approved like any other change.

use airlock_executor::protocol::{RevertArgs, RevertFile, UndoRecord};

use super::*;
use crate::config::UndoConfig;

impl Engine {
    /// Sets how undo records are kept (the server's `[undo]` section; defaults otherwise).
    pub fn set_undo(&self, cfg: UndoConfig) {
        let _ = self.undo.set(cfg);
    }

    pub(super) fn undo_config(&self) -> UndoConfig {
        self.undo.get().cloned().unwrap_or_default()
    }

    /// Keeps the undo record of an applied call; returns the call's undo summary (no
    /// content) for its record, or `None` when nothing was kept.
    pub(super) async fn keep_undo(&self, rec: &CallRecord, undo: &UndoRecord) -> Option<Value> {
        let cfg = self.undo_config();
        // It comes out of the container: stored only when it is within what was asked.
        if let Err(why) = check_undo(undo, cfg.max_call_bytes) {
            tracing::warn!(call_id = %rec.id, problem = %why, "an undo record out of bounds was dropped");
            return None;
        }
        let mut expires_at_ms = None;
        if !undo.files.is_empty() {
            let ttl_ms = cfg.retention_secs.saturating_mul(1000);
            match self
                .store
                .put_undo(
                    &rec.id,
                    &rec.session_id,
                    &rec.owner,
                    undo,
                    ttl_ms,
                    cfg.max_user_bytes,
                )
                .await
            {
                Ok(dropped) => {
                    expires_at_ms = Some(now_ms() + ttl_ms);
                    if !dropped.is_empty() {
                        tracing::info!(user = %rec.owner, dropped = dropped.len(), "undo budget: the oldest undo records were dropped");
                    }
                }
                // The call itself succeeded; only its undo is lost (said in its summary).
                Err(e) => {
                    tracing::warn!(call_id = %rec.id, error = %e, "could not keep the undo record")
                }
            }
        }
        let kind = |f: &RevertFile| match (
            f.expected_sha256 == airlock_executor::protocol::ABSENT,
            f.restore_sha256 == airlock_executor::protocol::ABSENT,
        ) {
            (_, true) => "created",
            (true, false) => "deleted",
            (false, false) => "modified",
        };
        Some(json!({
            "files": undo.files.iter().map(|f| json!({"path": f.path, "kind": kind(f)})).collect::<Vec<_>>(),
            "not_kept": undo.not_kept,
            "expires_at_ms": expires_at_ms,
        }))
    }

    /// `POST /v1/tool-calls/{id}/revert`: proposes the reverse of an applied call as a new call
    /// in its session, previewed against the files as they are now. A file changed since is a
    /// conflict naming it, and nothing is proposed.
    pub async fn revert(
        self: &Arc<Self>,
        user: &User,
        call_id: &str,
    ) -> Result<CallRecord, EngineError> {
        let orig = self
            .store
            .get_call(call_id)
            .await?
            .filter(|c| c.owner == user.name)
            .ok_or(EngineError::NotFound("call"))?;
        let cfg = self.undo_config();
        let stored = match self.store.get_undo(call_id).await? {
            Some(s) if s.owner == user.name => s,
            _ => {
                // A revert that applied drops the record and marks the call in one script:
                // read the call again (a revert may have just applied) to say which.
                let orig = self.store.get_call(call_id).await?.unwrap_or(orig);
                if let Some(by) = &orig.reverted_by {
                    return Err(EngineError::Conflict(format!(
                        "call {call_id} was reverted already, by call {by}"
                    )));
                }
                return Err(match &orig.undo {
                    Some(u) if u.get("expires_at_ms").is_some_and(|e| !e.is_null()) => {
                        EngineError::Gone(format!(
                            "what call {call_id} replaced is no longer kept (undo keeps it {} hours and at most {} MiB per user): it cannot be reverted",
                            cfg.retention_secs / 3600,
                            cfg.max_user_bytes / (1024 * 1024)
                        ))
                    }
                    Some(u) => EngineError::Conflict(format!(
                        "none of the files call {call_id} changed can be put back: {}",
                        not_kept_text(u)
                    )),
                    None => EngineError::Conflict(format!(
                        "call {call_id} has nothing to undo: only an applied write_file, edit_file, run_shell or revert that changed files can be reverted{}",
                        if cfg.enabled { "" } else { " (and undo is off on this server)" }
                    )),
                });
            }
        };
        self.owned_session(user, &orig.session_id).await?;
        let args = RevertArgs {
            reverts: call_id.to_string(),
            files: stored.undo.files.clone(),
        };
        // The stored call names each file's hashes; the content stays in the undo record.
        let shown = RevertArgs {
            reverts: args.reverts.clone(),
            files: args
                .files
                .iter()
                .map(|f| RevertFile {
                    content_base64: None,
                    ..f.clone()
                })
                .collect(),
        };
        let record_args = serde_json::to_value(&shown).expect("serializes");
        let call = ToolCall::Revert(args);
        let policy = self.policy();
        let (_, per_minute) = policy.call_limits(user);
        self.quotas.check_rate(&user.name, per_minute).await?;
        let verdict = policy.evaluate_with_grants(user, &call, &[]);
        let id = uuid::Uuid::new_v4().to_string();
        let mut rec = CallRecord {
            args_sha256: binding_sha256("revert", &record_args, None),
            status: verdict.decision.next_status(),
            decision: verdict.decision,
            rule: verdict.rule.clone(),
            policy_sha256: policy.sha256.clone(),
            ..CallRecord::new(
                &id,
                &orig.session_id,
                &user.name,
                "revert",
                record_args,
                now_ms(),
            )
        };
        if verdict.decision == Decision::Deny {
            rec.reason = Some(format!("denied by policy rule `{}`", verdict.rule));
            self.metrics.count_call("revert", "denied");
            self.store.create_call(&rec, proposed_event(&rec)).await?;
            return Ok(rec);
        }
        match self.preview(user, &policy, &rec, &call).await? {
            Ok(change) => rec.preview = Some(change),
            Err(error) => {
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the revert cannot be previewed");
                return Err(EngineError::Conflict(message.to_string()));
            }
        }
        self.await_approval(user, &policy, rec, &call).await
    }

    /// The revert as the executor gets it: each file's content from the undo record (the
    /// executor refuses content whose sha256 is not the one the approval bound).
    pub(super) async fn with_revert_content(
        &self,
        user: &User,
        call: ToolCall,
    ) -> Result<ToolCall, EngineError> {
        let ToolCall::Revert(mut args) = call else {
            return Ok(call);
        };
        let stored = self
            .store
            .get_undo(&args.reverts)
            .await?
            .filter(|s| s.owner == user.name)
            .ok_or_else(|| {
                EngineError::Gone(format!(
                    "what call {} replaced is no longer kept: it cannot be reverted",
                    args.reverts
                ))
            })?;
        for f in &mut args.files {
            f.content_base64 = stored
                .undo
                .files
                .iter()
                .find(|s| s.path == f.path && s.restore_sha256 == f.restore_sha256)
                .and_then(|s| s.content_base64.clone());
        }
        Ok(ToolCall::Revert(args))
    }
}

use super::propose::proposed_event;

/// An undo record as the executor makes it: at most `MAX_UNDO_FILES` files (and one summary
/// entry more not kept), each path canonical and listed once, content within the per-call
/// limit, hashes that look like hashes.
fn check_undo(undo: &UndoRecord, max_call_bytes: u64) -> Result<(), String> {
    use airlock_executor::protocol::{ABSENT, MAX_UNDO_FILES};
    if undo.files.len() > MAX_UNDO_FILES || undo.not_kept.len() > MAX_UNDO_FILES + 1 {
        return Err("too many files".into());
    }
    let hash = |h: &str| h == ABSENT || (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let mut seen = std::collections::HashSet::new();
    let mut content = 0u64;
    for f in &undo.files {
        let canonical = crate::policy::normalize(&f.path).is_some_and(|n| n == f.path && n != ".");
        if !canonical || !seen.insert(f.path.as_str()) {
            return Err(format!(
                "path {:?} is not canonical or listed twice",
                f.path
            ));
        }
        if !hash(&f.expected_sha256) || !hash(&f.restore_sha256) {
            return Err(format!("{}: malformed hash", f.path));
        }
        if (f.restore_sha256 == ABSENT) != f.content_base64.is_none() {
            return Err(format!("{}: content and restore_sha256 disagree", f.path));
        }
        content += f
            .content_base64
            .as_ref()
            .map_or(0, |c| c.len() as u64 / 4 * 3);
    }
    if content > max_call_bytes {
        return Err(format!(
            "{content} content bytes, over the {max_call_bytes}-byte limit"
        ));
    }
    Ok(())
}

fn not_kept_text(summary: &Value) -> String {
    let items: Vec<String> = summary
        .get("not_kept")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|n| {
                    format!(
                        "{} ({})",
                        n.get("path").and_then(Value::as_str).unwrap_or("?"),
                        n.get("reason")
                            .and_then(Value::as_str)
                            .unwrap_or("not kept")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if items.is_empty() {
        "nothing was kept".into()
    } else {
        items.join("; ")
    }
}
