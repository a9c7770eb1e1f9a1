//! Logs: `tracing` to stderr, as text or as one JSON object per line, and the HTTP request log.
//!
//! Every HTTP request gets a request id (a sane `X-Request-Id` from a proxy in front, or a new
//! one), returned in the `X-Request-Id` response header and carried by a `request` span, so
//! every line logged while the request is handled names it. The span also names the session
//! and call when the path does. What is never logged: headers (tokens travel in
//! `Authorization` and `Sec-WebSocket-Protocol`), query strings, bodies (arguments, file
//! contents, diffs, model output). Field names are listed in docs/OPERATIONS.md.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, the event's fields, `span`).
    Json,
}

/// Set once JSON logging is installed: then everything on stderr must be a JSON line.
static JSON: AtomicBool = AtomicBool::new(false);

/// Whether the installed subscriber writes JSON (so a binary reports through `tracing`, not
/// with a plain line a log collector cannot parse).
pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Installs the global subscriber. The filter comes from `AIRLOCK_LOG` (e.g. `info`,
/// `airlock=debug`), else `default_filter`. A second call does nothing.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| default_filter.into())
        // The MCP SDK logs whole messages (file contents, signed states) at debug and session
        // ids at info: never below warn, whatever AIRLOCK_LOG says (logs carry no contents).
        .add_directive("rmcp=warn".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
            .inspect(|_| JSON.store(true, Ordering::Relaxed)),
    };
}

/// The response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request id from a proxy in front is kept if it is short and plain.
fn incoming_request_id(req: &Request) -> Option<String> {
    let v = req.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    (!v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    .then(|| v.to_string())
}

/// Session and call ids named by an API path (`/v1/sessions/{id}/…`, `/v1/tool-calls/{id}/…`).
pub fn ids_from_path(path: &str) -> (Option<&str>, Option<&str>) {
    let mut parts = path.trim_start_matches('/').split('/');
    let plain = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some("sessions"), Some(id)) if plain(id) => (Some(id), None),
        (Some("v1"), Some("tool-calls"), Some(id)) if plain(id) => (None, Some(id)),
        _ => (None, None),
    }
}

/// The path as logged: no query string, bounded length.
fn loggable_path(req: &Request) -> String {
    let p = req.uri().path();
    if p.len() > 160 {
        let mut end = 160;
        while !p.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &p[..end])
    } else {
        p.to_string()
    }
}

/// axum middleware: request id, `request` span, one log line per request (at `info`; health
/// checks at `debug`).
pub async fn request_log(req: Request, next: Next) -> Response {
    let request_id = incoming_request_id(&req).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let path = loggable_path(&req);
    let method = req.method().clone();
    let (session_id, call_id) = ids_from_path(&path);
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        path = %path,
        session_id = tracing::field::Empty,
        call_id = tracing::field::Empty,
    );
    if let Some(s) = session_id {
        span.record("session_id", s);
    }
    if let Some(c) = call_id {
        span.record("call_id", c);
    }
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = resp.status().as_u16();
    let latency_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    let _g = span.enter();
    if path == "/healthz" || path == "/readyz" {
        tracing::debug!(status, latency_ms, "request");
    } else if status >= 500 {
        tracing::warn!(status, latency_ms, "request");
    } else {
        tracing::info!(status, latency_ms, "request");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_api_paths_only() {
        assert_eq!(
            ids_from_path("/v1/sessions/0b1c-2d/tool-calls"),
            (Some("0b1c-2d"), None)
        );
        assert_eq!(
            ids_from_path("/v1/tool-calls/abc-1/decision"),
            (None, Some("abc-1"))
        );
        assert_eq!(ids_from_path("/v1/sessions"), (None, None));
        assert_eq!(ids_from_path("/v1/sessions/a%2Fb"), (None, None));
        assert_eq!(ids_from_path("/healthz"), (None, None));
    }
}
