//! Exhaustion: a tool call that tries to take the machine down — processes, memory, CPU, time,
//! output, disk, network — is stopped by the profile's limits, the outcome says what happened,
//! and no container outlives the test.

use std::time::{Duration, Instant};

use airlock::protocol::{ErrorCode, Event, Mode, StreamKind};
use airlock::sandbox::{Profile, Runtime, SandboxEvent};
use airlock_tests::{request, sandbox, wait_until, Called, TestSandbox, Workspace};
use bollard::query_parameters::InspectContainerOptions;
use serde_json::json;

use crate::helpers::{err, shell_res, snapshot};

const MIB: u64 = 1024 * 1024;

/// A tight profile: small everything, short deadline. Under gVisor the pids limit also counts
/// the sandbox kernel's own threads (see `runsc_small_pids_limit_is_refused_or_works`), so it
/// gets the smallest limit runsc accepts.
fn tight(ws: &Workspace, runtime: Runtime) -> Profile {
    Profile {
        memory_bytes: 64 * MIB,
        pids: match runtime {
            Runtime::Runc => 48,
            Runtime::Runsc => airlock::sandbox::profile::RUNSC_MIN_PIDS,
        },
        timeout_secs: 20,
        output_bytes: 256 * 1024,
        tmpfs_bytes: 8 * MIB,
        fsize_bytes: MIB,
        cpus: 0.5,
        ..ws.profile(runtime)
    }
}

async fn shell(
    ts: &TestSandbox,
    ws: &Workspace,
    profile: &Profile,
    command: &str,
    mode: Mode,
) -> (Called, Duration) {
    let started = Instant::now();
    let c = ts
        .call(
            ws,
            request("run_shell", json!({ "command": command }), mode),
            profile,
        )
        .await;
    (c, started.elapsed())
}

/// After an exhausting call, the engine still runs a trivial call promptly.
async fn still_healthy(ts: &TestSandbox, ws: &Workspace) {
    let (c, took) = shell(
        ts,
        ws,
        &ws.profile(Runtime::Runc),
        "echo alive",
        Mode::Preview,
    )
    .await;
    assert_eq!(shell_res(&c, "health check").exit_code, Some(0));
    assert_eq!(c.stdout(), "alive\n");
    assert!(took < Duration::from_secs(30), "health check took {took:?}");
}

fn output_data_bytes(c: &Called) -> usize {
    c.events
        .iter()
        .map(|e| match e {
            Event::Output { data, .. } => data.len(),
            _ => 0,
        })
        .sum()
}

fn has_final_event(c: &Called) -> bool {
    c.events
        .iter()
        .any(|e| matches!(e, Event::Result { .. } | Event::Error { .. }))
}

/// The container's pids cgroup (cgroup v1 with the cgroupfs driver, or v2 with systemd).
fn pids_cgroup(id: &str) -> std::path::PathBuf {
    let candidates = [
        format!("/sys/fs/cgroup/pids/docker/{id}"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope"),
        format!("/sys/fs/cgroup/docker/{id}"),
    ];
    candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.join("pids.max").exists())
        .unwrap_or_else(|| panic!("no pids cgroup found for {id} among {candidates:?}"))
}

