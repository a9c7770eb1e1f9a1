//! A real `redis-server` for one test: started on a free 127.0.0.1 port (and a unix socket) in
//! its own temporary directory, killed when dropped. Never skips: a missing `redis-server`
//! binary is a panic that says how to install it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `--requirepass` (the `default` user's password).
    pub password: Option<String>,
    /// An extra ACL user `(name, password)` with every permission.
    pub acl_user: Option<(String, String)>,
    /// Keep data across `stop()`/`restart()`: append-only file, fsync on every write.
    pub persistent: bool,
}

/// A running `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    opts: RedisOptions,
}

impl RedisServer {
    /// No password, no persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default())
    }

    /// `--requirepass pw`.
    pub fn start_with_password(pw: &str) -> RedisServer {
        RedisServer::start_with(RedisOptions {
            password: Some(pw.into()),
            ..Default::default()
        })
    }

    /// Data survives `stop()` + `restart()` (AOF with `appendfsync always`).
    pub fn start_persistent() -> RedisServer {
        RedisServer::start_with(RedisOptions {
            persistent: true,
            ..Default::default()
        })
    }

    pub fn start_with(opts: RedisOptions) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("airlock-redis-")
            .tempdir()
            .expect("tempdir for redis-server");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            opts,
        };
        // The port is free when we look, but another process may take it before redis binds
        // it: try a few.
        for _ in 0..5 {
            server.port = crate::free_port();
            if server.spawn_and_wait() {
                return server;
            }
        }
        panic!(
            "redis-server did not start on a free port; its log:\n{}",
            server.log()
        );
    }

    /// `redis://[:pw@]127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match &self.opts.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `unix:///…/redis.sock` (with the password, if any, as `?pass=`).
    pub fn unix_url(&self) -> String {
        let base = format!("unix://{}", self.socket_path().display());
        match &self.opts.password {
            Some(pw) => format!("{base}?pass={pw}"),
            None => base,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (and, when persistent, with the same data).
    pub fn restart(&mut self) {
        self.stop();
        // The old socket may linger in TIME_WAIT; redis sets SO_REUSEADDR, so a few tries
        // cover a port briefly taken by someone else.
        for _ in 0..10 {
            if self.spawn_and_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "redis-server did not restart on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&mut self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is not running");
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", child.id());
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Spawns the process and waits (bounded) for PING; false when it exited (port taken).
    fn spawn_and_wait(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--unixsocket")
            .arg(self.socket_path())
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--save")
            .arg("")
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .arg("--daemonize")
            .arg("no");
        if self.opts.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(pw) = &self.opts.password {
            cmd.arg("--requirepass").arg(pw);
        }
        if let Some((user, pw)) = &self.opts.acl_user {
            cmd.arg("--user")
                .arg(user)
                .arg("on")
                .arg(format!(">{pw}"))
                .arg("~*")
                .arg("&*")
                .arg("+@all");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: these tests need a real Redis \
                 (apt-get install redis-server)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        // Not `wait_until`: it polls every 20 ms (every test starts a Redis, which is up within
        // a few ms) and answers `false` when the process died (the caller tries another start).
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.child = None;
                return false;
            }
            if answers_ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        panic!(
            "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}; its log:\n{}",
            self.port,
            self.log()
        );
    }
}

/// True when the server answers PING with PONG, or asks for authentication (it is up).
fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => {
            let reply = &buf[..n];
            reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH")
        }
        _ => false,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
