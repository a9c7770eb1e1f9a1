//! The agent's state in Redis: each session's conversation history and its turn lock.
//!
//! | key | type | contents | TTL |
//! |---|---|---|---|
//! | `{p}session:{sid}:history` | list | conversation entries (JSON text), oldest first | none; deleted with the session |
//! | `{p}session:{sid}:turn` | string | the id of the turn running in the session | `PX` 15 s, renewed every 3 s by the turn |
//! | `{p}session:{sid}:turn_cancel` | string | the id of a turn asked to stop | `PX` 60 s |
//!
//! The turn lock makes "one turn per session at a time" hold across orchestrators sharing one
//! Redis; a cancel request reaches a turn running on another orchestrator through
//! `turn_cancel`, which the turn's heartbeat reads. Kept apart from the rest of the store so the agent's
//! keys are in one place.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{valid_id, Store, StoreError};

/// How long a turn lock lives without a heartbeat.
pub const TURN_LOCK_TTL: Duration = Duration::from_secs(15);
/// How often a running turn renews its lock (and looks for a cancel request).
pub const TURN_HEARTBEAT: Duration = Duration::from_secs(3);
const CANCEL_TTL: Duration = Duration::from_secs(60);

/// What a turn's heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lock is ours (renewed, or taken again after it lapsed).
    Held,
    /// Someone asked this turn to stop.
    CancelRequested,
    /// Another turn holds the session.
    Lost,
}

struct HistoryScripts {
    append: Script,
    begin: Script,
    beat: Script,
    end: Script,
    request_cancel: Script,
}

static SCRIPTS: LazyLock<HistoryScripts> = LazyLock::new(|| HistoryScripts {
    append: Script::new(include_str!("lua/append_history.lua")),
    begin: Script::new(include_str!("lua/begin_turn.lua")),
    beat: Script::new(include_str!("lua/turn_heartbeat.lua")),
    end: Script::new(include_str!("lua/end_turn.lua")),
    request_cancel: Script::new(include_str!("lua/request_turn_cancel.lua")),
});

/// The agent's handle on the store: its conversation history and turn lock, and appending its
/// own events to a session. Handed out by the engine ([`crate::engine::Engine::agent_store`]);
/// it reaches no call, approval or audit key.
#[derive(Clone, Debug)]
pub struct AgentStore(Store);

impl AgentStore {
    pub(crate) fn new(store: Store) -> AgentStore {
        AgentStore(store)
    }

    /// Appends one event to the session's stream; returns its id (`NotFound` without the
    /// session).
    pub async fn append_event(
        &self,
        session_id: &str,
        event: &crate::events::Event,
    ) -> Result<String, StoreError> {
        self.0.append_event(session_id, event).await
    }

    fn history_key(&self, sid: &str) -> String {
        self.0.keys().history(sid)
    }
    fn turn_key(&self, sid: &str) -> String {
        self.0.keys().turn(sid)
    }
    fn turn_cancel_key(&self, sid: &str) -> String {
        self.0.keys().turn_cancel(sid)
    }

    /// Appends one history entry (any JSON). `NotFound` when the session does not exist
    /// (so a session deleted mid-turn is not brought back by the turn's last writes).
    pub async fn append_history(
        &self,
        session_id: &str,
        entry: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        if !valid_id(session_id) {
            return Err(StoreError::NotFound);
        }
        let keys = [
            self.0.keys().session(session_id),
            self.history_key(session_id),
        ];
        let n: Option<u64> = self
            .0
            .invoke(&SCRIPTS.append, &keys, &[entry.to_string()])
            .await?;
        n.ok_or(StoreError::NotFound)
    }

    /// The newest `max` history entries, oldest first.
    pub async fn read_history(
        &self,
        session_id: &str,
        max: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        if !valid_id(session_id) || max == 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<String> = self
            .0
            .query(
                redis::cmd("LRANGE")
                    .arg(self.history_key(session_id))
                    .arg(-(max.min(i64::MAX as usize) as i64))
                    .arg(-1),
            )
            .await?;
        raw.iter()
            .map(|s| {
                serde_json::from_str(s)
                    .map_err(|e| StoreError::Corrupt(format!("history entry: {e}")))
            })
            .collect()
    }

    /// Takes the session's turn lock for `turn_id`. `Ok(Err(holder))` when another turn runs;
    /// `NotFound` without the session.
    pub async fn begin_turn(
        &self,
        session_id: &str,
        turn_id: &str,
    ) -> Result<Result<(), String>, StoreError> {
        if !valid_id(session_id) {
            return Err(StoreError::NotFound);
        }
        let keys = [
            self.0.keys().session(session_id),
            self.turn_key(session_id),
            self.turn_cancel_key(session_id),
        ];
        let args = [turn_id.to_string(), TURN_LOCK_TTL.as_millis().to_string()];
        let (code, holder): (i64, String) = self.0.invoke(&SCRIPTS.begin, &keys, &args).await?;
        match code {
            1 => Ok(Ok(())),
            2 => Ok(Err(holder)),
            _ => Err(StoreError::NotFound),
        }
    }

    /// Renews the turn lock and reports a cancel request.
    pub async fn turn_heartbeat(
        &self,
        session_id: &str,
        turn_id: &str,
    ) -> Result<Heartbeat, StoreError> {
        let keys = [self.turn_key(session_id), self.turn_cancel_key(session_id)];
        let args = [turn_id.to_string(), TURN_LOCK_TTL.as_millis().to_string()];
        let code: i64 = self.0.invoke(&SCRIPTS.beat, &keys, &args).await?;
        Ok(match code {
            1 => Heartbeat::Held,
            2 => Heartbeat::CancelRequested,
            _ => Heartbeat::Lost,
        })
    }

    /// Releases the turn lock (only if `turn_id` holds it) and its cancel request.
    pub async fn end_turn(&self, session_id: &str, turn_id: &str) -> Result<(), StoreError> {
        let keys = [self.turn_key(session_id), self.turn_cancel_key(session_id)];
        let _: i64 = self
            .0
            .invoke(&SCRIPTS.end, &keys, &[turn_id.to_string()])
            .await?;
        Ok(())
    }

    /// The id of the turn running in the session, if any.
    pub async fn current_turn(&self, session_id: &str) -> Result<Option<String>, StoreError> {
        if !valid_id(session_id) {
            return Ok(None);
        }
        self.0
            .query(redis::cmd("GET").arg(self.turn_key(session_id)))
            .await
    }

    /// Asks the session's running turn (on whichever orchestrator) to stop; returns its id.
    pub async fn request_turn_cancel(
        &self,
        session_id: &str,
    ) -> Result<Option<String>, StoreError> {
        if !valid_id(session_id) {
            return Ok(None);
        }
        let keys = [self.turn_key(session_id), self.turn_cancel_key(session_id)];
        let args = [CANCEL_TTL.as_millis().to_string()];
        self.0.invoke(&SCRIPTS.request_cancel, &keys, &args).await
    }
}