#[tokio::test]
async fn fork_bomb_is_stopped_by_the_pids_limit() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let profile = tight(&ws, Runtime::Runc);
    // The bomb is silenced (its "can't fork" messages would flood the output cap); the shell
    // itself spins on builtins, so it needs no fork, until its own timeout kills the group.
    let req = request(
        "run_shell",
        json!({
            "command": "bomb() { bomb | bomb & }; bomb 2>/dev/null; echo bombed; while :; do :; done",
            "timeout_secs": 6,
        }),
        Mode::Preview,
    );
    let spec = ws.spec(&req.call, false);
    let started = Instant::now();
    let mut h = ts.sandbox.run(&profile, &spec, &req).await.expect("start");
    let cgroup = pids_cgroup(h.container_id());
    let mut events = Vec::new();
    let mut seen_limit = None;
    let outcome = loop {
        match h.next().await.expect("the stream ends with Finished") {
            SandboxEvent::Executor(ev) => {
                if seen_limit.is_none()
                    && matches!(&ev, Event::Output { data, .. } if data.contains("bombed"))
                {
                    // While the bomb runs (the shell lives until its 6 s timeout), the kernel
                    // holds the container at its pids limit and counts the refused forks.
                    let read = |f: &str| std::fs::read_to_string(cgroup.join(f)).unwrap();
                    let refused = "the pids limit refusing the bomb's forks";
                    let events = wait_until(refused, Duration::from_secs(2), || async {
                        let events = read("pids.events");
                        match events.trim().strip_prefix("max ").map(str::parse::<u64>) {
                            Some(Ok(n)) if n > 0 => Ok(events),
                            _ => Err(format!("pids.events: {events}")),
                        }
                    })
                    .await;
                    seen_limit = Some((read("pids.max"), read("pids.current"), events));
                }
                events.push(ev);
            }
            SandboxEvent::Finished(o) => break o,
        }
    };
    let took = started.elapsed();
    let c = Called { events, outcome };
    let (max, current, events) =
        seen_limit.unwrap_or_else(|| panic!("the shell never got past the bomb: {c:#?}"));
    assert_eq!(max.trim(), "48");
    let current: u64 = current.trim().parse().unwrap();
    assert!(current <= 48, "pids.current {current}");
    let failures: u64 = events
        .trim()
        .strip_prefix("max ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("pids.events: {events}"));
    assert!(failures > 0, "forks refused by the pids limit: {events}");

    // The executor's own timeout ends the call: every process of the bomb is killed, the
    // executor reports it, and the sandbox did not have to step in.
    err(&c, ErrorCode::Timeout, "fork bomb");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    still_healthy(&ts, &ws).await;
    ts.finish().await;
}

/// Under gVisor the guest's processes are backed by the sandbox kernel's host threads, which the
/// pids cgroup counts: the bomb exhausts them and the sandbox kernel itself dies (Go's runtime
/// exits 2 when it cannot make a thread). The bomb is contained, the host is fine and the call
/// ends promptly, but as a crashed sandbox (no result, exit status 2), not a clean timeout.
#[tokio::test]
async fn fork_bomb_under_gvisor_ends_the_sandbox() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let profile = tight(&ws, Runtime::Runsc);
    let req = request(
        "run_shell",
        json!({
            "command": "bomb() { bomb | bomb & }; bomb 2>/dev/null; echo bombed; while :; do :; done",
            "timeout_secs": 6,
        }),
        Mode::Preview,
    );
    let started = Instant::now();
    let c = ts.call(&ws, req, &profile).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(!c.outcome.timed_out && !c.outcome.oom_killed, "{c:#?}");
    assert!(!has_final_event(&c), "{c:#?}");
    assert_eq!(c.outcome.exit_code, Some(2), "{c:#?}");
    assert!(
        c.outcome
            .protocol_error
            .as_deref()
            .is_some_and(|e| e.contains("without a result")),
        "{c:#?}"
    );
    still_healthy(&ts, &ws).await;
    ts.finish().await;
}

#[tokio::test]
async fn memory_bomb_is_oom_killed_and_reported() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let profile = Profile {
        memory_bytes: 32 * MIB,
        ..tight(&ws, Runtime::Runc)
    };
    // awk doubles a string until the cgroup's OOM killer ends it; the shell survives to report.
    let (c, took) = shell(
        &ts,
        &ws,
        &profile,
        r#"awk 'BEGIN { s = "x"; while (1) s = s s }'; echo "awk=$?""#,
        Mode::Preview,
    )
    .await;
    let r = shell_res_allow_oom(&c);
    assert_eq!(r.exit_code, Some(0), "{c:#?}");
    assert_eq!(
        c.stdout(),
        "awk=137\n",
        "killed by SIGKILL (128 + 9): {c:#?}"
    );
    assert!(c.output(StreamKind::Stderr).contains("Killed"), "{c:#?}");
    // The executor counted the kill itself (the orchestrator then waits for the full outcome
    // although the shell exited 0).
    assert!(r.oom_kills.is_some_and(|n| n >= 1), "{r:#?}");
    assert!(
        c.outcome.oom_killed,
        "the engine reports the OOM kill: {:#?}",
        c.outcome
    );
    assert!(!c.outcome.timed_out, "{:#?}", c.outcome);
    assert!(took < Duration::from_secs(60), "took {took:?}");
    still_healthy(&ts, &ws).await;
    ts.finish().await;
}

