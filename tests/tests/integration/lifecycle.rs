//! Containers end whoever dies: the executor ends its container at the call's deadline when the
//! orchestrator was killed, and `airlock sandbox run` interrupted with Ctrl-C or SIGTERM stops
//! and removes its container before it exits.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use airlock_tests::server::{airlock_binary, Fixture, ServerOptions, ServerProcess};
use airlock_tests::{wait_until, Workspace};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

/// Containers (running or not) whose workspace mount is `root`.
async fn containers_on(docker: &bollard::Docker, root: &std::path::Path) -> Vec<String> {
    let mut filters = HashMap::new();
    filters.insert("label".to_string(), vec!["airlock.managed=1".to_string()]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker.list_containers(Some(opts)).await.expect("list");
    list.into_iter()
        .filter(|c| {
            c.mounts.iter().flatten().any(|m| {
                m.destination.as_deref() == Some("/workspace")
                    && m.source.as_deref() == root.to_str()
            })
        })
        .filter_map(|c| c.id)
        .collect()
}

async fn docker() -> bollard::Docker {
    airlock::sandbox::connect_docker(None)
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker engine: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_leaves_a_container_that_ends_itself_at_its_deadline() {
    let policy = "[defaults.tools]\nrun_shell = \"allow\"\n\n[defaults.limits]\ntimeout_secs = 4\n";
    let fx = Fixture::new(ServerOptions {
        base_policy: Some(policy.into()),
        ..ServerOptions::default()
    })
    .await;
    let alice = fx.alice.token.clone();
    let mut p1 = ServerProcess::start(&fx, 1).await;
    let api = p1.api.clone();
    let sid = api.session(&alice).await;
    let bg = {
        let (api, alice, sid) = (api.clone(), alice.clone(), sid.clone());
        tokio::spawn(async move {
            // The answer never comes: the server is killed first.
            let _ = api
                .http
                .post(api.url(&format!("/v1/sessions/{sid}/tool-calls")))
                .bearer_auth(&alice)
                .json(&json!({"tool": "run_shell", "args": {"command": "echo started; tail -f /dev/null"}}))
                .send()
                .await;
        })
    };
    let docker = docker().await;
    // The call's own container (not the survey's, which ends at once).
    let ran = "the call's container running its command";
    let id = wait_until(ran, Duration::from_secs(60), || async {
        let mut seen = Vec::new();
        for id in fx.containers(None).await {
            let Ok(info) = docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            else {
                continue;
            };
            let tool = info
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get("airlock.tool").cloned());
            let call = info
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get("airlock.call").cloned());
            if tool.as_deref() == Some("run_shell")
                && info.state.and_then(|s| s.running) == Some(true)
            {
                // Running the command, not only waiting for its request.
                let c = api
                    .get_call(&alice, call.as_deref().unwrap_or_default())
                    .await;
                if c["output"].to_string().contains("started") {
                    return Ok(id);
                }
            }
            seen.push(format!("{id} ({tool:?})"));
        }
        Err(format!("containers {seen:?}"))
    })
    .await;
    p1.kill9();
    let killed = Instant::now();
    bg.abort();
    // Nobody outside enforces the 4 s limit now: the executor does (4 s + its grace).
    let ended = "the container ending at its 4 s deadline after the server died";
    let state = wait_until(ended, Duration::from_secs(30), || async {
        let info = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .expect("the container is still there until the next start reaps it");
        let state = info.state.unwrap();
        match state.running {
            Some(false) => Ok(state),
            _ => Err(format!(
                "still running {:?} after the kill",
                killed.elapsed()
            )),
        }
    })
    .await;
    assert_eq!(
        state.exit_code,
        Some(airlock::protocol::EXIT_DEADLINE as i64),
        "ended by the executor's deadline: {state:?}"
    );
    // The next start reaps it.
    let p2 = ServerProcess::start(&fx, 2).await;
    fx.assert_no_containers(None, "after the restart").await;
    drop(p2);
}

async fn interrupted_cli_leaves_no_container(signal: i32) {
    let ws = Workspace::new();
    ws.write("a.txt", "a\n");
    let mut child = tokio::process::Command::new(airlock_binary())
        .args(["sandbox", "run", "--workspace"])
        .arg(ws.root())
        .args([
            "--write",
            "run_shell",
            r#"{"command":"echo started; sleep 60"}"#,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("airlock sandbox run");
    let docker = docker().await;
    wait_until("a container started", Duration::from_secs(60), || async {
        match containers_on(&docker, &ws.root()).await.is_empty() {
            true => Err("none".to_string()),
            false => Ok(()),
        }
    })
    .await;
    // Once the command itself has started (its first output event), interrupt. The pipe stays
    // open (the CLI prints until it exits).
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stdout.next_line().await.expect("read stdout") {
            if line.contains("started") {
                return;
            }
        }
        panic!("the CLI's output ended before the command started");
    })
    .await
    .expect("the command starts within 60 s");
    let pid = child.id().expect("pid") as i32;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, signal);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the CLI exits within 30 s of the signal")
        .expect("wait");
    assert_eq!(
        out.status.code(),
        Some(128 + signal),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = containers_on(&docker, &ws.root()).await;
    assert!(
        left.is_empty(),
        "containers left after signal {signal}: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_run_interrupted_with_sigint_leaves_no_container() {
    let _slot = airlock_tests::docker_slot().await;
    interrupted_cli_leaves_no_container(libc::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_run_interrupted_with_sigterm_leaves_no_container() {
    let _slot = airlock_tests::docker_slot().await;
    interrupted_cli_leaves_no_container(libc::SIGTERM).await;
}
