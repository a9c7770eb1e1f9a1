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
    let code = airlock_executor::serve(
        &mut stdin.lock(),
        &mut stdout.lock(),
        Path::new(airlock_executor::WORKSPACE_ROOT),
    );
    std::process::exit(code);
}