/// The result of a call whose outcome is expected to carry `oom_killed`.
fn shell_res_allow_oom(c: &Called) -> &airlock::protocol::RunShellResult {
    assert_eq!(c.outcome.protocol_error, None, "{c:#?}");
    assert_eq!(
        c.outcome.exit_code,
        Some(0),
        "the executor itself survived: {c:#?}"
    );
    c.events
        .iter()
        .find_map(|e| match e {
            Event::Result {
                result: airlock::protocol::ToolResult::RunShell(r),
            } => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("expected a run_shell result: {c:#?}"))
}

#[tokio::test]
async fn cpu_spin_and_sleep_are_killed_at_the_deadline() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    for runtime in [Runtime::Runc, Runtime::Runsc] {
        let profile = Profile {
            timeout_secs: 2,
            ..tight(&ws, runtime)
        };
        for command in [
            "echo spinning; while :; do :; done",
            "echo sleeping; sleep 600",
        ] {
            let what = format!("[{runtime:?}] {command}");
            let (c, took) = shell(&ts, &ws, &profile, command, Mode::Preview).await;
            assert!(c.outcome.timed_out, "{what}: {c:#?}");
            assert!(
                !c.outcome.cancelled && !c.outcome.output_truncated,
                "{what}"
            );
            assert!(
                !has_final_event(&c),
                "{what}: killed before any result: {c:#?}"
            );
            assert!(
                c.stdout().starts_with("spinning") || c.stdout().starts_with("sleeping"),
                "{what}: output before the deadline is kept: {c:#?}"
            );
            assert_eq!(c.outcome.exit_code, Some(137), "{what}: SIGKILL");
            assert!(c.outcome.duration >= Duration::from_secs(2), "{what}");
            assert!(took < Duration::from_secs(30), "{what}: took {took:?}");
        }
    }
    ts.finish().await;
}

#[tokio::test]
async fn output_flood_is_capped_and_killed() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let cap: u64 = 64 * 1024;
    let profile = Profile {
        output_bytes: cap,
        ..tight(&ws, Runtime::Runc)
    };
    // Lines, a single endless line, and stderr.
    for command in ["yes", "tr '\\0' a < /dev/zero", "yes flood >&2"] {
        let (c, took) = shell(&ts, &ws, &profile, command, Mode::Preview).await;
        assert!(c.outcome.output_truncated, "{command}: {:#?}", c.outcome);
        assert!(
            !c.outcome.timed_out,
            "{command}: stopped by the cap, not the deadline"
        );
        assert!(!has_final_event(&c), "{command}");
        let data = output_data_bytes(&c) as u64;
        assert!(
            data <= cap && data >= cap / 4,
            "{command}: {data} bytes of output delivered for a cap of {cap}"
        );
        assert!(took < Duration::from_secs(30), "{command}: took {took:?}");
    }
    ts.finish().await;
}

/// A caller that stops reading (a stalled client) holds no container past its deadline: the
/// deadline still kills it promptly, and the caller's memory stays bounded by the event channel.
#[tokio::test]
async fn stalled_reader_does_not_delay_the_deadline() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let profile = Profile {
        output_bytes: 1 << 30,
        timeout_secs: 3,
        ..tight(&ws, Runtime::Runc)
    };
    let req = request("run_shell", json!({ "command": "yes" }), Mode::Preview);
    let spec = ws.spec(&req.call, false);
    let h = ts.sandbox.run(&profile, &spec, &req).await.expect("start");
    // Read nothing until well past the deadline.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let started = Instant::now();
    let (events, outcome) = h.collect().await;
    let took = started.elapsed();
    assert!(outcome.timed_out, "{outcome:#?}");
    assert!(!outcome.output_truncated, "{outcome:#?}");
    assert!(took < Duration::from_secs(30), "collecting took {took:?}");
    let c = Called { events, outcome };
    assert!(!has_final_event(&c));
    let data = output_data_bytes(&c);
    assert!(
        data < 8 * MIB as usize,
        "{data} bytes buffered for a caller that read nothing"
    );
    ts.finish().await;
}

