//! Entry point of the sandbox container: read one request on stdin, run it against
//! `/workspace`, write JSON-lines events on stdout, exit (see the library docs for the codes).

use std::path::Path;

fn main() {
    // SAFETY: setting a signal disposition at startup, before any thread exists.
    // A write past the container's file-size ulimit then fails with EFBIG (reported as
    // `too_large`) instead of killing the executor with SIGXFSZ.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        // Not dumpable: a command running as the same uid cannot open /proc/1/fd/1 and write
        // fake protocol events (a forged survey or result) on the executor's stdout.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let code = airlock_executor::serve_with(
        &mut stdin.lock(),
        &mut stdout.lock(),
        Path::new(airlock_executor::WORKSPACE_ROOT),
        &mut |req| arm_deadline(req.limits.deadline_secs),
    );
    std::process::exit(code);
}

/// The container ends itself at the call's deadline even when nobody outside enforces it any
/// more (the orchestrator was killed): at SIGALRM, kill every other process of the container
/// and exit. As PID 1 of its namespace the executor ignores signals it has no handler for, so
/// the handler is what makes this work.
fn arm_deadline(secs: u64) {
    extern "C" fn on_alarm(_: libc::c_int) {
        // SAFETY: kill and _exit are async-signal-safe. -1: every process this one may signal
        // (as PID 1 of the container's namespace: all the others in it).
        unsafe {
            libc::kill(-1, libc::SIGKILL);
            libc::_exit(airlock_executor::protocol::EXIT_DEADLINE);
        }
    }
    if secs == 0 {
        return;
    }
    // SAFETY: installing a handler that only calls async-signal-safe functions; alarm(2) has
    // no preconditions.
    unsafe {
        libc::signal(libc::SIGALRM, on_alarm as *const () as libc::sighandler_t);
        libc::alarm(secs.min(u32::MAX as u64) as u32);
    }
}
