//! A real Airlock server for one test: its own `redis-server`, a temporary directory with a
//! policy file (users `alice`, `bob` and the admin `root-admin`, each with a workspace and a
//! known token) and a config file, a unique instance label for its containers, and one of the
//! suite's Docker slots.
//!
//! Two ways to run it:
//! - [`TestServer`]: in this process (`airlock::server::build` + `run` on `127.0.0.1:0`),
//!   stopped gracefully with [`TestServer::finish`];
//! - [`ServerProcess`]: the `airlock serve` binary as a child process, for `kill -9` tests.
//!
//! Both assert at the end that no container with the instance label is left.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use airlock::engine::Engine;
use airlock::sandbox::profile::{LABEL_CALL, LABEL_INSTANCE, LABEL_MANAGED};
use airlock::server::ServerError;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use serde_json::Value;
use tokio::sync::{oneshot, SemaphorePermit};
use tokio::task::JoinHandle;

use crate::redis_server::RedisServer;
use crate::Workspace;

/// The Origin the test servers allow for browser WebSockets.
pub const ALLOWED_ORIGIN: &str = "http://allowed.example";

/// How to set up a test server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `limits.approval_ttl_secs`.
    pub approval_ttl_secs: u64,
    /// `limits.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `limits.max_args_bytes`.
    pub max_args_bytes: usize,
    /// `limits.max_streams_per_user`.
    pub max_streams_per_user: usize,
    /// Redis keeps its data across `stop()`/`restart()` (AOF).
    pub persistent_redis: bool,
    /// The policy's decision per tool (`[defaults.tools]`).
    pub tools: Vec<(&'static str, &'static str)>,
    /// A whole policy to use instead of `tools` (e.g. policies/default.toml); the users are
    /// appended to it.
    pub base_policy: Option<String>,
    /// `limits.max_containers`.
    pub max_containers: usize,
    /// `[pool]` per_key and max_idle; `(0, 0)` (the default): no warm pool, so the tests that
    /// count containers see only the calls' own.
    pub pool: (usize, usize),
    /// `[undo]` retention_secs, max_call_bytes, max_user_bytes (`None`: the defaults).
    pub undo: Option<(u64, u64, u64)>,
}

/// read_file / list_dir allowed, search denied by policy, the rest asks.
pub const DEFAULT_TOOLS: [(&str, &str); 6] = [
    ("read_file", "allow"),
    ("list_dir", "allow"),
    ("search", "deny"),
    ("write_file", "ask"),
    ("edit_file", "ask"),
    ("run_shell", "ask"),
];

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            approval_ttl_secs: 600,
            max_body_bytes: 256 * 1024,
            max_args_bytes: 128 * 1024,
            max_streams_per_user: 8,
            persistent_redis: false,
            tools: DEFAULT_TOOLS.to_vec(),
            base_policy: None,
            max_containers: 2,
            pool: (0, 0),
            undo: None,
        }
    }
}

impl ServerOptions {
    /// Sets one tool's policy decision.
    pub fn tool(mut self, tool: &'static str, decision: &'static str) -> Self {
        self.tools.retain(|(t, _)| *t != tool);
        self.tools.push((tool, decision));
        self
    }
}

/// One user of the test policy.
pub struct TestUser {
    pub name: String,
    pub token: String,
    pub workspace: Workspace,
}

/// An HTTP answer: status, headers and the body (as JSON when it parses, else `Null`).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    /// The body's `error.code` (panics with the whole answer when it is not an API error).
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected a JSON error body, got {self:?}"))
    }

    /// Asserts the status, showing the whole answer otherwise.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected answer: {self:#?}");
        self
    }
}

/// Everything a server needs besides the process that runs it.
pub struct Fixture {
    pub redis: RedisServer,
    pub alice: TestUser,
    pub bob: TestUser,
    pub admin: TestUser,
    /// The label value of this server's containers.
    pub instance: String,
    pub config_path: PathBuf,
    pub policy_path: PathBuf,
    /// The port written into the config file (used by [`ServerProcess`]).
    pub port: u16,
    pub opts: ServerOptions,
    dir: tempfile::TempDir,
    docker: bollard::Docker,
    _slot: SemaphorePermit<'static>,
}

