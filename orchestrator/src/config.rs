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
    /// Origins allowed to open WebSockets (a present Origin header must be listed).
    pub allowed_origins: Vec<String>,
    /// Name of this orchestrator instance: labels its containers so only its own are reaped.
    pub instance: String,
    pub redis: RedisConfig,
    pub docker: DockerConfig,
    pub limits: LimitsConfig,
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
            redis: RedisConfig::default(),
            docker: DockerConfig::default(),
            limits: LimitsConfig::default(),
            llm: LlmConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`, `rediss://…` (TLS) or `unix:///path`.
    /// The env var `AIRLOCK_REDIS_URL` overrides it (keep passwords out of the file).
    pub url: Option<String>,
    /// Prefix of every key Airlock writes.
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            prefix: "airlock:".into(),
        }
    }
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// OpenAI-compatible base URL, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: Option<String>,
    pub model: Option<String>,
    /// Environment variable holding the API key (never the key itself in this file).
    pub api_key_env: Option<String>,
    /// File holding the API key.
    pub api_key_file: Option<PathBuf>,
    pub timeout_secs: u64,
    pub max_steps: u32,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: None,
            model: None,
            api_key_env: None,
            api_key_file: None,
            timeout_secs: 120,
            max_steps: 20,
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
        assert_eq!(c.listen, d.listen);
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