#[tokio::test]
async fn tmp_fill_stops_at_the_tmpfs_size() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let profile = Profile {
        fsize_bytes: 64 * MIB,
        ..tight(&ws, Runtime::Runc)
    };
    let (c, _) = shell(
        &ts,
        &ws,
        &profile,
        "dd if=/dev/zero of=/tmp/x bs=1M count=100; echo dd=$?; wc -c < /tmp/x",
        Mode::Preview,
    )
    .await;
    assert_eq!(shell_res(&c, "tmp fill").exit_code, Some(0));
    assert!(
        c.output(StreamKind::Stderr)
            .contains("No space left on device"),
        "{c:#?}"
    );
    let out = c.stdout();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("dd=1"), "{out}");
    let size: u64 = lines.next().unwrap().trim().parse().unwrap();
    assert!((7 * MIB..=8 * MIB).contains(&size), "{size}");
    ts.finish().await;
}

#[tokio::test]
async fn large_workspace_write_is_stopped_by_fsize() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let profile = tight(&ws, Runtime::Runc); // fsize 1 MiB, writable mount on apply
    let (c, _) = shell(
        &ts,
        &ws,
        &profile,
        "dd if=/dev/zero of=big.bin bs=64k count=100; echo dd=$?; wc -c < big.bin",
        Mode::Apply,
    )
    .await;
    let r = shell_res(&c, "fsize via run_shell");
    assert_eq!(r.exit_code, Some(0));
    // dd is killed by SIGXFSZ (128 + 25 = 153) as soon as it writes past the limit.
    assert_eq!(c.stdout(), "dd=153\n1048576\n", "{c:#?}");
    assert!(
        c.output(StreamKind::Stderr)
            .contains("File size limit exceeded"),
        "{c:#?}"
    );
    assert_eq!(
        std::fs::metadata(ws.root().join("big.bin")).unwrap().len(),
        MIB
    );

    // write_file: the executor reports the limit as `too_large` and leaves nothing behind.
    ws.write("keep.txt", "original\n");
    let before = snapshot(&ws.root());
    for path in ["huge.txt", "keep.txt"] {
        let req = request(
            "write_file",
            json!({ "path": path, "content": "a".repeat(2 * MIB as usize) }),
            Mode::Apply,
        );
        let c = ts.call(&ws, req, &profile).await;
        err(
            &c,
            ErrorCode::TooLarge,
            &format!("write_file {path} past fsize"),
        );
        assert_eq!(
            snapshot(&ws.root()),
            before,
            "{path}: the workspace is unchanged"
        );
    }
    ts.finish().await;
}

/// Network attempts fail, and for the right reason. (Debian's static busybox `wget` segfaults
/// in a container without network instead of reporting an error, so `nc` and `nslookup` speak
/// for it.)
#[tokio::test]
async fn network_is_unreachable() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let script = "nc -w 3 1.1.1.1 53 </dev/null; echo nc_ip=$?; \
                  nc -w 3 example.com 80 </dev/null; echo nc_dns=$?; \
                  nslookup example.com 9.9.9.9; echo nslookup_ip=$?; \
                  nslookup example.com; echo nslookup=$?; \
                  echo resolv_conf_bytes=$(wc -c < /etc/resolv.conf); \
                  echo routes:; cat /proc/net/route; echo interfaces:; ls /sys/class/net";
    for (runtime, unreachable) in [
        (Runtime::Runc, "Network is unreachable"),
        (Runtime::Runsc, "No route to host"),
    ] {
        let what = format!("[{runtime:?}] network");
        let (c, _) = shell(&ts, &ws, &tight(&ws, runtime), script, Mode::Preview).await;
        assert_eq!(shell_res(&c, &what).exit_code, Some(0), "{what}");
        let stdout = c.stdout();
        let stderr = c.output(StreamKind::Stderr);
        for status in [
            "nc_ip=1",
            "nc_dns=1",
            "nslookup_ip=1",
            "nslookup=1",
            "resolv_conf_bytes=0",
        ] {
            assert!(stdout.contains(status), "{what}: {status} in {stdout}");
        }
        // Connecting to an address fails for want of a route, not a timeout or a crash.
        for needle in [
            format!("nc: can't connect to remote host (1.1.1.1): {unreachable}"),
            format!("nslookup: can't connect to remote host (9.9.9.9): {unreachable}"),
        ] {
            assert!(stderr.contains(&needle), "{what}: {needle:?} in {stderr}");
        }
        // Names cannot be resolved: no name server is configured, and the loopback fallback
        // has nobody listening.
        assert!(
            stderr.contains("nc: bad address 'example.com'"),
            "{what}: {stderr}"
        );
        assert!(
            stderr.contains("nslookup: write to '127.0.0.1': Connection refused")
                && stdout.contains("no servers could be reached"),
            "{what}: {stdout}\n{stderr}"
        );
        // Evidence: no route at all (the header only) and no interface but loopback.
        let routes: Vec<&str> = stdout
            .split("routes:\n")
            .nth(1)
            .unwrap()
            .split("interfaces:\n")
            .next()
            .unwrap()
            .lines()
            .collect();
        assert_eq!(routes.len(), 1, "{what}: only the header: {routes:?}");
        assert!(routes[0].starts_with("Iface"), "{what}: {routes:?}");
        let interfaces = stdout.split("interfaces:\n").nth(1).unwrap();
        assert_eq!(
            interfaces.split_whitespace().collect::<Vec<_>>(),
            ["lo"],
            "{what}"
        );
    }
    ts.finish().await;
}

