//! Running Airlock for real: the quick start (`scripts/start.sh`, `airlock serve` with its own
//! embedded redis-server), `airlock doctor` on a healthy and on a broken setup, and the compose
//! deployment (compose/) brought up on this machine from locally built base images.
//!
//! Everything here runs the `airlock` binary as a child process against the real Docker engine
//! and a real `redis-server`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::server::{
    airlock_binary, wait_answering, wait_exit, Api, Fixture, ServerOptions, ServerProcess,
};
use airlock_tests::wait_until_blocking;
use serde_json::json;

/// Generous bound for anything that runs a container.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
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
    let what = format!("{what}: no process with {needle} left");
    wait_until_blocking(&what, within, || match processes_with(needle) {
        left if left.is_empty() => Ok(()),
        left => Err(format!("still running: {left:?}")),
    })
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
        let within = Duration::from_secs(60);
        wait_answering(&self.api, "/readyz", &mut self.child, &self.log, within).await
    }

    /// Sends `sig` and waits (up to 60 s) for the process to exit; returns its status (on
    /// timeout, `Drop` kills it).
    async fn signal_and_wait(&mut self, sig: libc::c_int) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        let what = format!("the server exiting after signal {sig}");
        wait_exit(&mut self.child, &self.log, Duration::from_secs(60), &what).await
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
    let port = airlock_tests::free_port();
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
    let protocol = format!("executor protocol {}", airlock::protocol::PROTOCOL_VERSION);
    for want in [
        "reachable at",
        "runtimes:",
        "cgroup limits inside a sandbox container",
        "is OOM-killed",
        "cannot fork past its pids limit",
        protocol.as_str(),
        "answers: Redis",
        "warm pool:",
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

// ---- logs -----------------------------------------------------------------------------------

/// `airlock serve --log-format json`: every line is one JSON object; a request's lines carry its
/// request id (a proxy's `X-Request-Id` is kept) and the session or call its path names; no line
/// holds a token (good or bad, header or WebSocket subprotocol), file contents, a diff or an
/// argument — at debug level too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_session_and_call_ids_and_never_tokens_or_contents() {
    let fx = Fixture::new(ServerOptions::default()).await;
    let alice = fx.alice.token.clone();
    let marker = uuid_like();
    let secret = format!("file-secret-{marker}");
    let replacement = format!("new-secret-{marker}");
    fx.alice.workspace.write("notes.txt", format!("{secret}\n"));
    let mut p = ServerProcess::start_logging(
        &fx,
        1,
        &fx.config_path,
        fx.port,
        "info,airlock=debug",
        &["--log-format", "json"],
    )
    .await;
    let api = p.api.clone();
    let sid = api.session(&alice).await;

    // A read (allowed) returns the secret to the client; an edit (asked) carries it in its
    // preview and arguments; approving it runs it.
    let read = api
        .propose_ok(&alice, &sid, "read_file", json!({"path": "notes.txt"}))
        .await;
    assert!(read.to_string().contains(&secret), "{read:#}");
    let edit = api
        .propose_ok(
            &alice,
            &sid,
            "edit_file",
            json!({"path": "notes.txt", "edits": [{"old_string": secret, "new_string": replacement}]}),
        )
        .await;
    let cid = edit["id"].as_str().expect("call id").to_string();
    let sha = edit["args_sha256"].as_str().expect("hash").to_string();
    api.decide(&alice, &cid, "approve", &sha, None)
        .await
        .expect(200);
    let done = api
        .wait_status(&alice, &cid, &["succeeded", "failed"], CALL_TIMEOUT)
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");

    // A proxy's request id is kept; a wrong token is refused (and must not be logged either).
    let request_id = format!("proxy-{marker}");
    let r = api
        .http
        .get(api.url(&format!("/v1/sessions/{sid}")))
        .bearer_auth(&alice)
        .header("X-Request-Id", &request_id)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(request_id.as_str())
    );
    let bad_token = format!("al_wrong{marker}");
    let r = api
        .http
        .get(api.url("/v1/sessions"))
        .bearer_auth(&bad_token)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);
    // The WebSocket carries the token as a subprotocol.
    let ws_url = api.ws_url(&format!("/v1/sessions/{sid}/events"));
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)
            .expect("ws request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("airlock.v1, airlock.token.{alice}")
            .parse()
            .expect("header"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the event stream opens");
    drop(ws);
    p.terminate().await;

    let log = p.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}\n{log}"))
        })
        .collect();
    assert!(lines.len() >= 8, "{log}");
    for forbidden in [
        alice.as_str(),
        bad_token.as_str(),
        secret.as_str(),
        replacement.as_str(),
    ] {
        assert!(
            !log.contains(forbidden),
            "the log contains a token or file contents ({forbidden}):\n{log}"
        );
    }
    let span = |l: &serde_json::Value, k: &str| l["span"][k].as_str().map(str::to_string);
    assert!(
        lines.iter().any(
            |l| span(l, "request_id").as_deref() == Some(request_id.as_str())
                && span(l, "session_id").as_deref() == Some(sid.as_str())
                && l["status"] == 200
        ),
        "no request line with the proxy's request id and the session id:\n{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| span(l, "call_id").as_deref() == Some(cid.as_str())
                && span(l, "request_id").is_some_and(|r| r.len() >= 32)),
        "no line of the decision request names the call and a generated request id:\n{log}"
    );
    assert!(
        lines.iter().any(|l| l["status"] == 401),
        "the refused request is logged (without its token):\n{log}"
    );
    for l in &lines {
        for k in ["timestamp", "level", "target"] {
            assert!(l.get(k).is_some(), "a line without `{k}`: {l}");
        }
    }

    // A server that cannot start says why in JSON too (here: a config with an unknown key).
    let bad = fx.dir().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:1\"\nlisten_port = 3\n").expect("bad config");
    let out = Command::new(airlock_binary())
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&bad)
        .stdin(Stdio::null())
        .output()
        .expect("run airlock serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stderr}"))
        })
        .collect();
    assert!(
        errors.iter().any(|l| l["level"] == "ERROR"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains("listen_port"))),
        "{stderr}"
    );
}

