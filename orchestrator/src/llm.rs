//! A client for OpenAI-compatible chat-completion endpoints (`POST {base_url}/chat/completions`
//! with `stream: true`): it sends a request, parses the Server-Sent Events itself, assembles
//! streamed text and tool-call deltas, and classifies provider faults for the retry policy.
//! It knows nothing of Docker, Redis or the HTTP API.
//!
//! # Provider dialects
//!
//! OpenAI, vLLM, llama.cpp's server and Ollama all speak "OpenAI-compatible" streaming, with
//! differences this module absorbs (see [`Accumulator`]):
//! - tool-call deltas are keyed by `index`, with `id` and `function.name` in the first chunk
//!   only and `function.arguments` split across chunks (OpenAI, vLLM, llama.cpp);
//! - some send each tool call whole in one chunk, some omit `index`, some reuse `index` 0 for
//!   several calls with different `id`s (older Ollama and vLLM), some send `arguments` as a JSON
//!   object rather than a string, some omit the `id`;
//! - `finish_reason` is `"tool_calls"` or `"stop"` when the model called tools (the calls are
//!   what counts, not the reason);
//! - usage arrives in the last chunk (with `stream_options.include_usage`, in a chunk whose
//!   `choices` is empty), in the chunk carrying `finish_reason`, or not at all;
//! - an error may arrive as an `{"error": …}` event inside a 200 stream;
//! - a server that ignores `stream: true` answers with one JSON completion, which is accepted;
//! - SSE lines may end in `\n`, `\r\n` or `\r`; `[DONE]` ends the stream (a stream that ends
//!   without it but after a `finish_reason` is accepted).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::LlmConfig;

pub use crate::events::Usage;

/// Usage from a chunk's `usage` object; `None` when it reports no token counts.
fn usage_from_json(v: &Value) -> Option<Usage> {
    let o = v.as_object()?;
    let n = |k: &str| o.get(k).and_then(Value::as_u64);
    let prompt = n("prompt_tokens").unwrap_or(0);
    let completion = n("completion_tokens").unwrap_or(0);
    if n("prompt_tokens").is_none() && n("completion_tokens").is_none() {
        return None;
    }
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: n("total_tokens").unwrap_or(prompt + completion),
    })
}

/// One tool call as the model made it: `arguments` is the raw text (not yet parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A finished assistant message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub content: String,
    pub tool_calls: Vec<ModelToolCall>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
}

/// Provider faults, each with a stable code for the `agent_error` event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("the model provider did not answer within {0} s")]
    Timeout(u64),
    #[error("cannot reach the model provider: {0}")]
    Connect(String),
    #[error("the model provider is rate limiting requests (HTTP 429): {message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("the model provider answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the model provider's stream ended before the answer was complete: {0}")]
    StreamCut(String),
    #[error("the model provider sent something that is not a chat completion: {0}")]
    Protocol(String),
    #[error("the model provider reported an error: {0}")]
    Provider(String),
}

impl LlmError {
    /// The stable code clients see in `agent_error` / `agent_retry` events.
    pub fn code(&self) -> &'static str {
        match self {
            LlmError::Timeout(_) => "llm_timeout",
            LlmError::Connect(_) => "llm_unreachable",
            LlmError::RateLimited { .. } => "llm_rate_limited",
            LlmError::Status { .. } => "llm_http_error",
            LlmError::StreamCut(_) => "llm_stream_cut",
            LlmError::Protocol(_) => "llm_protocol_error",
            LlmError::Provider(_) => "llm_provider_error",
        }
    }

    /// Whether trying again may help (the caller also requires that nothing was streamed yet).
    pub fn transient(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => {
                matches!(status, 408 | 409 | 425 | 500 | 502 | 503 | 504 | 520..=529)
            }
            LlmError::Timeout(_)
            | LlmError::Connect(_)
            | LlmError::RateLimited { .. }
            | LlmError::StreamCut(_)
            | LlmError::Protocol(_)
            | LlmError::Provider(_) => true,
        }
    }
}

/// Connection settings resolved from [`LlmConfig`] (the API key read from its env var or file).
#[derive(Clone)]
pub struct LlmSettings {
    /// Without a trailing slash, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    /// Longest wait for the response headers and between two chunks of the stream.
    pub idle_timeout: Duration,
    /// Longest one request may take in all.
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub retry_base: Duration,
    /// A `Retry-After` longer than this is not waited for: the fault is reported instead.
    pub max_retry_after: Duration,
    pub stream_usage: bool,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
}

