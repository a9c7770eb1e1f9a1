//! Running Airlock for real: the quick start (`scripts/start.sh`, `airlock serve` with its own
//! embedded redis-server), `airlock doctor` on a healthy and on a broken setup, and the compose
//! deployment (compose/) brought up on this machine from locally built base images.
//!
//! Everything here runs the `airlock` binary as a child process against the real Docker engine
//! and a real `redis-server`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::server::{airlock_binary, Api, Fixture, ServerOptions};
use serde_json::json;

/// Generous bound for anything that runs a container.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Pids of live processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // A zombie has an empty command line; it is not running anything.
        if cmd.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The parent pid of `pid` (from /proc/PID/stat).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …: comm may contain spaces, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Waits (bounded) until no process has `needle` in its command line.
fn wait_gone(needle: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_with(needle);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: processes still running after {within:?}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (and its containers reaped) if the test fails before it ends.
struct Server {
    child: Option<Child>,
    log: PathBuf,
    instance: String,
    api: Api,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 60 s) for `/readyz` to answer 200.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the server exited with {status} before it was ready; its output:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = self
                .api
                .http
                .get(self.api.url("/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the server was not ready within 60 s; its output:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `sig` and waits (up to 60 s) for the process to exit; returns its status.
    async fn signal_and_wait(&mut self, sig: libc::c_int) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "the server did not exit within 60 s of signal {sig}; its output:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        airlock_tests::remove_labelled(&self.instance);
    }
}

/// `bash scripts/start.sh` as the quick start runs it, minus installing and building (the
/// test suite has built the binary and the image already).
fn start_script(data: &Path, port: u16, instance: &str, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    Command::new("bash")
        .arg(repo_root().join("scripts/start.sh"))
        .env("AIRLOCK_SKIP_BUILD", "1")
        .env("AIRLOCK_BIN", airlock_binary())
        .env("AIRLOCK_DATA_DIR", data)
        .env("AIRLOCK_LISTEN", format!("127.0.0.1:{port}"))
        .env("AIRLOCK_INSTANCE", instance)
        .env("AIRLOCK_LOG", "info")
        .env_remove("AIRLOCK_REDIS_URL")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn bash scripts/start.sh")
}

/// The admin token the start script printed.
fn printed_token(log: &str) -> String {
    log.lines()
        .find_map(|l| l.trim().strip_prefix("admin token:"))
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|t| t.len() > 20)
        .unwrap_or_else(|| panic!("the start script printed no admin token:\n{log}"))
        .to_string()
}

