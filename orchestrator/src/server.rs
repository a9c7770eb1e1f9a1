//! `airlock serve`: wires config, policy, store, sandbox and engine together, runs the HTTP
//! server until shutdown, and owns every background task (expiry sweeper, policy reloads, the
//! instance lease).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::api::{app, AppState};
use crate::config::{Config, ConfigError};
use crate::engine::{admit_policy, Engine, EngineError};
use crate::llm::LlmSetupError;
use crate::policy::{Policy, PolicyError};
use crate::sandbox::{Sandbox, SandboxConfig, SandboxError};
use crate::store::{
    holder_is_dead_here, lease_holder, Claim, Store, StoreError, INSTANCE_LEASE, INSTANCE_RENEW,
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the policy was rejected:\n{0}")]
    Policy(#[from] PolicyError),
    #[error("the policy cannot be used with this Docker engine: {0}")]
    PolicyAdmission(String),
    #[error("Redis: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("no Redis configured: set redis.url in the config or AIRLOCK_REDIS_URL (`airlock serve` starts its own redis-server when neither is set)")]
    NoRedis,
    #[error("{0}")]
    RedisSettings(String),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent's model settings: {0}")]
    Llm(#[from] LlmSetupError),
    #[error("another orchestrator is running as instance `{instance}` on this Redis (lease holder {holder}): give each orchestrator sharing a Redis its own `instance` in the config")]
    InstanceInUse { instance: String, holder: String },
}

/// Connects everything and builds the engine (recovering state left by a previous run).
pub async fn build(config: &Config) -> Result<Arc<Engine>, ServerError> {
    let policy = Policy::load(&config.policy)?;
    let url = config
        .redis
        .effective_url()
        .map_err(ServerError::RedisSettings)?
        .ok_or(ServerError::NoRedis)?;
    let store = Store::connect(&url, &config.redis.prefix)
        .await?
        .with_instance(&config.instance);
    let sandbox = Sandbox::new(&SandboxConfig {
        docker_endpoint: config.docker.endpoint.clone(),
        image: config.docker.image.clone(),
        instance: config.instance.clone(),
        max_containers: config.limits.max_containers,
        pool: config.pool.sandbox(),
    })
    .await?;
    admit_policy(&sandbox, &policy)
        .await
        .map_err(ServerError::PolicyAdmission)?;
    let holder = claim_instance(&store).await?;
    let engine = Engine::new(store, sandbox, policy, config.limits.clone());
    engine.set_undo(config.undo.clone());
    engine.set_lease_holder(holder);
    if let Some(n) = crate::notify::Notifier::start(&config.notify) {
        engine.set_notifier(n);
    }
    let (failed, reaped) = engine.recover().await?;
    if failed > 0 || reaped > 0 {
        tracing::warn!(
            interrupted_calls = failed,
            reaped_containers = reaped,
            "recovered from an unclean stop"
        );
    }
    Ok(engine)
}

/// Takes this instance's lease in Redis before anything else touches its calls or containers.
/// A holder that is this process's dead predecessor (same host, pid gone) is replaced at once;
/// any other holder's lease must lapse first (after `kill -9` on another host, up to
/// [`INSTANCE_LEASE`]). A holder that keeps renewing is a live orchestrator with the same
/// instance name: refused, since both would fail and reap each other's work.
async fn claim_instance(store: &Store) -> Result<String, ServerError> {
    let holder = lease_holder();
    let deadline = tokio::time::Instant::now() + INSTANCE_LEASE + Duration::from_secs(2);
    let mut takeover: Option<String> = None;
    let mut told = false;
    loop {
        match store.claim_instance(&holder, takeover.as_deref()).await? {
            Claim::Claimed => return Ok(holder),
            Claim::Held { holder: other, .. } if holder_is_dead_here(&other) => {
                takeover = Some(other);
                continue;
            }
            Claim::Held {
                holder: other,
                ttl_ms,
            } => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ServerError::InstanceInUse {
                        instance: store.instance().to_string(),
                        holder: other,
                    });
                }
                if !told {
                    tracing::warn!(
                        instance = %store.instance(),
                        holder = %other,
                        lapses_in_ms = ttl_ms,
                        "this instance's lease is held by another process (one stopped without releasing it, or a second orchestrator with the same instance name): waiting for it to lapse"
                    );
                    told = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads the policy file again and puts it in force if it is valid (its inline tests pass,
/// its images and runtimes exist); otherwise the policy in force stays and the error is
/// returned (and kept for [`Engine::policy_error`]). `Ok(false)`: the file is unchanged
/// (same SHA-256) and `force` was not set.
pub async fn reload_policy(
    engine: &Engine,
    path: &std::path::Path,
    force: bool,
) -> Result<bool, String> {
    let shown = path.display().to_string();
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read the policy {shown}: {e}"))?;
    let current = engine.policy();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if !force && sha == current.sha256 {
        return Ok(false);
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{shown}:1:1: the file is not UTF-8"))?;
    let policy = Policy::parse(&shown, &text).map_err(|e| e.to_string())?;
    engine.admit_policy(&policy).await?;
    tracing::info!(
        policy = %shown,
        sha256 = %policy.sha256,
        previous = %current.sha256,
        users = policy.users().len(),
        tests = policy.tests_passed,
        "policy reloaded"
    );
    engine.set_policy(policy);
    Ok(true)
}

/// Watches the policy file (its content hash, every second) and SIGHUP; reloads on change.
/// A rejected version is logged once (with FILE:LINE:COLUMN) and the old policy stays.
fn spawn_policy_watcher(
    engine: Arc<Engine>,
    path: std::path::PathBuf,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler: the policy reloads on file changes only"))
            .ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The content hash of the last rejected version (not reported again every second).
        let mut rejected: Option<String> = None;
        loop {
            let force = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => false,
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if !force {
                match tokio::fs::read(&path).await {
                    Ok(b) => {
                        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b));
                        if sha == engine.policy().sha256 || rejected.as_deref() == Some(&sha) {
                            continue;
                        }
                        rejected = Some(sha);
                    }
                    Err(_) => {
                        // Editors replace files; a missing file for a moment is not an error.
                        continue;
                    }
                }
            } else {
                tracing::info!(policy = %path.display(), "SIGHUP: reloading the policy");
            }
            match reload_policy(&engine, &path, force).await {
                Ok(_) => rejected = None,
                Err(e) => {
                    tracing::error!(
                        policy = %path.display(),
                        error = %e,
                        "the new policy was rejected; the previous one stays in force"
                    );
                    engine.set_policy_error(e);
                }
            }
        }
    })
}

/// The retention sweep (every `sweep_secs`) and the audit head's log line (every
/// `anchor_secs`), each first at start.
fn spawn_maintenance(
    engine: Arc<Engine>,
    r: crate::config::RetentionConfig,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sweep = tokio::time::interval(Duration::from_secs(r.sweep_secs));
        let mut anchor = tokio::time::interval(Duration::from_secs(r.anchor_secs));
        for t in [&mut sweep, &mut anchor] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sweep.tick() => {
                    if let Err(e) = engine.retention_sweep(&r, crate::store::now_ms()).await {
                        tracing::warn!(error = %e, "retention sweep failed (retried at the next one)");
                    }
                }
                _ = anchor.tick() => {
                    if let Err(e) = engine.log_audit_head().await {
                        tracing::debug!(error = %e, "could not read the audit head");
                    }
                }
            }
        }
    })
}