fn user(name: &str) -> TestUser {
    TestUser {
        name: name.into(),
        token: airlock::auth::new_token(),
        workspace: Workspace::new(),
    }
}

impl Fixture {
    /// Takes a Docker slot, starts Redis and writes the policy and config files.
    pub async fn new(opts: ServerOptions) -> Fixture {
        let slot = crate::docker_slot().await;
        let redis = if opts.persistent_redis {
            RedisServer::start_persistent()
        } else {
            RedisServer::start()
        };
        let docker = airlock::sandbox::connect_docker(None)
            .await
            .unwrap_or_else(|e| panic!("these tests need a running Docker engine: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("airlock-server-")
            .tempdir()
            .expect("tempdir");
        let port = crate::free_port();
        let fx = Fixture {
            redis,
            alice: user("alice"),
            bob: user("bob"),
            admin: user("root-admin"),
            instance: crate::next_instance("api"),
            config_path: dir.path().join("airlock.toml"),
            policy_path: dir.path().join("policy.toml"),
            port,
            opts,
            dir,
            docker,
            _slot: slot,
        };
        fx.write_files();
        fx
    }

    fn write_files(&self) {
        let mut policy = match &self.opts.base_policy {
            Some(base) => base.clone(),
            None => {
                let mut policy = String::from("[defaults.tools]\n");
                for (tool, decision) in &self.opts.tools {
                    policy += &format!("{tool} = \"{decision}\"\n");
                }
                policy += "\n[defaults.limits]\ntimeout_secs = 60\n";
                policy
            }
        };
        for (u, role) in [
            (&self.alice, "user"),
            (&self.bob, "user"),
            (&self.admin, "admin"),
        ] {
            policy += &format!(
                "\n[[users]]\nname = \"{}\"\ntoken_sha256 = \"{}\"\nrole = \"{role}\"\nworkspace = \"{}\"\nuid = {}\ngid = {}\n",
                u.name,
                airlock::policy::token_sha256(&u.token),
                u.workspace.root().display(),
                u.workspace.uid,
                u.workspace.gid,
            );
        }
        std::fs::write(&self.policy_path, policy).expect("write the policy");
        let l = &self.opts;
        let mut config = format!(
            "listen = \"127.0.0.1:{port}\"\n\
             data_dir = \"{data}\"\n\
             policy = \"policy.toml\"\n\
             allowed_origins = [\"{ALLOWED_ORIGIN}\"]\n\
             instance = \"{instance}\"\n\
             \n[redis]\nurl = \"{redis}\"\nprefix = \"airlock-test:\"\n\
             \n[limits]\n\
             max_body_bytes = {body}\n\
             max_args_bytes = {args}\n\
             max_running_per_user = 2\n\
             max_running_total = 4\n\
             max_containers = {containers}\n\
             max_prepared = 1\n\
             approval_ttl_secs = {ttl}\n\
             queue_wait_secs = 30\n\
             max_streams_per_user = {streams}\n\
             \n[pool]\nper_key = {per_key}\nmax_idle = {max_idle}\nidle_secs = 120\n",
            port = self.port,
            data = self.dir.path().display(),
            instance = self.instance,
            redis = self.redis.url(),
            body = l.max_body_bytes,
            args = l.max_args_bytes,
            ttl = l.approval_ttl_secs,
            streams = l.max_streams_per_user,
            containers = l.max_containers,
            per_key = l.pool.0,
            max_idle = l.pool.1,
        );
        if let Some((secs, call, user)) = l.undo {
            config += &format!(
                "\n[undo]\nretention_secs = {secs}\nmax_call_bytes = {call}\nmax_user_bytes = {user}\n"
            );
        }
        std::fs::write(&self.config_path, config).expect("write the config");
    }

    /// The loaded config (through the same loader `airlock serve` uses).
    pub fn config(&self) -> airlock::config::Config {
        airlock::config::Config::load(&self.config_path)
            .unwrap_or_else(|e| panic!("the test config does not load: {e}"))
    }

    /// Every audit entry, after checking that the chain verifies (it always should).
    pub async fn verified_audit(&self) -> Vec<airlock::store::AuditEntry> {
        let store = airlock::store::Store::connect(&self.redis.url(), "airlock-test:")
            .await
            .unwrap();
        let report = store.verify_audit(&[]).await.unwrap();
        assert_eq!(report.problem, None, "{report:?}");
        store
            .read_audit(None, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.entry)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A config for a second orchestrator on this fixture's Redis and policy: the fixture's
    /// config with another `instance` and a free port. Returns (path, port).
    pub fn second_config(&self, name: &str, instance: &str) -> (PathBuf, u16) {
        let port = crate::free_port();
        let text = std::fs::read_to_string(&self.config_path).expect("the config");
        let text = crate::set_toml_keys(
            &text,
            &[
                ("listen", format!("\"127.0.0.1:{port}\"")),
                ("instance", format!("\"{instance}\"")),
            ],
        );
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write the second config");
        (path, port)
    }

    /// Ids of containers with this server's instance label (and, if given, this call's).
    pub async fn containers(&self, call: Option<&str>) -> Vec<String> {
        list_labelled(&self.docker, &self.instance, call).await
    }

    /// Polls until no container of this instance (or of `call`) exists; panics after 20 s.
    pub async fn assert_no_containers(&self, call: Option<&str>, what: &str) {
        let what = format!(
            "{what}: no container of instance {} (call {call:?}) left",
            self.instance
        );
        crate::wait_until(&what, Duration::from_secs(20), || async {
            let left = self.containers(call).await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await
    }
}

async fn list_labelled(
    docker: &bollard::Docker,
    instance: &str,
    call: Option<&str>,
) -> Vec<String> {
    let mut labels = vec![
        format!("{LABEL_MANAGED}=1"),
        format!("{LABEL_INSTANCE}={instance}"),
    ];
    if let Some(c) = call {
        labels.push(format!("{LABEL_CALL}={c}"));
    }
    let filters = std::collections::HashMap::from([("label".to_string(), labels)]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .expect("list containers")
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Removes every container of `instance` from a thread of its own (usable in `Drop`, so a
/// failed test does not leave containers behind).
fn reap_in_background(instance: String) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(docker) = airlock::sandbox::connect_docker(None).await else {
                return;
            };
            for id in list_labelled(&docker, &instance, None).await {
                let opts = RemoveContainerOptionsBuilder::default().force(true).build();
                let _ = docker.remove_container(&id, Some(opts)).await;
            }
        });
    })
    .join();
}

/// HTTP helpers against one server's base URL. Cheap to clone; its futures are `Send`.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Api {
        Api {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("reqwest client"),
        }
    }

    /// `ws://…` for `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http://", "ws://", 1))
    }

