//! Retention: removing idle sessions and old audit entries, and logging the audit chain's
//! head so that a copy of the logs kept elsewhere can anchor it.

use serde::Serialize;

use super::{Engine, EngineError};
use crate::config::RetentionConfig;
use crate::store::{ChainPoint, TrimReport};

/// Sessions removed per sweep at most (the next sweep goes on).
const SWEEP_SESSIONS: usize = 1000;

/// What one [`Engine::retention_sweep`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub sessions_removed: Vec<String>,
    pub audit: Option<TrimReport>,
}

impl Engine {
    /// Applies `r` as of `now_ms` (injected, so tests can move the clock): sessions idle for
    /// longer than `session_days` go with everything they hold; audit entries older than
    /// `audit_days` are trimmed behind a checkpoint.
    pub async fn retention_sweep(
        &self,
        r: &RetentionConfig,
        now_ms: u64,
    ) -> Result<RetentionReport, EngineError> {
        let mut report = RetentionReport {
            sessions_removed: Vec::new(),
            audit: None,
        };
        if let Some(cutoff) = r.session_cutoff_ms(now_ms) {
            report.sessions_removed = self.store.sweep_sessions(cutoff, SWEEP_SESSIONS).await?;
            if !report.sessions_removed.is_empty() {
                tracing::info!(
                    removed = report.sessions_removed.len(),
                    days = r.session_days,
                    "retention: removed idle sessions"
                );
            }
        }
        if let Some(cutoff) = r.audit_cutoff_ms(now_ms) {
            let t = self.store.trim_audit(cutoff).await?;
            if let Some(cp) = &t.checkpoint {
                tracing::info!(
                    removed = t.removed,
                    checkpoint_seq = cp.seq,
                    checkpoint_hash = %cp.hash,
                    days = r.audit_days,
                    "retention: trimmed the audit behind a checkpoint"
                );
            }
            report.audit = Some(t);
        }
        Ok(report)
    }

    /// Logs the audit chain's head (`seq`, `hash`): `airlock audit verify --anchor SEQ:HASH`
    /// with a logged pair proves the chain was not rewritten since.
    pub async fn log_audit_head(&self) -> Result<Option<ChainPoint>, EngineError> {
        let (head, _) = self.store.audit_ends().await?;
        if let Some(h) = &head {
            tracing::info!(seq = h.seq, hash = %h.hash, id = %h.id, "audit chain head");
        }
        Ok(head)
    }
}