#[tokio::test]
async fn dropping_the_call_handle_removes_the_container() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    let req = request(
        "run_shell",
        json!({ "command": "echo started; sleep 600" }),
        Mode::Preview,
    );
    let spec = ws.spec(&req.call, false);
    let mut h = ts
        .sandbox
        .run(&ws.profile(Runtime::Runc), &spec, &req)
        .await
        .expect("start");
    let first = tokio::time::timeout(Duration::from_secs(30), h.next())
        .await
        .expect("output within 30 s");
    assert!(
        matches!(&first, Some(SandboxEvent::Executor(Event::Output { data, .. })) if data.contains("started")),
        "{first:?}"
    );
    let id = h.container_id().to_string();
    drop(h);
    removed_once_drained(&ts, &id, "dropped CallHandle").await;

    // A prepared container that never gets its request is removed when dropped, too (a denied
    // or expired approval).
    let prepared = ts
        .sandbox
        .prepare(&ws.profile(Runtime::Runc), &ws.spec(&req.call, false))
        .await
        .expect("prepare");
    let id = prepared.container_id().to_string();
    drop(prepared);
    removed_once_drained(&ts, &id, "dropped Prepared").await;
    ts.finish().await;
}

/// `Sandbox::drain` promises that every container of the handle has been removed when it
/// returns (a container's slot is held until its removal): check it for `id`.
async fn removed_once_drained(ts: &TestSandbox, id: &str, what: &str) {
    tokio::time::timeout(Duration::from_secs(30), ts.sandbox.drain())
        .await
        .unwrap_or_else(|_| panic!("{what}: drain() did not return within 30 s"));
    assert_eq!(ts.sandbox.containers_in_use(), 0, "{what}");
    match ts
        .sandbox
        .docker()
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
    {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        other => panic!("{what}: container {id} still exists after drain(): {other:?}"),
    }
}

/// Under gVisor the container's pids cgroup also holds the sandbox kernel (the Go sentry and
/// its OS threads), so a small pids limit kills the whole sandbox before the executor answers:
/// the call ends with exit status 2 and no event. A profile must either be refused up front
/// (`InvalidProfile`) or work.
#[tokio::test]
async fn runsc_small_pids_limit_is_refused_or_works() {
    let ts = sandbox().await;
    let ws = Workspace::new();
    for pids in [48, 64] {
        let profile = Profile {
            pids,
            ..ws.profile(Runtime::Runsc)
        };
        let req = request("run_shell", json!({ "command": "echo hi" }), Mode::Preview);
        match ts
            .sandbox
            .run(&profile, &ws.spec(&req.call, false), &req)
            .await
        {
            Err(airlock::sandbox::SandboxError::InvalidProfile(msg)) => {
                assert!(msg.contains("pids"), "{msg}")
            }
            Err(other) => panic!("pids {pids}: unexpected error {other}"),
            Ok(h) => {
                let (events, outcome) = h.collect().await;
                let c = Called { events, outcome };
                assert_eq!(
                    shell_res(&c, &format!("runsc with pids {pids}")).exit_code,
                    Some(0)
                );
                assert_eq!(c.stdout(), "hi\n");
            }
        }
    }
    ts.finish().await;
}
