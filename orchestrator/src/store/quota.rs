//! Per-user call quotas and per-session grants in Redis, so every orchestrator sharing one
//! Redis enforces the same numbers and a grant made on one is honoured by all (and survives
//! restarts).
//!
//! | key | type | contents | TTL |
//! |---|---|---|---|
//! | `{p}user:{name}:slots` | sorted set: one member per reserved or running call (a random token), scored by the time its reservation lapses | `PX` [`SLOT_TTL`], refreshed on every change |
//! | `{p}user:{name}:proposals` | sorted set: one member per proposal of the last minute, scored by when it was made | `PX` 61 s, refreshed on every proposal |
//! | `{p}session:{sid}:grants` | hash: `tool` `\n` `pattern` → when it was granted (ms) | none; deleted with the session |
//!
//! A slot is held by the orchestrator running the call and renewed at every sweep
//! ([`Store::renew_slots`]); an orchestrator that dies stops renewing, and its slots lapse
//! after [`SLOT_TTL`], so a crash frees the user's places without anyone cleaning up.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{now_ms, valid_id, Store, StoreError};
use crate::events::{Event, SessionGrant};

/// How long a reserved slot lives without being renewed.
pub const SLOT_TTL: Duration = Duration::from_secs(30);
/// The window of `calls_per_minute`.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Proposals remembered per user for an unlimited user (bounds the sorted set).
const MAX_REMEMBERED: u64 = 10_000;

/// What [`Store::reserve_slot`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Reserved,
    /// `running` places are taken and the limit allows no more.
    Full {
        running: u64,
    },
}

/// What [`Store::count_proposal`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Counted,
    /// The limit is reached; the oldest proposal in the window leaves it in `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

/// What [`Store::add_grant`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantAdded {
    Added,
    /// The same tool and pattern were granted before (nothing written).
    Exists,
    /// The session holds the most grants it may.
    Full,
    NoSession,
}

struct QuotaScripts {
    reserve: Script,
    renew: Script,
    propose: Script,
    add_grant: Script,
}

static SCRIPTS: LazyLock<QuotaScripts> = LazyLock::new(|| QuotaScripts {
    reserve: Script::new(include_str!("lua/reserve_slot.lua")),
    renew: Script::new(include_str!("lua/renew_slots.lua")),
    propose: Script::new(include_str!("lua/count_proposal.lua")),
    add_grant: Script::new(include_str!("lua/add_grant.lua")),
});

impl Store {
    fn slots_key(&self, user: &str) -> String {
        self.keys().user_slots(user)
    }
    fn proposals_key(&self, user: &str) -> String {
        self.keys().user_proposals(user)
    }
    pub(super) fn grants_key(&self, sid: &str) -> String {
        self.keys().grants(sid)
    }

    /// Reserves one of `user`'s concurrent-call places under `token`, unless `limit` places
    /// are held (by any orchestrator). The place lapses after [`SLOT_TTL`] unless renewed.
    pub async fn reserve_slot(
        &self,
        user: &str,
        token: &str,
        limit: Option<u32>,
    ) -> Result<Reservation, StoreError> {
        let mut inv = SCRIPTS.reserve.prepare_invoke();
        inv.key(self.slots_key(user))
            .arg(now_ms())
            .arg(token)
            .arg(limit.map(|l| l.to_string()).unwrap_or_default())
            .arg(SLOT_TTL.as_millis() as u64);
        let inv = &inv;
        let (ok, n): (u8, u64) = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(if ok == 1 {
            Reservation::Reserved
        } else {
            Reservation::Full { running: n }
        })
    }

    /// Renews the places held under `held` (user, token) for another [`SLOT_TTL`].
    pub async fn renew_slots(&self, held: &[(String, String)]) -> Result<(), StoreError> {
        if held.is_empty() {
            return Ok(());
        }
        let mut inv = SCRIPTS.renew.prepare_invoke();
        inv.arg(now_ms()).arg(SLOT_TTL.as_millis() as u64);
        for (user, _) in held {
            inv.key(self.slots_key(user));
        }
        for (_, token) in held {
            inv.arg(token);
        }
        let inv = &inv;
        let _: u64 = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(())
    }

