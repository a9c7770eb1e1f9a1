//! `airlock image build`, `airlock sandbox run|reap` and `airlock bench sandbox`: the sandbox
//! without the server.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;

use airlock::protocol::{
    Event, ExecLimits, Mode, ProtectedPath, Protection, Request, ToolCall, ToolResult,
};
use airlock::sandbox::image::{self, BuildOptions};
use airlock::sandbox::{
    connect_docker, CallSpec, Profile, Runtime, Sandbox, SandboxConfig, SandboxEvent,
};
use anyhow::{bail, Context};

use crate::RunArgs;

/// `airlock image build`: the executor image, built through the Docker API.
pub async fn image_build(
    docker: Option<String>,
    executor: PathBuf,
    busybox: PathBuf,
    base: String,
    profile: image::ImageProfile,
    tag: String,
) -> anyhow::Result<ExitCode> {
    let docker = connect_docker(docker.as_deref()).await?;
    let opts = BuildOptions {
        executor,
        busybox,
        base,
        tag: tag.clone(),
        profile,
    };
    if profile == image::ImageProfile::Dev {
        eprintln!(
            "  making the dev root filesystem from this host's Debian packages (a few hundred MB)…"
        );
    }
    let id = image::build_image(&docker, &opts, |line| eprintln!("  {line}")).await?;
    eprintln!("built {tag}");
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// `airlock sandbox reap`: removes the containers an instance left behind.
pub async fn reap(docker: Option<String>, instance: String) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new(&SandboxConfig {
        docker_endpoint: docker,
        instance,
        ..SandboxConfig::default()
    })
    .await?;
    let n = sandbox.reap().await?;
    println!("removed {n} leftover container(s)");
    Ok(ExitCode::SUCCESS)
}

/// `airlock bench sandbox`: the sandbox's paths against `docker run --rm`.
pub async fn bench(
    docker: Option<String>,
    n: usize,
    image: String,
    runtime: Option<Runtime>,
) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new(&SandboxConfig {
        docker_endpoint: docker,
        image,
        instance: "bench".into(),
        ..SandboxConfig::default()
    })
    .await?;
    let dir = tempdir_for_bench()?;
    let profile = Profile {
        runtime: runtime.unwrap_or_default(),
        ..Profile::default()
    };
    eprintln!("warming up…");
    // One untimed round so image layers and the runtime are warm for every path.
    airlock::bench::bench_sandbox(&sandbox, &profile, &dir, 1, |_| {}).await?;
    let report = airlock::bench::bench_sandbox(&sandbox, &profile, &dir, n, |i| {
        eprint!("\r{i}/{n}");
    })
    .await?;
    eprintln!();
    print!("{}", report.report());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

/// A scratch workspace for the benchmark (its own fixture, not a user's workspace).
fn tempdir_for_bench() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("airlock-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("bench.txt"),
        "hello from the benchmark\n".repeat(40),
    )?;
    Ok(dir)
}

fn parse_user(s: &str) -> anyhow::Result<(u32, u32)> {
    let (u, g) = s
        .split_once(':')
        .with_context(|| format!("--user `{s}`: expected UID:GID, e.g. 1000:1000"))?;
    Ok((
        u.parse()
            .with_context(|| format!("--user: bad uid `{u}`"))?,
        g.parse()
            .with_context(|| format!("--user: bad gid `{g}`"))?,
    ))
}

fn parse_protect(s: &str) -> anyhow::Result<ProtectedPath> {
    let (glob, protection) = match s.rsplit_once(':') {
        Some((g, "read-only")) => (g, Protection::ReadOnly),
        Some((g, "no-access")) => (g, Protection::NoAccess),
        _ => (s, Protection::NoAccess),
    };
    if glob.is_empty() {
        bail!("--protect `{s}`: the glob is empty");
    }
    Ok(ProtectedPath {
        glob: glob.to_string(),
        protection,
    })
}

