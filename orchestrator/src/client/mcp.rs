//! `airlock mcp`: an MCP stdio server that bridges each JSON-RPC message on stdin to the
//! server's Streamable HTTP endpoint (`/mcp`) and writes what comes back to stdout, for agent
//! hosts that only spawn local servers (`claude mcp add airlock -- airlock mcp`).
//!
//! Both protocol eras pass through: a 2026-07-28 request is one POST whose version header
//! comes from its `_meta`; a 2025-11-25 `initialize` opens a session whose id and version go
//! on every later POST (and a DELETE ends it at EOF). The server's requests to the client
//! (elicitation) arrive on the SSE stream of the request they belong to and are written to
//! stdout like any message; the client's answers are POSTed back. `notifications/cancelled`
//! closes the HTTP stream of the request it names — the cancellation signal of Streamable
//! HTTP — and, in a session, is forwarded as well.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{load_token, ClientError};

/// `airlock mcp`.
#[derive(Args, Debug)]
pub struct McpArgs {
    /// The Airlock server's base URL (its MCP endpoint is URL/mcp). The token comes from
    /// AIRLOCK_TOKEN or ~/.config/airlock/token.
    #[arg(long, env = "AIRLOCK_SERVER", default_value = "http://127.0.0.1:8420")]
    pub server: String,
}

/// What the bridge remembers of a 2025-11-25 session.
#[derive(Default)]
struct Session {
    id: Option<String>,
    version: Option<String>,
}

struct Bridge {
    url: String,
    token: String,
    http: reqwest::Client,
    session: Mutex<Session>,
    out: mpsc::UnboundedSender<String>,
    /// Requests whose response is still streaming, by JSON-RPC id (as JSON text).
    inflight: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// Runs the bridge until stdin ends.
pub async fn run(args: McpArgs) -> Result<(), ClientError> {
    let token = load_token()?;
    let base = args.server.trim().trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(ClientError::new(format!(
            "--server `{base}`: expected http://HOST:PORT or https://HOST"
        )));
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ClientError::new(format!("HTTP client: {e}")))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let bridge = Arc::new(Bridge {
        url: format!("{base}{}", crate::mcp::PATH),
        token,
        http,
        session: Mutex::default(),
        out: tx,
        inflight: Mutex::default(),
    });
    // One writer: every message is one line on stdout, never interleaved.
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = rx.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| ClientError::new(format!("stdin: {e}")))?
    {
        if line.trim().is_empty() {
            continue;
        }
        bridge.clone().message(&line);
    }
    // stdin closed: the host is done. Let answers in flight finish briefly, end the session.
    let pending: Vec<JoinHandle<()>> = bridge
        .inflight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, h)| h)
        .collect();
    for h in pending {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    let sid = bridge
        .session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .id
        .clone();
    if let Some(sid) = sid {
        let _ = bridge
            .http
            .delete(&bridge.url)
            .bearer_auth(&bridge.token)
            .header("mcp-session-id", sid)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
    }
    drop(bridge);
    let _ = writer.await;
    Ok(())
}

impl Bridge {
    fn emit(&self, v: &Value) {
        let _ = self.out.send(v.to_string());
    }

    fn error(&self, id: Value, code: i64, message: String) {
        self.emit(
            &json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
        );
    }

