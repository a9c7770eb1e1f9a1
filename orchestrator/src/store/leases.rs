//! Instance leases: one live orchestrator per instance name, and how a restarted process
//! recognises its dead predecessor.

use std::time::Duration;

use super::{Store, StoreError, LEASE_SCRIPTS};

/// How long an instance's lease lasts unless its orchestrator renews it.
pub const INSTANCE_LEASE: Duration = Duration::from_secs(15);
/// How often a live orchestrator renews its lease (several renewals fit in one lease).
pub const INSTANCE_RENEW: Duration = Duration::from_secs(3);

/// What [`Store::claim_instance`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease is ours.
    Claimed,
    /// Another process holds it, for `ttl_ms` more unless it renews.
    Held { holder: String, ttl_ms: u64 },
}

/// A lease holder string for this process: `host/pid/random`. The host and pid let a restarted
/// process recognise its dead predecessor (same host, a pid that is gone or is its own).
pub fn lease_holder() -> String {
    format!(
        "{}/{}/{}",
        host_name(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// This machine's (or container's) host name, `unknown` if it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "unknown".into())
}

/// Whether `holder` (from [`lease_holder`]) was a process on this host that no longer runs:
/// its pid is gone, or is this process's own (a pid is not reused while its owner lives, so an
/// earlier holder with our pid is dead — as after a container restart, where the server is
/// always pid 1). A holder on another host is never judged dead here: its lease must lapse.
pub fn holder_is_dead_here(holder: &str) -> bool {
    let mut parts = holder.splitn(3, '/');
    let (Some(host), Some(pid), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if host != host_name() || pid == 0 {
        return false;
    }
    pid == std::process::id() || !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

// The lease scripts take their key as an argument (no prelude).
// ARGV: key, holder, ttl ms, takeover_from ('' = none)

impl Store {
    /// Takes the lease of this handle's instance for `holder` (a string unique to this process,
    /// see [`lease_holder`]). Succeeds when nobody holds it, when `holder` already does, or when
    /// the current holder is `takeover_from` (a predecessor known to be dead); otherwise says
    /// who holds it and for how much longer.
    pub async fn claim_instance(
        &self,
        holder: &str,
        takeover_from: Option<&str>,
    ) -> Result<Claim, StoreError> {
        let args = [
            holder.to_string(),
            INSTANCE_LEASE.as_millis().to_string(),
            takeover_from.unwrap_or("").to_string(),
        ];
        let r: Vec<String> = self
            .invoke(&LEASE_SCRIPTS.claim, &[self.lease_key()], &args)
            .await?;
        match r.first().map(String::as_str) {
            Some("claimed") => Ok(Claim::Claimed),
            Some("held") => Ok(Claim::Held {
                holder: r.get(1).cloned().unwrap_or_default(),
                ttl_ms: r
                    .get(2)
                    .and_then(|t| t.parse::<i64>().ok())
                    .unwrap_or(0)
                    .max(0) as u64,
            }),
            _ => Err(StoreError::Redis(format!("claim_instance: reply {r:?}"))),
        }
    }

    /// Renews the lease `holder` holds (taking it again if it lapsed meanwhile, e.g. during a
    /// Redis outage). `Ok(false)`: another process holds it now.
    pub async fn renew_instance(&self, holder: &str) -> Result<bool, StoreError> {
        let args = [holder.to_string(), INSTANCE_LEASE.as_millis().to_string()];
        let r: i64 = self
            .invoke(&LEASE_SCRIPTS.renew, &[self.lease_key()], &args)
            .await?;
        Ok(r != 0)
    }

    /// Gives the lease up if `holder` holds it (a clean stop: a successor need not wait).
    pub async fn release_instance(&self, holder: &str) -> Result<(), StoreError> {
        let args = [holder.to_string()];
        let _: i64 = self
            .invoke(&LEASE_SCRIPTS.release, &[self.lease_key()], &args)
            .await?;
        Ok(())
    }

    fn lease_key(&self) -> String {
        self.inner.keys.instance_lease(&self.instance)
    }

    /// Whether some orchestrator holds `instance`'s lease (is alive, as far as Redis knows).
    pub async fn instance_alive(&self, instance: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .query(redis::cmd("EXISTS").arg(self.inner.keys.instance_lease(instance)))
            .await?;
        Ok(n == 1)
    }
}
