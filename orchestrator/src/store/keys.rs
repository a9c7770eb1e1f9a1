//! Key names under the store's prefix, and the checks that keep ids and event ids from
//! reaching into other keys.

use super::StoreError;

/// Names of every key, under one prefix. Mirrors the Lua prelude's key functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.into(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn session(&self, sid: &str) -> String {
        format!("{}session:{sid}", self.prefix)
    }
    pub fn user_sessions(&self, owner: &str) -> String {
        format!("{}user:{owner}:sessions", self.prefix)
    }
    pub fn events(&self, sid: &str) -> String {
        format!("{}session:{sid}:events", self.prefix)
    }
    pub fn session_calls(&self, sid: &str) -> String {
        format!("{}session:{sid}:calls", self.prefix)
    }
    pub fn call(&self, cid: &str) -> String {
        format!("{}call:{cid}", self.prefix)
    }
    /// A request to stop a running call, for whichever orchestrator runs it.
    pub fn call_cancel(&self, cid: &str) -> String {
        format!("{}call:{cid}:cancel", self.prefix)
    }
    pub fn approval(&self, cid: &str) -> String {
        format!("{}approval:{cid}", self.prefix)
    }
    pub fn pending(&self) -> String {
        format!("{}pending", self.prefix)
    }
    pub fn running(&self) -> String {
        format!("{}running", self.prefix)
    }
    pub fn runners(&self) -> String {
        format!("{}runners", self.prefix)
    }
    pub fn instance_lease(&self, instance: &str) -> String {
        format!("{}instance:{instance}", self.prefix)
    }
    /// A user's reserved call slots (`store/quota.rs`).
    pub fn user_slots(&self, user: &str) -> String {
        format!("{}user:{user}:slots", self.prefix)
    }
    /// A user's recent proposals (`store/quota.rs`).
    pub fn user_proposals(&self, user: &str) -> String {
        format!("{}user:{user}:proposals", self.prefix)
    }
    /// Session grants (`store/quota.rs`).
    pub fn grants(&self, sid: &str) -> String {
        format!("{}:grants", self.session(sid))
    }
    /// The agent's conversation (`store/history.rs`).
    pub fn history(&self, sid: &str) -> String {
        format!("{}:history", self.session(sid))
    }
    /// The session's turn lock (`store/history.rs`).
    pub fn turn(&self, sid: &str) -> String {
        format!("{}:turn", self.session(sid))
    }
    /// A request to stop the session's turn (`store/history.rs`).
    pub fn turn_cancel(&self, sid: &str) -> String {
        format!("{}:turn_cancel", self.session(sid))
    }
    /// The Airlock session an MCP conversation of `owner` runs in (`store/mcp.rs`); `conv` is
    /// a hex digest, never the client's own text.
    pub fn mcp_conversation(&self, owner: &str, conv: &str) -> String {
        format!("{}user:{owner}:mcp:{conv}", self.prefix)
    }
    /// The key every replica signs MCP `requestState` with (`store/mcp.rs`).
    pub fn mcp_state_key(&self) -> String {
        format!("{}mcp:state_key", self.prefix)
    }
    pub fn audit(&self) -> String {
        format!("{}audit", self.prefix)
    }
    /// The audit chain's head: `seq`, `hash` and stream `id` of the newest entry.
    pub fn audit_head(&self) -> String {
        format!("{}audit:head", self.prefix)
    }
    /// Where the audit was last trimmed: `seq` and `hash` of the last removed entry.
    pub fn audit_checkpoint(&self) -> String {
        format!("{}audit:checkpoint", self.prefix)
    }
}

/// Session and call ids: UUID-like tokens only, so an id can never reach into another key
/// (`x:events`) and every key name stays unambiguous.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Parses a stream entry id `<ms>-<seq>` (both decimal u64).
pub fn parse_event_id(s: &str) -> Option<(u64, u64)> {
    let (ms, seq) = s.split_once('-')?;
    let num = |p: &str| {
        if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            p.parse::<u64>().ok()
        }
    };
    Some((num(ms)?, num(seq)?))
}

/// The `XRANGE` start strictly after `after` (`-` from the beginning); `None` when nothing can
/// come after it (the largest id).
pub(super) fn range_start_after(after: Option<(u64, u64)>) -> Option<String> {
    match after {
        None => Some("-".to_string()),
        Some((u64::MAX, u64::MAX)) => None,
        Some((ms, seq)) => Some(format!("({ms}-{seq}")),
    }
}

pub fn checked_event_id(after: Option<&str>) -> Result<Option<(u64, u64)>, StoreError> {
    match after {
        None => Ok(None),
        Some(s) => parse_event_id(s)
            .map(Some)
            .ok_or_else(|| StoreError::InvalidEventId(s.chars().take(64).collect())),
    }
}