/// Proposes a write, approves it, waits for it to succeed; returns the session id.
async fn approved_write(api: &Api, token: &str, file: &str, content: &str) -> String {
    let sid = api.session(token).await;
    let call = api
        .propose_ok(
            token,
            &sid,
            "write_file",
            json!({"path": file, "content": content}),
        )
        .await;
    assert_eq!(call["status"], "awaiting_approval", "{call:#}");
    let cid = call["id"].as_str().expect("call id").to_string();
    let sha = call["args_sha256"]
        .as_str()
        .expect("args_sha256")
        .to_string();
    api.decide(token, &cid, "approve", &sha, None)
        .await
        .expect(200);
    let done = api
        .wait_status(
            token,
            &cid,
            &["succeeded", "failed", "timed_out", "cancelled"],
            CALL_TIMEOUT,
        )
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    sid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_runs_an_approved_call_with_embedded_redis_that_dies_with_the_server() {
    let _slot = airlock_tests::docker_slot().await;
    let tmp = tempfile::Builder::new()
        .prefix("airlock-quick-")
        .tempdir()
        .expect("tempdir");
    let data = tmp.path().join("data");
    let port = free_port();
    let instance = airlock_tests::next_instance("quick");
    let log = tmp.path().join("start-1.log");
    let mut server = Server {
        child: Some(start_script(&data, port, &instance, &log)),
        log: log.clone(),
        instance: instance.clone(),
        api: Api::new(format!("http://127.0.0.1:{port}")),
    };
    server.wait_ready().await;
    let output = server.log();

    // First run: the data dir has a config, a policy with the admin, a workspace not owned by
    // root, and the token printed is one the policy accepts.
    let token = printed_token(&output);
    assert!(
        output.contains(&format!("http://127.0.0.1:{port}/")),
        "no web UI URL printed:\n{output}"
    );
    let policy = std::fs::read_to_string(data.join("policy.toml")).expect("policy.toml");
    assert!(policy.contains(&format!(
        "token_sha256 = \"{}\"",
        airlock::policy::token_sha256(&token)
    )));
    let ws = data.join("workspaces/admin");
    let meta = std::fs::metadata(&ws).expect("the admin's workspace");
    assert_ne!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        0,
        "the workspace must not be root's"
    );
    assert!(
        airlock::doctor::check_workspace(
            &ws,
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta)
        )
        .is_ok(),
        "doctor would reject the workspace start.sh made"
    );

    // The embedded Redis: a child of the server, on a unix socket in the data dir, no TCP.
    let socket = data.join("redis/redis.sock");
    let needle = socket.display().to_string();
    let redis = processes_with(&needle);
    assert_eq!(redis.len(), 1, "one redis-server for {needle}: {redis:?}");
    assert_eq!(
        parent_of(redis[0]),
        Some(server.pid()),
        "redis-server is the server's child"
    );
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let inode_of_socket = |pid: u32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .map(|l| l.display().to_string())
                    .filter_map(|l| {
                        l.strip_prefix("socket:[")
                            .map(|s| s.trim_end_matches(']').to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for inode in inode_of_socket(redis[0]) {
        let listening_tcp = tcp.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[3] == "0A" && f[9] == inode
        });
        assert!(!listening_tcp, "the embedded redis-server listens on TCP");
    }
    assert!(data.join("redis/appendonlydir").is_dir(), "AOF is on");

    // One approved tool call through the API.
    let api = server.api.clone();
    let sid = approved_write(&api, &token, "hello.txt", "hello from the quick start\n").await;
    assert_eq!(
        std::fs::read_to_string(ws.join("hello.txt"))
            .ok()
            .as_deref(),
        Some("hello from the quick start\n")
    );

    // SIGTERM: the server drains, stops its Redis, exits 0.
    let status = server.signal_and_wait(libc::SIGTERM).await;
    assert!(
        status.success(),
        "exit {status} after SIGTERM:\n{}",
        server.log()
    );
    wait_gone(&needle, Duration::from_secs(5), "after SIGTERM");
    assert!(!socket.exists(), "redis removed its socket on shutdown");

    // Second run: not a first run (same token, same policy), and the data survived.
    let log2 = tmp.path().join("start-2.log");
    server.child = Some(start_script(&data, port, &instance, &log2));
    server.log = log2;
    server.wait_ready().await;
    let output = server.log();
    assert!(!output.contains("first run"), "{output}");
    assert_eq!(printed_token(&output), token);
    let history = api.history(&token, &sid).await;
    assert!(
        history
            .iter()
            .any(|e| e["type"] == "call_finished" && e["data"]["status"] == "succeeded"),
        "the first run's history survived the restart: {history:#?}"
    );

    // kill -9: the kernel stops the embedded Redis too (PR_SET_PDEATHSIG).
    let redis = processes_with(&needle);
    assert_eq!(redis.len(), 1, "{redis:?}");
    let _ = server.signal_and_wait(libc::SIGKILL).await;
    wait_gone(
        &needle,
        Duration::from_secs(10),
        "after kill -9 of the server",
    );
}

#[tokio::test]
async fn serve_without_redis_server_installed_says_how_to_install_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("airlock.toml");
    std::fs::write(&config, "data_dir = \"data\"\n").expect("config");
    let out = Command::new(airlock_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .env("PATH", tmp.path())
        .env_remove("AIRLOCK_REDIS_URL")
        .output()
        .expect("run airlock serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("redis-server") && err.contains("apt-get install redis-server"),
        "{err}"
    );
}

