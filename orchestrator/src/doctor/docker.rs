//! The Docker engine (reachable, runtimes, cgroup limits, seccomp, rootless) and the executor
//! images, through the sandbox's read-only [`EngineProbe`].

use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::policy::Policy;
use crate::sandbox::engine::EngineProbe;

fn endpoint_shown(config: &Config) -> String {
    config
        .docker
        .endpoint
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// The engine (when reachable) and whether it is rootless Docker.
pub(super) async fn check_docker(
    report: &mut Report,
    config: &Config,
    policy: Option<&Policy>,
) -> Option<(EngineProbe, bool)> {
    let endpoint = endpoint_shown(config);
    let docker = match tokio::time::timeout(
        Duration::from_secs(10),
        EngineProbe::connect(config.docker.endpoint.as_deref()),
    )
    .await
    {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            report.fail(
                DOCKER,
                format!("unreachable: {e}"),
                "start the engine (systemctl start docker), or set docker.endpoint / DOCKER_HOST; \
                 the user running airlock needs its socket (root or the docker group, both \
                 root-equivalent; see docs/SECURITY.md)",
            );
            return None;
        }
        Err(_) => {
            report.fail(
                DOCKER,
                format!("{endpoint} did not answer within 10 s"),
                "check that dockerd is healthy (`docker info`)",
            );
            return None;
        }
    };
    let info = match docker.facts().await {
        Ok(f) => f,
        Err(e) => {
            let fix = if e.query == "info" {
                "a socket proxy must allow GET /info (docs/OPERATIONS.md lists the endpoints)"
            } else {
                "check `docker version`"
            };
            report.fail(DOCKER, e.to_string(), fix);
            return None;
        }
    };
    report.ok(
        DOCKER,
        format!(
            "reachable at {endpoint}: Docker {} (API {}), kernel {}",
            info.version, info.api_version, info.kernel,
        ),
    );
    let runtimes = &info.runtimes;
    let used: Vec<&str> = policy
        .map(|p| p.runtimes().into_iter().collect())
        .unwrap_or_else(|| vec!["runc"]);
    let has = |r: &str| runtimes.iter().any(|x| x == r);
    let missing: Vec<&str> = used.iter().copied().filter(|r| !has(r)).collect();
    if !missing.is_empty() {
        report.fail(
            DOCKER,
            format!(
                "the policy uses the runtime(s) {} but the engine has only {}",
                missing.join(", "),
                runtimes.join(", ")
            ),
            "for runsc: apt-get install runsc && bash scripts/enable-gvisor.sh",
        );
    } else {
        report.ok(
            DOCKER,
            format!(
                "runtimes: {} (the policy uses {})",
                runtimes.join(", "),
                used.join(", ")
            ),
        );
    }
    if !has("runsc") && missing.is_empty() {
        report.warn(
            DOCKER,
            "gVisor (runsc) is not registered: policies cannot choose runtime = \"runsc\" for untrusted tenants",
            "apt-get install runsc && bash scripts/enable-gvisor.sh",
        );
    }
    let (cgroup, driver) = (&info.cgroup_version, &info.cgroup_driver);
    let kernel_fix = "the kernel or its cgroup setup does not support this limit: enable the \
                      controller (cgroup v1: boot with cgroup_enable=memory swapaccount=1; or \
                      use a cgroup v2 host)";
    let mut unsupported = Vec::new();
    if info.memory_limit == Some(false) {
        unsupported.push("memory");
    }
    if info.pids_limit == Some(false) {
        unsupported.push("pids");
    }
    if unsupported.is_empty() {
        report.ok(
            DOCKER,
            format!("the engine reports memory and pids limits as supported (cgroup v{cgroup}, {driver} driver)"),
        );
    } else {
        report.fail(
            DOCKER,
            format!(
                "the engine cannot enforce {} limits",
                unsupported.join(" and ")
            ),
            kernel_fix,
        );
    }
    if info.swap_limit == Some(false) {
        report.warn(
            DOCKER,
            "no swap limit support: a container may swap beyond its memory limit",
            kernel_fix,
        );
    }
    if info.cpu_cfs_quota == Some(false) {
        report.warn(
            DOCKER,
            "no CPU quota support: the cpus limit is not enforced",
            kernel_fix,
        );
    }
    let secopts = &info.security_options;
    if secopts.iter().any(|o| o.contains("name=seccomp")) {
        report.ok(DOCKER, "seccomp: the engine applies its default profile");
    } else {
        report.fail(
            DOCKER,
            "the engine reports no seccomp support: containers would run without a syscall filter",
            "use a Docker engine built with seccomp (Debian/Ubuntu's docker.io is)",
        );
    }
    let rootless = secopts.iter().any(|o| o.contains("name=rootless"));
    if rootless {
        report.ok(
            DOCKER,
            "rootless Docker: the engine runs without root on the host",
        );
    }
    Some((docker, rootless))
}

/// Checks the executor image (and any image the policy names); true when the executor
/// image is usable.
pub(super) async fn check_image(
    report: &mut Report,
    docker: &EngineProbe,
    config: &Config,
    policy: Option<&Policy>,
) -> bool {
    let want = airlock_executor::protocol::PROTOCOL_VERSION.to_string();
    let mut images = vec![config.docker.image.clone()];
    if let Some(p) = policy {
        images.extend(p.images().into_iter().filter(|i| *i != config.docker.image));
    }
    let users = policy
        .map(|p| p.image_users(&config.docker.image))
        .unwrap_or_default();
    let mut main_ok = false;
    for (i, image) in images.iter().enumerate() {
        let used_by = match users.get(image) {
            Some(u) => format!("; used by {}", u.join(", ")),
            None if policy.is_some() => "; used by no user".to_string(),
            None => String::new(),
        };
        match docker.image(image).await {
            Ok(Some(img)) => {
                let id = img.id;
                let short = id
                    .trim_start_matches("sha256:")
                    .get(..12)
                    .unwrap_or("?")
                    .to_string();
                let labels = img.labels;
                match labels.get("io.airlock.protocol") {
                    Some(v) if *v == want => {
                        let built_by = labels
                            .get("io.airlock.executor-version")
                            .map(|v| format!(", built by airlock {v}"))
                            .unwrap_or_default();
                        let profile = labels
                            .get("io.airlock.profile")
                            .map(|p| format!(", profile {p}"))
                            .unwrap_or_default();
                        report.ok(
                            IMAGE,
                            format!("{image}: present ({short}), executor protocol {v}{built_by}{profile}{used_by}"),
                        );
                        if i == 0 {
                            main_ok = true;
                        }
                    }
                    Some(v) => report.fail(
                        IMAGE,
                        format!("{image} speaks executor protocol {v}, this airlock speaks {want}"),
                        format!("rebuild it from this version: {BUILD_IMAGE}"),
                    ),
                    None => report.fail(
                        IMAGE,
                        format!("{image} has no io.airlock.protocol label: it is not an Airlock executor image"),
                        BUILD_IMAGE,
                    ),
                }
            }
            Ok(None) => report.fail(
                IMAGE,
                format!("{image} not found in the engine"),
                BUILD_IMAGE,
            ),
            Err(e) => report.fail(
                IMAGE,
                format!("{image}: inspect failed: {e}"),
                "a socket proxy must allow GET /images/{name}/json",
            ),
        }
    }
    main_ok
}