    /// One line from stdin.
    fn message(self: Arc<Self>, line: &str) {
        let msg: Value = match serde_json::from_str(line) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) | Err(_) => {
                return self.error(
                    Value::Null,
                    -32700,
                    "parse error: one JSON-RPC object per line".into(),
                );
            }
        };
        let id = msg.get("id").cloned();
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_string);
        if method.as_deref() == Some("notifications/cancelled") {
            if let Some(rid) = msg.pointer("/params/requestId") {
                let h = self
                    .inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&rid.to_string());
                if let Some(h) = h {
                    h.abort(); // closes the request's stream: the server cancels it
                }
            }
            if self
                .session
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .id
                .is_none()
            {
                return;
            }
        }
        let key = match (&id, &method) {
            (Some(id), Some(_)) => Some(id.to_string()),
            _ => None,
        };
        let this = self.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = this.post(&msg).await {
                if let (Some(id), Some(_)) = (msg.get("id"), msg.get("method")) {
                    this.error(id.clone(), -32603, e);
                }
            }
            if let Some(k) = msg.get("id").map(Value::to_string) {
                if msg.get("method").is_some() {
                    this.inflight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&k);
                }
            }
        });
        if let Some(k) = key {
            self.inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(k, task);
        }
    }

    /// POSTs one message and writes what the server answers (JSON or an SSE stream).
    async fn post(&self, msg: &Value) -> Result<(), String> {
        let method = msg.get("method").and_then(Value::as_str);
        let params = msg.get("params");
        let version = params
            .and_then(|p| p.pointer("/_meta/io.modelcontextprotocol~1protocolVersion"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                (method == Some("initialize"))
                    .then(|| params.and_then(|p| p["protocolVersion"].as_str()))
                    .flatten()
                    .map(str::to_string)
            });
        let (sid, session_version) = {
            let s = self.session.lock().unwrap_or_else(|e| e.into_inner());
            (s.id.clone(), s.version.clone())
        };
        let mut req = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(msg.to_string());
        if let Some(v) = version.or(session_version) {
            req = req.header("mcp-protocol-version", v);
        }
        if let Some(m) = method {
            req = req.header("mcp-method", m);
            let name = params
                .and_then(|p| {
                    p.get("name")
                        .or_else(|| p.get("uri"))
                        .or_else(|| p.get("taskId"))
                })
                .and_then(Value::as_str);
            if let Some(n) = name {
                req = req.header("mcp-name", header_value(n));
            }
        }
        if let Some(s) = &sid {
            req = req.header("mcp-session-id", s);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("the Airlock server: {e}"))?;
        let status = resp.status();
        if method == Some("initialize") {
            if let Some(s) = resp
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
            {
                self.session.lock().unwrap_or_else(|e| e.into_inner()).id = Some(s.to_string());
            }
        }
        let is_sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        if is_sse {
            let mut body = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            let mut data = String::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| format!("the response stream broke: {e}"))?;
                buf.extend_from_slice(&chunk);
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let raw: Vec<u8> = buf.drain(..=nl).collect();
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim_end_matches(['\r', '\n']);
                    if line.is_empty() {
                        if !data.is_empty() {
                            self.forward(&data, method);
                            data.clear();
                        }
                    } else if let Some(d) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
            }
            if !data.is_empty() {
                self.forward(&data, method);
            }
            return Ok(());
        }
        let text = resp
            .text()
            .await
            .map_err(|e| format!("the response: {e}"))?;
        if status == reqwest::StatusCode::ACCEPTED || text.trim().is_empty() {
            if msg.get("id").is_some() && method.is_some() && !status.is_success() {
                return Err(format!("the Airlock server answered HTTP {status}"));
            }
            return Ok(());
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.get("jsonrpc").is_some() => {
                // A JSON-RPC error without an id (e.g. 401) is about this request.
                let v = match (v.get("id"), msg.get("id")) {
                    (None | Some(Value::Null), Some(id)) if v.get("error").is_some() => {
                        json!({"jsonrpc": "2.0", "id": id, "error": v["error"]})
                    }
                    _ => v,
                };
                self.forward(&v.to_string(), method);
                Ok(())
            }
            _ => Err(format!(
                "the Airlock server answered HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            )),
        }
    }

    /// Writes one message from the server, remembering a session's negotiated version.
    fn forward(&self, data: &str, method: Option<&str>) {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return; // SSE priming events and keep-alives carry no message
        };
        if method == Some("initialize") {
            if let Some(pv) = v.pointer("/result/protocolVersion").and_then(Value::as_str) {
                self.session
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .version = Some(pv.to_string());
            }
        }
        self.emit(&v);
    }
}

/// A header value for `Mcp-Name`: as is when it is plain visible ASCII, else the spec's
/// `=?base64?…?=` form.
fn header_value(s: &str) -> String {
    let sentinel = s.starts_with("=?base64?") && s.ends_with("?=");
    let plain = !s.is_empty()
        && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && !sentinel;
    if plain {
        s.to_string()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_plain_ascii_or_base64() {
        assert_eq!(header_value("read_file"), "read_file");
        assert_eq!(
            header_value("Hello, 世界"),
            "=?base64?SGVsbG8sIOS4lueVjA==?="
        );
        assert_eq!(header_value(" padded "), "=?base64?IHBhZGRlZCA=?=");
        assert_eq!(header_value("line1\nline2"), "=?base64?bGluZTEKbGluZTI=?=");
        assert_eq!(
            header_value("=?base64?literal?="),
            "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="
        );
    }
}
