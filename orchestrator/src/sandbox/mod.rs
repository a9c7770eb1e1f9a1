//! The sandbox: the only module that talks to Docker. It creates every container through
//! [`profile::locked_container_config`], attaches before start, sends one request on stdin,
//! streams the executor's events back, enforces the deadline and the output cap, and always
//! removes the container.

pub mod engine;
pub mod image;
pub mod pool;
pub mod profile;
pub mod toolchain;
mod views;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_executor::protocol::{
    ErrorCode, Event, ListDirArgs, Protection, Request, SandboxView, ToolCall, ToolResult,
};
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

pub use pool::{Discard, PoolConfig, PoolStats};
pub use profile::{locked_container_config, CallSpec, Profile, Runtime};

/// Errors of the sandbox layer.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot reach the Docker engine at {endpoint}: {source}. Is dockerd running, and may this user use its socket?")]
    DockerUnreachable {
        endpoint: String,
        #[source]
        source: DockerError,
    },
    #[error(
        "executor image `{0}` not found in the Docker engine: build it with `airlock image build`"
    )]
    ImageNotFound(String),
    #[error("invalid sandbox profile: {0}")]
    InvalidProfile(String),
    #[error("invalid workspace: {0}")]
    InvalidWorkspace(String),
    #[error("the OCI runtime `{0}` is not registered with the Docker engine (see `docker info` → Runtimes)")]
    RuntimeMissing(String),
    #[error("Docker engine error: {0}")]
    Docker(#[from] DockerError),
    #[error("could not send the request to the container: {0}")]
    Io(#[from] std::io::Error),
    #[error("image build failed: {0}")]
    Build(String),
    /// The executor found a protected path its container's masks do not cover (the workspace
    /// changed since the survey): nothing ran. [`Sandbox::send`] surveys and retries once.
    #[error("{0}")]
    Stale(String),
    /// The container's executor was gone before it read the request (it died while idle or
    /// while an approval was pending): nothing ran. [`Sandbox::send`] retries once in a fresh
    /// container.
    #[error("the container's executor was gone before the request reached it: {0}")]
    NotStarted(String),
    /// The survey of the workspace's protected paths failed (a stable executor error code):
    /// no container for the call was made.
    #[error("{message}")]
    Survey { code: String, message: String },
}

impl SandboxError {
    /// The stable code and message to record on a call this error stopped, when it is the
    /// workspace's fault rather than the infrastructure's.
    pub fn as_tool_error(&self) -> Option<(String, String)> {
        match self {
            SandboxError::Stale(m) => Some((
                ErrorCode::StaleSandbox.as_str().into(),
                format!("{m}; it was retried once with a fresh listing: propose the call again"),
            )),
            SandboxError::Survey { code, message } => Some((code.clone(), message.clone())),
            _ => None,
        }
    }
}

/// Seconds the executor's own deadline runs past the orchestrator's (which reports `timed_out`).
pub const EXECUTOR_DEADLINE_GRACE_SECS: u64 = 3;

/// What the caller receives for one call, in order: executor events as they arrive, then
/// exactly one `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum SandboxEvent {
    Executor(Event),
    Finished(Outcome),
}

/// How the container ended. Timeout, OOM and truncation are reported distinctly.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// The container's exit status (the executor's: 0 result, 3 tool error, 137 killed …).
    pub exit_code: Option<i64>,
    /// The kernel's OOM killer fired inside the container.
    pub oom_killed: bool,
    /// The wall-clock deadline expired and the container was killed.
    pub timed_out: bool,
    /// The output cap was reached and the container was killed.
    pub output_truncated: bool,
    /// The caller cancelled (or dropped the stream) and the container was killed.
    pub cancelled: bool,
    /// From request written to container exit.
    pub duration: Duration,
    /// Stdout+stderr bytes the container produced (up to the cap).
    pub output_bytes: u64,
    /// Last bytes of the executor's stderr (diagnostics only; never file contents by design).
    pub stderr_tail: String,
    /// Executor lines that were not valid protocol events, or a lost attach stream.
    pub protocol_error: Option<String>,
}

/// Connection settings for the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// `unix:///var/run/docker.sock`, `tcp://host:port`, or None for DOCKER_HOST / the default.
    pub docker_endpoint: Option<String>,
    /// Image reference (tag or ID); resolved once to an ID and pinned.
    pub image: String,
    /// Name of this orchestrator instance; labels its containers so that only its own are reaped.
    pub instance: String,
    /// Most containers alive at once (created, running or being removed).
    pub max_containers: usize,
    /// The warm pool for calls that need no approval (off by default here; the server's
    /// config turns it on).
    pub pool: PoolConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            docker_endpoint: None,
            image: image::DEFAULT_TAG.to_string(),
            instance: "default".to_string(),
            max_containers: 32,
            pool: PoolConfig::disabled(),
        }
    }
}

