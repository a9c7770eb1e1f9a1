//! A read-only look at a Redis for `airlock doctor`: connect, `PING`, `INFO server persistence`.
//! Every message has the URL (which may carry a password) removed.

use std::time::Duration;

/// Why the Redis at a URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("bad URL: {0}")]
    BadUrl(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("did not answer within {0} s")]
    Timeout(u64),
    #[error("does not answer PING: {0}")]
    Ping(String),
}

/// A Redis that answered `PING`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The `INFO server persistence` text, or why it was refused (an ACL may forbid it).
    pub info: Result<String, String>,
}

/// Connects to `url` (5 s) and sends `PING` and `INFO` (3 s each).
pub async fn probe(url: &str) -> Result<Probe, ProbeError> {
    let scrub = |m: String| m.replace(url, "<url>");
    let client = redis::Client::open(url).map_err(|e| ProbeError::BadUrl(scrub(e.to_string())))?;
    let mut conn = match tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(ProbeError::Unreachable(scrub(e.to_string()))),
        Err(_) => return Err(ProbeError::Timeout(5)),
    };
    let timeout = Duration::from_secs(3);
    let pong: Result<String, String> =
        match tokio::time::timeout(timeout, redis::cmd("PING").query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| scrub(e.to_string())),
            Err(_) => Err("timed out".into()),
        };
    pong.map_err(ProbeError::Ping)?;
    let info = match tokio::time::timeout(
        timeout,
        redis::cmd("INFO")
            .arg("server")
            .arg("persistence")
            .query_async::<String>(&mut conn),
    )
    .await
    {
        Ok(r) => r.map_err(|e| scrub(e.to_string())),
        Err(_) => Err("timed out".into()),
    };
    Ok(Probe { info })
}
