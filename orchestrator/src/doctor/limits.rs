//! The sandbox limits, probed: ordinary sandbox calls with the locked profile in a scratch
//! workspace, each checking that one limit holds (memory, pids, time, output, no network, …).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use airlock_executor::protocol::{Event, Mode, Request, StreamKind, ToolCall, ToolResult};

use super::*;
use crate::config::Config;
use crate::policy::Policy;
use crate::sandbox::engine::{shim_rss_kib, EngineProbe};
use crate::sandbox::{CallSpec, Outcome, Profile, Runtime, Sandbox, SandboxConfig, SandboxError};

/// The directory mounted (read-only) as the probes' workspace, and the uid they run as.
struct ProbeDir {
    path: PathBuf,
    uid: u32,
    gid: u32,
    /// Made by us (and removed afterwards), or the caller's.
    ours: bool,
}

impl ProbeDir {
    /// `given`: an existing host directory (nothing is written to it: the probes mount it
    /// read-only), run as its owner (the sandbox user when root owns it). Otherwise a new
    /// directory in TMPDIR.
    fn new(given: Option<&Path>) -> std::io::Result<ProbeDir> {
        let sandbox_id = crate::sandbox::image::SANDBOX_UID;
        if let Some(dir) = given {
            let dir = std::fs::canonicalize(dir)?;
            let meta = std::fs::metadata(&dir)?;
            if !meta.is_dir() {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            let (uid, gid) = if meta.uid() == 0 {
                (sandbox_id, sandbox_id)
            } else {
                (meta.uid(), meta.gid().max(1))
            };
            return Ok(ProbeDir {
                path: dir,
                uid,
                gid,
                ours: false,
            });
        }
        let path =
            std::env::temp_dir().join(format!("airlock-doctor-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        // SAFETY: no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let (uid, gid) = if euid == 0 {
            std::os::unix::fs::chown(&path, Some(sandbox_id), Some(sandbox_id))?;
            (sandbox_id, sandbox_id)
        } else {
            (euid, egid)
        };
        Ok(ProbeDir {
            path,
            uid,
            gid,
            ours: true,
        })
    }
}

impl Drop for ProbeDir {
    fn drop(&mut self) {
        if self.ours {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What one probe container printed and how it ended.
struct Probe {
    stdout: String,
    stderr: String,
    exit_code: Option<i32>,
    outcome: Outcome,
}

async fn probe(
    sandbox: &Sandbox,
    dir: &ProbeDir,
    profile: &Profile,
    command: &str,
) -> Result<Probe, SandboxError> {
    let call = ToolCall::from_parts(
        "run_shell",
        serde_json::json!({"command": command, "timeout_secs": 30}),
    )
    .map_err(|e| SandboxError::InvalidProfile(e.to_string()))?;
    let request = Request {
        mode: Mode::Apply,
        ..Request::new(call)
    };
    let spec = CallSpec {
        workspace: dir.path.clone(),
        writable: false,
        session_id: "doctor".into(),
        call_id: uuid::Uuid::new_v4().to_string(),
        tool: "run_shell".into(),
        protected: Vec::new(),
    };
    let handle = sandbox.run(profile, &spec, &request).await?;
    let (events, outcome) = handle.collect().await;
    let mut p = Probe {
        stdout: String::new(),
        stderr: String::new(),
        exit_code: None,
        outcome,
    };
    for e in events {
        match e {
            Event::Output {
                stream: StreamKind::Stdout,
                data,
            } => p.stdout += &data,
            Event::Output { data, .. } => p.stderr += &data,
            Event::Result {
                result: ToolResult::RunShell(r),
            } => p.exit_code = r.exit_code,
            Event::Error { message, .. } => p.stderr += &message,
            _ => {}
        }
    }
    Ok(p)
}

/// `key=value` lines of a probe's output.
fn kv(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().to_string())
}

/// Runs tiny containers with the locked profile and checks that the kernel enforces the
/// limits: the cgroup files show the configured memory and pids limits, a shell that
/// allocates beyond its memory limit is OOM-killed, and one that forks beyond its pids limit
/// cannot.
pub(super) async fn check_limits(
    report: &mut Report,
    config: &Config,
    policy: Option<&Policy>,
    probe_dir: Option<&Path>,
) {
    let sandbox = match Sandbox::new(&SandboxConfig {
        docker_endpoint: config.docker.endpoint.clone(),
        image: config.docker.image.clone(),
        instance: format!("doctor-{}", std::process::id()),
        max_containers: 1,
        pool: crate::sandbox::PoolConfig::disabled(),
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            report.fail(
                LIMITS,
                format!("cannot use the sandbox: {e}"),
                "see the checks above",
            );
            return;
        }
    };
    let dir = match ProbeDir::new(probe_dir) {
        Ok(d) => d,
        Err(e) => {
            report.fail(
                LIMITS,
                format!("cannot make a scratch workspace for the probes: {e}"),
                "pass --probe-dir DIR: an existing directory the Docker daemon sees at the same path (mounted read-only; in the compose stack, the workspaces root)",
            );
            return;
        }
    };
    let base = Profile {
        uid: dir.uid,
        gid: dir.gid,
        timeout_secs: 30,
        ..Profile::default()
    };
    let fix_probe = "see the probe's error; under a socket proxy, containers create/attach/start/wait/inspect/kill/delete must be allowed";

    // 1. The cgroup files inside the container show the profile's limits.
    let cgroup_cmd = "if [ -e /sys/fs/cgroup/memory.max ]; then \
        echo memory=$(cat /sys/fs/cgroup/memory.max); echo swap=$(cat /sys/fs/cgroup/memory.swap.max 2>/dev/null); echo pids=$(cat /sys/fs/cgroup/pids.max); \
        else echo memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); echo memsw=$(cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null); echo pids=$(cat /sys/fs/cgroup/pids/pids.max); fi";
    match probe(&sandbox, &dir, &base, cgroup_cmd).await {
        Ok(p) => {
            let mem = kv(&p.stdout, "memory");
            let pids = kv(&p.stdout, "pids");
            let want_mem = base.memory_bytes.to_string();
            let want_pids = base.pids.to_string();
            if mem.as_deref() == Some(&want_mem) && pids.as_deref() == Some(&want_pids) {
                report.ok(
                    LIMITS,
                    format!(
                        "cgroup limits inside a sandbox container: memory {} MiB, pids {}",
                        base.memory_bytes / (1024 * 1024),
                        base.pids
                    ),
                );
            } else {
                report.fail(
                    LIMITS,
                    format!(
                        "a sandbox container with memory {want_mem} and pids {want_pids} sees memory {} and pids {} in its cgroup{}",
                        mem.as_deref().unwrap_or("(unreadable)"),
                        pids.as_deref().unwrap_or("(unreadable)"),
                        if p.stderr.is_empty() { String::new() } else { format!(" ({})", p.stderr.trim()) }
                    ),
                    "the engine does not apply resource limits: check `docker info` warnings and the kernel's cgroup controllers",
                );
            }
            let swap_ok = match (kv(&p.stdout, "memsw"), kv(&p.stdout, "swap")) {
                (Some(m), _) => m == want_mem,
                (None, Some(s)) => s == "0",
                _ => false,
            };
            if !swap_ok {
                report.warn(
                    LIMITS,
                    "the container's memory+swap limit is not equal to its memory limit: it may swap",
                    "enable swap accounting (cgroup v1: boot with swapaccount=1)",
                );
            }
        }
        Err(e) => {
            report.fail(
                LIMITS,
                format!("a probe container did not run: {e}"),
                fix_probe,
            );
            return;
        }
    }

    // 2. Allocating beyond the memory limit gets the container killed.
    let small = Profile {
        memory_bytes: 32 * 1024 * 1024,
        ..base.clone()
    };
    let alloc = 128 * 1024 * 1024;
    let cmd = format!("a=$(head -c {alloc} /dev/zero | tr '\\0' x); echo allocated=${{#a}}");
    match probe(&sandbox, &dir, &small, &cmd).await {
        Ok(p) => {
            let allocated = kv(&p.stdout, "allocated");
            if allocated.as_deref() == Some(&alloc.to_string()) {
                report.fail(
                    LIMITS,
                    "a container limited to 32 MiB held 128 MiB: the memory limit is NOT enforced",
                    "the kernel's memory cgroup controller is off or ignored: enable it (cgroup_enable=memory) and check `docker info`",
                );
            } else if p.outcome.oom_killed
                || p.outcome.exit_code == Some(137)
                || p.exit_code == Some(137)
            {
                report.ok(
                    LIMITS,
                    "memory: a container that allocates past its 32 MiB limit is OOM-killed",
                );
            } else {
                report.warn(
                    LIMITS,
                    format!(
                        "memory: the over-allocation failed without an OOM kill (exit {:?}, {})",
                        p.exit_code.or(p.outcome.exit_code.map(|c| c as i32)),
                        p.stderr.trim()
                    ),
                    "check the memory cgroup by hand: docker run --rm -m 32m … ",
                );
            }
        }
        Err(e) => report.fail(
            LIMITS,
            format!("the memory probe did not run: {e}"),
            fix_probe,
        ),
    }

    // 3. Forking beyond the pids limit fails.
    let few = Profile {
        pids: 16,
        ..base.clone()
    };
    let cmd = "i=0; while [ $i -lt 40 ]; do sleep 1 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; echo started=$i";
    match probe(&sandbox, &dir, &few, cmd).await {
        Ok(p) => {
            if kv(&p.stdout, "started").as_deref() == Some("40") {
                report.fail(
                    LIMITS,
                    "a container limited to 16 processes started 40: the pids limit is NOT enforced",
                    "the kernel's pids cgroup controller is off: enable it and check `docker info`",
                );
            } else {
                report.ok(
                    LIMITS,
                    "pids: a container cannot fork past its pids limit (16)",
                );
            }
        }
        Err(e) => report.fail(
            LIMITS,
            format!("the pids probe did not run: {e}"),
            fix_probe,
        ),
    }

    // 4. runsc starts containers, when the policy uses it.
    let uses_runsc = policy.is_some_and(|p| p.runtimes().contains("runsc"));
    if uses_runsc && sandbox.has_runtime("runsc") {
        let g = Profile {
            runtime: Runtime::Runsc,
            ..base.clone()
        };
        match probe(&sandbox, &dir, &g, "echo ok=1").await {
            Ok(p) if kv(&p.stdout, "ok").as_deref() == Some("1") => {
                report.ok(LIMITS, "runsc: a gVisor sandbox container runs");
            }
            Ok(p) => report.fail(
                LIMITS,
                format!("runsc: the container did not run the probe ({})", p.stderr.trim()),
                "runsc must be registered with runtimeArgs [\"--network=none\"]: bash scripts/enable-gvisor.sh",
            ),
            Err(e) => report.fail(
                LIMITS,
                format!("runsc: {e}"),
                "bash scripts/enable-gvisor.sh",
            ),
        }
    }
    idle_container_cost(report, config, &sandbox, &dir, &base).await;
    sandbox.drain().await;
}

/// The warm pool's settings and what one idle container costs on this host: its cgroup's
/// memory and its runtime shim's (an idle container is exactly what `prepare` makes).
async fn idle_container_cost(
    report: &mut Report,
    config: &Config,
    sandbox: &Sandbox,
    dir: &ProbeDir,
    profile: &Profile,
) {
    let p = &config.pool;
    if p.per_key == 0 {
        report.ok(
            LIMITS,
            "warm pool: off (pool.per_key = 0); every allowed call starts a container",
        );
        return;
    }
    let spec = CallSpec {
        workspace: dir.path.clone(),
        writable: false,
        session_id: "doctor".into(),
        call_id: uuid::Uuid::new_v4().to_string(),
        tool: "pool".into(),
        protected: Vec::new(),
    };
    let settings = format!(
        "warm pool: {} idle container(s) per key, {} in all, emptied after {} s unused",
        p.per_key, p.max_idle, p.idle_secs
    );
    let prepared = match sandbox.prepare(profile, &spec).await {
        Ok(c) => c,
        Err(e) => {
            report.warn(
                LIMITS,
                format!("{settings}; the cost of an idle container was not measured: {e}"),
                "see the probes above",
            );
            return;
        }
    };
    // Let the executor settle into its wait before measuring.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let id = prepared.container_id().to_string();
    let engine = EngineProbe::connect(config.docker.endpoint.as_deref())
        .await
        .ok();
    let mem = match &engine {
        Some(e) => e.container_memory(&id).await,
        None => None,
    };
    let shim = shim_rss_kib(&id);
    prepared.discard().await;
    let mib = |b: f64| format!("{:.1} MiB", b / 1048576.0);
    let each = mem.unwrap_or(0) as f64 + shim.unwrap_or(0) as f64 * 1024.0;
    report.ok(
        LIMITS,
        format!(
            "{settings}; one idle container costs {} (cgroup) + {} (runtime shim), so a full pool about {}",
            mem.map_or("? ".into(), |b| mib(b as f64)),
            shim.map_or("? (the shim is not visible from here)".into(), |k| mib(k as f64 * 1024.0)),
            mib(each * p.max_idle as f64),
        ),
    );
}
