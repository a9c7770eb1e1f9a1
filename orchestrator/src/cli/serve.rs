//! `airlock serve` and `airlock doctor`: loading the config, the embedded Redis, the listener.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock::logging::LogFormat;
use anyhow::Context;

/// The config file, or the defaults (with the environment's overrides) without one.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<airlock::config::Config> {
    match path {
        Some(p) => Ok(airlock::config::Config::load(p)?),
        None => {
            let mut c = airlock::config::Config::default();
            c.apply_env();
            c.validate("(defaults)")?;
            Ok(c)
        }
    }
}

/// `airlock serve`: runs until SIGINT or SIGTERM, then drains.
pub async fn serve(
    config: Option<PathBuf>,
    docker: Option<String>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<ExitCode> {
    let mut config = match load_config(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            // So that a JSON log asked for on the command line reports this as JSON.
            airlock::logging::init(log_format.unwrap_or_default(), "info");
            return Err(e);
        }
    };
    airlock::logging::init(log_format.unwrap_or(config.log_format), "info");
    // Plain lines for people in text mode; in JSON mode only JSON reaches stderr.
    let say = |line: String| {
        if airlock::logging::is_json() {
            tracing::info!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    if docker.is_some() {
        config.docker.endpoint = docker;
    }
    // No Redis URL: our own redis-server, started here on the main thread (so that
    // PR_SET_PDEATHSIG ties it to this process) and stopped when `_redis` drops, after
    // the server has drained.
    let _redis = match &config.redis.url {
        Some(_) => None,
        None => {
            let r =
                airlock::embedded_redis::EmbeddedRedis::start(&config.data_dir, "redis-server")?;
            say(format!(
                "airlock: started redis-server (pid {}) on {} with its AOF in {}",
                r.pid().unwrap_or_default(),
                r.socket().display(),
                r.dir().display()
            ));
            config.redis.url = Some(r.url());
            Some(r)
        }
    };
    let engine = airlock::server::build(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    say(format!(
        "airlock listening on http://{}",
        listener.local_addr()?
    ));
    airlock::server::run(config, engine, listener, airlock::server::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `airlock doctor`: every check, then the report; exit 1 when any check failed.
pub async fn doctor(
    config: Option<PathBuf>,
    probe_dir: Option<PathBuf>,
    docker: Option<String>,
) -> anyhow::Result<ExitCode> {
    let loaded = load_config(config.as_deref());
    let mut report = airlock::doctor::Report::new();
    let config = match loaded {
        Ok(mut c) => {
            report.ok(
                airlock::doctor::CONFIG,
                match &config {
                    Some(p) => format!("{} loads", p.display()),
                    None => "no --config: the defaults".to_string(),
                },
            );
            if docker.is_some() {
                c.docker.endpoint = docker;
            }
            Some(c)
        }
        Err(e) => {
            report.fail(
                airlock::doctor::CONFIG,
                format!("{e:#}"),
                "fix the file (every key is in docs/OPERATIONS.md)",
            );
            None
        }
    };
    if let Some(c) = &config {
        airlock::doctor::check(&mut report, c, probe_dir.as_deref()).await;
    }
    print!("{}", report.render());
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
