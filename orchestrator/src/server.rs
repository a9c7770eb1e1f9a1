//! `airlock serve`: wires config, policy, store, sandbox and engine together, runs the HTTP
//! server until shutdown, and owns every background task (expiry sweeper, policy reloads).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{app, AppState};
use crate::config::{Config, ConfigError};
use crate::engine::{Engine, EngineError};
use crate::policy::Policy;
use crate::sandbox::{Sandbox, SandboxConfig, SandboxError};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Redis: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("no Redis configured: set redis.url in the config or AIRLOCK_REDIS_URL")]
    NoRedis,
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Connects everything and builds the engine (recovering state left by a previous run).
pub async fn build(config: &Config) -> Result<Arc<Engine>, ServerError> {
    let policy = Policy::load(&config.policy)?;
    let url = config.redis.url.as_deref().ok_or(ServerError::NoRedis)?;
    let store = Store::connect(url, &config.redis.prefix).await?;
    let sandbox = Sandbox::new(&SandboxConfig {
        docker_endpoint: config.docker.endpoint.clone(),
        image: config.docker.image.clone(),
        instance: config.instance.clone(),
        max_containers: config.limits.max_containers,
    })
    .await?;
    let engine = Engine::new(store, sandbox, policy, config.limits.clone());
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

/// Serves on `listener` until `shutdown` resolves, then drains running calls.
pub async fn run(
    config: Config,
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
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
    let state = AppState {
        engine: engine.clone(),
        allowed_origins: Arc::new(config.allowed_origins.clone()),
        shutdown: stop.clone(),
        streams: Default::default(),
    };
    tracing::info!(addr = %listener.local_addr()?, "airlock listening");
    let stop2 = stop.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop2.cancel();
        })
        .await?;
    stop.cancel();
    let _ = sweeper.await;
    engine.shutdown().await;
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
