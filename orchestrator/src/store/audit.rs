//! The audit stream: read in pages (entries are written by the call scripts).

use std::collections::HashMap;

use redis::streams::StreamRangeReply;
use redis::FromRedisValue;

use super::{checked_event_id, AuditEntry, Store, StoreError};

impl Store {
    // --- audit ---------------------------------------------------------------------------------

    /// Up to `count` audit entries strictly after `after` (from the start when `None`).
    pub async fn read_audit(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<(String, AuditEntry)>, StoreError> {
        let after = checked_event_id(after)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let Some(start) = super::keys::range_start_after(after) else {
            return Ok(Vec::new());
        };
        let reply: StreamRangeReply = self
            .query(
                redis::cmd("XRANGE")
                    .arg(self.inner.keys.audit())
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        reply
            .ids
            .iter()
            .map(|e| {
                let mut m = HashMap::new();
                for (k, v) in &e.map {
                    let v = String::from_redis_value(v)
                        .map_err(|_| StoreError::Corrupt(format!("audit {} field `{k}`", e.id)))?;
                    m.insert(k.clone(), v);
                }
                Ok((e.id.clone(), AuditEntry::from_fields(&m)?))
            })
            .collect()
    }
}
