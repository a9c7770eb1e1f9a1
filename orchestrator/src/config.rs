//! Server configuration: one TOML file, typed with `deny_unknown_fields`, validated at start.
//! Secrets (the Redis URL with its password, the LLM API key) may come from environment
//! variables instead of the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Where Airlock keeps local state (the embedded Redis's socket and AOF, when used).
    pub data_dir: PathBuf,
    /// The admin policy file (users, tool rules, limits).
    pub policy: PathBuf,
    /// Origins a browser request may come from: a present Origin header must be listed, on
    /// every authenticated route (WebSockets included).
    pub allowed_origins: Vec<String>,
    /// Name of this orchestrator instance: labels its containers so only its own are reaped.
    pub instance: String,
    /// Log lines as `text` or `json` (one object per line). `--log-format` overrides it.
    pub log_format: crate::logging::LogFormat,
    pub redis: RedisConfig,
    pub docker: DockerConfig,
    pub limits: LimitsConfig,
    pub pool: PoolSettings,
    pub retention: RetentionConfig,
    pub undo: UndoConfig,
    pub notify: NotifyConfig,
    pub llm: LlmConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8420".parse().expect("valid"),
            data_dir: PathBuf::from("/var/lib/airlock"),
            policy: PathBuf::from("policies/default.toml"),
            allowed_origins: vec![
                "http://127.0.0.1:8420".into(),
                "http://localhost:8420".into(),
            ],
            instance: "default".into(),
            log_format: crate::logging::LogFormat::Text,
            redis: RedisConfig::default(),
            docker: DockerConfig::default(),
            limits: LimitsConfig::default(),
            pool: PoolSettings::default(),
            retention: RetentionConfig::default(),
            undo: UndoConfig::default(),
            notify: NotifyConfig::default(),
            llm: LlmConfig::default(),
        }
    }
}

/// Notifications when a call waits for approval (`notify.rs`): webhooks, delivered in the
/// background with retries, never in the way of the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// The web UI's address as users reach it (e.g. `https://airlock.example.com`): each
    /// notification links to `{ui_url}/#call={id}`, which opens that call after sign-in. The
    /// link carries no token. Without it, notifications carry no link.
    pub ui_url: Option<String>,
    /// Where to send them.
    pub webhooks: Vec<WebhookConfig>,
}

/// One webhook endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint (http:// or https://). Treated as a secret: logs name only its host.
    pub url: String,
    /// `json` (Airlock's own body) or `slack` (a Slack-compatible incoming-webhook body).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Include the change's diff (write_file, edit_file). Off by default: a notification
    /// leaves the host, and diffs are file contents.
    #[serde(default)]
    pub include_diff: bool,
}

/// A webhook's body format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

/// The warm pool: started, idle one-shot containers for calls that need no approval (reads,
/// previews, read-only shell commands), so they answer in milliseconds. Each idle container
/// costs a runtime shim on the host (`airlock doctor` shows how much).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Idle containers kept per key (user, workspace, image, runtime, limits, protected
    /// paths); 0 turns the pool off.
    pub per_key: usize,
    /// Idle containers kept in all; counted against `limits.max_containers` (and given up at
    /// once when a call needs a place), so it must be below it.
    pub max_idle: usize,
    /// A key nobody took a container from for this long is emptied.
    pub idle_secs: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            per_key: 2,
            max_idle: 8,
            idle_secs: 120,
        }
    }
}

impl PoolSettings {
    pub fn sandbox(&self) -> crate::sandbox::PoolConfig {
        crate::sandbox::PoolConfig {
            per_key: self.per_key,
            max_idle: self.max_idle,
            idle: std::time::Duration::from_secs(self.idle_secs),
        }
    }
}

