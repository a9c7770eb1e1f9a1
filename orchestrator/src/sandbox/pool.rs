//! The warm pool: started, idle one-shot containers for calls that need no approval, kept per
//! key — everything that makes two containers interchangeable (image, profile: uid:gid, runtime
//! and limits; workspace; the protected-path rules and so the mask set; read-only mount). A
//! container is taken by exactly one call and removed after it, never reused or `exec`ed into.
//!
//! Only read-only containers are pooled: a writable container holds its workspace's writer
//! lock while it runs and may need read-only views made under that lock (see `views`), so
//! writes keep their own containers (prepared during approval, or made cold).
//!
//! Never a wrong container: each idle container remembers the pool epoch (bumped by a policy
//! reload: [`Pool::clear`]) and its workspace's writer generation when it was made; a take
//! skips (and removes) any whose epoch or generation is not current, and any whose attach
//! stream has ended (its executor died). The executor itself checks the masks against the
//! workspace when the request arrives, so a mask set that went stale in between costs a
//! retry in a fresh container, never a leak.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{CallSpec, Prepared, Profile};

/// Pool sizes; `per_key = 0` turns the pool off.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Idle containers kept per key.
    pub per_key: usize,
    /// Idle containers kept in all (counted against `max_containers`, and given up at once
    /// when a container is needed and none is free).
    pub max_idle: usize,
    /// A key nobody took from for this long is emptied.
    pub idle: Duration,
}

impl PoolConfig {
    pub fn disabled() -> PoolConfig {
        PoolConfig {
            per_key: 0,
            max_idle: 0,
            idle: Duration::from_secs(120),
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_key > 0 && self.max_idle > 0
    }
}

/// Why idle containers were removed (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Discard {
    /// A policy reload.
    Policy,
    /// A writer ran in the workspace since the container was made.
    Write,
    /// Its executor was gone when a call came for it.
    Dead,
    /// Nobody took one of its key for the idle timeout.
    Idle,
    /// A call needed a container and none was free.
    Evicted,
    /// The pool was over its caps (e.g. a refill raced a take).
    Surplus,
    /// The server is stopping.
    Shutdown,
}

impl Discard {
    pub fn as_str(&self) -> &'static str {
        match self {
            Discard::Policy => "policy",
            Discard::Write => "write",
            Discard::Dead => "dead",
            Discard::Idle => "idle",
            Discard::Evicted => "evicted",
            Discard::Surplus => "surplus",
            Discard::Shutdown => "shutdown",
        }
    }
}

/// Counters for metrics and doctor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub hits: u64,
    pub misses: u64,
    /// Idle containers now.
    pub idle: usize,
    pub discards: BTreeMap<&'static str, u64>,
}

/// What makes two containers interchangeable. The image is the pinned ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PoolKey(String);

pub(super) fn key(image_id: &str, profile: &Profile, spec: &CallSpec) -> PoolKey {
    let v = serde_json::json!({
        "image": image_id,
        "profile": profile,
        "workspace": spec.workspace,
        "writable": spec.writable,
        "protected": spec.protected,
    });
    PoolKey(v.to_string())
}

/// The labels of a pooled container: it belongs to no call until one takes it.
pub(super) fn pool_spec(spec: &CallSpec) -> CallSpec {
    CallSpec {
        session_id: "pool".into(),
        call_id: "pool".into(),
        tool: "pool".into(),
        ..spec.clone()
    }
}

struct Idle {
    prepared: Prepared,
    epoch: u64,
    generation: u64,
}

struct Entry {
    workspace: PathBuf,
    idle: VecDeque<Idle>,
    filling: usize,
    last_take: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<PoolKey, Entry>,
    closed: bool,
}

impl State {
    fn idle_total(&self) -> usize {
        self.entries.values().map(|e| e.idle.len()).sum()
    }
    fn filling_total(&self) -> usize {
        self.entries.values().map(|e| e.filling).sum()
    }
}

pub(super) struct Pool {
    cfg: PoolConfig,
    state: Mutex<State>,
    epoch: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    discards: Mutex<BTreeMap<&'static str, u64>>,
}

/// Containers the pool gave up; the caller removes them (off any lock).
pub(super) type Removed = Vec<Prepared>;

