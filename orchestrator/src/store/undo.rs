//! Undo records: what an applied call replaced, kept so its owner can revert it.
//!
//! | key | type | contents | TTL |
//! |---|---|---|---|
//! | `{p}undo:{call}` | string | [`StoredUndo`] JSON: owner, session, the executor's undo record (previous content, base64) | `PX` `[undo] retention_secs` |
//! | `{p}user:{name}:undo` | sorted set | the user's undo records by expiry (ms) | the newest record's |
//! | `{p}user:{name}:undo_bytes` | hash | call id → size of its record (bytes) | the newest record's |
//!
//! A user holds at most `[undo] max_user_bytes`: keeping a new record drops the oldest ones
//! ([`Store::put_undo`], one script). A revert that applies uses its record up
//! ([`Store::mark_reverted`]).

use std::sync::LazyLock;

use airlock_executor::protocol::UndoRecord;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::{now_ms, valid_id, Store, StoreError};

/// One stored undo record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredUndo {
    pub owner: String,
    pub session_id: String,
    pub at_ms: u64,
    pub expires_at_ms: u64,
    pub undo: UndoRecord,
}

struct UndoScripts {
    put: Script,
    mark: Script,
}

static SCRIPTS: LazyLock<UndoScripts> = LazyLock::new(|| UndoScripts {
    put: Script::new(include_str!("lua/put_undo.lua")),
    mark: Script::new(include_str!("lua/mark_reverted.lua")),
});

impl Store {
    fn undo_key(&self, call_id: &str) -> String {
        format!("{}undo:{call_id}", self.keys().prefix())
    }
    fn undo_index(&self, owner: &str) -> (String, String) {
        let p = self.keys().prefix();
        (
            format!("{p}user:{owner}:undo"),
            format!("{p}user:{owner}:undo_bytes"),
        )
    }

    /// Keeps `undo` for `call_id` for `ttl_ms`, dropping the owner's oldest records while they
    /// hold more than `max_user_bytes`. Returns the ids of the records dropped.
    pub async fn put_undo(
        &self,
        call_id: &str,
        session_id: &str,
        owner: &str,
        undo: &UndoRecord,
        ttl_ms: u64,
        max_user_bytes: u64,
    ) -> Result<Vec<String>, StoreError> {
        if !valid_id(call_id) {
            return Err(StoreError::Invalid(format!("bad call id {call_id:?}")));
        }
        let now = now_ms();
        let stored = StoredUndo {
            owner: owner.to_string(),
            session_id: session_id.to_string(),
            at_ms: now,
            expires_at_ms: now + ttl_ms,
            undo: undo.clone(),
        };
        let json = serde_json::to_string(&stored).expect("serializes");
        let (index, sizes) = self.undo_index(owner);
        let mut inv = SCRIPTS.put.prepare_invoke();
        inv.key(self.undo_key(call_id))
            .key(index)
            .key(sizes)
            .arg(json)
            .arg(now)
            .arg(ttl_ms)
            .arg(max_user_bytes)
            .arg(call_id)
            .arg(format!("{}undo:", self.keys().prefix()));
        let inv = &inv;
        self.run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await
    }

    /// The undo record of `call_id`, while it is kept.
    pub async fn get_undo(&self, call_id: &str) -> Result<Option<StoredUndo>, StoreError> {
        if !valid_id(call_id) {
            return Ok(None);
        }
        let raw: Option<String> = self
            .query(redis::cmd("GET").arg(self.undo_key(call_id)))
            .await?;
        raw.map(|r| {
            serde_json::from_str(&r)
                .map_err(|e| StoreError::Corrupt(format!("undo record of {call_id}: {e}")))
        })
        .transpose()
    }

    /// Records that `revert_id` reverted `call_id` and drops the undo record. False when the
    /// call was reverted already (or is gone).
    pub async fn mark_reverted(
        &self,
        call_id: &str,
        owner: &str,
        revert_id: &str,
    ) -> Result<bool, StoreError> {
        let (index, sizes) = self.undo_index(owner);
        let mut inv = SCRIPTS.mark.prepare_invoke();
        inv.key(self.keys().call(call_id))
            .key(self.undo_key(call_id))
            .key(index)
            .key(sizes)
            .arg(revert_id)
            .arg(call_id);
        let inv = &inv;
        let n: u8 = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(n == 1)
    }
}
