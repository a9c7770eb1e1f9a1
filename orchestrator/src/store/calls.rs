//! Tool calls: create, move through the state machine, decide, expire, and the sets of calls
//! in flight and asked to stop — each change one Lua script.

use std::collections::HashMap;
use std::time::Duration;

use redis::FromRedisValue;

use super::codec::{check_patch, status_of};
use super::{valid_id, AuditEntry, CallRecord, DecisionResult, Store, StoreError, SCRIPTS};
use crate::calls::CallStatus;
use crate::events::Event;

/// Expired approvals handled per script run by `expire_due` (keeps each run short).
const EXPIRE_BATCH: usize = 100;
/// How long a request to cancel a running call waits for its orchestrator to see it.
pub const CALL_CANCEL_TTL: Duration = Duration::from_secs(60);

/// `Invalid` unless `event` is about call `id` and moves it to `status`.
pub(super) fn check_call_event(
    event: &Event,
    id: &str,
    status: CallStatus,
) -> Result<(), StoreError> {
    match event.call() {
        Some((c, Some(s))) if c == id && s == status => Ok(()),
        _ => Err(StoreError::Invalid(format!(
            "a `{}` event cannot record call {id} moving to `{status}`",
            event.kind()
        ))),
    }
}

/// How much of a decision's reason the audit entry keeps.
const AUDIT_REASON_CHARS: usize = 256;

/// The first `n` characters of `s` (never splits a UTF-8 sequence).
pub(super) fn truncate_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl Store {
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
        let maps = self
            .hgetall_many(ids.iter().map(|id| self.inner.keys.call(id)))
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
        let detail = format!("decision={} rule={}", call.decision.as_str(), call.rule);
        let audit = AuditEntry::for_call(
            call,
            &call.owner,
            "proposed",
            call.status.as_str(),
            Some(detail),
        );
        let audit = audit.to_fields();
        self.link_audit(&mut args, &audit).await;
        args.extend(audit);
        let k = &self.inner.keys;
        let keys = self.call_keys(&[
            k.session(&call.session_id),
            k.call(&call.id),
            k.session_calls(&call.session_id),
            k.events(&call.session_id),
        ]);
        let r: Vec<String> = self.invoke(&SCRIPTS.create_call, &keys, &args).await?;
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
        check_patch(patch)?;
        let allowed = CallStatus::predecessors(to);
        self.transition_from(call_id, &allowed, to, patch, event, audit)
            .await
    }

    /// Replaces what a call awaiting approval would do — `args`, `args_sha256` (the new
    /// binding: the approval key is re-armed with it, so a decision carrying the old hash is
    /// a mismatch), `preview` and `edited` — if it still awaits approval (else `Conflict`),
    /// with its event and audit entry, in one script.
    pub async fn edit_pending(
        &self,
        call_id: &str,
        patch: &[(&str, String)],
        event: Event,
        audit: &AuditEntry,
    ) -> Result<CallRecord, StoreError> {
        super::codec::check_edit_patch(patch)?;
        let waiting = [CallStatus::AwaitingApproval];
        let (rec, _) = self
            .transition_from(
                call_id,
                &waiting,
                CallStatus::AwaitingApproval,
                patch,
                Some(event),
                Some(audit),
            )
            .await?;
        Ok(rec)
    }

    async fn transition_from(
        &self,
        call_id: &str,
        allowed: &[CallStatus],
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
        let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
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
            let a = a.to_fields();
            self.link_audit(&mut args, &a).await;
            args.extend(a);
        }
        let keys = self.call_keys(&[self.inner.keys.call(call_id)]);
        let r: Vec<String> = self.invoke(&SCRIPTS.transition, &keys, &args).await?;
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
    // Each argument is one field of the one script; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide(
        &self,
        call_id: &str,
        user: &str,
        args_sha256: &str,
        approve: bool,
        reason: Option<&str>,
        approved_change: Option<&serde_json::Value>,
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
        let audit_detail = match approved_change.and_then(|c| c.get("hunks")) {
            Some(h) => format!(
                "hunks {h} of the change; {}",
                truncate_chars(reason.unwrap_or(""), AUDIT_REASON_CHARS)
            ),
            None => truncate_chars(reason.unwrap_or(""), AUDIT_REASON_CHARS).to_string(),
        };
        let mut args = self.args_at(now_ms);
        self.link_decision(&mut args, call_id, user, to, &audit_detail, now_ms)
            .await;
        args.extend([
            call_id.into(),
            user.into(),
            args_sha256.into(),
            to.as_str().into(),
            reason.unwrap_or("").into(),
            format!("decision carried args_sha256 {shown}"),
            audit_detail,
            approved_change.map(|c| c.to_string()).unwrap_or_default(),
        ]);
        let k = &self.inner.keys;
        let keys = self.call_keys(&[k.call(call_id), k.approval(call_id)]);
        let r: Vec<String> = self.invoke(&SCRIPTS.decide, &keys, &args).await?;
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

    /// The audit link for the entry `decide.lua` writes when the decision goes through
    /// (`audit_for` of the call's fields): the call and the head in one round trip.
    async fn link_decision(
        &self,
        args: &mut [String],
        call_id: &str,
        user: &str,
        to: CallStatus,
        detail: &str,
        now_ms: u64,
    ) {
        let k = &self.inner.keys;
        type Fields = Vec<Option<String>>;
        type Head = (Option<String>, Option<String>);
        let read: Result<(Fields, Head), _> = self
            .run(|mut c| async move {
                redis::pipe()
                    .cmd("HMGET")
                    .arg(k.call(call_id))
                    .arg(&["session_id", "tool", "args_sha256", "policy_sha256", "rule"])
                    .cmd("HMGET")
                    .arg(k.audit_head())
                    .arg(&["seq", "hash"])
                    .query_async(&mut c)
                    .await
            })
            .await;
        let Ok((f, head)) = read else {
            return; // no link: the script hashes in Lua
        };
        let get = |i: usize| f.get(i).cloned().flatten().unwrap_or_default();
        let entry = AuditEntry {
            at_ms: now_ms,
            actor: user.into(),
            action: to.as_str().into(),
            session_id: get(0),
            call_id: call_id.into(),
            tool: get(1),
            args_sha256: get(2),
            outcome: to.as_str().into(),
            policy_sha256: get(3),
            rule: get(4),
            detail: (!detail.is_empty()).then(|| detail.to_string()),
        };
        super::audit::put_link(args, head, &entry.to_fields());
    }

    /// Moves every call whose approval window ended at or before `now_ms` to `expired` (event
    /// and audit entry each, through the same script path as `decide`'s expiry, so a racing
    /// approval and expiry resolve to exactly one). Returns the calls it expired.
    pub async fn expire_due(&self, now_ms: u64) -> Result<Vec<CallRecord>, StoreError> {
        let mut out = Vec::new();
        loop {
            let mut args = self.args_at(now_ms);
            args.push(EXPIRE_BATCH.to_string());
            let v: redis::Value = self
                .invoke(&SCRIPTS.expire_due, &self.call_keys(&[]), &args)
                .await?;
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
}