    /// `http://…` for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.http.request(method, self.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        send(rb).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call("POST", path, Some(token), Some(body)).await
    }

    /// Creates a session and returns its id.
    pub async fn session(&self, token: &str) -> String {
        let r = self.call("POST", "/v1/sessions", Some(token), None).await;
        r.expect(201);
        r.json["id"].as_str().expect("session id").to_string()
    }

    /// Proposes a call; returns the answer (201 on success).
    pub async fn propose(&self, token: &str, session: &str, tool: &str, args: Value) -> Resp {
        self.post(
            &format!("/v1/sessions/{session}/tool-calls"),
            token,
            serde_json::json!({"tool": tool, "args": args}),
        )
        .await
    }

    /// Proposes a call and asserts it was accepted (201); returns the call.
    pub async fn propose_ok(&self, token: &str, session: &str, tool: &str, args: Value) -> Value {
        let r = self.propose(token, session, tool, args).await;
        r.expect(201);
        r.json
    }

    /// Decides on a call.
    pub async fn decide(
        &self,
        token: &str,
        call: &str,
        decision: &str,
        args_sha256: &str,
        reason: Option<&str>,
    ) -> Resp {
        let mut body = serde_json::json!({"decision": decision, "args_sha256": args_sha256});
        if let Some(r) = reason {
            body["reason"] = r.into();
        }
        self.post(&format!("/v1/tool-calls/{call}/decision"), token, body)
            .await
    }

    /// Approves a call waiting for approval, bound to its `args_sha256` (must answer 200), and
    /// waits until it reaches one of `want`.
    pub async fn approve_wait(
        &self,
        token: &str,
        call: &Value,
        want: &[&str],
        within: Duration,
    ) -> Value {
        assert_eq!(call["status"], "awaiting_approval", "{call}");
        let id = call["id"].as_str().expect("a call id");
        let sha = call["args_sha256"].as_str().expect("an args_sha256");
        self.decide(token, id, "approve", sha, None)
            .await
            .expect(200);
        self.wait_status(token, id, want, within).await
    }

    /// `GET /v1/tool-calls/{id}` (must answer 200).
    pub async fn get_call(&self, token: &str, call: &str) -> Value {
        let r = self.get(&format!("/v1/tool-calls/{call}"), token).await;
        r.expect(200);
        r.json
    }

    /// Polls the call until its status is one of `want`; panics after `within`.
    pub async fn wait_status(
        &self,
        token: &str,
        call: &str,
        want: &[&str],
        within: Duration,
    ) -> Value {
        let what = format!("call {call} reaching one of {want:?}");
        crate::wait_until(&what, within, || async {
            let c = self.get_call(token, call).await;
            let status = c["status"].as_str().unwrap_or_default();
            if want.contains(&status) {
                Ok(c)
            } else {
                Err(format!("`{status}`: {c:#}"))
            }
        })
        .await
    }

    /// The session's events (`GET /v1/sessions/{id}`); panics on one that is not an
    /// [`airlock::events::Event`].
    pub async fn history(&self, token: &str, session: &str) -> Vec<Value> {
        let r = self.get(&format!("/v1/sessions/{session}"), token).await;
        r.expect(200);
        let events = r.json["events"].as_array().expect("events").clone();
        // Every event the server wrote is of the one vocabulary (`airlock::events`): each test
        // that reads a session's events checks the contract.
        for e in &events {
            let kind = e["type"].as_str().expect("an event has a type");
            if let Err(err) = airlock::events::Event::from_parts(kind, &e["data"]) {
                panic!("event {e} does not parse: {err}");
            }
        }
        events
    }
}

