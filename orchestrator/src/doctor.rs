//! `airlock doctor`: checks that this host and config can run Airlock, and says what to fix.
//!
//! Each check is ✓ (fine), ! (works, but worth knowing), ✗ (broken: `airlock serve` would fail
//! or the sandbox would be weaker than it claims) or – (skipped because an earlier check
//! failed). The command exits 1 when any check is ✗.
//!
//! The Docker checks go through [`crate::sandbox`] (the only code that talks to Docker): the
//! limit probes are ordinary sandbox calls with the locked profile, run in a scratch workspace
//! of their own. The Redis checks send only `PING` and `INFO` (read-only).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_executor::protocol::{Event, Mode, Request, StreamKind, ToolCall, ToolResult};
use bollard::errors::Error as DockerError;
use bollard::Docker;

use crate::config::Config;
use crate::policy::Policy;
use crate::sandbox::{
    connect_docker, CallSpec, Outcome, Profile, Runtime, Sandbox, SandboxConfig, SandboxError,
};

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skipped,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
            Status::Skipped => "–",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub section: &'static str,
    pub status: Status,
    pub message: String,
    /// What to do about it (for ✗ and !).
    pub fix: Option<String>,
}

/// Every check, in the order made.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new() -> Report {
        Report::default()
    }

    fn push(
        &mut self,
        section: &'static str,
        status: Status,
        message: String,
        fix: Option<String>,
    ) {
        self.checks.push(Check {
            section,
            status,
            message,
            fix,
        });
    }

    pub fn ok(&mut self, section: &'static str, message: impl Into<String>) {
        self.push(section, Status::Ok, message.into(), None);
    }

    pub fn warn(
        &mut self,
        section: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(section, Status::Warn, message.into(), Some(fix.into()));
    }

    pub fn fail(
        &mut self,
        section: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(section, Status::Fail, message.into(), Some(fix.into()));
    }

    pub fn skip(&mut self, section: &'static str, message: impl Into<String>) {
        self.push(section, Status::Skipped, message.into(), None);
    }

    /// Whether any check is ✗.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The report as printed: sections in the order first seen, then a summary line.
    pub fn render(&self) -> String {
        let mut sections: Vec<&'static str> = Vec::new();
        for c in &self.checks {
            if !sections.contains(&c.section) {
                sections.push(c.section);
            }
        }
        // The usual order, whatever order the checks ran in; other sections after them.
        sections.sort_by_key(|s| ORDER.iter().position(|o| o == s).unwrap_or(ORDER.len()));
        let mut out = String::new();
        for s in sections {
            out += s;
            out += "\n";
            for c in self.checks.iter().filter(|c| c.section == s) {
                out += &format!("  {} {}\n", c.status.mark(), c.message);
                if let Some(fix) = &c.fix {
                    out += &format!("      fix: {fix}\n");
                }
            }
        }
        let fails = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        let warns = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Warn)
            .count();
        out += &match (fails, warns) {
            (0, 0) => "\nAll checks passed.\n".to_string(),
            (0, w) => format!("\nNothing is broken ({w} note(s) above).\n"),
            (f, w) => format!("\n{f} problem(s) to fix, {w} note(s): see the ✗ lines above.\n"),
        };
        out
    }
}

pub const CONFIG: &str = "Config";
pub const POLICY: &str = "Policy";
pub const WORKSPACES: &str = "Workspaces";
pub const DOCKER: &str = "Docker engine";
pub const IMAGE: &str = "Executor image";
pub const LIMITS: &str = "Sandbox limits";
pub const REDIS: &str = "Redis";
const ORDER: [&str; 7] = [CONFIG, POLICY, WORKSPACES, DOCKER, IMAGE, LIMITS, REDIS];

/// How the executor image is built (the fix for a missing or stale image).
const BUILD_IMAGE: &str =
    "build it: bash scripts/build-image.sh (or `airlock image build --executor FILE`)";

/// Runs every check for `config` (already loaded) into `report`.
pub async fn check(report: &mut Report, config: &Config, probe_dir: Option<&Path>) {
    let policy = check_policy(report, config);
    let docker = check_docker(report, config, policy.as_ref()).await;
    let rootless = docker.as_ref().is_some_and(|(_, rootless)| *rootless);
    if let Some(p) = &policy {
        check_workspaces(report, p, rootless);
    } else {
        report.skip(WORKSPACES, "not checked: the policy does not load");
    }
    match docker.map(|(d, _)| d) {
        Some(docker) => {
            let image_ok = check_image(report, &docker, config, policy.as_ref()).await;
            if image_ok {
                check_limits(report, config, policy.as_ref(), probe_dir).await;
            } else {
                report.skip(LIMITS, "not probed: the executor image is missing");
            }
        }
        None => {
            report.skip(IMAGE, "not checked: the Docker engine is unreachable");
            report.skip(LIMITS, "not probed: the Docker engine is unreachable");
        }
    }
    check_redis(report, config).await;
}

