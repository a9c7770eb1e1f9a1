//! Redis: the embedded server's binary, or the configured URL answering `PING`, its version and
//! whether AOF is on (`INFO`, through [`crate::store::probe`]).

use super::*;
use crate::config::Config;
use crate::store::probe::ProbeError;

/// `field:value` from an INFO reply.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// `major.minor` of a version string.
pub(super) fn version_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

pub(super) async fn check_redis(report: &mut Report, config: &Config) {
    let url = match config.redis.effective_url() {
        Ok(u) => u,
        Err(e) => {
            report.fail(
                REDIS,
                e,
                "write the password on the first line of redis.password_file",
            );
            return;
        }
    };
    let url = match url {
        Some(u) => u,
        None => {
            // The embedded Redis: the binary must exist; when a server runs, check it too.
            let socket = crate::embedded_redis::socket_path(&config.data_dir);
            match std::process::Command::new("redis-server")
                .arg("--version")
                .output()
            {
                Ok(out) => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    let v = text
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("v="))
                        .unwrap_or("?")
                        .to_string();
                    if v != "?" && !version_at_least(&v, 6, 2) {
                        report.fail(
                            REDIS,
                            format!("redis-server {v} is too old (Airlock needs 6.2 or newer)"),
                            "install a newer redis-server, or set redis.url to a Redis 6.2+",
                        );
                    } else {
                        report.ok(
                            REDIS,
                            format!(
                                "embedded: no redis.url, so `airlock serve` starts redis-server {v} on {} with its AOF in {}",
                                socket.display(),
                                crate::embedded_redis::redis_dir(&config.data_dir).display()
                            ),
                        );
                    }
                }
                Err(_) => {
                    report.fail(
                        REDIS,
                        "no redis.url is set and redis-server is not installed, so `airlock serve` cannot start its embedded Redis",
                        "apt-get install redis-server (scripts/start.sh does), or set redis.url / AIRLOCK_REDIS_URL",
                    );
                    return;
                }
            }
            if crate::embedded_redis::ping_socket(&socket).is_none() {
                report.ok(
                    REDIS,
                    "the embedded Redis is not running now (it runs while airlock serve does)",
                );
                return;
            }
            crate::embedded_redis::url_for(&config.data_dir)
        }
    };
    let shown = crate::store::redact_url(&url);
    let probe = match crate::store::probe::probe(&url).await {
        Ok(p) => p,
        Err(e) => {
            let (what, fix) = match &e {
                ProbeError::BadUrl(m) => (
                    format!("bad URL {shown}: {m}"),
                    "redis://[user@]host:port/db, rediss://… or unix:///path (docs/OPERATIONS.md)",
                ),
                ProbeError::Unreachable(m) => (
                    format!("{shown} is unreachable: {m}"),
                    "start Redis (or check redis.url / AIRLOCK_REDIS_URL, its password and ACL user)",
                ),
                ProbeError::Timeout(secs) => (
                    format!("{shown} did not answer within {secs} s"),
                    "start Redis (or check redis.url / AIRLOCK_REDIS_URL and the network)",
                ),
                ProbeError::Ping(m) => (
                    format!("{shown} does not answer PING: {m}"),
                    "check the password and the ACL user's permissions (docs/OPERATIONS.md)",
                ),
            };
            report.fail(REDIS, what, fix);
            return;
        }
    };
    let info = match probe.info {
        Ok(i) => i,
        Err(e) => {
            report.ok(REDIS, format!("{shown} answers PING"));
            report.warn(
                REDIS,
                format!("INFO is refused ({e}): version and persistence not checked"),
                "allow INFO for Airlock's ACL user (+info) so doctor can check them",
            );
            return;
        }
    };
    let version = info_field(&info, "redis_version").unwrap_or_else(|| "?".into());
    if version != "?" && !version_at_least(&version, 6, 2) {
        report.fail(
            REDIS,
            format!("{shown}: Redis {version} is too old (Airlock needs 6.2 or newer)"),
            "upgrade Redis",
        );
    } else {
        report.ok(REDIS, format!("{shown} answers: Redis {version}"));
    }
    if info_field(&info, "aof_enabled").as_deref() == Some("1") {
        report.ok(REDIS, "persistence: AOF is on");
    } else {
        report.warn(
            REDIS,
            "persistence: AOF is off — a Redis restart loses sessions, pending approvals and the audit trail written since the last RDB snapshot",
            "set `appendonly yes` (with `appendfsync everysec` or `always`) in redis.conf",
        );
    }
}