async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let res = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        json,
    }
}

// ---- in-process server ----------------------------------------------------------------------

/// The server running in this process on `127.0.0.1:0`.
pub struct TestServer {
    pub fx: Fixture,
    pub api: Api,
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Deref for TestServer {
    type Target = Fixture;
    fn deref(&self) -> &Fixture {
        &self.fx
    }
}

impl TestServer {
    /// Starts a server with its own Redis and files.
    pub async fn start(opts: ServerOptions) -> TestServer {
        TestServer::start_on(Fixture::new(opts).await).await
    }

    /// Starts a server on an existing fixture (e.g. to start it again).
    pub async fn start_on(fx: Fixture) -> TestServer {
        let config = fx.config();
        let engine = airlock::server::build(&config).await.unwrap_or_else(|e| {
            panic!(
                "the server does not start: {e}\n(these tests need Docker, redis-server and the \
                 executor image: run `bash scripts/test.sh`)"
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(airlock::server::run(
            config,
            engine.clone(),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            fx,
            api: Api::new(format!("http://{addr}")),
            addr,
            engine,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Shuts the server down gracefully (panics if it does not stop within 60 s or fails).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("the server stops within 60 s of shutdown")
                .expect("the server task does not panic");
            if let Err(e) = r {
                panic!("the server ended with an error: {e}");
            }
        }
    }

    /// Stops the server and asserts none of its containers remain.
    pub async fn finish(mut self) {
        self.stop().await;
        self.fx.assert_no_containers(None, "after shutdown").await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            reap_in_background(self.fx.instance.clone());
        }
    }
}

// ---- the binary -----------------------------------------------------------------------------

/// `target/debug/airlock`, next to the test executable's `deps/` directory. Panics with what to
/// do when it is missing or older than the orchestrator's sources.
pub fn airlock_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("airlock"))
        .expect("target directory");
    let meta = std::fs::metadata(&bin).unwrap_or_else(|_| {
        panic!(
            "the `airlock` binary is missing at {}: run `cargo build -p airlock` (scripts/test.sh \
             builds it first)",
            bin.display()
        )
    });
    let built = meta.modified().expect("mtime");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = ["orchestrator/src", "executor-image/src"]
        .iter()
        .filter_map(|d| newest_file(&root.join(d)))
        .max_by_key(|(t, _)| *t);
    if let Some((newest, path)) = newest {
        assert!(
            newest <= built,
            "the `airlock` binary at {} is older than {}: run `cargo build -p airlock` (scripts/test.sh \
             does) so the restart tests run the current code",
            bin.display(),
            path.display()
        );
    }
    bin
}

fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let candidate = if p.is_dir() {
            newest_file(&p)
        } else {
            e.metadata().ok()?.modified().ok().map(|m| (m, p))
        };
        if let Some(c) = candidate {
            if best.as_ref().is_none_or(|b| c.0 > b.0) {
                best = Some(c);
            }
        }
    }
    best
}