impl std::fmt::Debug for LlmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmSettings")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Why the LLM settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LlmSetupError {
    #[error("llm.api_key_env names `{0}`, which is not set (or empty) in the environment")]
    MissingEnv(String),
    #[error("cannot read llm.api_key_file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("llm.{0} is required when llm.base_url is set")]
    Missing(&'static str),
    #[error("the LLM API key contains characters not allowed in an HTTP header")]
    BadKey,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl LlmSettings {
    /// `None` when no `base_url` is configured (the agent is then unavailable).
    pub fn from_config(c: &LlmConfig) -> Result<Option<LlmSettings>, LlmSetupError> {
        let Some(base) = c.base_url.as_deref() else {
            return Ok(None);
        };
        let model = c.model.clone().ok_or(LlmSetupError::Missing("model"))?;
        let api_key = if let Some(var) = &c.api_key_env {
            match std::env::var(var) {
                Ok(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
                _ => return Err(LlmSetupError::MissingEnv(var.clone())),
            }
        } else if let Some(path) = &c.api_key_file {
            let k = std::fs::read_to_string(path).map_err(|e| LlmSetupError::KeyFile {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let k = k.trim().to_string();
            if k.is_empty() {
                return Err(LlmSetupError::KeyFile {
                    path: path.display().to_string(),
                    message: "the file is empty".into(),
                });
            }
            Some(k)
        } else {
            None
        };
        Ok(Some(LlmSettings {
            base_url: base.trim_end_matches('/').to_string(),
            model,
            api_key,
            connect_timeout: Duration::from_secs(c.connect_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(c.timeout_secs.max(1)),
            request_timeout: Duration::from_secs(c.request_timeout_secs.max(1)),
            max_retries: c.max_retries,
            retry_base: Duration::from_millis(c.retry_base_ms),
            max_retry_after: Duration::from_secs(c.max_retry_after_secs),
            stream_usage: c.stream_usage,
            max_tokens: c.max_tokens,
            temperature: c.temperature,
        }))
    }
}

/// The HTTP client for one configured endpoint. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LlmClient {
    http: reqwest::Client,
    auth: Option<reqwest::header::HeaderValue>,
    pub settings: LlmSettings,
}

/// Largest error body read from a failed response.
const MAX_ERROR_BODY: usize = 8 * 1024;
/// Largest single SSE event accepted (a runaway line is a protocol error, not an OOM).
const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

impl LlmClient {
    pub fn new(settings: LlmSettings) -> Result<LlmClient, LlmSetupError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| LlmSetupError::Client(e.to_string()))?;
        let auth = match &settings.api_key {
            Some(k) => {
                let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {k}"))
                    .map_err(|_| LlmSetupError::BadKey)?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(LlmClient {
            http,
            auth,
            settings,
        })
    }

    /// The request body for `messages` and `tools`.
    pub fn body(&self, messages: &[Value], tools: &[Value]) -> Value {
        let s = &self.settings;
        let mut b = json!({
            "model": s.model,
            "messages": messages,
            "stream": true,
        });
        if !tools.is_empty() {
            b["tools"] = Value::Array(tools.to_vec());
            b["tool_choice"] = json!("auto");
        }
        if s.stream_usage {
            b["stream_options"] = json!({"include_usage": true});
        }
        if let Some(m) = s.max_tokens {
            b["max_tokens"] = json!(m);
        }
        if let Some(t) = s.temperature {
            b["temperature"] = json!(t);
        }
        b
    }

    /// How long to wait before attempt `attempt + 1` (0-based) after `err`, or `None` when the
    /// fault must be reported instead. The caller must not retry once output was streamed.
    pub fn retry_delay(&self, err: &LlmError, attempt: u32) -> Option<Duration> {
        let s = &self.settings;
        if attempt >= s.max_retries || !err.transient() {
            return None;
        }
        let backoff = s
            .retry_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(Duration::from_secs(30));
        // Up to 25% jitter so many sessions do not retry in lockstep.
        let jitter = backoff.mul_f64(rand::random::<f64>() * 0.25);
        match err {
            LlmError::RateLimited {
                retry_after: Some(ra),
                ..
            } => {
                if *ra > s.max_retry_after {
                    None
                } else {
                    Some((*ra).max(backoff) + jitter)
                }
            }
            _ => Some(backoff + jitter),
        }
    }

    /// One streamed request. Text deltas go to `text` as they arrive (`streamed` is set once a
    /// non-empty one was sent); tool calls are returned whole at the end.
    pub async fn stream(
        &self,
        body: &Value,
        text: &mpsc::UnboundedSender<String>,
        streamed: &mut bool,
    ) -> Result<Completion, LlmError> {
        let total = self.settings.request_timeout;
        match tokio::time::timeout(total, self.stream_inner(body, text, streamed)).await {
            Ok(r) => r,
            Err(_) => Err(LlmError::Timeout(total.as_secs())),
        }
    }

    async fn stream_inner(
        &self,
        body: &Value,
        text: &mpsc::UnboundedSender<String>,
        streamed: &mut bool,
    ) -> Result<Completion, LlmError> {
        let idle = self.settings.idle_timeout;
        let url = format!("{}/chat/completions", self.settings.base_url);
        let mut rb = self
            .http
            .post(&url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(body);
        if let Some(a) = &self.auth {
            rb = rb.header(reqwest::header::AUTHORIZATION, a.clone());
        }
        let res = match tokio::time::timeout(idle, rb.send()).await {
            Err(_) => return Err(LlmError::Timeout(idle.as_secs())),
            Ok(Err(e)) if e.is_timeout() => return Err(LlmError::Timeout(idle.as_secs())),
            Ok(Err(e)) => return Err(LlmError::Connect(describe(&e))),
            Ok(Ok(r)) => r,
        };
        let status = res.status();
        if !status.is_success() {
            let retry_after = retry_after(res.headers());
            let body = tokio::time::timeout(idle, read_capped(res, MAX_ERROR_BODY))
                .await
                .unwrap_or_default();
            let message = error_message(&body);
            return Err(if status.as_u16() == 429 {
                LlmError::RateLimited {
                    retry_after,
                    message,
                }
            } else {
                LlmError::Status {
                    status: status.as_u16(),
                    message,
                }
            });
        }
        let is_sse = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut acc = Accumulator::default();
        let mut bytes = res.bytes_stream();
        if !is_sse {
            // A server that ignored `stream: true`, or one that sends newline-delimited JSON.
            let mut buf = Vec::new();
            loop {
                match tokio::time::timeout(idle, bytes.next()).await {
                    Err(_) => return Err(LlmError::Timeout(idle.as_secs())),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(LlmError::StreamCut(describe(&e))),
                    Ok(Some(Ok(b))) => {
                        if buf.len() + b.len() > MAX_EVENT_BYTES {
                            return Err(LlmError::Protocol("the response is too large".into()));
                        }
                        buf.extend_from_slice(&b);
                    }
                }
            }
            let s = String::from_utf8_lossy(&buf);
            let mut parser = SseParser::default();
            let mut payloads = parser.push(s.as_bytes())?;
            payloads.extend(parser.finish());
            for p in payloads {
                if p == "[DONE]" {
                    break;
                }
                let v: Value = serde_json::from_str(&p).map_err(|e| {
                    LlmError::Protocol(format!("a response is not JSON ({e}): {}", clip(&p)))
                })?;
                if let Some(delta) = acc.apply(&v)? {
                    send_text(text, delta, streamed);
                }
            }
            return acc.finish();
        }
        let mut parser = SseParser::default();
        let mut done = false;
        while !done {
            let chunk = match tokio::time::timeout(idle, bytes.next()).await {
                Err(_) => return Err(LlmError::Timeout(idle.as_secs())),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(LlmError::StreamCut(describe(&e))),
                Ok(Some(Ok(b))) => b,
            };
            for p in parser.push(&chunk)? {
                if p == "[DONE]" {
                    done = true;
                    break;
                }
                let v: Value = serde_json::from_str(&p).map_err(|e| {
                    LlmError::Protocol(format!("a stream event is not JSON ({e}): {}", clip(&p)))
                })?;
                if let Some(delta) = acc.apply(&v)? {
                    send_text(text, delta, streamed);
                }
            }
        }
        if !done {
            for p in parser.finish() {
                if p == "[DONE]" {
                    done = true;
                    break;
                }
                if let Ok(v) = serde_json::from_str::<Value>(&p) {
                    if let Some(delta) = acc.apply(&v)? {
                        send_text(text, delta, streamed);
                    }
                }
            }
        }
        if !done && acc.finish_reason.is_none() {
            return Err(LlmError::StreamCut(
                "the connection closed without `[DONE]` or a finish_reason".into(),
            ));
        }
        acc.finish()
    }
}

fn send_text(tx: &mpsc::UnboundedSender<String>, delta: String, streamed: &mut bool) {
    if !delta.is_empty() {
        *streamed = true;
        let _ = tx.send(delta);
    }
}

/// An error's message with its sources (reqwest's top-level message alone says little).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

async fn read_capped(res: reqwest::Response, cap: usize) -> String {
    let mut out = Vec::new();
    let mut s = res.bytes_stream();
    while let Some(Ok(b)) = s.next().await {
        out.extend_from_slice(&b);
        if out.len() >= cap {
            out.truncate(cap);
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Retry-After` (seconds; an HTTP date is not interpreted) or OpenAI's `retry-after-ms`.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let secs = get("retry-after")?.parse::<f64>().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// The `error.message` of an OpenAI-style error body, else the (clipped) body itself.
fn error_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        if let Some(m) = v
            .pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
        {
            return clip(m);
        }
    }
    let t = body.trim();
    if t.is_empty() {
        "(empty body)".into()
    } else {
        clip(t)
    }
}

// ---- SSE ------------------------------------------------------------------------------------

/// An incremental Server-Sent Events parser that yields the `data` of each event.
///
/// Follows the spec (fields per line, `data` lines joined with `\n`, an empty line dispatches,
/// comments and other fields ignored, any line ending) and tolerates two deviations: a line that
/// is bare JSON (newline-delimited JSON) counts as a `data` line, and a `data` line that follows
/// a complete JSON payload without a blank line in between starts a new event.
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
    /// The previous chunk ended in `\r`: a `\n` starting the next chunk belongs to it.
    after_cr: bool,
}

impl SseParser {
    /// Feeds bytes; returns the payloads of the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, LlmError> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&String::from_utf8_lossy(&line), &mut out);
                }
                _ => {
                    if self.line.len() >= MAX_EVENT_BYTES {
                        return Err(LlmError::Protocol("a stream line is too long".into()));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    /// The end of the stream: whatever is pending.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&String::from_utf8_lossy(&line), &mut out);
        }
        if let Some(d) = self.data.take() {
            out.push(d);
        }
        out
    }

    fn line_done(&mut self, line: &str, out: &mut Vec<String>) {
        if line.is_empty() {
            if let Some(d) = self.data.take() {
                out.push(d);
            }
            return;
        }
        if line.starts_with(':') {
            return; // comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        let value = if field == "data" {
            value
        } else if line.starts_with('{') || line.starts_with('[') {
            line // bare JSON line
        } else {
            return; // event:, id:, retry: and unknown fields
        };
        match &mut self.data {
            Some(d) if serde_json::from_str::<serde::de::IgnoredAny>(d).is_ok() => {
                // The previous payload was complete: it was an event of its own.
                out.push(std::mem::replace(d, value.to_string()));
            }
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => self.data = Some(value.to_string()),
        }
    }
}

// ---- delta assembly -------------------------------------------------------------------------

#[derive(Debug, Default)]
struct PartialCall {
    index: Option<u64>,
    id: String,
    name: String,
    arguments: String,
}

/// Assembles streamed chunks (or a whole non-streamed completion) into a [`Completion`].
#[derive(Debug, Default)]
pub struct Accumulator {
    content: String,
    calls: Vec<PartialCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Accumulator {
    /// Applies one chunk; returns its text delta, if any.
    pub fn apply(&mut self, chunk: &Value) -> Result<Option<String>, LlmError> {
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            return Err(LlmError::Provider(clip(&msg)));
        }
        if !chunk.is_object() {
            return Err(LlmError::Protocol(format!(
                "expected a JSON object, got {}",
                clip(&chunk.to_string())
            )));
        }
        if let Some(u) = chunk.get("usage").and_then(usage_from_json) {
            self.usage = Some(u);
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return Ok(None);
        };
        // Only the first choice (`n` is never set above 1).
        let Some(choice) = choices
            .iter()
            .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        else {
            return Ok(None);
        };
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(r.to_string());
        }
        let delta = choice
            .get("delta")
            .filter(|d| d.is_object())
            .or_else(|| choice.get("message"));
        let Some(delta) = delta else {
            return Ok(None);
        };
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                self.apply_call(c);
            }
        }
        // The legacy `function_call` field (OpenAI's old functions API, some older servers).
        if let Some(fc) = delta.get("function_call").filter(|f| f.is_object()) {
            self.apply_call(&json!({"index": 0, "function": fc}));
        }
        match delta.get("content") {
            Some(Value::String(s)) if !s.is_empty() => {
                self.content.push_str(s);
                Ok(Some(s.clone()))
            }
            _ => Ok(None),
        }
    }

    fn apply_call(&mut self, c: &Value) {
        let index = c.get("index").and_then(Value::as_u64);
        let id = c
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let func = c.get("function");
        let name = func
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let args = func.and_then(|f| f.get("arguments"));
        let pos = match (index, id) {
            (Some(i), id) => match self.calls.iter().rposition(|p| p.index == Some(i)) {
                // The same index with a different id: a server that numbers every call 0.
                Some(p)
                    if id.is_some_and(|id| {
                        !self.calls[p].id.is_empty() && self.calls[p].id != id
                    }) =>
                {
                    None
                }
                found => found,
            },
            (None, Some(id)) => self.calls.iter().position(|p| p.id == id),
            // Neither: a continuation of the last call, unless this chunk names a new one.
            (None, None) => match self.calls.last() {
                Some(last) if name.is_none() || last.name.is_empty() => Some(self.calls.len() - 1),
                _ => None,
            },
        };
        let pos = pos.unwrap_or_else(|| {
            self.calls.push(PartialCall {
                index,
                ..Default::default()
            });
            self.calls.len() - 1
        });
        let p = &mut self.calls[pos];
        if let Some(id) = id {
            if p.id.is_empty() {
                p.id = id.to_string();
            }
        }
        if let Some(n) = name {
            if p.name.is_empty() {
                p.name = n.to_string();
            }
        }
        match args {
            Some(Value::String(s)) => p.arguments.push_str(s),
            // Some servers send the arguments as an object, whole.
            Some(v @ (Value::Object(_) | Value::Array(_))) => p.arguments = v.to_string(),
            _ => {}
        }
    }

    /// The assembled message. Calls without an id get one; empty fragments are dropped.
    pub fn finish(self) -> Result<Completion, LlmError> {
        let mut tool_calls = Vec::new();
        for (i, p) in self.calls.into_iter().enumerate() {
            if p.name.is_empty() && p.arguments.trim().is_empty() && p.id.is_empty() {
                continue;
            }
            let id = if p.id.is_empty() {
                format!(
                    "call_{}_{i}",
                    &uuid::Uuid::new_v4().simple().to_string()[..12]
                )
            } else {
                p.id
            };
            tool_calls.push(ModelToolCall {
                id,
                name: p.name,
                arguments: p.arguments,
            });
        }
        Ok(Completion {
            content: self.content,
            tool_calls,
            finish_reason: self.finish_reason,
            usage: self.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[Value]) -> Completion {
        let mut a = Accumulator::default();
        for c in chunks {
            a.apply(c).unwrap();
        }
        a.finish().unwrap()
    }

    fn call(id: &str, name: &str, args: &str) -> ModelToolCall {
        ModelToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    #[test]
    fn openai_style_index_keyed_deltas_with_split_arguments() {
        let c = run(&[
            json!({"choices":[{"index":0,"delta":{"role":"assistant","content":"Let me "}}]}),
            json!({"choices":[{"index":0,"delta":{"content":"look."}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"read_file","arguments":""}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"pa"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","function":{"name":"list_dir","arguments":"{}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"th\":\"a.txt\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
            json!({"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}),
        ]);
        assert_eq!(c.content, "Let me look.");
        assert_eq!(
            c.tool_calls,
            vec![
                call("call_a", "read_file", r#"{"path":"a.txt"}"#),
                call("call_b", "list_dir", "{}")
            ]
        );
        assert_eq!(c.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(c.usage.unwrap().total_tokens, 15);
    }

    #[test]
    fn whole_calls_without_index_and_stop_as_finish_reason() {
        let c = run(&[
            json!({"choices":[{"delta":{"tool_calls":[{"id":"x1","function":{"name":"read_file","arguments":"{\"path\":\"a\"}"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"id":"x2","function":{"name":"read_file","arguments":{"path":"b"}}}]}}]}),
            json!({"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}),
        ]);
        assert_eq!(
            c.tool_calls,
            vec![
                call("x1", "read_file", r#"{"path":"a"}"#),
                call("x2", "read_file", r#"{"path":"b"}"#)
            ]
        );
        assert_eq!(c.usage.unwrap().total_tokens, 7);
    }

    #[test]
    fn every_call_numbered_zero_with_distinct_ids_and_missing_ids() {
        let c = run(&[
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"list_dir","arguments":"{}"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"b","function":{"name":"read_file","arguments":"{\"path\":\"x\"}"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"function":{"name":"search","arguments":"{\"pattern\":"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"\"q\"}"}}]}}]}),
        ]);
        assert_eq!(c.tool_calls.len(), 3);
        assert_eq!(c.tool_calls[0], call("a", "list_dir", "{}"));
        assert_eq!(c.tool_calls[1].name, "read_file");
        assert_eq!(c.tool_calls[2].name, "search");
        assert_eq!(c.tool_calls[2].arguments, r#"{"pattern":"q"}"#);
        assert!(c.tool_calls[2].id.starts_with("call_"));
    }

    #[test]
    fn repeated_id_and_name_in_every_chunk_is_one_call() {
        let c = run(&[
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"read_file","arguments":"{\"path\""}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"read_file","arguments":":\"x\"}"}}]}}]}),
        ]);
        assert_eq!(
            c.tool_calls,
            vec![call("a", "read_file", r#"{"path":"x"}"#)]
        );
    }

    #[test]
    fn an_error_event_in_the_stream_is_a_provider_error() {
        let mut a = Accumulator::default();
        let e = a
            .apply(&json!({"error":{"message":"model overloaded"}}))
            .unwrap_err();
        assert_eq!(e, LlmError::Provider("model overloaded".into()));
        assert!(e.transient());
    }

    #[test]
    fn a_non_streamed_completion_is_accepted() {
        let c = run(&[
            json!({"choices":[{"index":0,"message":{"role":"assistant","content":"hi","tool_calls":[{"id":"q","type":"function","function":{"name":"list_dir","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}),
        ]);
        assert_eq!(c.content, "hi");
        assert_eq!(c.tool_calls, vec![call("q", "list_dir", "{}")]);
    }

    #[test]
    fn sse_parser_handles_line_endings_comments_split_chunks_and_missing_blank_lines() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for piece in [
            &b": keep-alive\r\n\r\ndata: {\"a\""[..],
            b":1}\r",
            b"\n\r\nevent: x\ndata: [DONE]\n\n",
        ] {
            out.extend(p.push(piece).unwrap());
        }
        assert_eq!(out, vec![r#"{"a":1}"#.to_string(), "[DONE]".to_string()]);
        // No blank line between events, and bare JSON lines.
        let mut p = SseParser::default();
        let mut out = p
            .push(b"data: {\"a\":1}\ndata: {\"b\":2}\n{\"c\":3}\n")
            .unwrap();
        out.extend(p.finish());
        assert_eq!(out, vec![r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
        // Multi-line data is joined with \n.
        let mut p = SseParser::default();
        let out = p.push(b"data: {\"a\":\ndata: 1}\n\n").unwrap();
        assert_eq!(out, vec!["{\"a\":\n1}"]);
    }

    #[test]
    fn retry_policy() {
        let s = LlmSettings {
            base_url: "http://x".into(),
            model: "m".into(),
            api_key: None,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_retries: 2,
            retry_base: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(10),
            stream_usage: true,
            max_tokens: None,
            temperature: None,
        };
        let c = LlmClient::new(s).unwrap();
        let rl = |s| LlmError::RateLimited {
            retry_after: Some(Duration::from_secs(s)),
            message: String::new(),
        };
        assert!(c.retry_delay(&rl(3), 0).unwrap() >= Duration::from_secs(3));
        assert_eq!(c.retry_delay(&rl(30), 0), None, "too long a Retry-After");
        let five = LlmError::Status {
            status: 503,
            message: String::new(),
        };
        assert!(c.retry_delay(&five, 1).unwrap() >= Duration::from_millis(200));
        assert_eq!(c.retry_delay(&five, 2), None, "out of retries");
        let four = LlmError::Status {
            status: 400,
            message: String::new(),
        };
        assert_eq!(c.retry_delay(&four, 0), None);
        assert_eq!(
            retry_after(&{
                let mut h = reqwest::header::HeaderMap::new();
                h.insert("retry-after", "2".parse().unwrap());
                h
            }),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            error_message(r#"{"error":{"message":"bad key"}}"#),
            "bad key"
        );
    }
}
