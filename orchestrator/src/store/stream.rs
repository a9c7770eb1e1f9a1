//! Session event streams: append, read, read a time range, and wait for the next event on a
//! dedicated blocking connection.

use std::time::Duration;

use redis::streams::{StreamRangeReply, StreamReadReply};

use super::codec::event_from_entry;
use super::{checked_event_id, valid_id, Store, StoreError, StoredEvent, SCRIPTS};
use crate::events::Event;

/// Longest block a `wait_events` may ask for.
pub const MAX_BLOCK: Duration = Duration::from_secs(60);

impl Store {
    // --- events --------------------------------------------------------------------------------

    /// Appends an event to a session's stream; returns its id. `NotFound` without the session.
    pub async fn append_event(
        &self,
        session_id: &str,
        event: &Event,
    ) -> Result<String, StoreError> {
        if !valid_id(session_id) {
            return Err(StoreError::NotFound);
        }
        let (kind, data) = event.to_parts();
        let keys = [
            self.inner.keys.session(session_id),
            self.inner.keys.events(session_id),
        ];
        let args = [kind.to_string(), data.to_string()];
        let id: Option<String> = self.invoke(&SCRIPTS.append_event, &keys, &args).await?;
        id.ok_or(StoreError::NotFound)
    }

    /// Up to `count` events strictly after `after` (from the start when `None`), oldest first.
    pub async fn read_events(
        &self,
        session_id: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let after = checked_event_id(after)?;
        if !valid_id(session_id) || count == 0 {
            return Ok(Vec::new());
        }
        let Some(start) = super::keys::range_start_after(after) else {
            return Ok(Vec::new());
        };
        let reply: StreamRangeReply = self
            .query(
                redis::cmd("XRANGE")
                    .arg(self.inner.keys.events(session_id))
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        reply.ids.iter().map(event_from_entry).collect()
    }

    /// The session's events whose ids fall between `from_ms` and `to_ms` (inclusive; `None`:
    /// up to the newest), at most `count`. Stream ids start with Redis's clock in ms.
    pub async fn read_events_between(
        &self,
        session_id: &str,
        from_ms: u64,
        to_ms: Option<u64>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        if !valid_id(session_id) || count == 0 {
            return Ok(Vec::new());
        }
        let end = to_ms.map_or_else(|| "+".to_string(), |t| format!("{t}-{}", u64::MAX));
        let reply: StreamRangeReply = self
            .query(
                redis::cmd("XRANGE")
                    .arg(self.inner.keys.events(session_id))
                    .arg(format!("{from_ms}-0"))
                    .arg(end)
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        reply.ids.iter().map(event_from_entry).collect()
    }

    /// Like [`Store::read_events`], but when nothing is there yet waits up to `block` (at most
    /// [`MAX_BLOCK`]) for the next event with `XREAD BLOCK`. Returns an empty list on timeout.
    /// Runs on a dedicated connection (see [`BlockingReaders`]).
    pub async fn wait_events(
        &self,
        session_id: &str,
        after: Option<&str>,
        count: usize,
        block: Duration,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let parsed = checked_event_id(after)?;
        if !valid_id(session_id) || count == 0 {
            return Ok(Vec::new());
        }
        let block = block.min(MAX_BLOCK);
        let block_ms = block.as_millis() as u64;
        if block_ms == 0 {
            // BLOCK 0 would mean "forever".
            return self.read_events(session_id, after, count).await;
        }
        let b = &self.inner.blocking;
        let Ok(Ok(_permit)) = tokio::time::timeout(block, b.permits.acquire()).await else {
            // Too many blocked readers: answer with what is there now.
            return self.read_events(session_id, after, count).await;
        };
        let from = match parsed {
            None => "0-0".to_string(),
            Some((ms, seq)) => format!("{ms}-{seq}"),
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(self.inner.keys.events(session_id))
            .arg(from);
        let limit = block + self.inner.opts.response_timeout;
        // A reused connection may have died with a Redis restart: then try once more on a fresh
        // one before reporting Redis unavailable.
        let mut reused = b.take_idle();
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(c) => c,
                None => {
                    let fresh = tokio::time::timeout(
                        self.inner.opts.connect_timeout + Duration::from_millis(500),
                        b.client
                            .get_multiplexed_async_connection_with_config(&b.config),
                    )
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable(format!(
                            "{}: connecting timed out",
                            self.inner.endpoint
                        ))
                    })?;
                    fresh.map_err(|e| self.map_err(e))?
                }
            };
            let res =
                tokio::time::timeout(limit, cmd.query_async::<Option<StreamReadReply>>(&mut conn))
                    .await;
            match res {
                Ok(Ok(reply)) => {
                    b.give_back(conn);
                    let mut out = Vec::new();
                    for k in reply.map(|r| r.keys).unwrap_or_default() {
                        for e in &k.ids {
                            out.push(event_from_entry(e)?);
                        }
                    }
                    return Ok(out);
                }
                Ok(Err(e)) if was_reused && e.is_io_error() => continue,
                Ok(Err(e)) => return Err(self.map_err(e)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "{}: XREAD gave no answer within {limit:?}",
                        self.inner.endpoint
                    )))
                }
            }
        }
    }
}