/// How long Airlock keeps what it stores in Redis (docs/OPERATIONS.md). A sweeper on every
/// orchestrator applies it; the operations are idempotent, so several replicas may race.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// A session with no activity (no event) for this many days is removed with its events,
    /// calls, their stored results and previews, grants and the agent's history. 0 keeps
    /// sessions forever.
    pub session_days: u32,
    /// Audit entries older than this are removed behind a checkpoint (the last removed
    /// entry's hash, so what remains still verifies). 0 keeps the audit forever. Must be at
    /// least `session_days`: the audit outlives what it describes.
    pub audit_days: u32,
    /// How often the sweeper runs.
    pub sweep_secs: u64,
    /// How often the audit chain's head (seq and hash) is logged, so that a copy of the logs
    /// kept elsewhere anchors the chain (`airlock audit verify --anchor SEQ:HASH`).
    pub anchor_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            session_days: 30,
            audit_days: 365,
            sweep_secs: 3600,
            anchor_secs: 300,
        }
    }
}

/// Undo of applied calls (`POST /v1/tool-calls/{id}/revert`): what a write, an edit or a
/// shell command replaced is kept in Redis for a while, within a budget (docs/SECURITY.md says
/// what that stores). Protected paths' content is never kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UndoConfig {
    /// Keep previous content at all (`false`: no call can be reverted).
    pub enabled: bool,
    /// How long a call stays revertible.
    pub retention_secs: u64,
    /// Most previous-content bytes kept for one call; larger files are listed as not kept.
    pub max_call_bytes: u64,
    /// Most bytes of undo records one user holds; beyond, the oldest are dropped.
    pub max_user_bytes: u64,
}

impl Default for UndoConfig {
    fn default() -> Self {
        UndoConfig {
            enabled: true,
            retention_secs: 3 * 86_400,
            max_call_bytes: 2 * 1024 * 1024,
            max_user_bytes: 32 * 1024 * 1024,
        }
    }
}

impl RetentionConfig {
    const DAY_MS: u64 = 86_400_000;

    /// Sessions idle since before this are removed (`None`: kept forever).
    pub fn session_cutoff_ms(&self, now_ms: u64) -> Option<u64> {
        (self.session_days > 0)
            .then(|| now_ms.saturating_sub(self.session_days as u64 * Self::DAY_MS))
    }

    /// Audit entries written before this are trimmed (`None`: kept forever).
    pub fn audit_cutoff_ms(&self, now_ms: u64) -> Option<u64> {
        (self.audit_days > 0).then(|| now_ms.saturating_sub(self.audit_days as u64 * Self::DAY_MS))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`, `rediss://…` (TLS) or `unix:///path`.
    /// The env var `AIRLOCK_REDIS_URL` overrides it (keep passwords out of the file).
    /// Neither set: `airlock serve` starts its own `redis-server` (unix socket and AOF in
    /// `data_dir/redis`, no TCP port).
    pub url: Option<String>,
    /// A file whose first line is the Redis password (e.g. a Docker secret), used with `url`
    /// (`redis://airlock@redis:6379/0` + this file). Relative to the config file.
    pub password_file: Option<PathBuf>,
    /// Prefix of every key Airlock writes.
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            password_file: None,
            prefix: "airlock:".into(),
        }
    }
}