// ---- policy and workspaces ------------------------------------------------------------------

fn check_policy(report: &mut Report, config: &Config) -> Option<Policy> {
    let path = &config.policy;
    match Policy::load(path) {
        Ok(p) => {
            report.ok(POLICY, format!("{}: {}", path.display(), p.summary()));
            if p.users().is_empty() {
                report.warn(
                    POLICY,
                    "the policy has no [[users]]: nobody can use the API",
                    format!(
                        "make a token with `airlock admin token --user NAME` and add a [[users]] entry to {}",
                        path.display()
                    ),
                );
            }
            Some(p)
        }
        Err(e) => {
            report.fail(
                POLICY,
                format!(
                    "{} is rejected:\n{}",
                    path.display(),
                    indent(&e.to_string(), 8)
                ),
                format!(
                    "`airlock policy check {}` shows every problem with its line (docs/POLICY.md)",
                    path.display()
                ),
            );
            None
        }
    }
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks one workspace directory: exists, absolute, a directory, owned by the user's uid
/// (so never by root), not world-writable. `Err` carries the message and the fix.
pub fn check_workspace(dir: &Path, uid: u32, gid: u32) -> Result<String, (String, String)> {
    check_workspace_with(dir, uid, gid, false)
}

/// [`check_workspace`]; under rootless Docker the container's uid maps to a subordinate uid on
/// the host, so the owner is not compared with the policy's uid (root and world-writable still
/// are refused).
pub fn check_workspace_with(
    dir: &Path,
    uid: u32,
    gid: u32,
    rootless: bool,
) -> Result<String, (String, String)> {
    let shown = dir.display();
    let create = format!("mkdir -p {shown} && chown {uid}:{gid} {shown} && chmod 750 {shown}");
    if !dir.is_absolute() {
        return Err((
            format!("{shown} is not an absolute path"),
            "give the workspace as an absolute host path in the policy".into(),
        ));
    }
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err((format!("{shown} does not exist"), create));
        }
        Err(e) => {
            return Err((
                format!("{shown} cannot be inspected: {e}"),
                "run doctor as the user that runs airlock serve".into(),
            ))
        }
    };
    if !meta.is_dir() {
        return Err((format!("{shown} is not a directory"), create));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() == 0 {
        return Err((
            format!("{shown} is owned by root; the tools run as uid {uid} and could not write it"),
            format!("chown -R {uid}:{gid} {shown}"),
        ));
    }
    if !rootless && meta.uid() != uid {
        return Err((
            format!(
                "{shown} is owned by uid {}, but the policy runs this user's tools as uid {uid}",
                meta.uid()
            ),
            format!("chown -R {uid}:{gid} {shown} (or set uid/gid in the policy to the owner's)"),
        ));
    }
    if mode & 0o002 != 0 {
        return Err((
            format!(
                "{shown} is world-writable (mode {mode:04o}): any local user can plant files in it"
            ),
            format!("chmod o-w {shown}"),
        ));
    }
    if meta.uid() != uid {
        return Ok(format!(
            "{shown} (owner uid {}; rootless Docker maps the tools' uid {uid} to a subordinate uid, so the owner is not compared)",
            meta.uid()
        ));
    }
    Ok(format!(
        "{shown} (owner {uid}:{}, mode {mode:04o})",
        meta.gid()
    ))
}

fn check_workspaces(report: &mut Report, policy: &Policy, rootless: bool) {
    if policy.users().is_empty() {
        report.skip(WORKSPACES, "no users, no workspaces");
        return;
    }
    for u in policy.users() {
        match check_workspace_with(&u.workspace, u.uid, u.gid, rootless) {
            Ok(m) => report.ok(WORKSPACES, format!("{}: {m}", u.name)),
            Err((m, fix)) => report.fail(WORKSPACES, format!("{}: {m}", u.name), fix),
        }
    }
}

// ---- Docker ---------------------------------------------------------------------------------

