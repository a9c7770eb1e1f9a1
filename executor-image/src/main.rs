//! Entry point of the sandbox container: read one request on stdin, run it, exit.
fn main() {
    eprintln!("airlock-executor: not built yet");
    std::process::exit(1);
}
