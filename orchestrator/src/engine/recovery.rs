//! Recovery and reconciliation: calls left in flight by a restart or a dead instance are
//! failed, and each sweep applies what other orchestrators decided (cancels, decisions).

use super::*;

impl Engine {
    /// After a restart: calls this instance was running (and calls of instances that are gone)
    /// are failed, this instance's leftover containers removed. Pending approvals stay pending;
    /// approving one starts a fresh container. Calls that another live orchestrator is running
    /// are left to it.
    pub async fn recover(&self) -> Result<(usize, usize), EngineError> {
        let failed = self.fail_orphaned(true).await?;
        let reaped = self.sandbox.reap().await?;
        Ok((failed, reaped))
    }

    /// Fails the calls in flight whose orchestrator is gone (its lease lapsed): run
    /// periodically by every live orchestrator, so a call never stays `running` forever when
    /// the instance running it died and does not come back.
    pub async fn fail_orphans(&self) -> Result<usize, EngineError> {
        self.fail_orphaned(false).await
    }

    /// Fails the calls in flight nobody runs any more: those of instances without a lease and,
    /// `at_start`, this instance's own and those with no recorded runner (moved in flight by a
    /// version that did not record runners; a restart replaced it). Otherwise this process
    /// tracks its own calls. The containers of other instances' calls are removed (nobody
    /// enforces their deadlines); this instance's are reaped by label at start-up.
    pub(super) async fn fail_orphaned(&self, at_start: bool) -> Result<usize, EngineError> {
        let me = self.store.instance();
        let mut failed = 0;
        let mut alive: HashMap<String, bool> = HashMap::new();
        for (id, runner) in self.store.inflight_calls().await? {
            let orphaned = match runner.as_deref() {
                None => at_start,
                Some(r) if r == me => at_start,
                Some(r) => match alive.get(r) {
                    Some(a) => !a,
                    None => {
                        let a = self.store.instance_alive(r).await?;
                        alive.insert(r.to_string(), a);
                        !a
                    }
                },
            };
            if !orphaned || !self.fail_interrupted(&id, runner.as_deref()).await {
                continue;
            }
            failed += 1;
            if runner.as_deref() != Some(me) {
                tracing::warn!(call_id = %id, instance = ?runner, "failed a call whose orchestrator is gone");
                if let Err(e) = self.sandbox.reap_call(&id).await {
                    tracing::warn!(call_id = %id, error = %e, "could not remove the orphaned call's container");
                }
            }
        }
        Ok(failed)
    }

    /// What other orchestrators decided about this one's calls, applied here (every sweep):
    /// running calls someone asked to cancel are stopped, and containers prepared for
    /// approvals that were decided (or expired, or cancelled) elsewhere are removed.
    pub async fn reconcile(&self) -> Result<(), EngineError> {
        self.sandbox.pool_sweep();
        // The user's places held by calls this process runs stay taken while it lives.
        self.quotas.renew().await?;
        let running: Vec<String> = self
            .running
            .lock()
            .expect("running lock")
            .keys()
            .cloned()
            .collect();
        for id in self.store.cancel_requested(&running).await? {
            if let Some(t) = self.running.lock().expect("running lock").get(&id) {
                tracing::info!(call_id = %id, "cancelled from another orchestrator");
                t.cancel();
            }
        }
        let prepared: Vec<String> = self
            .prepared
            .lock()
            .expect("prepared lock")
            .keys()
            .cloned()
            .collect();
        if prepared.is_empty() {
            return Ok(());
        }
        let me = self.store.instance().to_string();
        let runners: HashMap<String, Option<String>> =
            self.store.inflight_calls().await?.into_iter().collect();
        for id in prepared {
            let Some(rec) = self.store.get_call(&id).await? else {
                self.discard_prepared(&id);
                continue;
            };
            let elsewhere = match runners.get(&id) {
                Some(Some(r)) => *r != me,
                _ => false,
            };
            if rec.status.is_terminal() || elsewhere {
                self.discard_prepared(&id);
            }
        }
        Ok(())
    }

    /// Moves an in-flight call to `failed` (`interrupted`, outcome unknown); `runner` is the
    /// instance that was running it.
    pub(super) async fn fail_interrupted(&self, id: &str, runner: Option<&str>) -> bool {
        let message = match runner {
            Some(r) if r != self.store.instance() => format!(
                "the orchestrator instance `{r}` running this call stopped; its outcome is unknown"
            ),
            _ => "the orchestrator restarted while the call was running; its outcome is unknown"
                .to_string(),
        };
        let audit = self.audit_for_id(id, "system", "interrupted").await;
        self.fail_call(id, ErrorInfo::new("interrupted", message), audit.as_ref())
            .await
            .is_ok()
    }
}