#[tokio::test]
async fn image_build_without_busybox_says_how_to_install_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = repo_root().join(airlock::sandbox::image::default_executor_path());
    let out = Command::new(airlock_binary())
        .args(["image", "build", "--tag", "airlock-test-never-built:x"])
        .arg("--executor")
        .arg(&exe)
        .arg("--busybox")
        .arg(tmp.path().join("busybox"))
        .output()
        .expect("run airlock image build");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("apt-get install busybox-static"), "{err}");
}

// ---- airlock doctor -------------------------------------------------------------------------

fn doctor(config: &Path) -> (Output, String) {
    let out = Command::new(airlock_binary())
        .args(["doctor", "--config"])
        .arg(config)
        .env_remove("AIRLOCK_REDIS_URL")
        .output()
        .expect("run airlock doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// The report's lines marked `mark` (✓, !, ✗).
fn marked<'a>(report: &'a str, mark: &str) -> Vec<&'a str> {
    report
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(mark))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_healthy_setup() {
    let fx = Fixture::new(ServerOptions {
        persistent_redis: true,
        ..ServerOptions::default()
    })
    .await;
    let (out, report) = doctor(&fx.config_path);
    assert!(out.status.success(), "doctor failed:\n{report}");
    assert!(marked(&report, "✗").is_empty(), "{report}");
    for want in [
        "reachable at",
        "runtimes:",
        "cgroup limits inside a sandbox container",
        "is OOM-killed",
        "cannot fork past its pids limit",
        "executor protocol 1",
        "answers: Redis",
        "persistence: AOF is on",
        "alice: ",
        "bob: ",
    ] {
        assert!(
            marked(&report, "✓").iter().any(|l| l.contains(want)),
            "no ✓ line with `{want}`:\n{report}"
        );
    }
    assert!(
        fx.containers(None).await.is_empty(),
        "doctor's probes use their own instance label"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_stopped_redis_a_missing_image_and_a_root_owned_workspace() {
    let mut fx = Fixture::new(ServerOptions::default()).await;
    let redis_url = fx.redis.url();
    fx.redis.stop();
    let missing = format!("airlock-executor:missing-{}", std::process::id());
    let config = fx.dir().join("broken.toml");
    let text = std::fs::read_to_string(&fx.config_path).expect("config");
    std::fs::write(
        &config,
        format!("{text}\n[docker]\nimage = \"{missing}\"\n"),
    )
    .expect("config");
    // bob's workspace handed to root.
    std::os::unix::fs::chown(fx.bob.workspace.root(), Some(0), Some(0)).expect("chown");

    let (out, report) = doctor(&config);
    assert_eq!(out.status.code(), Some(1), "doctor must fail:\n{report}");
    let fails = marked(&report, "✗");
    let has = |needle: &str| fails.iter().any(|l| l.contains(needle));
    assert!(
        has(&format!("{missing} not found")),
        "no ✗ for the image:\n{report}"
    );
    assert!(
        has(&format!("{redis_url} is unreachable")),
        "no ✗ for Redis:\n{report}"
    );
    assert!(
        has("bob: ") && has("owned by root"),
        "no ✗ for bob's workspace:\n{report}"
    );
    assert!(
        !fails.iter().any(|l| l.contains("alice")),
        "alice's workspace is fine:\n{report}"
    );
    // Every ✗ says what to do.
    let lines: Vec<&str> = report.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.trim_start().starts_with('✗') {
            let next = lines[i + 1..]
                .iter()
                .find(|n| n.trim_start().starts_with("fix:"));
            assert!(next.is_some(), "no fix after `{l}`:\n{report}");
        }
    }
    assert!(report.contains("build-image.sh"), "{report}");
    assert!(
        report.contains("not probed: the executor image is missing"),
        "{report}"
    );
}