/// Serves on `listener` until `shutdown` resolves, then drains running calls.
pub async fn run(
    config: Config,
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let agent = Agent::new(engine.clone(), &config.llm)?;
    if !agent.enabled() {
        tracing::info!("no [llm] base_url configured: the agent routes answer 503");
    }
    let stop = CancellationToken::new();
    let sweeper = {
        let engine = engine.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = engine.expire_due().await {
                            tracing::debug!(error = %e, "expiry sweep failed");
                        }
                    }
                }
            }
        })
    };
    // The instance's lease, and the calls of orchestrators whose lease lapsed. Renewed until
    // the running calls are drained, so nobody takes them for orphans meanwhile.
    let lease_stop = CancellationToken::new();
    let lease = {
        let engine = engine.clone();
        let stop = lease_stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INSTANCE_RENEW);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        engine.renew_lease().await;
                        if let Err(e) = engine.fail_orphans().await {
                            tracing::debug!(error = %e, "orphaned-call sweep failed");
                        }
                        if let Err(e) = engine.reconcile().await {
                            tracing::debug!(error = %e, "cross-instance sweep failed");
                        }
                    }
                }
            }
        })
    };
    let maintenance = spawn_maintenance(engine.clone(), config.retention.clone(), stop.clone());
    let watcher = spawn_policy_watcher(engine.clone(), config.policy.clone(), stop.clone());
    let state = AppState {
        shutdown: stop.clone(),
        ..AppState::new(
            engine.clone(),
            agent.clone(),
            config.allowed_origins.clone(),
        )
    };
    tracing::info!(addr = %listener.local_addr()?, "airlock listening");
    let stop2 = stop.clone();
    let app = app(state).layer(axum::middleware::from_fn(crate::logging::request_log));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop2.cancel();
        })
        .await?;
    stop.cancel();
    let _ = sweeper.await;
    let _ = watcher.await;
    let _ = maintenance.await;
    // Turns first (they withdraw their pending approvals), then the engine drains its calls.
    agent.shutdown().await;
    engine.shutdown().await;
    lease_stop.cancel();
    let _ = lease.await;
    engine.release_lease().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down: finishing running calls");
}
