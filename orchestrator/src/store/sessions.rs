//! Sessions: create, read, list per owner, and delete with everything that lives in them.

use std::collections::HashMap;

use super::codec::session_from_fields;
use super::{now_ms, valid_id, SessionRecord, Store, StoreError, SCRIPTS};

impl Store {
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
        let maps = self
            .hgetall_many(ids.iter().map(|id| self.inner.keys.session(id)))
            .await?;
        maps.iter()
            .filter(|m| !m.is_empty())
            .map(session_from_fields)
            .collect()
    }

    /// Deletes a session with its events, calls and pending approvals. `NotFound` if absent.
    pub async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        match self.delete_session_if(id, None).await? {
            1 => Ok(()),
            _ => Err(StoreError::NotFound),
        }
    }

    /// 1 deleted, 0 absent, 2 not idle since `idle_before_ms` (kept).
    async fn delete_session_if(
        &self,
        id: &str,
        idle_before_ms: Option<u64>,
    ) -> Result<i64, StoreError> {
        if !valid_id(id) {
            return Ok(0);
        }
        let mut args = self.base_args();
        args.push(id.into());
        if let Some(t) = idle_before_ms {
            args.push(t.to_string());
        }
        // The session first, its call list second and its events third (the script reads
        // them); then every other key that lives and dies with it, the agent's included.
        let k = &self.inner.keys;
        let keys = self.call_keys(&[
            k.session(id),
            k.session_calls(id),
            k.events(id),
            k.grants(id),
            k.history(id),
            k.turn(id),
            k.turn_cancel(id),
        ]);
        self.invoke(&SCRIPTS.delete_session, &keys, &args).await
    }

    /// The retention sweep: removes up to `limit` sessions (of all users) that were idle
    /// since before `idle_before_ms` — no event since, none awaiting approval or in flight —
    /// with everything [`Store::delete_session`] removes. Returns the ids removed.
    pub async fn sweep_sessions(
        &self,
        idle_before_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}user:*:sessions", glob_escape(self.inner.keys.prefix()));
        let mut cursor = 0u64;
        let mut removed = Vec::new();
        loop {
            let (next, user_keys): (u64, Vec<String>) = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(200)
                        .arg("TYPE")
                        .arg("zset"),
                )
                .await?;
            for uk in user_keys {
                // Created before the cutoff is necessary (the index is scored by creation);
                // the script checks the rest.
                let ids: Vec<String> = self
                    .query(
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(&uk)
                            .arg("-inf")
                            .arg(format!("({idle_before_ms}"))
                            .arg("LIMIT")
                            .arg(0)
                            .arg(limit),
                    )
                    .await?;
                for id in ids {
                    if removed.len() >= limit {
                        return Ok(removed);
                    }
                    if self.delete_session_if(&id, Some(idle_before_ms)).await? == 1 {
                        removed.push(id);
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
    }
}

/// `s` with Redis glob metacharacters escaped, for a `SCAN MATCH` of a literal prefix.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
