//! `airlock serve` with no Redis URL configured: its own `redis-server` child.
//!
//! The child listens on a unix socket in the data dir (`DATA/redis/redis.sock`, mode 0700, no
//! TCP port at all) and keeps an append-only file in the same directory, so a restart of
//! Airlock (or of the machine) keeps sessions, pending approvals and the audit trail.
//!
//! Lifetime: the child is stopped (SIGTERM, which makes Redis fsync its AOF and exit) when the
//! [`EmbeddedRedis`] is dropped, i.e. after the server has drained its calls. It never outlives
//! Airlock: it is started with `PR_SET_PDEATHSIG = SIGTERM`, so the kernel stops it when Airlock
//! dies, even by `kill -9`. It runs in its own process group, so a Ctrl-C in the terminal
//! reaches Airlock only, and Airlock stops Redis after its own shutdown (in that order).
//!
//! One data dir belongs to one `airlock serve`: an exclusive `flock` on `DATA/redis/airlock.lock`
//! refuses a second one instead of letting two Redis processes write the same AOF.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `redis-server` may take to answer after it starts (loading a large AOF counts).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping `redis-server` may take before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest unix socket path the kernel accepts (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Errors starting the embedded Redis. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedRedisError {
    #[error(
        "no Redis URL is configured (redis.url, AIRLOCK_REDIS_URL), so airlock starts its own \
         Redis, but `{binary}` is not installed: install it with `apt-get install redis-server` \
         (scripts/start.sh does), or point redis.url / AIRLOCK_REDIS_URL at a Redis you run"
    )]
    NotInstalled { binary: String },
    #[error("cannot prepare the embedded Redis in {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another `airlock serve` already uses the data dir {0}: one data dir belongs to one server \
         (give this one another data_dir, or stop the other)"
    )]
    Locked(String),
    #[error(
        "a Redis still answers on {0} although no airlock holds the data dir: stop that \
         redis-server (it may be left over from a previous run) and start again"
    )]
    StaleServer(String),
    #[error(
        "the embedded Redis socket path {path} is {len} bytes, more than the {MAX_SOCKET_PATH} \
         a unix socket allows: choose a shorter data_dir"
    )]
    PathTooLong { path: String, len: usize },
    #[error(
        "redis-server exited before it was ready ({status}); the end of its log {log}:\n{tail}"
    )]
    Exited {
        status: String,
        log: String,
        tail: String,
    },
    #[error(
        "redis-server did not answer on {socket} within {secs} s; the end of its log {log}:\n{tail}"
    )]
    Timeout {
        socket: String,
        secs: u64,
        log: String,
        tail: String,
    },
}

/// A running `redis-server` child owned by this process. Dropping it stops the server.
pub struct EmbeddedRedis {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    /// Holds the data dir's lock for as long as the server runs.
    _lock: File,
}

impl std::fmt::Debug for EmbeddedRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRedis")
            .field("pid", &self.pid())
            .field("socket", &self.socket)
            .finish()
    }
}

/// Where the embedded Redis keeps its socket, AOF, log and lock: `DATA/redis`.
pub fn redis_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("redis")
}

/// The embedded Redis's socket for a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    redis_dir(data_dir).join("redis.sock")
}

/// `unix://…` for the embedded Redis of a data dir.
pub fn url_for(data_dir: &Path) -> String {
    format!("unix://{}", socket_path(data_dir).display())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedRedisError + '_ {
    move |source| EmbeddedRedisError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Makes `dir` (and missing parents, 0700), and tightens `dir` itself to 0700.
fn private_dir(dir: &Path) -> Result<(), EmbeddedRedisError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// What a Redis on `socket` answers to PING: `Some(reply)` (e.g. `+PONG`, `-LOADING …`) or
/// `None` when nothing listens.
pub fn ping_socket(socket: &Path) -> Option<String> {
    let mut s = UnixStream::connect(socket).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    s.write_all(b"PING\r\n").ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
}

/// Finds `binary` the way a shell would: as given when it names a path, else the first
/// executable file of that name in `PATH`. (With the child's environment cleared, `exec`
/// itself would fall back to a default search path and find a binary `PATH` does not name.)
pub fn find_binary(binary: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| is_exec(p))
}