/// Connects to the Docker engine and negotiates the API version (the engine may be older).
pub async fn connect_docker(endpoint: Option<&str>) -> Result<Docker, SandboxError> {
    // DOCKER_HOST is read here rather than by bollard's local defaults, which honour it only
    // for unix:// (a tcp:// socket proxy would silently be bypassed for the local socket).
    let endpoint = endpoint
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()));
    let shown = endpoint
        .clone()
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    let unreachable = |source| SandboxError::DockerUnreachable {
        endpoint: shown.clone(),
        source,
    };
    let docker = match endpoint.as_deref() {
        None => Docker::connect_with_local_defaults(),
        Some(e) if e.starts_with("unix://") || e.starts_with('/') => {
            Docker::connect_with_unix(e, 120, bollard::API_DEFAULT_VERSION)
        }
        Some(e) => Docker::connect_with_http(e, 120, bollard::API_DEFAULT_VERSION),
    }
    .map_err(unreachable)?;
    let docker = docker.negotiate_version().await.map_err(unreachable)?;
    docker.ping().await.map_err(unreachable)?;
    Ok(docker)
}

struct Inner {
    docker: Docker,
    image_id: String,
    /// Images named by policies (reference → pinned ID), see [`Sandbox::pin_image`].
    images: std::sync::RwLock<HashMap<String, String>>,
    instance: String,
    limit: Arc<Semaphore>,
    max_containers: usize,
    runtimes: Vec<String>,
    views: views::Views,
    pool: pool::Pool,
}

