//! Posture: a running container, inspected through the Docker API, carries every field of the
//! locked profile; from inside it has no capabilities and no way to gain privileges.

use std::time::Duration;

use airlock::protocol::{Event, Mode, StreamKind};
use airlock::sandbox::profile::{LABEL_CALL, LABEL_MANAGED, LABEL_SESSION, WORKSPACE_MOUNT};
use airlock::sandbox::{Profile, Runtime, SandboxEvent};
use airlock_tests::{request, runtimes, sandbox, Workspace};
use bollard::query_parameters::InspectContainerOptions;
use serde_json::json;

const PROBE: &str =
    "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
                     id -u; id -g; echo READY; exec sleep 120";

#[tokio::test]
async fn running_container_has_the_whole_locked_profile() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    ws.write("hello.txt", "hi\n");
    for runtime in runtimes(&ts).await {
        let profile = Profile {
            memory_bytes: 200 * 1024 * 1024,
            cpus: 0.5,
            pids: 177,
            nofile: 333,
            fsize_bytes: 5 * 1024 * 1024,
            tmpfs_bytes: 7 * 1024 * 1024,
            ..ws.profile(runtime)
        };
        let req = request("run_shell", json!({ "command": PROBE }), Mode::Preview);
        let spec = ws.spec(&req.call, false);
        let mut h = ts.sandbox.run(&profile, &spec, &req).await.unwrap();

        // Wait until the probe has printed its view from inside.
        let mut inside = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !inside.contains("READY") {
            let ev = tokio::time::timeout_at(deadline, h.next())
                .await
                .expect("probe output within 30 s")
                .expect("stream open");
            match ev {
                SandboxEvent::Executor(Event::Output {
                    stream: StreamKind::Stdout,
                    data,
                }) => inside.push_str(&data),
                SandboxEvent::Executor(Event::Output { .. }) => {}
                other => panic!("[{runtime:?}] unexpected before READY: {other:?} ({inside})"),
            }
        }
        let field = |name: &str| -> String {
            inside
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap_or_else(|| panic!("[{runtime:?}] {name} missing from {inside}"))
                .trim()
                .to_string()
        };
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(
                u64::from_str_radix(&field(cap), 16),
                Ok(0),
                "[{runtime:?}] {cap}"
            );
        }
        if runtime == Runtime::Runc {
            // gVisor's /proc/self/status has no CapAmb or NoNewPrivs lines and reports
            // Seccomp 0 (its Sentry enforces these itself); the inspect checks below cover
            // the settings there.
            assert_eq!(u64::from_str_radix(&field("CapAmb"), 16), Ok(0));
            assert_eq!(field("NoNewPrivs"), "1");
            // 2 = a seccomp filter is installed (the engine's default profile).
            assert_eq!(field("Seccomp"), "2");
        }
        let ids: Vec<&str> = inside
            .lines()
            .filter(|l| l.parse::<u32>().is_ok())
            .collect();
        assert_eq!(
            ids,
            vec![ws.uid.to_string(), ws.gid.to_string()],
            "[{runtime:?}] uid/gid inside"
        );

        let info = ts
            .sandbox
            .docker()
            .inspect_container(h.container_id(), None::<InspectContainerOptions>)
            .await
            .unwrap();
        let hc = info.host_config.clone().unwrap();
        let cfg = info.config.clone().unwrap();
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert!(hc.cap_add.unwrap_or_default().is_empty());
        let secopt = hc.security_opt.clone().unwrap_or_default();
        assert!(
            secopt.contains(&"no-new-privileges:true".to_string()),
            "{secopt:?}"
        );
        assert!(
            !secopt.iter().any(|o| o.contains("unconfined")),
            "{secopt:?}"
        );
        assert_eq!(hc.privileged, Some(false));
        assert!(
            hc.pid_mode.unwrap_or_default().is_empty(),
            "no host PID namespace"
        );
        assert_eq!(hc.ipc_mode.as_deref(), Some("private"));
        assert!(
            hc.uts_mode.unwrap_or_default().is_empty(),
            "no host UTS namespace"
        );
        assert!(
            hc.userns_mode.unwrap_or_default().is_empty(),
            "no host user namespace"
        );
        assert_eq!(hc.pids_limit, Some(177));
        assert_eq!(hc.memory, Some(200 * 1024 * 1024));
        assert_eq!(hc.memory_swap, Some(200 * 1024 * 1024));
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        let ulimits: Vec<(String, i64, i64)> = hc
            .ulimits
            .unwrap_or_default()
            .into_iter()
            .map(|u| (u.name.unwrap(), u.soft.unwrap(), u.hard.unwrap()))
            .collect();
        assert!(
            ulimits.contains(&("nofile".into(), 333, 333)),
            "{ulimits:?}"
        );
        assert!(
            ulimits.contains(&("fsize".into(), 5 * 1024 * 1024, 5 * 1024 * 1024)),
            "{ulimits:?}"
        );
        let tmpfs = hc.tmpfs.clone().unwrap_or_default();
        assert!(
            tmpfs.get("/tmp").is_some_and(
                |o| o.contains(&format!("size={}", 7 * 1024 * 1024)) && o.contains("noexec")
            ),
            "{tmpfs:?}"
        );
        assert_eq!(
            hc.log_config.and_then(|l| l.typ).as_deref(),
            Some("none"),
            "log driver off"
        );
        assert_eq!(hc.runtime.as_deref(), Some(runtime.as_str()));
        assert!(hc.binds.unwrap_or_default().is_empty());
        let mounts = info.mounts.clone().unwrap_or_default();
        assert_eq!(mounts.len(), 1, "exactly one mount: {mounts:?}");
        assert_eq!(mounts[0].destination.as_deref(), Some(WORKSPACE_MOUNT));
        assert_eq!(mounts[0].rw, Some(false), "read-only for a preview");
        assert_eq!(
            mounts[0].source.as_deref(),
            Some(ws.root().to_str().unwrap())
        );
        assert_eq!(
            cfg.user.as_deref(),
            Some(format!("{}:{}", ws.uid, ws.gid).as_str())
        );
        let mut env = cfg.env.clone().unwrap_or_default();
        env.sort();
        assert_eq!(env, vec!["HOME=/tmp", "LANG=C.UTF-8", "PATH=/bin:/usr/bin"]);
        let labels = cfg.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("1"));
        assert_eq!(
            labels.get(LABEL_SESSION).map(String::as_str),
            Some("test-session")
        );
        assert_eq!(labels.get(LABEL_CALL), Some(&spec.call_id));
        assert_eq!(
            cfg.image.as_deref(),
            Some(ts.sandbox.image_id()),
            "image pinned by ID"
        );
        assert_eq!(info.image.as_deref(), Some(ts.sandbox.image_id()));
        assert_eq!(cfg.network_disabled, Some(true));

        // Cancelling kills the container; the outcome says so.
        h.cancel();
        let (_, outcome) = h.collect().await;
        assert!(outcome.cancelled, "[{runtime:?}] {outcome:?}");
    }
    ts.finish().await;
}

