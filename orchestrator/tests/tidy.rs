//! The code map's boundaries, checked on every build of the tests: the pure core imports no
//! Docker, Redis, HTTP, LLM or async-runtime code; only the sandbox names bollard; only the
//! store names redis; every module says what it is in a `//!` line. A violation fails with
//! the file and line, so a boundary can only move by editing this file (and docs/ARCHITECTURE.md).

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as (path relative to `src/`, text).
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(src())
                    .expect("under src")
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, std::fs::read_to_string(&p).expect("read")));
            }
        }
    }
    out.sort();
    assert!(out.len() > 20, "found only {} source files", out.len());
    out
}

/// Lines of code (comments and doc comments left out) that mention `needle` as a path
/// segment: `needle::`, `needle;` or `needle::{`.
fn mentions(text: &str, needle: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            !t.starts_with("//")
        })
        .filter(|(_, l)| {
            let l = l.split("//").next().unwrap_or("");
            l.match_indices(needle).any(|(i, _)| {
                let before = l[..i].chars().last();
                let after = &l[i + needle.len()..];
                let starts = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
                starts && (after.starts_with("::") || after.starts_with(';'))
            })
        })
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .collect()
}

fn check(rule: &str, allowed: impl Fn(&str) -> bool, needles: &[&str]) {
    let mut bad = Vec::new();
    for (file, text) in sources(&src()) {
        if allowed(&file) {
            continue;
        }
        // Unit tests inside a module may use test-only helpers; boundaries hold for the code.
        let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
        for n in needles {
            for (line, l) in mentions(code, n) {
                bad.push(format!("orchestrator/src/{file}:{line}: {l}"));
            }
        }
    }
    assert!(bad.is_empty(), "{rule}:\n{}", bad.join("\n"));
}

/// The pure core: policy evaluation, the call state machine, the event vocabulary, limits
/// and their bounds.
fn is_pure_core(file: &str) -> bool {
    file == "calls.rs"
        || file == "events.rs"
        || file == "limits.rs"
        || file == "policy.rs"
        || file.starts_with("policy/")
}

#[test]
fn the_pure_core_knows_no_docker_redis_http_llm_or_runtime() {
    check(
        "the pure core (calls, limits, policy) imports an outer layer",
        |f| !is_pure_core(f),
        &[
            "bollard",
            "redis",
            "axum",
            "reqwest",
            "hyper",
            "tokio",
            "tokio_tungstenite",
            "sandbox",
            "store",
            "engine",
            "api",
            "agent",
            "server",
            "llm",
            "web",
            "client",
            "doctor",
            "quota",
            "metrics",
        ],
    );
}

#[test]
fn only_the_sandbox_talks_to_docker() {
    check(
        "bollard outside orchestrator/src/sandbox/",
        |f| f.starts_with("sandbox/"),
        &["bollard"],
    );
}

#[test]
fn only_the_store_talks_to_redis() {
    check(
        "the redis crate outside orchestrator/src/store",
        |f| f.starts_with("store/"),
        &["redis"],
    );
}

#[test]
fn every_module_says_what_it_is() {
    let missing: Vec<String> = sources(&src())
        .into_iter()
        .filter(|(_, t)| !t.starts_with("//!"))
        .map(|(f, _)| format!("orchestrator/src/{f}"))
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a `//!` line at the top:\n{}",
        missing.join("\n")
    );
}

/// The checker itself finds what it should (so an empty result means something).
#[test]
fn the_checker_sees_imports_and_ignores_comments() {
    let text = "use bollard::Docker;\n// bollard::x in a comment\nlet s = \"x\"; redis::cmd(\"PING\");\nlet my_redis::y = 1;\nuse crate::store;\n";
    assert_eq!(mentions(text, "bollard").len(), 1);
    assert_eq!(mentions(text, "redis").len(), 1);
    assert_eq!(mentions(text, "store").len(), 1);
}
