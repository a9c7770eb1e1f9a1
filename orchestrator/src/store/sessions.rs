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
        if !valid_id(id) {
            return Err(StoreError::NotFound);
        }
        let mut args = self.base_args();
        args.push(id.into());
        // The session first, its call list second (the script reads both); then every other
        // key that lives and dies with it, the agent's included.
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
        let n: i64 = self.invoke(&SCRIPTS.delete_session, &keys, &args).await?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }
}
