//! Shared helpers for the integration tests: a real Docker engine with a bounded number of
//! containers at once, throwaway workspaces, and one-line tool calls.
//!
//! Nothing here skips a test when a service is missing: it panics with what is missing and
//! how to get it.

pub mod llm_mock;
pub mod redis_server;
pub mod server;
use std::os::unix::fs::{chown, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use airlock::protocol::{ErrorCode, Event, Mode, ProtectedPath, Request, ToolCall, ToolResult};
use airlock::sandbox::profile::{LABEL_INSTANCE, LABEL_MANAGED};
use airlock::sandbox::{CallSpec, Outcome, Profile, Runtime, Sandbox, SandboxConfig};
use bollard::query_parameters::ListContainersOptionsBuilder;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Containers the whole suite may run at once (2 cores shared by every test).
pub const MAX_TEST_CONTAINERS: usize = 3;
static DOCKER_SLOTS: Semaphore = Semaphore::const_new(MAX_TEST_CONTAINERS);
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The image the tests use (built by `scripts/test.sh`).
pub const TEST_IMAGE: &str = airlock::sandbox::image::DEFAULT_TAG;

/// A sandbox reserved for one test, with its own instance label so the test can check that
/// none of its containers outlive it.
pub struct TestSandbox {
    pub sandbox: Sandbox,
    pub instance: String,
    _slot: SemaphorePermit<'static>,
}

/// How often [`wait_until`] looks again.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Polls `probe` every [`POLL`] until it gives `Ok`; after `within`, panics with `what` and the
/// last `Err` (what the probe saw, so a failure says where things stood). The one poll loop of
/// the suite: tests wait on the state that matters rather than sleeping.
pub async fn wait_until<T, F, Fut>(what: &str, within: std::time::Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}; last seen: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for code outside a runtime (a probe that runs commands).
pub fn wait_until_blocking<T>(
    what: &str,
    within: std::time::Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        let last = match probe() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if std::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}; last seen: {last}");
        }
        std::thread::sleep(POLL);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `text` (a TOML file) with the top-level `key = …` lines of `values` replaced.
pub fn set_toml_keys(text: &str, values: &[(&str, String)]) -> String {
    text.lines()
        .map(|l| {
            let set = values
                .iter()
                .find(|(k, _)| l.starts_with(&format!("{k} = ")));
            match set {
                Some((k, v)) => format!("{k} = {v}\n"),
                None => format!("{l}\n"),
            }
        })
        .collect()
}

/// One of the suite's Docker slots (a test holding one may run up to two containers at once).
pub async fn docker_slot() -> SemaphorePermit<'static> {
    DOCKER_SLOTS.acquire().await.expect("never closed")
}

/// A container instance label unique to this test process and call.
pub fn next_instance(kind: &str) -> String {
    format!(
        "test-{kind}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A sandbox for one test. Panics (never skips) when Docker or the image is missing.
pub async fn sandbox() -> TestSandbox {
    let slot = docker_slot().await;
    let instance = format!(
        "test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let sandbox = Sandbox::new(&SandboxConfig {
        docker_endpoint: None,
        image: TEST_IMAGE.into(),
        instance: instance.clone(),
        max_containers: 2,
        pool: airlock::sandbox::PoolConfig::disabled(),
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "these tests need a running Docker engine and the executor image: {e}\n\
             (run `bash scripts/test.sh`, which builds the image first)"
        )
    });
    TestSandbox {
        sandbox,
        instance,
        _slot: slot,
    }
}

/// A test that panics never reaches `finish()`, and its runtime (which owns the removal tasks)
/// dies with it: remove its containers here so a failing test leaves nothing behind.
impl Drop for TestSandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            remove_labelled(&self.instance);
        }
    }
}

/// Force-removes every container of `instance` through the docker CLI (no runtime needed).
pub fn remove_labelled(instance: &str) {
    let filter = format!("label={LABEL_INSTANCE}={instance}");
    if let Ok(out) = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &filter])
        .output()
    {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

impl TestSandbox {
    /// Ids of this test's containers that still exist.
    pub async fn leftovers(&self) -> Vec<String> {
        let mut filters = std::collections::HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=1"),
                format!("{LABEL_INSTANCE}={}", self.instance),
            ],
        );
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.sandbox
            .docker()
            .list_containers(Some(opts))
            .await
            .expect("list containers")
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    }

    /// Waits for every container of this test to be removed and asserts none remains.
    pub async fn finish(self) {
        self.sandbox.drain().await;
        let left = self.leftovers().await;
        assert!(left.is_empty(), "containers left behind: {left:?}");
    }

    /// Runs one call to the end and returns its events and outcome.
    pub async fn call(&self, ws: &Workspace, req: Request, profile: &Profile) -> Called {
        let writable = req.mode == Mode::Apply && req.call.mutates();
        let mut spec = ws.spec(&req.call, writable);
        // The masks are made for the rules the request carries.
        spec.protected = req.protected.clone();
        let handle = self
            .sandbox
            .run(profile, &spec, &req)
            .await
            .expect("start the sandbox call");
        let (events, outcome) = handle.collect().await;
        Called { events, outcome }
    }

    /// A read-only (preview) call with default limits.
    pub async fn preview(&self, ws: &Workspace, tool: &str, args: serde_json::Value) -> Called {
        self.call(
            ws,
            request(tool, args, Mode::Preview),
            &ws.profile(Runtime::Runc),
        )
        .await
    }

    /// An applied call (read-write workspace for mutating tools) with default limits.
    pub async fn apply(&self, ws: &Workspace, tool: &str, args: serde_json::Value) -> Called {
        self.call(
            ws,
            request(tool, args, Mode::Apply),
            &ws.profile(Runtime::Runc),
        )
        .await
    }
}

