//! `run_shell`: `/bin/sh -c COMMAND` in its own process group, output streamed as produced,
//! an optional timeout, cleanup of whatever the command left running, and a change report.

use crate::error::{ToolError, ToolResultOr};
use crate::protocol::{ErrorCode, Event, NotKept, RunShellArgs, RunShellResult, StreamKind};
use crate::snapshot::Snapshot;
use crate::text::Utf8Stream;
use crate::Ctx;
use rustix::fs::{fstatvfs, StatVfsMountFlags};
use rustix::process::{kill_process_group, Pid, Signal};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

/// The shell (busybox in the image).
pub const SHELL: &str = "/bin/sh";
/// The child's whole environment.
pub const SHELL_ENV: [(&str, &str); 3] = [
    ("PATH", "/bin:/usr/bin"),
    ("HOME", "/tmp"),
    ("LANG", "C.UTF-8"),
];
/// How long to keep reading after the shell exited and its group was killed: a process that
/// left the group (setsid) may still hold the pipes open.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 16 * 1024;

enum Msg {
    Output(StreamKind, String),
    Eof,
    Exited(std::io::Result<ExitStatus>),
}

pub fn run_shell(
    ctx: &Ctx<'_>,
    args: &RunShellArgs,
    sink: &mut dyn FnMut(Event),
) -> ToolResultOr<RunShellResult> {
    if args.timeout_secs == Some(0) {
        return Err(ToolError::invalid("timeout_secs must be at least 1"));
    }
    let cwd_shown = args.cwd.as_deref().unwrap_or("");
    let cwd = ctx.ws.open_dir(cwd_shown)?;

    let writable = fstatvfs(ctx.ws.root_fd())
        .map(|s| !s.f_flag.contains(StatVfsMountFlags::RDONLY))
        .unwrap_or(false);
    let before =
        writable.then(|| Snapshot::take(ctx.ws.root_fd(), ctx.prot, ctx.limits, ctx.keep_previous));
    let oom_before = oom_kills();

    // stdin: a pipe whose write end is closed reads as EOF, like /dev/null, without needing
    // /dev to exist in the image.
    let (stdin, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| ToolError::new(ErrorCode::Io, format!("cannot create a pipe: {e}")))?;
    drop(writer);
    let mut cmd = Command::new(SHELL);
    cmd.arg("-c")
        .arg(&args.command)
        .env_clear()
        .envs(SHELL_ENV)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let cwd_raw = cwd.fd.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec. fchdir to the fd the
    // resolver opened means the cwd cannot be swapped after the check. SIGXFSZ goes back to
    // its default: the executor ignores it for itself, the command should not inherit that.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            if libc::fchdir(cwd_raw) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ToolError::new(ErrorCode::Io, format!("cannot start {SHELL}: {e}")))?;
    drop(cwd);
    let pid = child.id() as i32;

    let (tx, rx) = mpsc::sync_channel::<Msg>(64);
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let readers = [
        spawn_reader(stdout, StreamKind::Stdout, tx.clone()),
        spawn_reader(stderr, StreamKind::Stderr, tx.clone()),
    ];
    let waiter = {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Msg::Exited(child.wait()));
        })
    };
    drop(tx);

    // A timeout too far away to represent is no timeout.
    let deadline = args
        .timeout_secs
        .and_then(|s| Instant::now().checked_add(Duration::from_secs(s)));
    let mut open_streams = readers.len();
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut timed_out = false;
    let mut drain_until: Option<Instant> = None;
    while open_streams > 0 || status.is_none() {
        let wake = match (deadline.filter(|_| !timed_out), drain_until) {
            (Some(d), Some(g)) => Some(d.min(g)),
            (d, g) => d.or(g),
        };
        let msg = match wake {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Msg::Output(stream, data)) => sink(Event::Output { stream, data }),
            Ok(Msg::Eof) => open_streams -= 1,
            Ok(Msg::Exited(st)) => {
                status = Some(st);
                // Whatever the command left running in its group goes now.
                kill_group(pid);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if drain_until.is_some_and(|g| now >= g) {
                    break;
                }
                if deadline.is_some_and(|d| now >= d) && !timed_out {
                    timed_out = true;
                    kill_group(pid);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if status.is_some() {
        let _ = waiter.join();
    }
    reap_orphans();

    // What the command changed, and (asked to keep it) what it replaced — also when it timed
    // out or its status was lost: the files changed all the same.
    let snapshots = before.map(|before| {
        let after = Snapshot::take(ctx.ws.root_fd(), ctx.prot, ctx.limits, None);
        let truncated = before.is_truncated() || after.is_truncated();
        if let Some(budget) = ctx.keep_previous {
            let mut undo = before.undo(&after, budget, &mut |path| hash_now(ctx, path));
            if truncated {
                undo.not_kept.push(NotKept {
                    path: "…".into(),
                    reason: format!(
                        "the workspace has more than {} entries: changes beyond them are not tracked",
                        ctx.limits.max_snapshot_files
                    ),
                });
            }
            *ctx.undo.borrow_mut() = undo;
        }
        (before, after, truncated)
    });

    if timed_out {
        return Err(ToolError::new(
            ErrorCode::Timeout,
            format!(
                "the command exceeded its timeout of {} s and was killed",
                args.timeout_secs.unwrap_or_default()
            ),
        ));
    }
    let status = match status {
        Some(Ok(st)) => st,
        Some(Err(e)) => {
            return Err(ToolError::new(
                ErrorCode::Internal,
                format!("waiting for the shell failed: {e}"),
            ))
        }
        None => {
            return Err(ToolError::new(
                ErrorCode::Internal,
                "the shell's exit status was lost",
            ))
        }
    };

    let (changes, changes_truncated) = match snapshots {
        Some((before, after, truncated)) => (before.changes(&after), truncated),
        None => (Vec::new(), false),
    };
    Ok(RunShellResult {
        exit_code: status.code(),
        signal: status.signal(),
        changes,
        changes_truncated,
        oom_kills: oom_before
            .zip(oom_kills())
            .map(|(b, a)| a.saturating_sub(b)),
    })
}

/// The sha256 of a file the command left, read through the resolver (bounded).
fn hash_now(ctx: &Ctx<'_>, path: &str) -> Result<String, String> {
    let r = ctx.ws.open_read(path).map_err(|e| e.message)?;
    let mut file = std::fs::File::from(r.fd);
    let data = crate::read::read_regular_file(&mut file, path, ctx.limits.max_file_bytes, "undo")
        .map_err(|e| e.message)?;
    Ok(crate::text::sha256_hex(&data))
}

/// How many times the OOM killer has struck in this container's memory cgroup (v2:
/// `memory.events`, v1: `memory.oom_control`), when the container can read it.
fn oom_kills() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.events",
        "/sys/fs/cgroup/memory/memory.oom_control",
    ]
    .iter()
    .find_map(|p| {
        std::fs::read_to_string(p).ok()?.lines().find_map(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse().ok())
        })
    })
}

fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    stream: StreamKind,
    tx: SyncSender<Msg>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut decoder = Utf8Stream::default();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let data = decoder.push(&buf[..n]);
                    if !data.is_empty() && tx.send(Msg::Output(stream, data)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let rest = decoder.finish();
        if !rest.is_empty() {
            let _ = tx.send(Msg::Output(stream, rest));
        }
        let _ = tx.send(Msg::Eof);
    })
}

/// SIGKILL to the command's process group (never to pid 1 or below: `kill(-1)` is everyone).
fn kill_group(pid: i32) {
    if pid > 1 {
        if let Some(pid) = Pid::from_raw(pid) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

/// As PID 1 of the container, the executor inherits orphans: reap every exited one. Outside a
/// container (tests), other children of this process are not ours to reap.
fn reap_orphans() {
    if !rustix::process::getpid().is_init() {
        return;
    }
    while let Ok(Some(_)) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {}
}

#[cfg(test)]
mod tests {
    use crate::protocol::*;
    use crate::testutil::*;
    use std::time::{Duration, Instant};

    fn shell(command: &str, cwd: Option<&str>, timeout_secs: Option<u64>) -> ToolCall {
        ToolCall::RunShell(RunShellArgs {
            command: command.into(),
            cwd: cwd.map(Into::into),
            timeout_secs,
        })
    }

    fn outputs(events: &[Event]) -> Vec<(StreamKind, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Output { stream, data } => Some((*stream, data.clone())),
                _ => None,
            })
            .collect()
    }

    fn result(r: Result<ToolResult, crate::ToolError>) -> RunShellResult {
        match r.unwrap() {
            ToolResult::RunShell(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn streams_in_order_and_reports_exit_code() {
        let t = T::new(crate::resolve::Strategy::Auto);
        let (events, r) = t.run_events(shell(
            "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; exit 7",
            None,
            None,
        ));
        assert_eq!(
            outputs(&events),
            vec![
                (StreamKind::Stdout, "one\n".into()),
                (StreamKind::Stderr, "two\n".into()),
                (StreamKind::Stdout, "three\n".into()),
            ]
        );
        let r = result(r);
        assert_eq!(r.exit_code, Some(7));
        assert_eq!(r.signal, None);
        assert!(r.changes.is_empty());
    }

    #[test]
    fn output_arrives_while_the_command_runs() {
        let t = T::new(crate::resolve::Strategy::Auto);
        let start = Instant::now();
        let mut first: Option<Duration> = None;
        let r = t.run_with_sink(
            shell("echo early; sleep 1; echo late", None, None),
            &mut |e| {
                if matches!(e, Event::Output { .. }) && first.is_none() {
                    first = Some(start.elapsed());
                }
            },
        );
        result(r);
        assert!(first.unwrap() < Duration::from_millis(800), "{first:?}");
        assert!(start.elapsed() >= Duration::from_secs(1));
    }

    #[test]
    fn environment_cwd_and_signal() {
        let t = T::new(crate::resolve::Strategy::Auto);
        t.mkdir("sub");
        let (events, r) = t.run_events(shell("pwd; env | sort", Some("sub"), None));
        let out: String = outputs(&events).into_iter().map(|(_, d)| d).collect();
        let real = std::fs::canonicalize(t.path("sub")).unwrap();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(real.to_str().unwrap()));
        let env: Vec<&str> = lines
            .filter(|l| {
                !l.starts_with("PWD=")
                    && !l.starts_with("OLDPWD=")
                    && !l.starts_with("SHLVL=")
                    && !l.starts_with("_=")
            })
            .collect();
        assert_eq!(env, ["HOME=/tmp", "LANG=C.UTF-8", "PATH=/bin:/usr/bin"]);
        assert_eq!(result(r).exit_code, Some(0));

        let r = result(t.run(shell("kill -9 $$", None, None)));
        assert_eq!((r.exit_code, r.signal), (None, Some(9)));

        let r = result(t.run(shell("read x; echo \"[$x]\"", None, None)));
        assert_eq!(r.exit_code, Some(0), "stdin reads as EOF");
    }

    #[test]
    fn cwd_is_resolved_beneath_the_root() {
        let t = T::new(crate::resolve::Strategy::WalkOnly);
        t.escape_fixture();
        for p in ["/", "..", "etc", "up", "outdir", "a/../../x"] {
            let e = t.run(shell("pwd", Some(p), None)).unwrap_err();
            assert_eq!(e.code, ErrorCode::PathOutsideWorkspace, "{p}");
        }
        assert_eq!(
            t.run(shell("pwd", Some("dir/target.txt"), None))
                .unwrap_err()
                .code,
            ErrorCode::NotADirectory
        );
        assert_eq!(
            t.run(shell("pwd", Some("nope"), None)).unwrap_err().code,
            ErrorCode::NotFound
        );
    }

    #[test]
    fn timeout_kills_the_group_after_streaming() {
        let t = T::new(crate::resolve::Strategy::Auto);
        let start = Instant::now();
        let (events, r) = t.run_events(shell(
            "echo before; sleep 30 & sleep 30; echo never",
            None,
            Some(1),
        ));
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::Timeout);
        assert!(e.message.contains("1 s"), "{}", e.message);
        assert_eq!(
            outputs(&events),
            vec![(StreamKind::Stdout, "before\n".to_string())]
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn background_processes_do_not_hold_the_call_open() {
        let t = T::new(crate::resolve::Strategy::Auto);
        let start = Instant::now();
        let r = result(t.run(shell("sleep 30 & echo started", None, None)));
        assert_eq!(r.exit_code, Some(0));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn timeout_bounds_and_snapshot_cap() {
        let mut t = T::new(crate::resolve::Strategy::Auto);
        let e = t.run(shell("true", None, Some(0))).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        let r = result(t.run(shell("true", None, Some(u64::MAX))));
        assert_eq!(r.exit_code, Some(0));

        for i in 0..10 {
            t.write(&format!("f{i}"), "x");
        }
        t.limits.max_snapshot_files = 4;
        let r = result(t.run(shell("echo changed > f0; echo new > f9b", None, None)));
        assert!(r.changes_truncated);
        let got: Vec<&str> = r.changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(got, ["f0"]);
    }

    #[test]
    fn multibyte_output_is_never_split() {
        let t = T::new(crate::resolve::Strategy::Auto);
        // 3-byte chars across many pipe reads.
        let (events, r) = t.run_events(shell(
            "i=0; while [ $i -lt 3000 ]; do printf '€'; i=$((i+1)); done",
            None,
            None,
        ));
        result(r);
        let out: String = outputs(&events).into_iter().map(|(_, d)| d).collect();
        assert_eq!(out, "€".repeat(3000));
    }

    #[test]
    fn change_report_with_diffs_and_protection() {
        let t = T::new(crate::resolve::Strategy::Auto);
        t.write("a.txt", "one\ntwo\n");
        t.write("gone.txt", "x\n");
        t.write(".env", "SECRET=1\n");
        let r = result(t.run(shell(
            "printf 'one\\nTWO\\n' > a.txt; rm gone.txt; mkdir -p d; echo new > d/n.txt; echo SECRET=22 > .env",
            None,
            None,
        )));
        let got: Vec<(&str, ChangeKind)> = r
            .changes
            .iter()
            .map(|c| (c.path.as_str(), c.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                (".env", ChangeKind::Modified),
                ("a.txt", ChangeKind::Modified),
                ("d/n.txt", ChangeKind::Created),
                ("gone.txt", ChangeKind::Deleted),
            ]
        );
        assert_eq!(r.changes[0].diff, None);
        let d = r.changes[1].diff.as_deref().unwrap();
        assert!(
            d.starts_with("--- a/a.txt\n+++ b/a.txt\n") && d.contains("-two\n+TWO\n"),
            "{d}"
        );
        assert!(r.changes[2].diff.as_deref().unwrap().contains("+new"));
        assert!(!r.changes_truncated);
    }
}
