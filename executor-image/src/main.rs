//! Entry point of the sandbox container: read one request on stdin, run it against
//! `/workspace`, write JSON-lines events on stdout, exit (see the library docs for the codes).

use std::path::Path;

fn main() {
    // SAFETY: setting a signal disposition at startup, before any thread exists.
    // A write past the container's file-size ulimit then fails with EFBIG (reported as
    // `too_large`) instead of killing the executor with SIGXFSZ.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
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
