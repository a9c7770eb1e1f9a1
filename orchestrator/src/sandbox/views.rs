//! What the sandbox remembers about each workspace's protected paths: the last survey (a cache:
//! every container's executor checks its masks again before a tool runs, so a stale entry costs
//! a retry, never a leak) and the writer lock that keeps read-only views from being swapped
//! while a container is created.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use airlock_executor::protocol::SandboxView;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use super::{CallSpec, Profile};

/// One workspace's writers.
#[derive(Default)]
pub(super) struct WsState {
    /// Read side: held by every running writable container. Write side: held while a
    /// container with read-only views of workspace paths is surveyed and created.
    pub lock: Arc<RwLock<()>>,
    /// Bumped when a writer starts and when it ends: a survey is "clean" for a generation.
    generation: AtomicU64,
}

impl WsState {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// A running writable container's hold on its workspace.
pub(super) struct Writer {
    ws: Arc<WsState>,
    _guard: OwnedRwLockReadGuard<()>,
}

impl Writer {
    pub async fn start(ws: Arc<WsState>) -> Writer {
        let guard = ws.lock.clone().read_owned().await;
        ws.generation.fetch_add(1, Ordering::SeqCst);
        Writer { ws, _guard: guard }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.ws.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Workspace, uid (what the survey could read) and the protected-path rules.
type Key = (PathBuf, u32, [u8; 32]);

struct Cached {
    view: SandboxView,
    generation: u64,
    /// Made while no writer of the workspace ran.
    no_writers: bool,
}

#[derive(Default)]
pub(super) struct Views {
    states: Mutex<HashMap<PathBuf, Arc<WsState>>>,
    cache: Mutex<HashMap<Key, Cached>>,
}

/// Most workspaces remembered; past it the cache starts again (a survey each, no harm).
const MAX_CACHED: usize = 4096;

fn key(profile: &Profile, spec: &CallSpec) -> Key {
    let rules = serde_json::to_vec(&spec.protected).expect("protected paths serialize");
    (
        spec.workspace.clone(),
        profile.uid,
        Sha256::digest(&rules).into(),
    )
}

impl Views {
    pub fn state(&self, workspace: &Path) -> Arc<WsState> {
        let mut states = self.states.lock().expect("states lock");
        if states.len() >= MAX_CACHED && !states.contains_key(workspace) {
            // Drop the states nobody holds.
            states.retain(|_, s| Arc::strong_count(s) > 1);
        }
        states.entry(workspace.to_path_buf()).or_default().clone()
    }

    /// The last survey of this workspace under these rules, however old.
    pub fn cached(&self, profile: &Profile, spec: &CallSpec) -> Option<SandboxView> {
        if spec.protected.is_empty() {
            return None;
        }
        let cache = self.cache.lock().expect("cache lock");
        cache.get(&key(profile, spec)).map(|c| c.view.clone())
    }

    /// The last survey if it was made with no writer running and none has run since.
    pub fn clean(&self, profile: &Profile, spec: &CallSpec, ws: &WsState) -> Option<SandboxView> {
        let cache = self.cache.lock().expect("cache lock");
        cache
            .get(&key(profile, spec))
            .filter(|c| c.no_writers && c.generation == ws.generation())
            .map(|c| c.view.clone())
    }

    pub fn store(
        &self,
        profile: &Profile,
        spec: &CallSpec,
        view: SandboxView,
        generation: u64,
        no_writers: bool,
    ) {
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(
            key(profile, spec),
            Cached {
                view,
                generation,
                no_writers,
            },
        );
    }

    pub fn forget(&self, profile: &Profile, spec: &CallSpec) {
        self.cache
            .lock()
            .expect("cache lock")
            .remove(&key(profile, spec));
    }
}