impl Pool {
    pub fn new(cfg: PoolConfig) -> Pool {
        Pool {
            cfg,
            state: Mutex::default(),
            epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            discards: Mutex::default(),
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn count(&self, why: Discard, n: usize) {
        if n > 0 {
            *self
                .discards
                .lock()
                .expect("pool discards lock")
                .entry(why.as_str())
                .or_default() += n as u64;
        }
    }

    /// An idle container for `key` made under the current epoch and `generation`, with its
    /// executor still there; the others met on the way are returned for removal.
    pub fn take(&self, key: &PoolKey, generation: u64) -> (Option<Prepared>, Removed) {
        let epoch = self.epoch();
        let mut removed = Vec::new();
        let mut got = None;
        let (mut stale, mut dead) = (0, 0);
        {
            let mut st = self.state.lock().expect("pool lock");
            if let Some(e) = st.entries.get_mut(key) {
                e.last_take = Instant::now();
                while let Some(mut i) = e.idle.pop_front() {
                    if i.epoch != epoch {
                        removed.push(i.prepared);
                    } else if i.generation != generation {
                        stale += 1;
                        removed.push(i.prepared);
                    } else if !i.prepared.executor_waiting() {
                        dead += 1;
                        removed.push(i.prepared);
                    } else {
                        got = Some(i.prepared);
                        break;
                    }
                }
            }
        }
        self.count(Discard::Write, stale);
        self.count(Discard::Dead, dead);
        let counter = if got.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        (got, removed)
    }

    /// How many containers to start for `key` now (reserved: each must end in [`Pool::put`]
    /// or [`Pool::unreserve`]). Zero once closed or full.
    pub fn reserve(&self, key: &PoolKey, workspace: &Path) -> usize {
        if !self.cfg.enabled() {
            return 0;
        }
        let mut st = self.state.lock().expect("pool lock");
        if st.closed {
            return 0;
        }
        let room_total = self
            .cfg
            .max_idle
            .saturating_sub(st.idle_total() + st.filling_total());
        let e = st.entries.entry(key.clone()).or_insert_with(|| Entry {
            workspace: workspace.to_path_buf(),
            idle: VecDeque::new(),
            filling: 0,
            last_take: Instant::now(),
        });
        let n = self
            .cfg
            .per_key
            .saturating_sub(e.idle.len() + e.filling)
            .min(room_total);
        e.filling += n;
        n
    }

    /// A refill that could not make its container.
    pub fn unreserve(&self, key: &PoolKey) {
        let mut st = self.state.lock().expect("pool lock");
        if let Some(e) = st.entries.get_mut(key) {
            e.filling = e.filling.saturating_sub(1);
        }
    }

    /// Adds a container made for `key` under `epoch` and `generation`; gives it back (for
    /// removal) when the pool moved on meanwhile or is full.
    pub fn put(
        &self,
        key: &PoolKey,
        prepared: Prepared,
        epoch: u64,
        generation: u64,
    ) -> Option<Prepared> {
        let mut st = self.state.lock().expect("pool lock");
        let closed = st.closed;
        let Some(e) = st.entries.get_mut(key) else {
            drop(st);
            self.count(Discard::Surplus, 1);
            return Some(prepared);
        };
        e.filling = e.filling.saturating_sub(1);
        if closed || epoch != self.epoch() {
            drop(st);
            self.count(
                if closed {
                    Discard::Shutdown
                } else {
                    Discard::Policy
                },
                1,
            );
            return Some(prepared);
        }
        if e.idle.len() >= self.cfg.per_key {
            drop(st);
            self.count(Discard::Surplus, 1);
            return Some(prepared);
        }
        e.idle.push_back(Idle {
            prepared,
            epoch,
            generation,
        });
        None
    }

    /// Every idle container, for `why` (a policy reload bumps the epoch first, so refills in
    /// flight are dropped when they finish). `close`: no refill is accepted from now on.
    pub fn clear(&self, why: Discard, close: bool) -> Removed {
        if why == Discard::Policy {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        let mut st = self.state.lock().expect("pool lock");
        st.closed |= close;
        let removed: Removed = st
            .entries
            .values_mut()
            .flat_map(|e| e.idle.drain(..).map(|i| i.prepared))
            .collect();
        drop(st);
        self.count(why, removed.len());
        removed
    }

    /// The idle containers of one workspace (a writer is about to change it).
    pub fn clear_workspace(&self, workspace: &Path) -> Removed {
        let mut st = self.state.lock().expect("pool lock");
        let removed: Removed = st
            .entries
            .values_mut()
            .filter(|e| e.workspace == workspace)
            .flat_map(|e| e.idle.drain(..).map(|i| i.prepared))
            .collect();
        drop(st);
        self.count(Discard::Write, removed.len());
        removed
    }

    /// One idle container, the least recently wanted key's, to free its place.
    pub fn evict_one(&self) -> Option<Prepared> {
        let mut st = self.state.lock().expect("pool lock");
        let p = st
            .entries
            .values_mut()
            .filter(|e| !e.idle.is_empty())
            .min_by_key(|e| e.last_take)
            .and_then(|e| e.idle.pop_front())
            .map(|i| i.prepared);
        drop(st);
        if p.is_some() {
            self.count(Discard::Evicted, 1);
        }
        p
    }

    /// Empties keys nobody took from for the idle timeout and drops those of workspaces whose
    /// generation moved (`generation_of`), forgetting empty keys.
    pub fn sweep(&self, generation_of: impl Fn(&Path) -> u64) -> Removed {
        let now = Instant::now();
        let epoch = self.epoch();
        let mut idle_out = Vec::new();
        let mut stale_out = Vec::new();
        let mut st = self.state.lock().expect("pool lock");
        for e in st.entries.values_mut() {
            if now.duration_since(e.last_take) >= self.cfg.idle {
                idle_out.extend(e.idle.drain(..).map(|i| i.prepared));
                continue;
            }
            let g = generation_of(&e.workspace);
            let (keep, drop_): (VecDeque<Idle>, VecDeque<Idle>) = e
                .idle
                .drain(..)
                .partition(|i| i.epoch == epoch && i.generation == g);
            e.idle = keep;
            stale_out.extend(drop_.into_iter().map(|i| i.prepared));
        }
        st.entries.retain(|_, e| {
            !e.idle.is_empty() || e.filling > 0 || now.duration_since(e.last_take) < self.cfg.idle
        });
        drop(st);
        self.count(Discard::Idle, idle_out.len());
        self.count(Discard::Write, stale_out.len());
        idle_out.extend(stale_out);
        idle_out
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.state.lock().expect("pool lock");
        PoolStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            idle: st.idle_total(),
            discards: self.discards.lock().expect("pool discards lock").clone(),
        }
    }
}
