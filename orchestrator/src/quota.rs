//! Per-user call quotas from the policy (calls running at once, calls proposed per minute),
//! kept in Redis so every orchestrator on one Redis counts the same calls.
//!
//! A reserved place is a [`CallSlot`]: a token in the user's slot set in Redis, renewed at
//! every sweep by the orchestrator holding it ([`Quotas::renew`]) and released when the slot
//! is dropped. A crashed orchestrator stops renewing and its places lapse after
//! [`crate::store::SLOT_TTL`]. Redis unreachable means no place is reserved (fail closed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::{Rate, Reservation, Store, StoreError};

/// Why a quota refused a call: over the limit (429), or Redis could not say (503).
#[derive(Debug)]
pub enum QuotaError {
    Over(String),
    Store(StoreError),
}

/// Per-user quotas. Cheap to share.
#[derive(Clone)]
pub struct Quotas {
    store: Store,
    /// Slots this process holds: token → user (renewed by [`Quotas::renew`]).
    held: Arc<Mutex<HashMap<String, String>>>,
}

/// A reserved place among the user's concurrent calls; dropping it frees the place.
#[derive(Debug)]
pub struct CallSlot {
    store: Store,
    held: Arc<Mutex<HashMap<String, String>>>,
    user: String,
    token: String,
    /// False when Redis said no place was taken (nothing to release).
    taken: bool,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.token);
        if !self.taken {
            return;
        }
        // The release is a Redis round trip; should it fail, the place lapses on its own.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, user, token) = (self.store.clone(), self.user.clone(), self.token.clone());
            rt.spawn(async move {
                if let Err(e) = store.release_slot(&user, &token).await {
                    tracing::warn!(error = %e, "could not release a call slot; it lapses by itself");
                }
            });
        }
    }
}

impl Quotas {
    pub fn new(store: Store) -> Quotas {
        Quotas {
            store,
            held: Arc::default(),
        }
    }

    /// Counts one proposal of `user`; refuses it when `limit` proposals were made in the last
    /// minute (by this or any other orchestrator). The message says when to try again.
    pub async fn check_rate(&self, user: &str, limit: Option<u32>) -> Result<(), QuotaError> {
        match self
            .store
            .count_proposal(user, limit)
            .await
            .map_err(QuotaError::Store)?
        {
            Rate::Counted => Ok(()),
            Rate::Limited { retry_after } => Err(QuotaError::Over(format!(
                "rate limit: your policy allows {} tool calls per minute; try again in {} s",
                limit.unwrap_or(0),
                retry_after.as_secs().max(1)
            ))),
        }
    }

    /// Reserves a place among `user`'s concurrent calls, or refuses when `limit` are running.
    pub async fn reserve(&self, user: &str, limit: Option<u32>) -> Result<CallSlot, QuotaError> {
        let token = uuid::Uuid::new_v4().to_string();
        // Registered before the script runs, so a slot whose reply is lost is still renewed
        // until the drop below releases it.
        let mut slot = CallSlot {
            store: self.store.clone(),
            held: self.held.clone(),
            user: user.to_string(),
            token: token.clone(),
            taken: true,
        };
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), user.to_string());
        match self
            .store
            .reserve_slot(user, &token, limit)
            .await
            .map_err(QuotaError::Store)?
        {
            Reservation::Reserved => Ok(slot),
            Reservation::Full { running } => {
                slot.taken = false;
                Err(QuotaError::Over(format!(
                "you have {running} tool call(s) running and your policy allows {} at once; try again when one finishes",
                limit.unwrap_or(0)
            )))
            }
        }
    }

    /// Renews every place this process holds (called at each sweep).
    pub async fn renew(&self) -> Result<(), StoreError> {
        let held: Vec<(String, String)> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(t, u)| (u.clone(), t.clone()))
            .collect();
        self.store.renew_slots(&held).await
    }
}