fn endpoint_shown(config: &Config) -> String {
    config
        .docker
        .endpoint
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// The engine (when reachable) and whether it is rootless Docker.
async fn check_docker(
    report: &mut Report,
    config: &Config,
    policy: Option<&Policy>,
) -> Option<(Docker, bool)> {
    let endpoint = endpoint_shown(config);
    let docker = match tokio::time::timeout(
        Duration::from_secs(10),
        connect_docker(config.docker.endpoint.as_deref()),
    )
    .await
    {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            report.fail(
                DOCKER,
                format!("unreachable: {e}"),
                "start the engine (systemctl start docker), or set docker.endpoint / DOCKER_HOST; \
                 the user running airlock needs its socket (root or the docker group, both \
                 root-equivalent; see docs/SECURITY.md)",
            );
            return None;
        }
        Err(_) => {
            report.fail(
                DOCKER,
                format!("{endpoint} did not answer within 10 s"),
                "check that dockerd is healthy (`docker info`)",
            );
            return None;
        }
    };
    match docker.version().await {
        Ok(v) => report.ok(
            DOCKER,
            format!(
                "reachable at {endpoint}: Docker {} (API {}), kernel {}",
                v.version.as_deref().unwrap_or("?"),
                v.api_version.as_deref().unwrap_or("?"),
                v.kernel_version.as_deref().unwrap_or("?"),
            ),
        ),
        Err(e) => {
            report.fail(
                DOCKER,
                format!("`version` failed: {e}"),
                "check `docker version`",
            );
            return None;
        }
    }
    let info = match docker.info().await {
        Ok(i) => i,
        Err(e) => {
            report.fail(
                DOCKER,
                format!("`info` failed: {e}"),
                "a socket proxy must allow GET /info (docs/OPERATIONS.md lists the endpoints)",
            );
            return None;
        }
    };
    let mut runtimes: Vec<String> = info
        .runtimes
        .as_ref()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    runtimes.sort();
    let used: Vec<&str> = policy
        .map(|p| p.runtimes().into_iter().collect())
        .unwrap_or_else(|| vec!["runc"]);
    let has = |r: &str| runtimes.iter().any(|x| x == r);
    let missing: Vec<&str> = used.iter().copied().filter(|r| !has(r)).collect();
    if !missing.is_empty() {
        report.fail(
            DOCKER,
            format!(
                "the policy uses the runtime(s) {} but the engine has only {}",
                missing.join(", "),
                runtimes.join(", ")
            ),
            "for runsc: apt-get install runsc && bash scripts/enable-gvisor.sh",
        );
    } else {
        report.ok(
            DOCKER,
            format!(
                "runtimes: {} (the policy uses {})",
                runtimes.join(", "),
                used.join(", ")
            ),
        );
    }
    if !has("runsc") && missing.is_empty() {
        report.warn(
            DOCKER,
            "gVisor (runsc) is not registered: policies cannot choose runtime = \"runsc\" for untrusted tenants",
            "apt-get install runsc && bash scripts/enable-gvisor.sh",
        );
    }
    let cgroup = info
        .cgroup_version
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_default();
    let driver = info
        .cgroup_driver
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_default();
    let kernel_fix = "the kernel or its cgroup setup does not support this limit: enable the \
                      controller (cgroup v1: boot with cgroup_enable=memory swapaccount=1; or \
                      use a cgroup v2 host)";
    let mut unsupported = Vec::new();
    if info.memory_limit == Some(false) {
        unsupported.push("memory");
    }
    if info.pids_limit == Some(false) {
        unsupported.push("pids");
    }
    if unsupported.is_empty() {
        report.ok(
            DOCKER,
            format!("the engine reports memory and pids limits as supported (cgroup v{cgroup}, {driver} driver)"),
        );
    } else {
        report.fail(
            DOCKER,
            format!(
                "the engine cannot enforce {} limits",
                unsupported.join(" and ")
            ),
            kernel_fix,
        );
    }
    if info.swap_limit == Some(false) {
        report.warn(
            DOCKER,
            "no swap limit support: a container may swap beyond its memory limit",
            kernel_fix,
        );
    }
    if info.cpu_cfs_quota == Some(false) {
        report.warn(
            DOCKER,
            "no CPU quota support: the cpus limit is not enforced",
            kernel_fix,
        );
    }
    let secopts = info.security_options.unwrap_or_default();
    if secopts.iter().any(|o| o.contains("name=seccomp")) {
        report.ok(DOCKER, "seccomp: the engine applies its default profile");
    } else {
        report.fail(
            DOCKER,
            "the engine reports no seccomp support: containers would run without a syscall filter",
            "use a Docker engine built with seccomp (Debian/Ubuntu's docker.io is)",
        );
    }
    let rootless = secopts.iter().any(|o| o.contains("name=rootless"));
    if rootless {
        report.ok(
            DOCKER,
            "rootless Docker: the engine runs without root on the host",
        );
    }
    Some((docker, rootless))
}