#[tokio::test]
async fn applied_mutating_call_gets_a_writable_mount_and_nothing_else_changes() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let req = request(
        "run_shell",
        json!({ "command": "echo READY; exec sleep 120" }),
        Mode::Apply,
    );
    let spec = ws.spec(&req.call, true);
    let mut h = ts
        .sandbox
        .run(&ws.profile(Runtime::Runc), &spec, &req)
        .await
        .unwrap();
    // Any event means the container is up.
    let _ = h.next().await;
    let info = ts
        .sandbox
        .docker()
        .inspect_container(h.container_id(), None::<InspectContainerOptions>)
        .await
        .unwrap();
    let mounts = info.mounts.unwrap_or_default();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].rw, Some(true));
    let hc = info.host_config.unwrap();
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    drop(h); // dropping the handle kills and removes the container
    ts.finish().await;
}

/// With protected paths: the container's mounts are exactly the workspace plus one read-only
/// mask per match — `/dev/null` over files, an empty tmpfs over directories, and (only where the
/// workspace is writable) a read-only view of `.git` — and no other source.
#[tokio::test]
async fn masks_are_the_only_mounts_besides_the_workspace() {
    use airlock::protocol::{ProtectedPath, Protection};
    use std::collections::BTreeSet;
    let ts = sandbox().await;
    let ws = Workspace::new();
    ws.write(".env", "S\n")
        .write("sub/.env", "S\n")
        .write("secrets/k", "K\n")
        .write(".git/config", "[core]\n")
        .write("a.txt", "a\n");
    let protected = vec![
        ProtectedPath {
            glob: ".git/**".into(),
            protection: Protection::ReadOnly,
        },
        ProtectedPath {
            glob: "**/.env".into(),
            protection: Protection::NoAccess,
        },
        ProtectedPath {
            glob: "secrets".into(),
            protection: Protection::NoAccess,
        },
    ];
    let root = ws.root().to_str().unwrap().to_string();
    for runtime in runtimes(&ts).await {
        for writable in [false, true] {
            let req = request(
                "run_shell",
                json!({ "command": "echo READY; exec sleep 120" }),
                if writable { Mode::Apply } else { Mode::Preview },
            );
            let mut spec = ws.spec(&req.call, writable);
            spec.protected = protected.clone();
            let mut h = ts
                .sandbox
                .run(&ws.profile(runtime), &spec, &req)
                .await
                .unwrap();
            assert_eq!(h.masks(), 4, "[{runtime:?}] .env, sub/.env, secrets, .git");
            let _ = h.next().await; // the command is running
            let info = ts
                .sandbox
                .docker()
                .inspect_container(h.container_id(), None::<InspectContainerOptions>)
                .await
                .unwrap();
            let got: BTreeSet<(String, String, String, bool)> = info
                .mounts
                .unwrap_or_default()
                .into_iter()
                .map(|m| {
                    (
                        m.destination.unwrap_or_default(),
                        m.source.unwrap_or_default(),
                        m.typ.map(|t| t.to_string()).unwrap_or_default(),
                        m.rw.unwrap_or(true),
                    )
                })
                .collect();
            let w = |p: &str| format!("{WORKSPACE_MOUNT}{p}");
            let mut want: BTreeSet<(String, String, String, bool)> = [
                (w(""), root.clone(), "bind".to_string(), writable),
                (w("/.env"), "/dev/null".into(), "bind".into(), false),
                (w("/sub/.env"), "/dev/null".into(), "bind".into(), false),
                (w("/secrets"), String::new(), "tmpfs".into(), false),
            ]
            .into_iter()
            .collect();
            if writable {
                want.insert((w("/.git"), format!("{root}/.git"), "bind".into(), false));
            }
            assert_eq!(got, want, "[{runtime:?}] writable={writable}");
            drop(h);
        }
    }
    ts.finish().await;
}