pub async fn sandbox_run(docker: Option<String>, a: RunArgs) -> anyhow::Result<ExitCode> {
    let args: serde_json::Value = serde_json::from_str(&a.args)
        .with_context(|| format!("the arguments are not valid JSON: {}", a.args))?;
    let call = ToolCall::from_parts(&a.tool, args).map_err(anyhow::Error::msg)?;
    let workspace = std::fs::canonicalize(&a.workspace)
        .with_context(|| format!("workspace `{}` does not exist", a.workspace.display()))?;
    let meta = std::fs::metadata(&workspace)?;
    if !meta.is_dir() {
        bail!("workspace `{}` is not a directory", workspace.display());
    }
    let (uid, gid) = match &a.limits.user {
        Some(u) => parse_user(u)?,
        None if meta.uid() != 0 => (meta.uid(), meta.gid()),
        None => (image::SANDBOX_UID, image::SANDBOX_UID),
    };
    let mib = |v: u64| v * 1024 * 1024;
    let d = Profile::default();
    let l = &a.limits;
    let profile = Profile {
        runtime: l.runtime.unwrap_or(d.runtime),
        memory_bytes: l.memory_mib.map(mib).unwrap_or(d.memory_bytes),
        cpus: l.cpus.unwrap_or(d.cpus),
        pids: l.pids.unwrap_or(d.pids),
        timeout_secs: l.timeout_secs.unwrap_or(d.timeout_secs),
        output_bytes: l.output_bytes.unwrap_or(d.output_bytes),
        tmpfs_bytes: l.tmpfs_mib.map(mib).unwrap_or(d.tmpfs_bytes),
        fsize_bytes: l.fsize_mib.map(mib).unwrap_or(d.fsize_bytes),
        nofile: d.nofile,
        uid,
        gid,
        image: None,
    };
    let protected = a
        .protect
        .iter()
        .map(|p| parse_protect(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let request = Request {
        mode: if a.write { Mode::Apply } else { Mode::Preview },
        expected_sha256: a.expected_sha256,
        protected: protected.clone(),
        limits: ExecLimits::default(),
        ..Request::new(call.clone())
    };
    let sandbox = Sandbox::new(&SandboxConfig {
        docker_endpoint: docker,
        image: a.image,
        instance: "cli".into(),
        max_containers: 1,
        ..SandboxConfig::default()
    })
    .await?;
    let spec = CallSpec {
        workspace,
        writable: a.write && call.mutates(),
        session_id: "cli".into(),
        call_id: uuid::Uuid::new_v4().to_string(),
        tool: call.name().into(),
        protected,
    };
    // Ctrl-C or SIGTERM stops the container and removes it before the process exits.
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut interrupted: Option<u8> = None;
    let started = tokio::select! {
        r = sandbox.run(&profile, &spec, &request) => Some(r),
        _ = sigint.recv() => { interrupted = Some(130); None }
        _ = sigterm.recv() => { interrupted = Some(143); None }
    };
    let Some(started) = started else {
        // Dropping the start removed what it had made; a container it created but had not
        // reported yet carries this call's label.
        sandbox.drain().await;
        let _ = sandbox.reap_call(&spec.call_id).await;
        eprintln!("interrupted: the sandbox container was removed");
        return Ok(ExitCode::from(interrupted.unwrap_or(130)));
    };
    let mut handle = started?;
    let mut tool_failed = false;
    let mut code = ExitCode::from(1);
    loop {
        let ev = tokio::select! {
            ev = handle.next() => ev,
            _ = sigint.recv(), if interrupted.is_none() => {
                interrupted = Some(130);
                handle.cancel();
                continue;
            }
            _ = sigterm.recv(), if interrupted.is_none() => {
                interrupted = Some(143);
                handle.cancel();
                continue;
            }
        };
        let Some(ev) = ev else { break };
        match ev {
            SandboxEvent::Executor(e) => {
                match &e {
                    Event::Error { .. } => tool_failed = true,
                    Event::Result {
                        result: ToolResult::RunShell(r),
                    } if r.exit_code != Some(0) => tool_failed = true,
                    _ => {}
                }
                println!("{}", serde_json::to_string(&e)?);
            }
            SandboxEvent::Finished(o) => {
                let summary = serde_json::json!({
                    "event": "finished",
                    "exit_code": o.exit_code,
                    "timed_out": o.timed_out,
                    "oom_killed": o.oom_killed,
                    "output_truncated": o.output_truncated,
                    "duration_ms": o.duration.as_millis() as u64,
                    "protocol_error": o.protocol_error,
                    "stderr": if o.stderr_tail.is_empty() { None } else { Some(&o.stderr_tail) },
                });
                println!("{summary}");
                code = if o.timed_out || o.oom_killed || o.output_truncated {
                    ExitCode::from(2)
                } else if tool_failed || o.protocol_error.is_some() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                };
            }
        }
    }
    // The container is removed after `Finished`; wait for it before the runtime shuts down.
    drop(handle);
    sandbox.drain().await;
    if let Some(status) = interrupted {
        let _ = sandbox.reap_call(&spec.call_id).await;
        eprintln!("interrupted: the sandbox container was stopped and removed");
        return Ok(ExitCode::from(status));
    }
    Ok(code)
}