impl RedisConfig {
    /// The URL to connect with: `url` with the password from `password_file` put in (as the
    /// URL's password for `redis://` and `rediss://`, as `?pass=` for `unix://`).
    pub fn effective_url(&self) -> Result<Option<String>, String> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let Some(file) = &self.password_file else {
            return Ok(Some(url.clone()));
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("redis.password_file: cannot read {}: {e}", file.display()))?;
        let pw = text.lines().next().unwrap_or_default().trim();
        if pw.is_empty() {
            return Err(format!("redis.password_file: {} is empty", file.display()));
        }
        with_password(url, pw).map(Some)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Puts `password` into a Redis URL that has none.
fn with_password(url: &str, password: &str) -> Result<String, String> {
    let pw = percent_encode(password);
    if let Some(rest) = url.strip_prefix("unix://") {
        if rest.contains("pass=") {
            return Err("redis.url already has a password; drop it or redis.password_file".into());
        }
        let sep = if rest.contains('?') { '&' } else { '?' };
        return Ok(format!("{url}{sep}pass={pw}"));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "redis.url has no scheme".to_string())?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            if userinfo.contains(':') {
                return Err(
                    "redis.url already has a password; drop it or redis.password_file".into(),
                );
            }
            (userinfo, host)
        }
        None => ("", authority),
    };
    Ok(format!("{scheme}://{user}:{pw}@{host}{tail}"))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock` or `tcp://host:port`; default DOCKER_HOST or the socket.
    pub endpoint: Option<String>,
    /// The executor image (resolved to its ID at start and pinned).
    pub image: String,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            endpoint: None,
            image: crate::sandbox::image::DEFAULT_TAG.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// Largest tool-call arguments (bytes of JSON).
    pub max_args_bytes: usize,
    /// Calls running at once per user; more wait, up to `queue_wait_secs`.
    pub max_running_per_user: usize,
    /// Calls running at once on this server.
    pub max_running_total: usize,
    /// Containers alive at once (running, prepared for an approval, or being removed).
    pub max_containers: usize,
    /// Prepared containers kept for pending approvals; beyond this, approval starts cold.
    pub max_prepared: usize,
    /// How long an approval stays valid.
    pub approval_ttl_secs: u64,
    /// How long a call waits for a free slot before it fails with "server busy".
    pub queue_wait_secs: u64,
    /// Open event streams (WebSocket/SSE) per user.
    pub max_streams_per_user: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 2 * 1024 * 1024,
            max_args_bytes: 1024 * 1024,
            max_running_per_user: 4,
            max_running_total: 16,
            max_containers: 48,
            max_prepared: 16,
            approval_ttl_secs: 600,
            queue_wait_secs: 30,
            max_streams_per_user: 64,
        }
    }
}

/// The agent's model: an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp's
/// server, Ollama, …). Without `base_url` the agent routes answer 503.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// OpenAI-compatible base URL, e.g. `http://127.0.0.1:8000/v1` (requests go to
    /// `{base_url}/chat/completions`).
    pub base_url: Option<String>,
    pub model: Option<String>,
    /// Environment variable holding the API key (never the key itself in this file).
    pub api_key_env: Option<String>,
    /// File holding the API key (the first line; whitespace trimmed).
    pub api_key_file: Option<PathBuf>,
    /// Longest wait for the provider's response headers and between two chunks of its stream.
    pub timeout_secs: u64,
    /// Longest wait for a TCP/TLS connection to the provider.
    pub connect_timeout_secs: u64,
    /// Longest one model request may take in all.
    pub request_timeout_secs: u64,
    /// Model requests (steps) per turn; the turn stops with `max_steps` after that many.
    pub max_steps: u32,
    /// Retries of a failed model request (only before any of its output was streamed).
    pub max_retries: u32,
    /// First retry delay; doubled on each further retry (plus jitter).
    pub retry_base_ms: u64,
    /// A 429's `Retry-After` longer than this is reported instead of waited for.
    pub max_retry_after_secs: u64,
    /// Ask for token usage in the stream (`stream_options.include_usage`); turn off for a
    /// server that refuses the field.
    pub stream_usage: bool,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    /// Largest tool result (bytes of text) given back to the model; the rest is cut.
    pub max_tool_result_bytes: usize,
    /// Largest conversation (bytes of JSON) sent to the model; older turns are left out.
    pub max_history_bytes: usize,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: None,
            model: None,
            api_key_env: None,
            api_key_file: None,
            timeout_secs: 120,
            connect_timeout_secs: 10,
            request_timeout_secs: 600,
            max_steps: 20,
            max_retries: 3,
            retry_base_ms: 500,
            max_retry_after_secs: 60,
            stream_usage: true,
            max_tokens: None,
            temperature: None,
            max_tool_result_bytes: 32 * 1024,
            max_history_bytes: 512 * 1024,
        }
    }
}

