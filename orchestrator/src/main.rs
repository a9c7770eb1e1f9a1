//! The `airlock` command line: build the executor image, run one sandboxed tool call, benchmark.

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
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Let LLM agents act on people's files, safely: every tool call passes policy, \
             preview and approval, then runs in its own locked-down container."
)]
struct Cli {
    /// Docker endpoint (unix:///var/run/docker.sock, tcp://HOST:PORT). Default: DOCKER_HOST or the local socket.
    #[arg(long, global = true, env = "AIRLOCK_DOCKER")]
    docker: Option<String>,
    /// Log format: text or json (one object per line). Default: the config's `log_format`, else text.
    #[arg(long, global = true, env = "AIRLOCK_LOG_FORMAT", value_enum)]
    log_format: Option<airlock::logging::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Airlock server (HTTP API, WebSocket/SSE events) until SIGINT/SIGTERM.
    ///
    /// With no Redis URL configured (redis.url, AIRLOCK_REDIS_URL), it starts its own
    /// redis-server: unix socket and AOF in DATA_DIR/redis, no TCP port, stopped on exit.
    Serve {
        /// The server's TOML config (see docs/OPERATIONS.md). Secrets may come from
        /// AIRLOCK_REDIS_URL instead of the file. Without it: the defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check this host and config: Docker engine (version, runtimes, limits really enforced),
    /// executor image, Redis, policy file, workspaces. Prints ✓/✗ per check with what to fix;
    /// exits 1 when something is broken.
    Doctor {
        /// The server's TOML config. Without it: the defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// An existing directory to mount, read-only, as the probe containers' workspace
        /// (the Docker daemon must see it at the same path: in the compose stack, the
        /// workspaces root). Nothing is written to it. Default: a new directory in TMPDIR.
        #[arg(long)]
        probe_dir: Option<PathBuf>,
    },
    /// Administration helpers.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Validate admin policy files, explain their decisions, print their JSON Schema.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Build and inspect the executor image.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Run tool calls in the sandbox directly, without a server.
    #[command(subcommand)]
    Sandbox(SandboxCmd),
    /// Measure Airlock's latency against plain Docker.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Chat with the agent in a session: streamed answers, each proposed call's diff or
    /// command with approve / deny, live output. Token: AIRLOCK_TOKEN or ~/.config/airlock/token.
    Chat(airlock::client::ChatArgs),
    /// Your sessions on a server (for scripts).
    #[command(subcommand)]
    Sessions(airlock::client::SessionsCmd),
    /// Tool calls on a server: list those waiting for approval, approve or deny one.
    #[command(subcommand)]
    Calls(airlock::client::CallsCmd),
    /// The server's audit log (admins).
    #[command(subcommand)]
    Audit(airlock::client::AuditCmd),
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build the executor image offline through the Docker API and print its ID.
    ///
    /// The context is made here: the Dockerfile (embedded from executor-image/), the static
    /// executor binary and, for the default `scratch` base, a static busybox for `run_shell`.
    Build {
        /// The static executor binary.
        #[arg(long, default_value_os_t = image::default_executor_path())]
        executor: PathBuf,
        /// A static busybox (Debian: apt-get install busybox-static).
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// Base image. `scratch` needs no registry; another base (e.g. a Debian image with git
        /// and python) gives richer tool containers where a registry exists.
        #[arg(long, default_value = "scratch")]
        base: String,
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Make a new random bearer token for a user: prints the token once (give it to the user)
    /// and the `token_sha256` line for the policy file (only the hash is stored).
    Token {
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a policy file and run its [[test]] cases. Every problem is printed as
    /// FILE:LINE:COLUMN: message; exits 1 when there is any.
    Check {
        /// The policy file (TOML, see docs/POLICY.md).
        file: PathBuf,
    },
    /// Show the decision a policy reaches for one call, and the rule behind it.
    ///
    /// Example: airlock policy explain --policy policies/team.toml --user dana run_shell '{"command":"ls; curl x"}'
    Explain {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// The user making the call. Default: a user with no groups and no overrides.
        #[arg(long)]
        user: Option<String>,
        /// read_file, list_dir, search, write_file, edit_file or run_shell.
        tool: String,
        /// The tool's arguments as JSON, e.g. '{"path":".env"}'.
        args: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of policy files (policies/policy.schema.json is this output).
    Schema,
}

#[derive(Subcommand)]
enum SandboxCmd {
    /// Run one tool call in a fresh container and print its events as JSON lines.
    ///
    /// Example: airlock sandbox run --workspace ./ws read_file '{"path":"README.md"}'
    ///
    /// Exits 0 when the tool succeeded, 1 when it reported an error, 2 when the container
    /// was killed (timeout, output cap, out of memory).
    Run(Box<RunArgs>),
    /// Remove containers a previous run left behind (after a crash).
    Reap {
        #[arg(long, default_value = "default")]
        instance: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The workspace directory mounted at /workspace.
    #[arg(long)]
    workspace: PathBuf,
    /// read_file, list_dir, search, write_file, edit_file or run_shell.
    tool: String,
    /// The tool's arguments as JSON, e.g. '{"path":"a.txt"}'.
    args: String,
    /// Mount the workspace read-write and apply changes (write_file/edit_file otherwise
    /// only preview their diff; run_shell gets a read-only workspace).
    #[arg(long)]
    write: bool,
    /// With --write: apply only if the file still has this sha256 (from a preview; `absent`
    /// for a file that must not exist yet).
    #[arg(long)]
    expected_sha256: Option<String>,
    /// Protected path: GLOB (unreadable) or GLOB:read-only. Repeatable.
    #[arg(long = "protect", value_name = "GLOB[:read-only]")]
    protect: Vec<String>,
    #[arg(long, default_value = image::DEFAULT_TAG)]
    image: String,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Args)]
struct LimitArgs {
    /// OCI runtime: runc or runsc (gVisor).
    #[arg(long)]
    runtime: Option<Runtime>,
    /// Memory limit in MiB (swap is disabled).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// CPU quota in CPUs.
    #[arg(long)]
    cpus: Option<f64>,
    /// Maximum processes.
    #[arg(long)]
    pids: Option<u32>,
    /// Wall-clock deadline in seconds.
    #[arg(long)]
    timeout_secs: Option<u64>,
    /// Output cap in bytes.
    #[arg(long)]
    output_bytes: Option<u64>,
    /// Size of /tmp in MiB.
    #[arg(long)]
    tmpfs_mib: Option<u64>,
    /// Largest file a tool may write, in MiB.
    #[arg(long)]
    fsize_mib: Option<u64>,
    /// uid:gid to run as. Default: the workspace's owner, or 65532:65532 when root owns it.
    #[arg(long)]
    user: Option<String>,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time read_file through the sandbox against `docker run --rm` with the same flags.
    Sandbox {
        /// Iterations (each runs all three paths, interleaved).
        #[arg(short, long, default_value_t = 20)]
        n: usize,
        #[arg(long, default_value = image::DEFAULT_TAG)]
        image: String,
        #[arg(long)]
        runtime: Option<Runtime>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up logging once its config (which may choose the format) is loaded.
    if !matches!(cli.command, Command::Serve { .. }) {
        airlock::logging::init(cli.log_format.unwrap_or_default(), "warn");
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if airlock::logging::is_json() {
                tracing::error!(error = %format!("{e:#}"), "airlock stopped with an error");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let mut config = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    // So that a JSON log asked for on the command line reports this as JSON.
                    airlock::logging::init(cli.log_format.unwrap_or_default(), "info");
                    return Err(e);
                }
            };
            airlock::logging::init(cli.log_format.unwrap_or(config.log_format), "info");
            // Plain lines for people in text mode; in JSON mode only JSON reaches stderr.
            let say = |line: String| {
                if airlock::logging::is_json() {
                    tracing::info!("{line}");
                } else {
                    eprintln!("{line}");
                }
            };
            if cli.docker.is_some() {
                config.docker.endpoint = cli.docker;
            }
            // No Redis URL: our own redis-server, started here on the main thread (so that
            // PR_SET_PDEATHSIG ties it to this process) and stopped when `_redis` drops, after
            // the server has drained.
            let _redis = match &config.redis.url {
                Some(_) => None,
                None => {
                    let r = airlock::embedded_redis::EmbeddedRedis::start(
                        &config.data_dir,
                        "redis-server",
                    )?;
                    say(format!(
                        "airlock: started redis-server (pid {}) on {} with its AOF in {}",
                        r.pid().unwrap_or_default(),
                        r.socket().display(),
                        r.dir().display()
                    ));
                    config.redis.url = Some(r.url());
                    Some(r)
                }
            };
            let engine = airlock::server::build(&config).await?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            say(format!(
                "airlock listening on http://{}",
                listener.local_addr()?
            ));
            airlock::server::run(config, engine, listener, airlock::server::shutdown_signal())
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { config, probe_dir } => {
            let loaded = load_config(config.as_deref());
            let mut report = airlock::doctor::Report::new();
            let config = match loaded {
                Ok(mut c) => {
                    report.ok(
                        airlock::doctor::CONFIG,
                        match &config {
                            Some(p) => format!("{} loads", p.display()),
                            None => "no --config: the defaults".to_string(),
                        },
                    );
                    if cli.docker.is_some() {
                        c.docker.endpoint = cli.docker;
                    }
                    Some(c)
                }
                Err(e) => {
                    report.fail(
                        airlock::doctor::CONFIG,
                        format!("{e:#}"),
                        "fix the file (every key is in docs/OPERATIONS.md)",
                    );
                    None
                }
            };
            if let Some(c) = &config {
                airlock::doctor::check(&mut report, c, probe_dir.as_deref()).await;
            }
            print!("{}", report.render());
            Ok(if report.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Admin(AdminCmd::Token { user }) => {
            let token = airlock::auth::new_token();
            eprintln!("Token for `{user}` (shown once; only its hash is stored):");
            println!("{token}");
            eprintln!("\nAdd to the policy file's entry for this user:");
            eprintln!(
                "token_sha256 = \"{}\"",
                airlock::policy::token_sha256(&token)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(cmd) => policy_cmd(cmd),
        Command::Image(ImageCmd::Build {
            executor,
            busybox,
            base,
            tag,
        }) => {
            let docker = connect_docker(cli.docker.as_deref()).await?;
            let opts = BuildOptions {
                executor,
                busybox,
                base,
                tag: tag.clone(),
            };
            let id = image::build_image(&docker, &opts, |line| eprintln!("  {line}")).await?;
            eprintln!("built {tag}");
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sandbox(SandboxCmd::Run(args)) => sandbox_run(cli.docker, *args).await,
        Command::Sandbox(SandboxCmd::Reap { instance }) => {
            let sandbox = Sandbox::new(&SandboxConfig {
                docker_endpoint: cli.docker,
                instance,
                ..SandboxConfig::default()
            })
            .await?;
            let n = sandbox.reap().await?;
            println!("removed {n} leftover container(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Chat(args) => Ok(airlock::client::chat::run(args).await?),
        Command::Sessions(cmd) => Ok(airlock::client::sessions_cmd(cmd).await?),
        Command::Calls(cmd) => Ok(airlock::client::calls_cmd(cmd).await?),
        Command::Audit(cmd) => Ok(airlock::client::audit_cmd(cmd).await?),
        Command::Bench(BenchCmd::Sandbox { n, image, runtime }) => {
            let sandbox = Sandbox::new(&SandboxConfig {
                docker_endpoint: cli.docker,
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
    }
}

/// The config file, or the defaults (with the environment's overrides) without one.
fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<airlock::config::Config> {
    match path {
        Some(p) => Ok(airlock::config::Config::load(p)?),
        None => {
            let mut c = airlock::config::Config::default();
            c.apply_env();
            c.validate("(defaults)")?;
            Ok(c)
        }
    }
}

fn policy_cmd(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    use airlock::policy::Policy;
    match cmd {
        PolicyCmd::Schema => {
            print!("{}", airlock::policy::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Check { file } => match Policy::load(&file) {
            Ok(p) => {
                println!("{}: ok — {}", file.display(), p.summary());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                let n = e.diagnostics().len().max(1);
                eprintln!("{}: rejected ({n} problem(s))", file.display());
                Ok(ExitCode::from(1))
            }
        },
        PolicyCmd::Explain {
            policy,
            user,
            tool,
            args,
            json,
        } => {
            let p = Policy::load(&policy).map_err(|e| anyhow::anyhow!("{e}"))?;
            let args: serde_json::Value = serde_json::from_str(&args)
                .with_context(|| format!("the arguments are not valid JSON: {args}"))?;
            let call = ToolCall::from_parts(&tool, args).map_err(anyhow::Error::msg)?;
            let v = match &user {
                Some(name) => {
                    let u = p.user(name).with_context(|| {
                        let names: Vec<&str> = p.users().iter().map(|u| u.name.as_str()).collect();
                        format!(
                            "no user `{name}` in {}; users: {}",
                            policy.display(),
                            names.join(", ")
                        )
                    })?;
                    p.evaluate(u, &call)
                }
                None => airlock::policy::evaluate(p.defaults(), &call, &[]),
            };
            let rule = p.rule_info(&v.rule);
            let protected = match &user {
                Some(name) => p.user(name).map(|u| p.protected_for(u)).unwrap_or_default(),
                None => p.defaults().protected.clone(),
            };
            // The mount a call gets: what nobody approved cannot write.
            let workspace = match (&call, v.decision) {
                (_, airlock::calls::Decision::Deny) => "none (denied)",
                (ToolCall::RunShell(_), airlock::calls::Decision::Allow) if !v.write => {
                    "read-only (allowed without asking; an allow rule with `write = true` makes it writable)"
                }
                (ToolCall::RunShell(_), airlock::calls::Decision::Allow) => {
                    "writable (the allowing rule says `write = true`)"
                }
                (c, airlock::calls::Decision::Ask) if c.mutates() => "writable once approved",
                (c, _) if c.mutates() => "writable",
                _ => "read-only",
            };
            if json {
                let out = serde_json::json!({
                    "workspace": workspace,
                    "protected": protected,
                    "decision": v.decision,
                    "rule": v.rule,
                    "rule_line": rule.as_ref().map(|r| r.0),
                    "rule_summary": rule.as_ref().map(|r| &r.1),
                    "reason": v.reason,
                    "details": v.details,
                    "policy_sha256": p.sha256,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("decision: {}", v.decision.as_str());
            match rule {
                Some((line, summary)) => println!(
                    "rule:     {} ({}:{line}): {summary}",
                    v.rule,
                    policy.display()
                ),
                None => println!("rule:     {}", v.rule),
            }
            if let Some(r) = &v.reason {
                println!("reason:   {r}");
            }
            if !v.details.is_empty() {
                println!("how:");
                for d in &v.details {
                    println!("  {d}");
                }
            }
            println!("workspace: {workspace}");
            if !protected.is_empty() {
                println!("protected paths (the same for every tool, shell commands included):");
                for pp in &protected {
                    let how = match pp.protection {
                        airlock_executor::protocol::Protection::NoAccess => {
                            "no_access: refused by the file tools, and masked (empty, read-only) in every container"
                        }
                        airlock_executor::protocol::Protection::ReadOnly => {
                            "read_only: readable, never written (a read-only view in every writable container)"
                        }
                    };
                    println!("  {:<16} {how}", pp.glob);
                }
            }
            println!(
                "user:     {}",
                user.as_deref()
                    .unwrap_or("(none: a user with no groups or overrides)")
            );
            println!("policy:   {} (sha256 {})", policy.display(), p.sha256);
            Ok(ExitCode::SUCCESS)
        }
    }
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

async fn sandbox_run(docker: Option<String>, a: RunArgs) -> anyhow::Result<ExitCode> {
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
