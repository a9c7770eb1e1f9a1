//! Per-user call quotas from the policy (calls running at once, calls proposed per minute) and
//! the session grants users made ("approve this pattern for the rest of the session").
//!
//! Both live in this orchestrator's memory: a restart forgets them, which fails closed (grants
//! are asked for again; quota windows start empty). With several orchestrators, each enforces
//! its quotas on the calls it handles.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::policy::Grant;

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Counters {
    /// Calls reserved or running per user.
    running: HashMap<String, usize>,
    /// When each user's calls of the last minute were proposed.
    recent: HashMap<String, VecDeque<Instant>>,
}

/// Per-user quotas. Cheap to share.
#[derive(Clone, Default)]
pub struct Quotas {
    inner: Arc<Mutex<Counters>>,
}

/// A reserved place among the user's concurrent calls; dropping it frees the place.
#[derive(Debug)]
pub struct CallSlot {
    inner: Arc<Mutex<Counters>>,
    user: String,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.running.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.running.remove(&self.user);
            }
        }
    }
}

impl Quotas {
    /// Counts one proposal of `user` at `now`; refuses it when `limit` proposals were made in
    /// the last minute. The message says when to try again.
    pub fn check_rate(&self, user: &str, limit: Option<u32>, now: Instant) -> Result<(), String> {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let q = c.recent.entry(user.to_string()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            q.pop_front();
        }
        if let Some(limit) = limit {
            if q.len() >= limit as usize {
                let wait = q
                    .front()
                    .map_or(WINDOW, |t| WINDOW.saturating_sub(now.duration_since(*t)));
                return Err(format!(
                    "rate limit: your policy allows {limit} tool calls per minute; try again in {} s",
                    wait.as_secs().max(1)
                ));
            }
        }
        q.push_back(now);
        if q.len() > 100_000 {
            q.pop_front(); // unlimited users: keep the window bounded
        }
        Ok(())
    }

    /// Reserves a place among `user`'s concurrent calls, or refuses when `limit` are running.
    pub fn reserve(&self, user: &str, limit: Option<u32>) -> Result<CallSlot, String> {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.running.entry(user.to_string()).or_default();
        if let Some(limit) = limit {
            if *n >= limit as usize {
                return Err(format!(
                    "you have {n} tool call(s) running and your policy allows {limit} at once; try again when one finishes"
                ));
            }
        }
        *n += 1;
        Ok(CallSlot {
            inner: self.inner.clone(),
            user: user.to_string(),
        })
    }

    /// Calls of `user` reserved or running now.
    pub fn running(&self, user: &str) -> usize {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.running.get(user).copied().unwrap_or(0)
    }
}

/// Patterns approved for the rest of a session, per session id.
#[derive(Default)]
pub struct SessionGrants {
    map: Mutex<HashMap<String, Vec<Grant>>>,
}

/// Most grants one session may hold.
pub const MAX_GRANTS_PER_SESSION: usize = 64;

impl SessionGrants {
    pub fn get(&self, session: &str) -> Vec<Grant> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(session).cloned().unwrap_or_default()
    }

    /// Adds a grant (an identical one is not added twice).
    pub fn add(&self, session: &str, g: Grant) -> Result<(), String> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let list = m.entry(session.to_string()).or_default();
        if list
            .iter()
            .any(|x| x.tool == g.tool && x.pattern == g.pattern)
        {
            return Ok(());
        }
        if list.len() >= MAX_GRANTS_PER_SESSION {
            return Err(format!(
                "this session already has {MAX_GRANTS_PER_SESSION} grants"
            ));
        }
        list.push(g);
        Ok(())
    }

    pub fn clear(&self, session: &str) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_window_slides() {
        let q = Quotas::default();
        let t0 = Instant::now();
        for i in 0..3 {
            q.check_rate("a", Some(3), t0 + Duration::from_secs(i))
                .unwrap();
        }
        let e = q
            .check_rate("a", Some(3), t0 + Duration::from_secs(10))
            .unwrap_err();
        assert!(
            e.contains("3 tool calls per minute") && e.contains("try again in 50 s"),
            "{e}"
        );
        q.check_rate("b", Some(3), t0).unwrap();
        q.check_rate("a", Some(3), t0 + Duration::from_secs(60))
            .unwrap();
        q.check_rate("a", None, t0 + Duration::from_secs(61))
            .unwrap();
    }

    #[test]
    fn slots_are_freed_on_drop() {
        let q = Quotas::default();
        let a = q.reserve("u", Some(2)).unwrap();
        let _b = q.reserve("u", Some(2)).unwrap();
        assert!(q
            .reserve("u", Some(2))
            .unwrap_err()
            .contains("allows 2 at once"));
        assert!(q.reserve("other", Some(2)).is_ok());
        drop(a);
        assert_eq!(q.running("u"), 1);
        let _c = q.reserve("u", Some(2)).unwrap();
        let _d = q.reserve("u", None).unwrap();
        assert_eq!(q.running("u"), 3);
    }

    #[test]
    fn grants_are_per_session_and_deduplicated() {
        let g = SessionGrants::default();
        g.add("s1", Grant::new("run_shell", "cargo test *").unwrap())
            .unwrap();
        g.add("s1", Grant::new("run_shell", "cargo test *").unwrap())
            .unwrap();
        assert_eq!(g.get("s1").len(), 1);
        assert!(g.get("s2").is_empty());
        g.clear("s1");
        assert!(g.get("s1").is_empty());
    }
}
