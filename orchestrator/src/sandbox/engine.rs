//! Read-only facts about the Docker engine, its images and one container's cost, for
//! `airlock doctor` and the benchmarks: `version`, `info`, image inspection, a container's
//! memory (`stats`) and its runtime shim's. Nothing here creates a container.

use std::collections::HashMap;

use bollard::errors::Error as DockerError;
use bollard::query_parameters::StatsOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use super::{connect_docker, SandboxError};

/// What the engine says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineFacts {
    pub version: String,
    pub api_version: String,
    pub kernel: String,
    /// Registered OCI runtimes, sorted.
    pub runtimes: Vec<String>,
    pub cgroup_version: String,
    pub cgroup_driver: String,
    /// `None` when the engine does not say.
    pub memory_limit: Option<bool>,
    pub pids_limit: Option<bool>,
    pub swap_limit: Option<bool>,
    pub cpu_cfs_quota: Option<bool>,
    /// e.g. `name=seccomp,profile=builtin`, `name=rootless`.
    pub security_options: Vec<String>,
}

/// Which query failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{query}` failed: {message}")]
pub struct QueryError {
    /// `version` or `info`.
    pub query: &'static str,
    pub message: String,
}

/// An image as the engine has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    pub id: String,
    pub labels: HashMap<String, String>,
}

/// A connection used only for read-only queries.
pub struct EngineProbe {
    docker: Docker,
}

impl EngineProbe {
    pub async fn connect(endpoint: Option<&str>) -> Result<EngineProbe, SandboxError> {
        Ok(EngineProbe {
            docker: connect_docker(endpoint).await?,
        })
    }

    /// `version` and `info`, in that order (the first failure is reported).
    pub async fn facts(&self) -> Result<EngineFacts, QueryError> {
        let v = self.docker.version().await.map_err(|e| QueryError {
            query: "version",
            message: e.to_string(),
        })?;
        let info = self.docker.info().await.map_err(|e| QueryError {
            query: "info",
            message: e.to_string(),
        })?;
        let mut runtimes: Vec<String> = info
            .runtimes
            .as_ref()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        runtimes.sort();
        let text = |s: Option<String>| s.unwrap_or_else(|| "?".into());
        Ok(EngineFacts {
            version: text(v.version),
            api_version: text(v.api_version),
            kernel: text(v.kernel_version),
            runtimes,
            cgroup_version: info
                .cgroup_version
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
            cgroup_driver: info
                .cgroup_driver
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
            memory_limit: info.memory_limit,
            pids_limit: info.pids_limit,
            swap_limit: info.swap_limit,
            cpu_cfs_quota: info.cpu_cfs_quota,
            security_options: info.security_options.unwrap_or_default(),
        })
    }

    /// The image, or `None` when the engine does not have it.
    pub async fn image(&self, name: &str) -> Result<Option<ImageFacts>, String> {
        match self.docker.inspect_image(name).await {
            Ok(img) => Ok(Some(ImageFacts {
                id: img.id.unwrap_or_default(),
                labels: img.config.and_then(|c| c.labels).unwrap_or_default(),
            })),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The memory a container's cgroup uses now (bytes), as `docker stats` shows it.
    pub async fn container_memory(&self, id: &str) -> Option<u64> {
        let opts = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let stats = self.docker.stats(id, Some(opts)).next().await?.ok()?;
        stats.memory_stats?.usage
    }
}

/// The resident memory (KiB) of the runtime shim that serves container `id`, when this process
/// can see the host's processes (not from inside another container's pid namespace).
pub fn shim_rss_kib(id: &str) -> Option<u64> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = e.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("containerd-shim") && cmd.contains(id) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        }
    }
    None
}