    /// Frees the place held under `token`.
    pub async fn release_slot(&self, user: &str, token: &str) -> Result<(), StoreError> {
        let _: u64 = self
            .query(redis::cmd("ZREM").arg(self.slots_key(user)).arg(token))
            .await?;
        Ok(())
    }

    /// Places of `user` held now, by any orchestrator.
    pub async fn held_slots(&self, user: &str) -> Result<u64, StoreError> {
        self.query(
            redis::cmd("ZCOUNT")
                .arg(self.slots_key(user))
                .arg(format!("({}", now_ms()))
                .arg("+inf"),
        )
        .await
    }

    /// Counts one proposal of `user`, unless `limit` were made in the last minute.
    pub async fn count_proposal(&self, user: &str, limit: Option<u32>) -> Result<Rate, StoreError> {
        let now = now_ms();
        let mut inv = SCRIPTS.propose.prepare_invoke();
        inv.key(self.proposals_key(user))
            .arg(now)
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(limit.map(|l| l.to_string()).unwrap_or_default())
            .arg(RATE_WINDOW.as_millis() as u64)
            .arg(MAX_REMEMBERED);
        let inv = &inv;
        let r: Vec<String> = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        match r.as_slice() {
            [ok] if ok == "1" => Ok(Rate::Counted),
            [_, oldest] => {
                let oldest: f64 = oldest.parse().unwrap_or(now as f64);
                let leaves = (oldest as u64).saturating_add(RATE_WINDOW.as_millis() as u64);
                Ok(Rate::Limited {
                    retry_after: Duration::from_millis(leaves.saturating_sub(now)),
                })
            }
            other => Err(StoreError::Corrupt(format!(
                "unexpected rate reply {other:?}"
            ))),
        }
    }

    /// Records a grant of `tool` + `pattern` in session `sid` and writes its `session_grant`
    /// event in the same script.
    pub async fn add_grant(
        &self,
        sid: &str,
        grant: &SessionGrant,
        max: usize,
    ) -> Result<GrantAdded, StoreError> {
        if !valid_id(sid) {
            return Ok(GrantAdded::NoSession);
        }
        let (tool, pattern) = (&grant.tool, &grant.pattern);
        let (kind, data) = Event::SessionGrant(grant.clone()).to_parts();
        let mut inv = SCRIPTS.add_grant.prepare_invoke();
        inv.key(self.keys().session(sid))
            .key(self.grants_key(sid))
            .key(self.keys().events(sid))
            .arg(format!("{tool}\n{pattern}"))
            .arg(now_ms())
            .arg(max)
            .arg(kind)
            .arg(data.to_string());
        let inv = &inv;
        let r: String = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(match r.as_str() {
            "added" => GrantAdded::Added,
            "exists" => GrantAdded::Exists,
            "full" => GrantAdded::Full,
            _ => GrantAdded::NoSession,
        })
    }

    /// The session's grants as (tool, pattern), oldest first.
    pub async fn grants(&self, sid: &str) -> Result<Vec<(String, String)>, StoreError> {
        if !valid_id(sid) {
            return Ok(Vec::new());
        }
        let m: std::collections::HashMap<String, u64> = self
            .query(redis::cmd("HGETALL").arg(self.grants_key(sid)))
            .await?;
        let mut v: Vec<(u64, String, String)> = m
            .into_iter()
            .filter_map(|(k, at)| {
                let (t, p) = k.split_once('\n')?;
                Some((at, t.to_string(), p.to_string()))
            })
            .collect();
        v.sort();
        Ok(v.into_iter().map(|(_, t, p)| (t, p)).collect())
    }
}
