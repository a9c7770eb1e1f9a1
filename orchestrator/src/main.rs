//! The `airlock` command line: build the executor image, run one sandboxed tool call, benchmark.

use std::path::PathBuf;
use std::process::ExitCode;

use airlock::sandbox::image;
use airlock::sandbox::Runtime;
use clap::{Args, Parser, Subcommand};

mod cli;

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
    /// Tool calls on a server: list those waiting for approval, approve or deny one, revert an
    /// applied one.
    #[command(subcommand)]
    Calls(airlock::client::CallsCmd),
    /// The audit log: tail it through the API (admins), verify its hash chain, export it.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// An MCP server on stdio for agent hosts that spawn local servers (Claude Code, Codex):
    /// each message goes to the server's /mcp endpoint, where every tool call passes the
    /// policy, the preview and the approval like any other. Token: AIRLOCK_TOKEN or
    /// ~/.config/airlock/token. Example: `claude mcp add airlock -- airlock mcp --server URL`.
    Mcp(airlock::client::mcp::McpArgs),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// The newest audit entries through the API (admins only); --follow keeps printing new ones.
    Tail(airlock::client::AuditTailArgs),
    /// Recompute the audit hash chain from Redis and report the first entry that was changed,
    /// removed or reordered. Exits 1 when the chain does not verify.
    Verify(cli::audit::VerifyArgs),
    /// Write the audit entries (with their chain fields) for a SIEM, oldest first.
    Export(cli::audit::ExportArgs),
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
        /// `minimal` (busybox) or `dev`: a toolchain from this host's Debian packages — git,
        /// python3 with pip, venv and pytest, bash, coreutils, findutils, grep, sed, diff,
        /// make, gcc, curl (apt-get install them first; the error names what is missing).
        /// Name the image in the policy (`image = "airlock-executor:dev"`) for whoever
        /// needs it. An image with the same inputs (executor, packages and their versions)
        /// is kept, not rebuilt.
        #[arg(long, value_enum, default_value_t = image::ImageProfile::Minimal)]
        profile: image::ImageProfile,
        /// Default: airlock-executor:latest, or airlock-executor:dev with `--profile dev`.
        #[arg(long)]
        tag: Option<String>,
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
        Command::Serve { config } => cli::serve::serve(config, cli.docker, cli.log_format).await,
        Command::Doctor { config, probe_dir } => {
            cli::serve::doctor(config, probe_dir, cli.docker).await
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
        Command::Policy(cmd) => cli::policy::policy_cmd(cmd),
        Command::Image(ImageCmd::Build {
            executor,
            busybox,
            base,
            profile,
            tag,
        }) => {
            let tag = tag.unwrap_or_else(|| {
                match profile {
                    image::ImageProfile::Minimal => image::DEFAULT_TAG,
                    image::ImageProfile::Dev => image::DEV_TAG,
                }
                .to_string()
            });
            cli::sandbox::image_build(cli.docker, executor, busybox, base, profile, tag).await
        }
        Command::Sandbox(SandboxCmd::Run(args)) => {
            cli::sandbox::sandbox_run(cli.docker, *args).await
        }
        Command::Sandbox(SandboxCmd::Reap { instance }) => {
            cli::sandbox::reap(cli.docker, instance).await
        }
        Command::Chat(args) => Ok(airlock::client::chat::run(args).await?),
        Command::Sessions(cmd) => Ok(airlock::client::sessions_cmd(cmd).await?),
        Command::Calls(cmd) => Ok(airlock::client::calls_cmd(cmd).await?),
        Command::Mcp(args) => {
            airlock::client::mcp::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCmd::Tail(args)) => Ok(airlock::client::audit_tail(args).await?),
        Command::Audit(AuditCmd::Verify(args)) => cli::audit::verify(args).await,
        Command::Audit(AuditCmd::Export(args)) => cli::audit::export(args).await,
        Command::Bench(BenchCmd::Sandbox { n, image, runtime }) => {
            cli::sandbox::bench(cli.docker, n, image, runtime).await
        }
    }
}
