//! `airlock doctor`: checks that this host and config can run Airlock, and says what to fix.
//!
//! Each check is ✓ (fine), ! (works, but worth knowing), ✗ (broken: `airlock serve` would fail
//! or the sandbox would be weaker than it claims) or – (skipped because an earlier check
//! failed). The command exits 1 when any check is ✗.
//!
//! The Docker checks go through [`crate::sandbox`] (the only code that talks to Docker): the
//! limit probes are ordinary sandbox calls with the locked profile, run in a scratch workspace
//! of their own. The Redis checks send only `PING` and `INFO` (read-only).

use std::path::Path;

use crate::config::Config;

mod docker;
mod limits;
mod redis_server;
mod workspaces;
use docker::{check_docker, check_image};
use limits::check_limits;
use redis_server::check_redis;
use workspaces::{check_policy, check_workspaces};
pub use workspaces::{check_workspace, check_workspace_with};

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skipped,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
            Status::Skipped => "–",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub section: &'static str,
    pub status: Status,
    pub message: String,
    /// What to do about it (for ✗ and !).
    pub fix: Option<String>,
}

/// Every check, in the order made.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new() -> Report {
        Report::default()
    }

    fn push(
        &mut self,
        section: &'static str,
        status: Status,
        message: String,
        fix: Option<String>,
    ) {
        self.checks.push(Check {
            section,
            status,
            message,
            fix,
        });
    }

    pub fn ok(&mut self, section: &'static str, message: impl Into<String>) {
        self.push(section, Status::Ok, message.into(), None);
    }

    pub fn warn(
        &mut self,
        section: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(section, Status::Warn, message.into(), Some(fix.into()));
    }

    pub fn fail(
        &mut self,
        section: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(section, Status::Fail, message.into(), Some(fix.into()));
    }

    pub fn skip(&mut self, section: &'static str, message: impl Into<String>) {
        self.push(section, Status::Skipped, message.into(), None);
    }

    /// Whether any check is ✗.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The report as printed: sections in the order first seen, then a summary line.
    pub fn render(&self) -> String {
        let mut sections: Vec<&'static str> = Vec::new();
        for c in &self.checks {
            if !sections.contains(&c.section) {
                sections.push(c.section);
            }
        }
        // The usual order, whatever order the checks ran in; other sections after them.
        sections.sort_by_key(|s| ORDER.iter().position(|o| o == s).unwrap_or(ORDER.len()));
        let mut out = String::new();
        for s in sections {
            out += s;
            out += "\n";
            for c in self.checks.iter().filter(|c| c.section == s) {
                out += &format!("  {} {}\n", c.status.mark(), c.message);
                if let Some(fix) = &c.fix {
                    out += &format!("      fix: {fix}\n");
                }
            }
        }
        let fails = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        let warns = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Warn)
            .count();
        out += &match (fails, warns) {
            (0, 0) => "\nAll checks passed.\n".to_string(),
            (0, w) => format!("\nNothing is broken ({w} note(s) above).\n"),
            (f, w) => format!("\n{f} problem(s) to fix, {w} note(s): see the ✗ lines above.\n"),
        };
        out
    }
}

pub const CONFIG: &str = "Config";
pub const POLICY: &str = "Policy";
pub const WORKSPACES: &str = "Workspaces";
pub const DOCKER: &str = "Docker engine";
pub const IMAGE: &str = "Executor image";
pub const LIMITS: &str = "Sandbox limits";
pub const REDIS: &str = "Redis";
const ORDER: [&str; 7] = [CONFIG, POLICY, WORKSPACES, DOCKER, IMAGE, LIMITS, REDIS];

/// How the executor image is built (the fix for a missing or stale image).
const BUILD_IMAGE: &str =
    "build it: bash scripts/build-image.sh (or `airlock image build --executor FILE`)";

/// Runs every check for `config` (already loaded) into `report`.
pub async fn check(report: &mut Report, config: &Config, probe_dir: Option<&Path>) {
    let policy = check_policy(report, config);
    let docker = check_docker(report, config, policy.as_ref()).await;
    let rootless = docker.as_ref().is_some_and(|(_, rootless)| *rootless);
    if let Some(p) = &policy {
        check_workspaces(report, p, rootless);
    } else {
        report.skip(WORKSPACES, "not checked: the policy does not load");
    }
    match docker.map(|(d, _)| d) {
        Some(docker) => {
            let image_ok = check_image(report, &docker, config, policy.as_ref()).await;
            if image_ok {
                check_limits(report, config, policy.as_ref(), probe_dir).await;
            } else {
                report.skip(LIMITS, "not probed: the executor image is missing");
            }
        }
        None => {
            report.skip(IMAGE, "not checked: the Docker engine is unreachable");
            report.skip(LIMITS, "not probed: the Docker engine is unreachable");
        }
    }
    check_redis(report, config).await;
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::redis_server::version_at_least;
    use super::*;

    #[test]
    fn report_renders_marks_fixes_and_a_summary() {
        let mut r = Report::new();
        r.ok(DOCKER, "reachable");
        r.fail(IMAGE, "missing", "build it");
        r.warn(DOCKER, "no runsc", "install it");
        let s = r.render();
        assert!(r.failed());
        assert!(s.starts_with("Docker engine\n  ✓ reachable\n  ! no runsc\n      fix: install it\nExecutor image\n  ✗ missing\n      fix: build it\n"), "{s}");
        assert!(s.contains("1 problem(s)"), "{s}");
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(version_at_least("7.0.15", 6, 2));
        assert!(version_at_least("6.2.0", 6, 2));
        assert!(!version_at_least("6.0.9", 6, 2));
    }

    #[test]
    fn workspace_checks_name_the_fix() {
        let (_, fix) = check_workspace(Path::new("/nonexistent/ws"), 1000, 1000).unwrap_err();
        assert!(fix.contains("mkdir -p /nonexistent/ws"), "{fix}");
        let (msg, _) = check_workspace(Path::new("rel/ws"), 1000, 1000).unwrap_err();
        assert!(msg.contains("not an absolute path"), "{msg}");
    }

    #[test]
    fn rootless_docker_skips_only_the_owner_comparison() {
        let dir = std::env::temp_dir().join(format!("airlock-rootless-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.as_path();
        // A non-root owner (as root: give it one; otherwise it is ours already).
        if std::fs::metadata(p).unwrap().uid() == 0 {
            std::os::unix::fs::chown(p, Some(4242), Some(4242)).unwrap();
        }
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o750)).unwrap();
        let other = std::fs::metadata(p).unwrap().uid() + 1;
        let (msg, _) = check_workspace_with(p, other, other, false).unwrap_err();
        assert!(msg.contains("but the policy runs"), "{msg}");
        let ok = check_workspace_with(p, other, other, true).unwrap();
        assert!(ok.contains("rootless Docker"), "{ok}");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (msg, fix) = check_workspace_with(p, other, other, true).unwrap_err();
        assert!(msg.contains("world-writable"), "{msg}");
        assert!(fix.starts_with("chmod o-w"), "{fix}");
        std::fs::remove_dir_all(p).unwrap();
    }
}