/// Checks the executor image (and any image the policy names); true when the executor
/// image is usable.
async fn check_image(
    report: &mut Report,
    docker: &Docker,
    config: &Config,
    policy: Option<&Policy>,
) -> bool {
    let want = airlock_executor::protocol::PROTOCOL_VERSION.to_string();
    let mut images = vec![config.docker.image.clone()];
    if let Some(p) = policy {
        images.extend(p.images().into_iter().filter(|i| *i != config.docker.image));
    }
    let mut main_ok = false;
    for (i, image) in images.iter().enumerate() {
        match docker.inspect_image(image).await {
            Ok(img) => {
                let id = img.id.unwrap_or_default();
                let short = id
                    .trim_start_matches("sha256:")
                    .get(..12)
                    .unwrap_or("?")
                    .to_string();
                let labels = img.config.and_then(|c| c.labels).unwrap_or_default();
                match labels.get("io.airlock.protocol") {
                    Some(v) if *v == want => {
                        let built_by = labels
                            .get("io.airlock.executor-version")
                            .map(|v| format!(", built by airlock {v}"))
                            .unwrap_or_default();
                        report.ok(
                            IMAGE,
                            format!("{image}: present ({short}), executor protocol {v}{built_by}"),
                        );
                        if i == 0 {
                            main_ok = true;
                        }
                    }
                    Some(v) => report.fail(
                        IMAGE,
                        format!("{image} speaks executor protocol {v}, this airlock speaks {want}"),
                        format!("rebuild it from this version: {BUILD_IMAGE}"),
                    ),
                    None => report.fail(
                        IMAGE,
                        format!("{image} has no io.airlock.protocol label: it is not an Airlock executor image"),
                        BUILD_IMAGE,
                    ),
                }
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => report.fail(
                IMAGE,
                format!("{image} not found in the engine"),
                BUILD_IMAGE,
            ),
            Err(e) => report.fail(
                IMAGE,
                format!("{image}: inspect failed: {e}"),
                "a socket proxy must allow GET /images/{name}/json",
            ),
        }
    }
    main_ok
}

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
async fn check_limits(
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
    sandbox.drain().await;
}

// ---- Redis ----------------------------------------------------------------------------------

/// `field:value` from an INFO reply.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// `major.minor` of a version string.
fn version_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

async fn check_redis(report: &mut Report, config: &Config) {
    let url = match config.redis.effective_url() {
        Ok(u) => u,
        Err(e) => {
            report.fail(
                REDIS,
                e,
                "write the password on the first line of redis.password_file",
            );
            return;
        }
    };
    let url = match url {
        Some(u) => u,
        None => {
            // The embedded Redis: the binary must exist; when a server runs, check it too.
            let socket = crate::embedded_redis::socket_path(&config.data_dir);
            match std::process::Command::new("redis-server")
                .arg("--version")
                .output()
            {
                Ok(out) => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    let v = text
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("v="))
                        .unwrap_or("?")
                        .to_string();
                    if v != "?" && !version_at_least(&v, 6, 2) {
                        report.fail(
                            REDIS,
                            format!("redis-server {v} is too old (Airlock needs 6.2 or newer)"),
                            "install a newer redis-server, or set redis.url to a Redis 6.2+",
                        );
                    } else {
                        report.ok(
                            REDIS,
                            format!(
                                "embedded: no redis.url, so `airlock serve` starts redis-server {v} on {} with its AOF in {}",
                                socket.display(),
                                crate::embedded_redis::redis_dir(&config.data_dir).display()
                            ),
                        );
                    }
                }
                Err(_) => {
                    report.fail(
                        REDIS,
                        "no redis.url is set and redis-server is not installed, so `airlock serve` cannot start its embedded Redis",
                        "apt-get install redis-server (scripts/start.sh does), or set redis.url / AIRLOCK_REDIS_URL",
                    );
                    return;
                }
            }
            if crate::embedded_redis::ping_socket(&socket).is_none() {
                report.ok(
                    REDIS,
                    "the embedded Redis is not running now (it runs while airlock serve does)",
                );
                return;
            }
            crate::embedded_redis::url_for(&config.data_dir)
        }
    };
    let shown = crate::store::redact_url(&url);
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            report.fail(
                REDIS,
                format!("bad URL {shown}: {}", e.to_string().replace(&url, "<url>")),
                "redis://[user@]host:port/db, rediss://… or unix:///path (docs/OPERATIONS.md)",
            );
            return;
        }
    };
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await;
    let mut conn = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            report.fail(
                REDIS,
                format!("{shown} is unreachable: {}", scrub(&e.to_string(), &url)),
                "start Redis (or check redis.url / AIRLOCK_REDIS_URL, its password and ACL user)",
            );
            return;
        }
        Err(_) => {
            report.fail(
                REDIS,
                format!("{shown} did not answer within 5 s"),
                "start Redis (or check redis.url / AIRLOCK_REDIS_URL and the network)",
            );
            return;
        }
    };
    let pong: Result<String, _> = tokio::time::timeout(
        Duration::from_secs(3),
        redis::cmd("PING").query_async(&mut conn),
    )
    .await
    .unwrap_or_else(|_| {
        Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "timed out",
        )))
    });
    if let Err(e) = pong {
        report.fail(
            REDIS,
            format!(
                "{shown} does not answer PING: {}",
                scrub(&e.to_string(), &url)
            ),
            "check the password and the ACL user's permissions (docs/OPERATIONS.md)",
        );
        return;
    }
    let info: Result<String, _> = tokio::time::timeout(
        Duration::from_secs(3),
        redis::cmd("INFO")
            .arg("server")
            .arg("persistence")
            .query_async(&mut conn),
    )
    .await
    .unwrap_or_else(|_| {
        Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "timed out",
        )))
    });
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            report.ok(REDIS, format!("{shown} answers PING"));
            report.warn(
                REDIS,
                format!(
                    "INFO is refused ({}): version and persistence not checked",
                    scrub(&e.to_string(), &url)
                ),
                "allow INFO for Airlock's ACL user (+info) so doctor can check them",
            );
            return;
        }
    };
    let version = info_field(&info, "redis_version").unwrap_or_else(|| "?".into());
    if version != "?" && !version_at_least(&version, 6, 2) {
        report.fail(
            REDIS,
            format!("{shown}: Redis {version} is too old (Airlock needs 6.2 or newer)"),
            "upgrade Redis",
        );
    } else {
        report.ok(REDIS, format!("{shown} answers: Redis {version}"));
    }
    if info_field(&info, "aof_enabled").as_deref() == Some("1") {
        report.ok(REDIS, "persistence: AOF is on");
    } else {
        report.warn(
            REDIS,
            "persistence: AOF is off — a Redis restart loses sessions, pending approvals and the audit trail written since the last RDB snapshot",
            "set `appendonly yes` (with `appendfsync everysec` or `always`) in redis.conf",
        );
    }
}