/// A handle to the sandbox; cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl Sandbox {
    /// Connects, resolves the executor image to its ID (pinned from now on) and reads the
    /// engine's runtimes.
    pub async fn new(config: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let docker = connect_docker(config.docker_endpoint.as_deref()).await?;
        let image_id = match docker.inspect_image(&config.image).await {
            Ok(img) => img.id.unwrap_or_default(),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(SandboxError::ImageNotFound(config.image.clone())),
            Err(e) => return Err(e.into()),
        };
        let info = docker.info().await?;
        let runtimes = info
            .runtimes
            .map(|r| r.into_keys().collect())
            .unwrap_or_default();
        Ok(Sandbox {
            inner: Arc::new(Inner {
                docker,
                image_id,
                images: Default::default(),
                instance: config.instance.clone(),
                limit: Arc::new(Semaphore::new(config.max_containers.max(1))),
                max_containers: config.max_containers.max(1),
                runtimes,
                views: views::Views::default(),
                pool: pool::Pool::new(config.pool.clone()),
            }),
        })
    }

    /// The pinned image ID every container uses.
    pub fn image_id(&self) -> &str {
        &self.inner.image_id
    }

    /// Resolves an image a policy names to its ID and pins it: profiles naming `reference`
    /// use that ID until it is pinned again (at the next policy load).
    pub async fn pin_image(&self, reference: &str) -> Result<String, SandboxError> {
        let id = match self.inner.docker.inspect_image(reference).await {
            Ok(img) => img.id.unwrap_or_default(),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(SandboxError::ImageNotFound(reference.to_string())),
            Err(e) => return Err(e.into()),
        };
        self.inner
            .images
            .write()
            .expect("images lock")
            .insert(reference.to_string(), id.clone());
        Ok(id)
    }

    /// Whether the engine has the OCI runtime `name` registered.
    pub fn has_runtime(&self, name: &str) -> bool {
        self.inner.runtimes.iter().any(|r| r == name)
    }

    /// The pinned image ID for `profile`.
    fn image_for(&self, profile: &Profile) -> Result<String, SandboxError> {
        match &profile.image {
            None => Ok(self.inner.image_id.clone()),
            Some(r) => self
                .inner
                .images
                .read()
                .expect("images lock")
                .get(r)
                .cloned()
                .ok_or_else(|| SandboxError::ImageNotFound(r.clone())),
        }
    }

    /// The engine handle, for the few read-only checks outside this module (readiness).
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// Containers currently alive (created, running or being removed) for this sandbox.
    pub fn containers_in_use(&self) -> usize {
        self.inner
            .max_containers
            .saturating_sub(self.inner.limit.available_permits())
    }

    /// Waits until every container this handle started has been removed (for shutdown).
    pub async fn drain(&self) {
        let n = self.inner.max_containers as u32;
        if let Ok(all) = self.inner.limit.acquire_many(n).await {
            drop(all);
        }
    }

    /// Removes every container this instance left behind (after a crash or `kill -9`).
    pub async fn reap(&self) -> Result<usize, SandboxError> {
        self.reap_labelled(format!(
            "{}={}",
            profile::LABEL_INSTANCE,
            self.inner.instance
        ))
        .await
    }

    /// Removes the containers of one call, whichever instance started them: a call whose
    /// orchestrator died is failed by another, which stops what it left running (nobody
    /// enforces that container's deadline any more).
    pub async fn reap_call(&self, call_id: &str) -> Result<usize, SandboxError> {
        self.reap_labelled(format!("{}={call_id}", profile::LABEL_CALL))
            .await
    }

    async fn reap_labelled(&self, label: String) -> Result<usize, SandboxError> {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![format!("{}=1", profile::LABEL_MANAGED), label],
        );
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self.inner.docker.list_containers(Some(opts)).await?;
        let mut removed = 0;
        for c in list {
            if let Some(id) = c.id {
                if remove_container(&self.inner.docker, &id).await.is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// A started container for a call that runs now: an idle one from the warm pool when one
    /// for this key is there (and its executor still waits), else a new one; either way the
    /// pool is refilled in the background. Writable containers are never pooled.
    pub async fn acquire(
        &self,
        profile: &Profile,
        spec: &CallSpec,
    ) -> Result<Prepared, SandboxError> {
        if spec.writable || !self.inner.pool.config().enabled() {
            return self.prepare(profile, spec).await;
        }
        let image_id = self.image_for(profile)?;
        let key = pool::key(&image_id, profile, spec);
        let generation = self.inner.views.state(&spec.workspace).generation();
        let (got, removed) = self.inner.pool.take(&key, generation);
        drop(removed);
        let mut prepared = match got {
            Some(p) => p,
            None => self.prepare(profile, spec).await?,
        };
        // The refill starts when this call's container is gone: it never competes with the
        // call for the CPU (a container start costs ~100 ms of it on two cores, against a few
        // ms for the call), and the place the call held is free for it. Measured: starting it
        // at the take made pooled shell calls ~25 % slower and helped an agent whose model
        // answers at once by 2 hits in 30 (docs/PERFORMANCE.md).
        let (this, profile, spec) = (self.clone(), profile.clone(), spec.clone());
        prepared.after = Some(Box::new(move || this.refill(key, &profile, &spec)));
        Ok(prepared)
    }

    /// Starts the containers `key` lacks, in the background, each only if a place among
    /// `max_containers` is free right now: a refill never waits, so a burst degrades to cold
    /// calls instead of queuing behind refills.
    fn refill(&self, key: pool::PoolKey, profile: &Profile, spec: &CallSpec) {
        let n = self.inner.pool.reserve(&key, &spec.workspace);
        for _ in 0..n {
            let this = self.clone();
            let (key, profile, spec) = (key.clone(), profile.clone(), pool::pool_spec(spec));
            tokio::spawn(async move {
                let epoch = this.inner.pool.epoch();
                let generation = this.inner.views.state(&spec.workspace).generation();
                // Only a survey already made: a refill never surveys (the cold call did).
                let view = match this.inner.views.cached(&profile, &spec) {
                    Some(v) => v,
                    None if spec.protected.is_empty() => SandboxView::default(),
                    None => return this.inner.pool.unreserve(&key),
                };
                let Ok(permit) = this.inner.limit.clone().try_acquire_owned() else {
                    tracing::debug!("no free place for a warm-pool refill");
                    return this.inner.pool.unreserve(&key);
                };
                match this.create(&profile, &spec, Some(view), Some(permit)).await {
                    Ok(p) => drop(this.inner.pool.put(&key, p, epoch, generation)),
                    Err(e) => {
                        tracing::warn!(error = %e, "a warm-pool refill failed; the pool stays short until its next call");
                        this.inner.pool.unreserve(&key);
                    }
                }
            });
        }
    }

    /// Removes every idle pooled container (a policy reload: none made under the old policy
    /// serves a call; refills in flight are dropped when they finish).
    pub fn pool_clear_policy(&self) {
        drop(self.inner.pool.clear(Discard::Policy, false));
    }

    /// Removes every idle pooled container and refuses refills from now on (shutdown).
    pub fn close_pool(&self) {
        drop(self.inner.pool.clear(Discard::Shutdown, true));
    }

    /// Empties keys idle past the pool's timeout and drops containers of workspaces a writer
    /// changed since they were made (the engine calls this at every sweep).
    pub fn pool_sweep(&self) {
        let views = &self.inner.views;
        drop(self.inner.pool.sweep(|ws| views.state(ws).generation()));
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }

    /// A place among `max_containers`: a free one, else one an idle pooled container gives up
    /// (a call that needs a container never waits behind the pool), else the next one freed.
    async fn place(&self) -> OwnedSemaphorePermit {
        if let Ok(p) = self.inner.limit.clone().try_acquire_owned() {
            return p;
        }
        drop(self.inner.pool.evict_one());
        self.inner
            .limit
            .clone()
            .acquire_owned()
            .await
            .expect("the sandbox semaphore is never closed")
    }

    /// Creates, attaches to and starts a container for `spec`, with masks over the workspace's
    /// protected paths (surveyed first when this workspace has no survey yet). The executor
    /// inside blocks on stdin until [`Prepared::send`]: nothing touches the workspace before
    /// then, so this can run while the user is still deciding on an approval.
    pub async fn prepare(
        &self,
        profile: &Profile,
        spec: &CallSpec,
    ) -> Result<Prepared, SandboxError> {
        let view = match self.inner.views.cached(profile, spec) {
            Some(v) => v,
            None if spec.protected.is_empty() => SandboxView::default(),
            None => self.survey(profile, spec, false).await?,
        };
        self.prepare_with(profile, spec, view).await
    }

    async fn prepare_with(
        &self,
        profile: &Profile,
        spec: &CallSpec,
        view: SandboxView,
    ) -> Result<Prepared, SandboxError> {
        let views_needed = spec.writable
            && view
                .masks
                .iter()
                .any(|m| m.protection == Protection::ReadOnly);
        if !views_needed {
            return self.create(profile, spec, Some(view), None).await;
        }
        // A read-only view's source is a workspace path, which the engine resolves on the host
        // when it mounts it: a writer swapping it for a symlink at that moment would mount a
        // host directory. So no writer of this workspace runs while such a container is made
        // (writers hold the read side of this lock while they run), and the survey it uses is
        // made under the same lock.
        let ws = self.inner.views.state(&spec.workspace);
        let _no_writers = ws.lock.clone().write_owned().await;
        let view = match self.inner.views.clean(profile, spec, &ws) {
            Some(v) => v,
            None => self.survey(profile, spec, true).await?,
        };
        self.create(profile, spec, Some(view), None).await
    }

    /// Lists the masks `spec`'s workspace needs, in a read-only container without masks, and
    /// remembers them for the next containers of this workspace.
    async fn survey(
        &self,
        profile: &Profile,
        spec: &CallSpec,
        no_writers: bool,
    ) -> Result<SandboxView, SandboxError> {
        let ws = self.inner.views.state(&spec.workspace);
        let generation = ws.generation();
        let s = CallSpec {
            writable: false,
            tool: "survey".into(),
            ..spec.clone()
        };
        let req = Request {
            survey: true,
            protected: spec.protected.clone(),
            ..Request::new(ToolCall::ListDir(ListDirArgs {
                path: None,
                depth: None,
            }))
        };
        let (events, outcome) = self
            .create(profile, &s, None, None)
            .await?
            .send(&req)
            .await?
            .collect()
            .await;
        for e in events {
            match e {
                Event::Survey { view } => {
                    if let Some(bad) = view
                        .masks
                        .iter()
                        .find(|m| !profile::valid_mask_path(&m.path))
                    {
                        return Err(SandboxError::Survey {
                            code: "sandbox_failed".into(),
                            message: format!("the survey named an invalid path `{}`", bad.path),
                        });
                    }
                    self.inner
                        .views
                        .store(profile, spec, view.clone(), generation, no_writers);
                    return Ok(view);
                }
                Event::Error { code, message } => {
                    return Err(SandboxError::Survey {
                        code: code.as_str().into(),
                        message: format!(
                            "listing the workspace's protected paths failed: {message}"
                        ),
                    })
                }
                _ => {}
            }
        }
        Err(SandboxError::Survey {
            code: "sandbox_failed".into(),
            message: format!(
                "listing the workspace's protected paths failed: {}",
                outcome
                    .protocol_error
                    .unwrap_or_else(|| format!("exit status {:?}", outcome.exit_code))
            ),
        })
    }

    /// Sends `request` to `prepared`; when its executor finds the masks stale (the workspace
    /// changed since the survey), surveys again and sends it once more to a fresh container.
    pub async fn send(
        &self,
        mut prepared: Prepared,
        profile: &Profile,
        spec: &CallSpec,
        request: &Request,
    ) -> Result<CallHandle, SandboxError> {
        if spec.writable {
            // A writer is about to change this workspace: its idle read-only containers may
            // carry a mask set the write makes stale. They leave the pool now; for a file
            // write (short) removing them waits until its own container is gone, so two
            // `docker rm`s do not compete with it for the host's cores (measured: approve →
            // result). A shell command may run for minutes: its discards go at once, or they
            // would hold container slots the whole time.
            let stale = self.inner.pool.clear_workspace(&spec.workspace);
            if !stale.is_empty() && spec.tool != "run_shell" {
                let earlier = prepared.after.take();
                prepared.after = Some(Box::new(move || {
                    drop(stale);
                    if let Some(f) = earlier {
                        f();
                    }
                }));
            }
        }
        match prepared.send(request).await {
            Err(SandboxError::NotStarted(why)) => {
                tracing::info!(call_id = %spec.call_id, reason = %why, "the container's executor was gone; running the call in a fresh one");
                self.inner.pool.count(Discard::Dead, 1);
                self.prepare(profile, spec).await?.send(request).await
            }
            Err(SandboxError::Stale(why)) => {
                tracing::info!(call_id = %spec.call_id, reason = %why, "masks were stale; surveying the workspace again");
                self.inner.views.forget(profile, spec);
                let view = self.survey(profile, spec, false).await?;
                self.prepare_with(profile, spec, view)
                    .await?
                    .send(request)
                    .await
            }
            other => other,
        }
    }

    /// Creates, attaches to and starts one container. `view`: the masks it gets, which the
    /// request will carry (None only for the survey container, which has none).
    async fn create(
        &self,
        profile: &Profile,
        spec: &CallSpec,
        view: Option<SandboxView>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Prepared, SandboxError> {
        profile::validate(profile)?;
        if !spec.workspace.is_absolute() {
            return Err(SandboxError::InvalidWorkspace(format!(
                "`{}` is not an absolute path",
                spec.workspace.display()
            )));
        }
        if !self
            .inner
            .runtimes
            .iter()
            .any(|r| r == profile.runtime.as_str())
        {
            return Err(SandboxError::RuntimeMissing(
                profile.runtime.as_str().to_string(),
            ));
        }
        let image_id = self.image_for(profile)?;
        let permit = match permit {
            Some(p) => p,
            None => self.place().await,
        };
        let docker = &self.inner.docker;
        let masks = view.as_ref().map(|v| v.masks.as_slice()).unwrap_or(&[]);
        let config = locked_container_config(&image_id, &self.inner.instance, profile, spec, masks);
        let created = docker.create_container(None, config).await?;
        let id = created.id;
        // From here on, any failure must remove the container.
        let guard = RemoveGuard {
            docker: docker.clone(),
            id: Some(id.clone()),
            permit: Some(permit),
        };
        let attach = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = docker.attach_container(&id, Some(attach)).await?;
        docker.start_container(&id, None).await?;
        Ok(Prepared {
            docker: docker.clone(),
            guard,
            input: attached.input,
            output: attached.output,
            profile: profile.clone(),
            workspace: spec.workspace.clone(),
            writer: spec
                .writable
                .then(|| self.inner.views.state(&spec.workspace)),
            view,
            protected: spec.protected.clone(),
            after: None,
        })
    }

    /// Takes a container ([`Sandbox::acquire`]: pooled when it can be) and sends `request`
    /// at once (a call that needs no approval, a preview).
    pub async fn run(
        &self,
        profile: &Profile,
        spec: &CallSpec,
        request: &Request,
    ) -> Result<CallHandle, SandboxError> {
        let prepared = self.acquire(profile, spec).await?;
        self.send(prepared, profile, spec, request).await
    }
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// Removes the container when dropped, unless disarmed (the driver task then owns removal).
/// It holds the container's slot until the removal is done, so `drain` means "all removed".
struct RemoveGuard {
    docker: Docker,
    id: Option<String>,
    permit: Option<OwnedSemaphorePermit>,
}

impl RemoveGuard {
    fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }
    fn disarm(&mut self) -> (String, Option<OwnedSemaphorePermit>) {
        (self.id.take().unwrap_or_default(), self.permit.take())
    }
}

impl Drop for RemoveGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let docker = self.docker.clone();
            let permit = self.permit.take();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = remove_container(&docker, &id).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        // Already gone (a concurrent reaper, or removal in progress) is success.
        Err(DockerError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A started container whose executor waits for its request. Dropping it kills and removes
/// the container (the call was denied, expired or cancelled).
pub struct Prepared {
    docker: Docker,
    guard: RemoveGuard,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    output: OutputStream,
    profile: Profile,
    workspace: std::path::PathBuf,
    /// For a writable container: its workspace's writer state (see `views`).
    writer: Option<Arc<views::WsState>>,
    /// The masks it was made with; sent with the request.
    view: Option<SandboxView>,
    protected: Vec<airlock_executor::protocol::ProtectedPath>,
    /// Run once the call's container is removed (the pool's refill).
    after: Option<AfterCall>,
}

type AfterCall = Box<dyn FnOnce() + Send>;

impl Prepared {
    pub fn container_id(&self) -> &str {
        self.guard.id()
    }

    /// The profile the container was started with.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The workspace mounted in the container.
    pub fn workspace(&self) -> &std::path::Path {
        &self.workspace
    }

    /// The protected-path rules its masks were made for.
    pub fn protected(&self) -> &[airlock_executor::protocol::ProtectedPath] {
        &self.protected
    }

    /// Whether the executor still waits for its request: its attach stream is open and it
    /// has written nothing (an idle executor writes nothing before its request).
    pub(crate) fn executor_waiting(&mut self) -> bool {
        self.output.next().now_or_never().is_none()
    }

    /// Writes the request (with the container's masks); the deadline starts now. Events
    /// arrive on the returned handle. The executor's mask check comes first: a stale view is
    /// [`SandboxError::Stale`] (nothing ran; [`Sandbox::send`] retries once).
    pub async fn send(mut self, request: &Request) -> Result<CallHandle, SandboxError> {
        let checked = self.view.is_some();
        let merged = self
            .view
            .as_ref()
            .map(|v| v.merged.clone())
            .unwrap_or_default();
        let mut request = Request {
            sandbox: self.view.take(),
            ..request.clone()
        };
        // The executor's own deadline, a little after ours: if this process dies, the
        // container still ends (and is reaped by the next start or another replica's sweep).
        request.limits.deadline_secs = self.profile.timeout_secs + EXECUTOR_DEADLINE_GRACE_SECS;
        // A writer holds its workspace's lock (read side) until its container is gone.
        let writer = match self.writer.take() {
            Some(ws) => Some(views::Writer::start(ws).await),
            None => None,
        };
        let mut line = serde_json::to_vec(&request).expect("requests always serialize");
        line.push(b'\n');
        if let Err(e) = self.input.write_all(&line).await {
            return Err(SandboxError::NotStarted(e.to_string()));
        }
        if let Err(e) = self.input.flush().await {
            return Err(SandboxError::NotStarted(e.to_string()));
        }
        let started = Instant::now();
        let (tx, rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let (id, permit) = self.guard.disarm();
        let driver = Driver {
            docker: self.docker.clone(),
            id: id.clone(),
            output: self.output,
            input: self.input,
            tx,
            cancel: cancel.clone(),
            deadline: started + self.profile.timeout(),
            cap: self.profile.output_bytes,
            // An undo record (base64, with its JSON) is not the command's output: it has its
            // own allowance, only when the request asked for one.
            undo_cap: request.keep_previous.map_or(0, undo_allowance),
            started,
            permit,
            writer,
            after: self.after.take(),
        };
        tokio::spawn(driver.run());
        let mut handle = CallHandle {
            events: rx,
            cancel,
            container_id: id,
            pending: None,
            masks: 0,
            merged,
        };
        if checked {
            match handle.events.recv().await {
                Some(SandboxEvent::Executor(Event::Checked { masks })) => handle.masks = masks,
                Some(SandboxEvent::Executor(Event::Error {
                    code: ErrorCode::StaleSandbox,
                    message,
                })) => return Err(SandboxError::Stale(message)),
                // The stream ended before the executor read the request: nothing ran.
                Some(SandboxEvent::Finished(o)) if !o.timed_out && !o.cancelled => {
                    return Err(SandboxError::NotStarted(
                        o.protocol_error
                            .unwrap_or_else(|| format!("exit status {:?}", o.exit_code)),
                    ))
                }
                other => handle.pending = other,
            }
        }
        Ok(handle)
    }

    /// Kills and removes the container without sending anything.
    pub async fn discard(mut self) {
        let (id, permit) = self.guard.disarm();
        let _ = remove_container(&self.docker, &id).await;
        drop(permit);
    }
}

/// The caller's side of a running call. Dropping it (or [`CallHandle::cancel`]) kills the
/// container; it is removed in every case.
pub struct CallHandle {
    events: mpsc::Receiver<SandboxEvent>,
    cancel: CancellationToken,
    container_id: String,
    /// An event read while waiting for the mask check.
    pending: Option<SandboxEvent>,
    masks: u32,
    merged: Vec<String>,
}

impl CallHandle {
    /// The next event; `None` after `Finished`.
    pub async fn next(&mut self) -> Option<SandboxEvent> {
        if let Some(e) = self.pending.take() {
            return Some(e);
        }
        self.events.recv().await
    }

    /// How many masks the executor checked before the tool ran.
    pub fn masks(&self) -> u32 {
        self.masks
    }

    /// Directories masked whole because the workspace had too many protected paths.
    pub fn merged_masks(&self) -> &[String] {
        &self.merged
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels this call (for another task, e.g. a user's cancel request).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// Collects every event until the end (for callers that don't stream).
    pub async fn collect(mut self) -> (Vec<Event>, Outcome) {
        let mut events = Vec::new();
        while let Some(ev) = self.next().await {
            match ev {
                SandboxEvent::Executor(e) => events.push(e),
                SandboxEvent::Finished(o) => return (events, o),
            }
        }
        // The driver always sends `Finished`; reaching here means it panicked.
        let outcome = Outcome {
            protocol_error: Some("the sandbox driver ended without an outcome".into()),
            ..Outcome::default()
        };
        (events, outcome)
    }
}

impl Drop for CallHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

enum End {
    Eof,
    CapExceeded,
    ReceiverGone,
    StreamError(String),
    Timeout,
    Cancelled,
}

/// Drives one call: reads the attach stream, enforces deadline and cap, reports, removes.
struct Driver {
    docker: Docker,
    id: String,
    output: OutputStream,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    tx: mpsc::Sender<SandboxEvent>,
    cancel: CancellationToken,
    deadline: Instant,
    cap: u64,
    undo_cap: u64,
    started: Instant,
    permit: Option<OwnedSemaphorePermit>,
    /// Held by a writable call until its container is gone.
    writer: Option<views::Writer>,
    after: Option<AfterCall>,
}

/// Bytes of stderr kept for diagnostics.
const STDERR_TAIL: usize = 4096;

/// Bytes an undo record of `keep` content bytes may take on the wire: its base64 content,
/// and up to [`MAX_UNDO_FILES`] entries of paths, hashes and reasons.
fn undo_allowance(keep: u64) -> u64 {
    const PER_FILE: u64 = 2 * 4096 + 512;
    keep.div_ceil(3) * 4 + airlock_executor::protocol::MAX_UNDO_FILES as u64 * PER_FILE
}

/// How every `undo` event line starts (serde writes the tag first).
const UNDO_LINE: &[u8] = br#"{"event":"undo""#;

#[derive(Default)]
struct ReadState {
    total: u64,
    /// Bytes counted against the output cap: stderr and every stdout line but undo records.
    output: u64,
    /// Bytes of undo records, counted against their own allowance.
    undo: u64,
    line: Vec<u8>,
    stderr: Vec<u8>,
    protocol_error: Option<String>,
    /// A `result` or `error` event arrived.
    finished: bool,
    /// The result was a file tool's, or a shell command's that exited 0 unsignalled with no
    /// OOM kill in the container.
    clean: bool,
}

impl Driver {
    async fn run(self) {
        let Driver {
            docker,
            id,
            mut output,
            input,
            tx,
            cancel,
            deadline,
            cap,
            undo_cap,
            started,
            permit,
            writer,
            after,
        } = self;
        let mut st = ReadState::default();
        let end = {
            let read = read_events(&mut output, &tx, (cap, undo_cap), &mut st);
            tokio::select! {
                end = read => end,
                _ = tokio::time::sleep_until(deadline.into()) => End::Timeout,
                _ = cancel.cancelled() => End::Cancelled,
                _ = tx.closed() => End::ReceiverGone,
            }
        };
        // Close both halves of the attach connection now: a half-open attach keeps the daemon
        // blocked writing output nobody reads, holding the container lock so kill, wait and
        // inspect would hang until their client timeouts.
        drop(output);
        drop(input);
        let mut outcome = Outcome::default();
        match &end {
            End::Eof => {}
            End::CapExceeded => outcome.output_truncated = true,
            End::Timeout => outcome.timed_out = true,
            End::Cancelled | End::ReceiverGone => outcome.cancelled = true,
            End::StreamError(e) => outcome.protocol_error = Some(e.clone()),
        }
        if !matches!(end, End::Eof) {
            let kill = KillContainerOptionsBuilder::default()
                .signal("SIGKILL")
                .build();
            let _ = docker.kill_container(&id, Some(kill)).await;
        }
        // A container whose tool succeeded (a shell command exited 0 and its executor saw no
        // OOM kill) and whose executor then closed its stream has exited 0 by itself: waiting
        // for its status and inspecting it add two Docker round trips and nothing else.
        let clean = matches!(end, End::Eof) && st.clean;
        outcome.exit_code = match clean {
            true => Some(0),
            false => wait_exit(&docker, &id).await,
        };
        outcome.duration = started.elapsed();
        let info = match clean {
            true => None,
            false => docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .ok(),
        };
        if let Some(info) = info {
            if let Some(state) = info.state {
                outcome.oom_killed = state.oom_killed.unwrap_or(false);
                if outcome.exit_code.is_none() {
                    outcome.exit_code = state.exit_code;
                }
            }
        }
        outcome.output_bytes = st.total;
        outcome.stderr_tail = String::from_utf8_lossy(&st.stderr).into_owned();
        if outcome.protocol_error.is_none() {
            outcome.protocol_error = st.protocol_error;
        }
        if matches!(end, End::Eof) && !st.finished && outcome.protocol_error.is_none() {
            outcome.protocol_error = Some(format!(
                "the executor exited (status {}) without a result{}",
                outcome
                    .exit_code
                    .map_or_else(|| "unknown".to_string(), |c| c.to_string()),
                if outcome.oom_killed {
                    ": it ran out of memory"
                } else {
                    ""
                }
            ));
        }
        // The container has exited: it writes nothing more.
        drop(writer);
        let _ = tx.send(SandboxEvent::Finished(outcome)).await;
        // Removal happens after the caller has its outcome: off the critical path.
        let _ = remove_container(&docker, &id).await;
        drop(permit);
        if let Some(f) = after {
            f();
        }
    }
}

async fn wait_exit(docker: &Docker, id: &str) -> Option<i64> {
    let mut wait = docker.wait_container(id, None::<WaitContainerOptions>);
    let waited = tokio::time::timeout(Duration::from_secs(30), wait.next()).await;
    match waited {
        Ok(Some(Ok(r))) => Some(r.status_code),
        Ok(Some(Err(DockerError::DockerContainerWaitError { code, .. }))) => Some(code),
        _ => None,
    }
}

async fn read_events(
    output: &mut OutputStream,
    tx: &mpsc::Sender<SandboxEvent>,
    (cap, undo_cap): (u64, u64),
    st: &mut ReadState,
) -> End {
    while let Some(item) = output.next().await {
        let (bytes, is_stdout) = match item {
            Ok(LogOutput::StdOut { message }) => (message, true),
            Ok(LogOutput::StdErr { message }) => (message, false),
            Ok(_) => continue,
            Err(e) => return End::StreamError(format!("attach stream failed: {e}")),
        };
        st.total += bytes.len() as u64;
        if !is_stdout {
            st.output += bytes.len() as u64;
            if st.output > cap {
                return End::CapExceeded;
            }
            st.stderr.extend_from_slice(&bytes);
            if st.stderr.len() > STDERR_TAIL {
                let cut = st.stderr.len() - STDERR_TAIL;
                st.stderr.drain(..cut);
            }
            continue;
        }
        st.line.extend_from_slice(&bytes);
        while let Some(pos) = st.line.iter().position(|b| *b == b'\n') {
            let rest = st.line.split_off(pos + 1);
            let line = std::mem::replace(&mut st.line, rest);
            // Checked before the line is passed on: nothing over a cap reaches the caller.
            if line.starts_with(UNDO_LINE) {
                st.undo += line.len() as u64;
                if st.undo > undo_cap {
                    return End::CapExceeded;
                }
            } else {
                st.output += line.len() as u64;
                if st.output > cap {
                    return End::CapExceeded;
                }
            }
            let line = &line[..line.len() - 1];
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Event>(line) {
                Ok(ev) => {
                    st.finished |= matches!(
                        ev,
                        Event::Result { .. } | Event::Error { .. } | Event::Survey { .. }
                    );
                    st.clean |= match &ev {
                        Event::Result {
                            result: ToolResult::RunShell(r),
                        } => r.exit_code == Some(0) && r.signal.is_none() && r.oom_kills == Some(0),
                        Event::Result { .. } | Event::Survey { .. } => true,
                        _ => false,
                    };
                    if tx.send(SandboxEvent::Executor(ev)).await.is_err() {
                        return End::ReceiverGone;
                    }
                }
                Err(e) => {
                    if st.protocol_error.is_none() {
                        st.protocol_error = Some(format!(
                            "the executor wrote a line that is not an event: {e}"
                        ));
                    }
                }
            }
        }
        // The line still arriving counts where it will belong.
        let pending = st.line.len() as u64;
        let undo_so_far = st.line.starts_with(UNDO_LINE) || UNDO_LINE.starts_with(&st.line);
        if undo_so_far && st.undo + pending > undo_cap.max(UNDO_LINE.len() as u64)
            || !undo_so_far && st.output + pending > cap
        {
            return End::CapExceeded;
        }
    }
    End::Eof
}