/// `airlock serve --config FILE` as a child process.
pub struct ServerProcess<'a> {
    pub fx: &'a Fixture,
    pub api: Api,
    child: Option<Child>,
    log: PathBuf,
}

impl<'a> ServerProcess<'a> {
    /// Starts the binary on the fixture's config and waits (up to 60 s) for `/healthz`.
    pub async fn start(fx: &'a Fixture, run: usize) -> ServerProcess<'a> {
        ServerProcess::start_with(fx, run, &fx.config_path, fx.port).await
    }

    /// Starts the binary on another config (e.g. a second orchestrator on the fixture's Redis,
    /// see [`Fixture::second_config`]) that listens on `port`.
    pub async fn start_with(
        fx: &'a Fixture,
        run: usize,
        config: &Path,
        port: u16,
    ) -> ServerProcess<'a> {
        ServerProcess::start_logging(fx, run, config, port, "warn", &[]).await
    }

    /// [`ServerProcess::start_with`] with the log filter (`AIRLOCK_LOG`) and extra arguments
    /// of `airlock serve` (e.g. `--log-format json`).
    pub async fn start_logging(
        fx: &'a Fixture,
        run: usize,
        config: &Path,
        port: u16,
        log_filter: &str,
        args: &[&str],
    ) -> ServerProcess<'a> {
        let log = fx.dir().join(format!("airlock-{run}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(airlock_binary())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("AIRLOCK_REDIS_URL")
            .env("AIRLOCK_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn airlock serve");
        let mut p = ServerProcess {
            fx,
            api: Api::new(format!("http://127.0.0.1:{port}")),
            child: Some(child),
            log,
        };
        wait_answering(
            &p.api,
            "/healthz",
            &mut p.child,
            &p.log,
            Duration::from_secs(60),
        )
        .await;
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the process wrote on stderr.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// `kill -9`, like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (up to 60 s) for a clean exit; panics otherwise (and `Drop` kills
    /// it).
    pub async fn terminate(&mut self) {
        let Some(c) = &self.child else {
            return;
        };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_exit(
            &mut self.child,
            &self.log,
            Duration::from_secs(60),
            "airlock serve stopping after SIGTERM",
        )
        .await;
        assert!(
            status.success(),
            "airlock serve exited with {status} after SIGTERM; its log:\n{}",
            self.log()
        );
    }
}

/// Waits (up to `within`) until `child`, an `airlock` process writing to `log`, answers
/// `GET path` with a success; panics at once, with the log, if it exits first.
pub async fn wait_answering(
    api: &Api,
    path: &str,
    child: &mut Option<Child>,
    log: &Path,
    within: Duration,
) {
    let what = format!("airlock answering {path}");
    crate::wait_until(&what, within, || {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!(
                "airlock exited with {status} before it answered {path}; its log:\n{}",
                read_log(log)
            );
        }
        async move {
            let seen = match api
                .http
                .get(api.url(path))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => r.status().to_string(),
                Err(e) => e.to_string(),
            };
            Err(format!("{seen}; its log:\n{}", read_log(log)))
        }
    })
    .await
}

/// Waits (up to `within`) for `child`, which writes to `log`, to exit; takes it and returns
/// its status. On timeout the panic leaves it in `child`, for its owner's `Drop` to kill.
pub async fn wait_exit(
    child: &mut Option<Child>,
    log: &Path,
    within: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let status = crate::wait_until(what, within, || {
        let exited = child.as_mut().expect("running").try_wait().expect("wait");
        async move { exited.ok_or_else(|| format!("still running; its log:\n{}", read_log(log))) }
    })
    .await;
    *child = None;
    status
}

/// What a child process wrote to its log file (empty when there is none yet).
pub fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

impl Drop for ServerProcess<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            reap_in_background(self.fx.instance.clone());
        }
    }
}