/// Removes the URL (it may carry a password) from an error message.
fn scrub(msg: &str, url: &str) -> String {
    msg.replace(url, "<url>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders_marks_fixes_and_a_summary() {
        let mut r = Report::new();
        r.ok(DOCKER, "reachable");
        r.fail(IMAGE, "missing", "build it");
        r.warn(DOCKER, "no runsc", "install it");
        let s = r.render();
        assert!(r.failed());
        assert!(s.starts_with("Docker engine\n  ✓ reachable\n  ! no runsc\n      fix: install it\nExecutor image\n  ✗ missing\n      fix: build it\n"), "{s}");
        assert!(s.contains("1 problem(s)"), "{s}");
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(version_at_least("7.0.15", 6, 2));
        assert!(version_at_least("6.2.0", 6, 2));
        assert!(!version_at_least("6.0.9", 6, 2));
    }

    #[test]
    fn workspace_checks_name_the_fix() {
        let (_, fix) = check_workspace(Path::new("/nonexistent/ws"), 1000, 1000).unwrap_err();
        assert!(fix.contains("mkdir -p /nonexistent/ws"), "{fix}");
        let (msg, _) = check_workspace(Path::new("rel/ws"), 1000, 1000).unwrap_err();
        assert!(msg.contains("not an absolute path"), "{msg}");
    }

    #[test]
    fn rootless_docker_skips_only_the_owner_comparison() {
        let dir = std::env::temp_dir().join(format!("airlock-rootless-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.as_path();
        // A non-root owner (as root: give it one; otherwise it is ours already).
        if std::fs::metadata(p).unwrap().uid() == 0 {
            std::os::unix::fs::chown(p, Some(4242), Some(4242)).unwrap();
        }
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o750)).unwrap();
        let other = std::fs::metadata(p).unwrap().uid() + 1;
        let (msg, _) = check_workspace_with(p, other, other, false).unwrap_err();
        assert!(msg.contains("but the policy runs"), "{msg}");
        let ok = check_workspace_with(p, other, other, true).unwrap();
        assert!(ok.contains("rootless Docker"), "{ok}");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (msg, fix) = check_workspace_with(p, other, other, true).unwrap_err();
        assert!(msg.contains("world-writable"), "{msg}");
        assert!(fix.starts_with("chmod o-w"), "{fix}");
        std::fs::remove_dir_all(p).unwrap();
    }
}