/// Builds a request from a tool name and JSON arguments (panics on invalid arguments).
pub fn request(tool: &str, args: serde_json::Value, mode: Mode) -> Request {
    let call = ToolCall::from_parts(tool, args).expect("valid test arguments");
    Request {
        mode,
        ..Request::new(call)
    }
}

/// Adds protected-path rules to a request.
pub fn with_protected(
    mut req: Request,
    rules: &[(&str, airlock::protocol::Protection)],
) -> Request {
    req.protected = rules
        .iter()
        .map(|(g, p)| ProtectedPath {
            glob: g.to_string(),
            protection: *p,
        })
        .collect();
    req
}

/// The events and outcome of one finished call.
#[derive(Debug)]
pub struct Called {
    pub events: Vec<Event>,
    pub outcome: Outcome,
}

impl Called {
    /// The result, or a panic showing what happened instead.
    pub fn result(&self) -> &ToolResult {
        self.events
            .iter()
            .find_map(|e| match e {
                Event::Result { result } => Some(result),
                _ => None,
            })
            .unwrap_or_else(|| panic!("expected a result, got {:#?}", self))
    }

    /// The error code and message, or a panic showing what happened instead.
    pub fn error(&self) -> (ErrorCode, &str) {
        self.events
            .iter()
            .find_map(|e| match e {
                Event::Error { code, message } => Some((*code, message.as_str())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("expected an error, got {:#?}", self))
    }

    /// Asserts the call failed with `code`.
    pub fn expect_error(&self, code: ErrorCode) -> &str {
        let (got, msg) = self.error();
        assert_eq!(got, code, "message: {msg}");
        msg
    }

    /// Concatenated `output` events of one stream.
    pub fn output(&self, stream: airlock::protocol::StreamKind) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Output { stream: s, data } if *s == stream => Some(data.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn stdout(&self) -> String {
        self.output(airlock::protocol::StreamKind::Stdout)
    }
}

/// A throwaway workspace on the host, owned by the sandbox user so containers can write it.
pub struct Workspace {
    dir: tempfile::TempDir,
    pub uid: u32,
    pub gid: u32,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Workspace {
    pub fn new() -> Workspace {
        // The root of the outer tempdir stays the test's; the workspace is a subdirectory so
        // symlinks can point at a sibling "outside" directory the test controls.
        let dir = tempfile::Builder::new()
            .prefix("airlock-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret.txt"), "outside secret\n").unwrap();
        let (uid, gid) = if running_as_root() {
            (65532, 65532)
        } else {
            // SAFETY: no preconditions.
            unsafe { (libc::geteuid(), libc::getegid()) }
        };
        // Docker must be able to traverse to the bind source.
        let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(dir.path(), perms).unwrap();
        let ws = Workspace { dir, uid, gid };
        ws.own(&ws.root());
        ws
    }

    /// Host path of the workspace root (the bind source).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    /// Host path of a directory beside the workspace (for escape targets).
    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn own(&self, p: &Path) {
        if running_as_root() {
            chown(p, Some(self.uid), Some(self.gid)).unwrap();
        }
    }

    /// Writes a file (creating parent dirs), owned by the sandbox user.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let p = self.root().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
            let mut d = parent.to_path_buf();
            while d.starts_with(self.root()) {
                self.own(&d);
                if !d.pop() {
                    break;
                }
            }
        }
        std::fs::write(&p, content).unwrap();
        self.own(&p);
        self
    }

    pub fn mkdir(&self, rel: &str) -> &Self {
        let p = self.root().join(rel);
        std::fs::create_dir_all(&p).unwrap();
        self.own(&p);
        self
    }

    /// Creates a symlink at `rel` pointing at `target` (verbatim).
    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        let p = self.root().join(rel);
        symlink(target, &p).unwrap();
        std::os::unix::fs::lchown(&p, Some(self.uid), Some(self.gid)).unwrap_or(());
        self
    }

    /// Reads a file of the workspace from the host (test assertions only).
    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root().join(rel)).ok()
    }

    pub fn exists(&self, rel: &str) -> bool {
        std::fs::symlink_metadata(self.root().join(rel)).is_ok()
    }

    /// The default profile with this workspace's owner as the sandbox user.
    pub fn profile(&self, runtime: Runtime) -> Profile {
        Profile {
            runtime,
            uid: self.uid,
            gid: self.gid,
            ..Profile::default()
        }
    }

    pub fn spec(&self, call: &ToolCall, writable: bool) -> CallSpec {
        CallSpec {
            workspace: self.root(),
            writable,
            session_id: "test-session".into(),
            call_id: format!("call-{}", COUNTER.fetch_add(1, Ordering::SeqCst)),
            tool: call.name().into(),
            protected: Vec::new(),
        }
    }
}

/// The runtimes every posture and tool test runs under. Panics when `runsc` is not registered:
/// `.ci/run` registers it (scripts/enable-gvisor.sh).
pub async fn runtimes(ts: &TestSandbox) -> Vec<Runtime> {
    let info = ts.sandbox.docker().info().await.expect("docker info");
    let have = info.runtimes.unwrap_or_default();
    assert!(
        have.contains_key("runsc"),
        "gVisor (runsc) is not registered with the Docker engine: run `apt-get install runsc && bash scripts/enable-gvisor.sh`"
    );
    vec![Runtime::Runc, Runtime::Runsc]
}