/// A fresh string that appears nowhere else.
fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

// ---- the compose deployment -----------------------------------------------------------------

/// Runs a command in its own process group; kills the group if it outlives `limit`. Output goes
/// to `log` (appended). Panics with the log's end when it fails.
fn run_bounded(cmd: &mut Command, limit: Duration, log: &Path, what: &str) {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    // Not `wait_until`: on timeout it kills the process group before it panics.
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on the process group we created.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "{what}: still running after {limit:?}; the end of {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "{what}: {status}; the end of {}:\n{}",
        log.display(),
        log_tail(log)
    );
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// One compose project on this machine, taken down (with its volumes) when dropped.
struct ComposeProject {
    dir: tempfile::TempDir,
    env_file: PathBuf,
    vars: Vec<(String, String)>,
    instance: String,
    executor_tag: String,
    log: PathBuf,
}

impl ComposeProject {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(repo_root().join("compose"));
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c.env("AIRLOCK_COMPOSE_ENV", &self.env_file);
        c
    }

    /// `bash compose/SCRIPT ARGS…` with this project's settings, bounded by `limit`.
    fn script(&self, args: &[&str], limit: Duration) {
        let mut c = self.command("bash");
        c.args(args);
        run_bounded(&mut c, limit, &self.log, &format!("compose/{}", args[0]));
    }

    /// `docker-compose` for this project: the base file, and with `proxy` the socket-proxy
    /// variant on top.
    fn compose(&self, proxy: bool) -> Command {
        let mut c = self.command("docker-compose");
        c.arg("--env-file").arg(&self.env_file);
        c.args(["-f", "docker-compose.yml"]);
        if proxy {
            c.args(["-f", "docker-compose.socket-proxy.yml"]);
        }
        c
    }

    /// `up -d`, bounded.
    fn up(&self, proxy: bool) {
        let mut up = self.compose(proxy);
        up.args(["up", "-d"]);
        run_bounded(
            &mut up,
            Duration::from_secs(300),
            &self.log,
            "docker-compose up",
        );
    }

    /// Waits (up to 180 s) for `/readyz` on the published port.
    async fn wait_ready(&self, api: &Api, proxy: bool) {
        // Not `wait_until`: the stack's logs (a slow `docker-compose logs`) are fetched only on
        // timeout, and a stack that takes minutes to come up is polled every 500 ms.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let ready = api
                .http
                .get(api.url("/readyz"))
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return;
            }
            if Instant::now() > deadline {
                let logs = self
                    .compose(proxy)
                    .args(["logs", "--tail", "40"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                panic!("the compose stack was not ready within 180 s:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Runs a command in a service's container; returns (success, stdout + stderr).
    fn exec(&self, proxy: bool, service: &str, args: &[&str]) -> (bool, String) {
        let out = self
            .compose(proxy)
            .args(["exec", "-T", service])
            .args(args)
            .output()
            .expect("docker-compose exec");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let mut down = self.compose(true);
        down.args(["down", "-v", "--remove-orphans", "--timeout", "30"]);
        let _ = down.stdout(Stdio::null()).stderr(Stdio::null()).status();
        airlock_tests::remove_labelled(&self.instance);
        let _ = Command::new("docker")
            .args(["rmi", &self.executor_tag])
            .output();
        let _ = &self.dir;
    }
}

/// The compose stack, built on this machine from locally made base images (no registry):
/// init.sh (Redis password, policy with a first admin, workspaces), build.sh, `up`, one approved
/// tool call over HTTP on the published port, `airlock doctor` inside the orchestrator
/// container, then `down -v`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_stack_builds_offline_and_runs_an_approved_call() {
    let _slot = airlock_tests::docker_slot().await;
    let dir = tempfile::Builder::new()
        .prefix("airlock-compose-")
        .tempdir()
        .expect("tempdir");
    // The daemon resolves bind mounts on the host: the temp dir must be traversable.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let pid = std::process::id();
    let port = airlock_tests::free_port();
    let instance = format!("compose-test-{pid}");
    let executor_tag = format!("airlock-executor:compose-test-{pid}");
    let workspaces = dir.path().join("workspaces");
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let vars: Vec<(String, String)> = [
        ("COMPOSE_PROJECT_NAME", format!("airlocktest{pid}")),
        ("AIRLOCK_WORKSPACES", workspaces.display().to_string()),
        ("AIRLOCK_PORT", port.to_string()),
        ("AIRLOCK_IMAGE", "airlock-compose-test:latest".into()),
        (
            "AIRLOCK_REDIS_IMAGE",
            "airlock-compose-test-redis:latest".into(),
        ),
        ("AIRLOCK_EXECUTOR_IMAGE", executor_tag.clone()),
        ("BUILDER_IMAGE", "airlock-local/builder:latest".into()),
        ("RUNTIME_IMAGE", "airlock-local/runtime:latest".into()),
        ("REDIS_IMAGE", "airlock-local/redis:latest".into()),
        ("AIRLOCK_CONFIG_DIR", config_dir.display().to_string()),
        (
            "AIRLOCK_REDIS_PASSWORD_FILE",
            dir.path()
                .join("secrets/redis_password")
                .display()
                .to_string(),
        ),
        ("DOCKER_SOCKET", "/var/run/docker.sock".into()),
        ("AIRLOCK_BUILD_CPU_SHARES", "256".into()),
        ("HAPROXY_IMAGE", "airlock-local/haproxy:latest".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let env_file = dir.path().join("test.env");
    std::fs::write(
        &env_file,
        vars.iter()
            .filter(|(k, _)| k != "COMPOSE_PROJECT_NAME")
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect::<String>(),
    )
    .expect("env file");
    // The committed config, pointed at this run's executor image and container label.
    let config = std::fs::read_to_string(repo_root().join("compose/config/airlock.toml"))
        .expect("compose/config/airlock.toml");
    let config = airlock_tests::set_toml_keys(
        &config,
        &[
            ("image", format!("\"{executor_tag}\"")),
            ("instance", format!("\"{instance}\"")),
            ("allowed_origins", format!("[\"http://127.0.0.1:{port}\"]")),
        ],
    );
    std::fs::write(config_dir.join("airlock.toml"), config).expect("config");
    let log = dir.path().join("compose.log");
    let project = ComposeProject {
        env_file,
        vars,
        instance,
        executor_tag,
        log: log.clone(),
        dir,
    };

    // Offline bases from this host's files, then the images, then the files init.sh makes.
    let minutes = |m: u64| Duration::from_secs(m * 60);
    project.script(
        &["local-bases.sh", "builder", "runtime", "redis", "haproxy"],
        minutes(15),
    );
    project.script(&["build.sh"], minutes(45));
    project.script(&["init.sh"], minutes(5));
    let secrets = project.dir.path().join("secrets");
    let token = std::fs::read_to_string(secrets.join("admin-token"))
        .expect("init.sh keeps the admin token")
        .trim()
        .to_string();
    let pw_mode = std::fs::metadata(secrets.join("redis_password"))
        .expect("the Redis password")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&pw_mode) & 0o077,
        0,
        "the Redis password file is private"
    );

    // 1. The default stack: the orchestrator uses the Docker socket.
    project.up(false);
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    project.wait_ready(&api, false).await;

    // One approved call through the published port; the file lands in the host workspace.
    approved_write(
        &api,
        &token,
        "from-compose.txt",
        "written through compose\n",
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(workspaces.join("admin/from-compose.txt"))
            .ok()
            .as_deref(),
        Some("written through compose\n")
    );

    // Redis: no access without the ACL user's password (the default user is off).
    let (_, anonymous) = project.exec(false, "redis", &["redis-cli", "ping"]);
    assert!(
        !anonymous.contains("PONG"),
        "Redis answers without a password: {anonymous}"
    );

    // airlock doctor inside the orchestrator container: everything healthy, AOF on.
    let ws = workspaces.display().to_string();
    let doctor = [
        "airlock",
        "doctor",
        "--config",
        "/etc/airlock/airlock.toml",
        "--probe-dir",
        ws.as_str(),
    ];
    let (ok, report) = project.exec(false, "airlock", &doctor);
    assert!(ok, "doctor in the compose stack:\n{report}");
    assert!(report.contains("persistence: AOF is on"), "{report}");

    // 2. The socket-proxy variant: same data (the volumes stay), no socket in the orchestrator.
    let mut stop = project.compose(false);
    stop.args(["down", "--timeout", "30"]);
    run_bounded(
        &mut stop,
        Duration::from_secs(120),
        &log,
        "docker-compose down",
    );
    project.up(true);
    project.wait_ready(&api, true).await;
    approved_write(
        &api,
        &token,
        "via-proxy.txt",
        "written through the socket proxy\n",
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(workspaces.join("admin/via-proxy.txt"))
            .ok()
            .as_deref(),
        Some("written through the socket proxy\n")
    );
    let busybox = "/usr/local/lib/airlock/busybox";
    let (has_socket, _) = project.exec(
        true,
        "airlock",
        &[busybox, "test", "-S", "/var/run/docker.sock"],
    );
    assert!(!has_socket, "the orchestrator still has the Docker socket");
    let fetch = |path: &str| {
        project.exec(
            true,
            "airlock",
            &[
                busybox,
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://docker-proxy:2375{path}"),
            ],
        )
    };
    let (ok, version) = fetch("/v1.41/version");
    assert!(ok && version.contains("ApiVersion"), "{version}");
    for refused in [
        "/v1.41/volumes",
        "/v1.41/networks",
        "/v1.41/containers/x/export",
        "/v1.41/plugins",
    ] {
        let (ok, out) = fetch(refused);
        assert!(
            !ok && out.contains("403"),
            "the proxy let {refused} through: {out}"
        );
    }
    let (ok, report) = project.exec(true, "airlock", &doctor);
    assert!(ok, "doctor through the socket proxy:\n{report}");

    drop(project);
}