/// Converts a byte offset into 1-based line and column.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// Parses TOML into `T`, with file:line:column on errors.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &str,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        ConfigError::Parse {
            path: path.to_string(),
            line,
            column,
            message: e.message().to_string(),
        }
    })
}

impl Config {
    /// Loads and validates a config file, then applies environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut cfg: Config = parse_toml(&shown, &text)?;
        cfg.apply_env();
        cfg.validate(&shown)?;
        // A relative policy path is relative to the config file.
        if cfg.policy.is_relative() {
            if let Some(dir) = path.parent() {
                cfg.policy = dir.join(&cfg.policy);
            }
        }
        // So is the LLM API key file.
        if let (Some(f), Some(dir)) = (&cfg.llm.api_key_file, path.parent()) {
            if f.is_relative() {
                cfg.llm.api_key_file = Some(dir.join(f));
            }
        }
        // And the data dir and the Redis password file.
        if let Some(dir) = path.parent() {
            if cfg.data_dir.is_relative() {
                // `components()` drops `.` parts: "DIR/." is shown as "DIR".
                cfg.data_dir = dir.join(&cfg.data_dir).components().collect();
            }
            if let Some(f) = &cfg.redis.password_file {
                if f.is_relative() {
                    cfg.redis.password_file = Some(dir.join(f));
                }
            }
        }
        Ok(cfg)
    }

    /// Secrets and deployment knobs from the environment.
    pub fn apply_env(&mut self) {
        if let Ok(url) = std::env::var("AIRLOCK_REDIS_URL") {
            if !url.is_empty() {
                self.redis.url = Some(url);
            }
        }
    }

    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |message: String| {
            Err(ConfigError::Invalid {
                path: path.to_string(),
                message,
            })
        };
        if let Some(url) = &self.redis.url {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                return bad("redis.url must start with redis://, rediss:// or unix://".into());
            }
        }
        if self.redis.password_file.is_some() && self.redis.url.is_none() {
            return bad("redis.password_file needs redis.url (the embedded Redis has no password: only its unix socket's owner can reach it)".into());
        }
        if self.redis.prefix.is_empty() {
            return bad("redis.prefix must not be empty".into());
        }
        for o in &self.allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return bad(format!(
                    "allowed_origins entry `{o}` must look like https://host[:port] (scheme, no path, no trailing slash)"
                ));
            }
        }
        let l = &self.limits;
        if l.max_running_per_user == 0 || l.max_running_total == 0 || l.max_containers == 0 {
            return bad("limits.max_running_per_user, max_running_total and max_containers must be at least 1".into());
        }
        if l.approval_ttl_secs == 0 {
            return bad("limits.approval_ttl_secs must be at least 1".into());
        }
        if l.max_args_bytes > l.max_body_bytes {
            return bad("limits.max_args_bytes cannot exceed limits.max_body_bytes".into());
        }
        let u = &self.undo;
        if u.enabled && (u.retention_secs == 0 || u.max_call_bytes == 0) {
            return bad("undo.retention_secs and undo.max_call_bytes must be at least 1 (or set undo.enabled = false)".into());
        }
        // The user's budget counts stored records (base64: 4/3 of the content, and JSON).
        if u.max_user_bytes < u.max_call_bytes.saturating_mul(2) {
            return bad("undo.max_user_bytes must be at least twice undo.max_call_bytes (records are stored base64, about 4/3 of the content)".into());
        }
        if u.max_call_bytes > 64 * 1024 * 1024 {
            return bad("undo.max_call_bytes is at most 64 MiB (the executor holds a call's previous content in memory)".into());
        }
        let p = &self.pool;
        if p.per_key > 0 {
            if p.max_idle == 0 || p.per_key > p.max_idle {
                return bad(format!(
                    "pool.per_key ({}) must be at most pool.max_idle ({}) (per_key = 0 turns the pool off)",
                    p.per_key, p.max_idle
                ));
            }
            if p.max_idle >= l.max_containers {
                return bad(format!(
                    "pool.max_idle ({}) must be below limits.max_containers ({}): idle containers count against it",
                    p.max_idle, l.max_containers
                ));
            }
            if p.idle_secs == 0 {
                return bad("pool.idle_secs must be at least 1".into());
            }
        }
        let r = &self.retention;
        if r.audit_days > 0 && (r.session_days == 0 || r.audit_days < r.session_days) {
            return bad(format!(
                "retention.audit_days ({}) must be 0 (keep forever) or at least retention.session_days ({}, where 0 = forever): the audit outlives the sessions it describes",
                r.audit_days, r.session_days
            ));
        }
        if r.sweep_secs == 0 || r.anchor_secs == 0 {
            return bad("retention.sweep_secs and retention.anchor_secs must be at least 1".into());
        }
        let n = &self.notify;
        if let Some(u) = &n.ui_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.ends_with('/') {
                return bad(format!(
                    "notify.ui_url `{u}` must look like https://host[:port][/path] (no trailing slash)"
                ));
            }
        }
        if n.webhooks.len() > 16 {
            return bad("notify.webhooks: at most 16".into());
        }
        for (i, w) in n.webhooks.iter().enumerate() {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return bad(format!(
                    "notify.webhooks[{i}].url must start with http:// or https://"
                ));
            }
        }
        let m = &self.llm;
        if let Some(url) = &m.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad("llm.base_url must start with http:// or https://".into());
            }
            if m.model.as_deref().is_none_or(str::is_empty) {
                return bad("llm.model is required when llm.base_url is set".into());
            }
        }
        if m.api_key_env.is_some() && m.api_key_file.is_some() {
            return bad("set llm.api_key_env or llm.api_key_file, not both".into());
        }
        if m.max_steps == 0 || m.timeout_secs == 0 || m.request_timeout_secs == 0 {
            return bad(
                "llm.max_steps, llm.timeout_secs and llm.request_timeout_secs must be at least 1"
                    .into(),
            );
        }
        if m.max_tool_result_bytes < 1024 || m.max_history_bytes < 16 * 1024 {
            return bad("llm.max_tool_result_bytes must be at least 1024 and llm.max_history_bytes at least 16384".into());
        }
        if self.instance.is_empty()
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("instance must be letters, digits, `-` or `_`".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_an_error_with_its_position() {
        let err = parse_toml::<Config>(
            "c.toml",
            "listen = \"127.0.0.1:1\"\n\n[redis]\nurl = \"redis://x\"\nprefx = \"a\"\n",
        )
        .unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("c.toml:5:1:"), "{s}");
        assert!(s.contains("prefx"), "{s}");
    }

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        Config::default().validate("x").unwrap();
        let c = Config {
            allowed_origins: vec!["http://evil.example/".into()],
            ..Config::default()
        };
        assert!(c.validate("x").is_err());
        let mut c = Config::default();
        c.redis.url = Some("http://redis".into());
        assert!(c.validate("x").is_err());
    }

    #[test]
    fn example_config_parses_to_the_defaults() {
        let c: Config = parse_toml(
            "docs/airlock.example.toml",
            include_str!("../../docs/airlock.example.toml"),
        )
        .unwrap();
        let d = Config::default();
        assert_eq!(c.limits, d.limits);
        assert_eq!(c.pool, d.pool);
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.llm, d.llm);
        assert_eq!(c.log_format, d.log_format);
        assert_eq!(c.redis.prefix, d.redis.prefix);
        let j: Config = parse_toml("c.toml", "log_format = \"json\"\n").unwrap();
        assert_eq!(j.log_format, crate::logging::LogFormat::Json);
    }

    #[test]
    fn pool_settings_are_checked_against_the_container_limit() {
        let mut c = Config::default();
        c.pool.max_idle = c.limits.max_containers;
        let e = c.validate("x").unwrap_err().to_string();
        assert!(
            e.contains("pool.max_idle") && e.contains("max_containers"),
            "{e}"
        );
        c.pool.max_idle = 2;
        c.pool.per_key = 3;
        let e = c.validate("x").unwrap_err().to_string();
        assert!(e.contains("pool.per_key"), "{e}");
        c.pool.idle_secs = 0;
        c.pool.per_key = 1;
        assert!(c.validate("x").is_err());
        // Off: the other settings are not looked at.
        c.pool = PoolSettings {
            per_key: 0,
            max_idle: 999,
            idle_secs: 0,
        };
        c.validate("x").unwrap();
    }

    #[test]
    fn retention_is_checked_and_cuts_off_by_days() {
        let mut c = Config::default();
        c.validate("x").unwrap();
        let day = 86_400_000;
        let now = 100 * day;
        assert_eq!(c.retention.session_cutoff_ms(now), Some(70 * day));
        assert_eq!(c.retention.audit_cutoff_ms(now), Some(0));
        c.retention.audit_days = 10;
        let err = c.validate("x").unwrap_err().to_string();
        assert!(err.contains("retention.audit_days"), "{err}");
        c.retention.session_days = 0;
        assert!(c.validate("x").is_err(), "sessions forever, audit trimmed");
        c.retention.audit_days = 0;
        c.validate("x").unwrap();
        assert_eq!(c.retention.session_cutoff_ms(now), None);
        assert_eq!(c.retention.audit_cutoff_ms(now), None);
        c.retention.sweep_secs = 0;
        assert!(c.validate("x").is_err());
    }

    #[test]
    fn llm_settings_are_checked() {
        let mut c = Config::default();
        c.llm.base_url = Some("ftp://x".into());
        c.llm.model = Some("m".into());
        assert!(c.validate("x").is_err());
        c.llm.base_url = Some("http://127.0.0.1:8000/v1".into());
        c.validate("x").unwrap();
        c.llm.model = None;
        assert!(c.validate("x").is_err(), "a model is required");
        c.llm.model = Some("m".into());
        c.llm.api_key_env = Some("K".into());
        c.llm.api_key_file = Some("k".into());
        assert!(c.validate("x").is_err(), "one key source only");
        let err = parse_toml::<Config>("c.toml", "[llm]\napi_key = \"sk-secret\"\n").unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
    }

    #[test]
    fn password_file_goes_into_the_url() {
        assert_eq!(
            with_password("redis://airlock@redis:6379/0", "p@ss/w:rd").unwrap(),
            "redis://airlock:p%40ss%2Fw%3Ard@redis:6379/0"
        );
        assert_eq!(with_password("rediss://h", "x").unwrap(), "rediss://:x@h");
        assert_eq!(
            with_password("unix:///run/r.sock", "x y").unwrap(),
            "unix:///run/r.sock?pass=x%20y"
        );
        assert!(with_password("redis://u:old@h", "x").is_err());
        let dir = std::env::temp_dir().join(format!("airlock-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        std::fs::write(
            dir.join("c.toml"),
            "data_dir = \"data\"\n[redis]\nurl = \"redis://airlock@127.0.0.1:1\"\npassword_file = \"pw\"\n",
        )
        .unwrap();
        let c = Config::load(&dir.join("c.toml")).unwrap();
        assert_eq!(c.data_dir, dir.join("data"));
        if std::env::var("AIRLOCK_REDIS_URL").is_err() {
            assert_eq!(
                c.redis.effective_url().unwrap().unwrap(),
                "redis://airlock:s3cret@127.0.0.1:1"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