/// The last `lines` lines of a file (for error messages).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl EmbeddedRedis {
    /// Starts `binary` (normally `redis-server`) for `data_dir` and waits until it answers.
    ///
    /// Call it from the thread that lives as long as the process (`airlock serve` calls it on
    /// the main thread): `PR_SET_PDEATHSIG` fires when the *thread* that started the child
    /// exits.
    pub fn start(data_dir: &Path, binary: &str) -> Result<EmbeddedRedis, EmbeddedRedisError> {
        let dir = redis_dir(data_dir);
        let socket = socket_path(data_dir);
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(EmbeddedRedisError::PathTooLong {
                path: socket.display().to_string(),
                len,
            });
        }
        let program = find_binary(binary).ok_or_else(|| EmbeddedRedisError::NotInstalled {
            binary: binary.to_string(),
        })?;
        private_dir(&dir)?;
        let lock_path = dir.join("airlock.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock(2) on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
                EmbeddedRedisError::Locked(data_dir.display().to_string())
            } else {
                EmbeddedRedisError::Io {
                    path: lock_path.display().to_string(),
                    source: e,
                }
            });
        }
        // A previous airlock killed a moment ago: its Redis got SIGTERM from the kernel and is
        // writing its AOF. Give it time to finish rather than start a second one on the files.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while ping_socket(&socket).is_some() {
            if Instant::now() > deadline {
                return Err(EmbeddedRedisError::StaleServer(
                    socket.display().to_string(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = dir.join("redis.log");
        let mut cmd = Command::new(&program);
        cmd.arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--dir")
            .arg(&dir)
            .arg("--appendonly")
            .arg("yes")
            .arg("--appendfsync")
            .arg("everysec")
            // AOF is the one persistence story (its rewrite starts with an RDB preamble);
            // no separate dump.rdb snapshots.
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--supervised")
            .arg("no")
            .arg("--logfile")
            .arg(&log)
            .arg("--always-show-logo")
            .arg("no")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: only async-signal-safe calls between fork and exec (setpgid, prctl, getppid,
        // _exit), no allocation.
        unsafe {
            cmd.pre_exec(move || {
                // Its own process group: a terminal's Ctrl-C goes to airlock only, which
                // stops Redis after draining its calls.
                libc::setpgid(0, 0);
                // Dies with airlock, whatever kills airlock.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Airlock died between fork and prctl: the signal will never come.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EmbeddedRedisError::NotInstalled {
                    binary: binary.to_string(),
                }
            } else {
                EmbeddedRedisError::Io {
                    path: binary.to_string(),
                    source: e,
                }
            }
        })?;
        let mut redis = EmbeddedRedis {
            child: Some(child),
            dir,
            socket,
            _lock: lock,
        };
        redis.wait_ready(&log)?;
        tracing::info!(
            pid = redis.pid().unwrap_or_default(),
            socket = %redis.socket.display(),
            "embedded redis-server started"
        );
        Ok(redis)
    }

    fn wait_ready(&mut self, log: &Path) -> Result<(), EmbeddedRedisError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(EmbeddedRedisError::Exited {
                    status: status.to_string(),
                    log: log.display().to_string(),
                    tail: tail(log, 15),
                });
            }
            if ping_socket(&self.socket).is_some_and(|r| r.starts_with("+PONG")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(EmbeddedRedisError::Timeout {
                    socket: self.socket.display().to_string(),
                    secs: READY_TIMEOUT.as_secs(),
                    log: log.display().to_string(),
                    tail: tail(log, 15),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `unix:///…/redis.sock`, for the store.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The directory with the socket, the AOF (`appendonlydir/`) and `redis.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The child's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server: SIGTERM (Redis fsyncs its AOF and exits), SIGKILL after
    /// [`STOP_TIMEOUT`]. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(%status, "embedded redis-server stopped");
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    tracing::warn!("embedded redis-server did not stop after SIGTERM: killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for EmbeddedRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_says_how_to_install_it() {
        let dir = std::env::temp_dir().join(format!("airlock-er-{}", std::process::id()));
        let err = EmbeddedRedis::start(&dir, "/nonexistent/redis-server-for-test").unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let msg = err.to_string();
        assert!(msg.contains("apt-get install redis-server"), "{msg}");
    }

    #[test]
    fn a_too_long_data_dir_is_refused_before_anything_starts() {
        let long = PathBuf::from("/tmp").join("d".repeat(120));
        let err = EmbeddedRedis::start(&long, "redis-server").unwrap_err();
        assert!(
            matches!(err, EmbeddedRedisError::PathTooLong { .. }),
            "{err}"
        );
        assert!(!long.exists());
    }
}
