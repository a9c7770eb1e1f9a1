//! The warm pool against a real Docker engine: a pooled container serves exactly one call, a
//! policy reload and a write discard idle containers, a dead executor is skipped, a burst
//! stays within `max_containers`, and nothing is left after shutdown or kill -9 and restart.

use std::collections::HashSet;
use std::time::Duration;

use airlock_tests::server::{Api, Fixture, ServerOptions, ServerProcess, TestServer};
use airlock_tests::wait_until;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn pooled(max_containers: usize, per_key: usize, max_idle: usize) -> ServerOptions {
    ServerOptions {
        max_containers,
        pool: (per_key, max_idle),
        ..ServerOptions::default()
    }
}

/// The idle pooled containers of this instance (their call label is `pool`).
async fn idle(fx: &Fixture) -> HashSet<String> {
    fx.containers(Some("pool")).await.into_iter().collect()
}

/// Waits until the pool holds exactly `n` idle containers (its gauge) and `n` pooled
/// containers exist (none still starting or being removed); returns them.
async fn wait_idle(fx: &Fixture, api: &Api, n: usize) -> HashSet<String> {
    let admin = fx.admin.token.as_str();
    wait_until(&format!("{n} idle pooled containers"), WAIT, || async {
        let got = idle(fx).await;
        let gauge = metric(api, admin, "airlock_pool_idle_containers").await;
        if got.len() == n && gauge == n as u64 {
            Ok(got)
        } else {
            Err(format!("gauge {gauge}, {} containers: {got:?}", got.len()))
        }
    })
    .await
}

/// A counter of `/metrics` (0 when absent).
async fn metric(api: &Api, admin: &str, name: &str) -> u64 {
    let r = api.get("/metrics", admin).await;
    r.expect(200);
    r.text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn read(api: &Api, token: &str, session: &str) {
    let r = api
        .propose_ok(token, session, "read_file", json!({"path": "a.txt"}))
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"]["content"], "hello\n", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_container_serves_exactly_one_call_and_is_replaced() {
    let srv = TestServer::start(pooled(4, 2, 2)).await;
    srv.alice.workspace.write("a.txt", "hello\n");
    let (api, alice, admin) = (&srv.api, srv.alice.token.as_str(), srv.admin.token.as_str());
    let s = api.session(alice).await;
    // The first call of a key runs cold and fills the pool behind it.
    read(api, alice, &s).await;
    let hit = "airlock_pool_takes_total{result=\"hit\"}";
    assert_eq!(metric(api, admin, hit).await, 0);
    let mut before = wait_idle(&srv, api, 2).await;
    for i in 1..=3 {
        read(api, alice, &s).await;
        assert_eq!(
            metric(api, admin, hit).await,
            i,
            "call {i} was served from the pool"
        );
        // One of the idle containers was taken, used once and removed; a new one took its place.
        let now = wait_until("the pool refilled with one new container", WAIT, || async {
            let now = idle(&srv).await;
            let kept = now.intersection(&before).count();
            let gauge = metric(api, admin, "airlock_pool_idle_containers").await;
            if now.len() == 2 && kept == 1 && gauge == 2 {
                Ok(now)
            } else {
                Err(format!("{now:?} (before: {before:?})"))
            }
        })
        .await;
        before = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_and_a_write_discard_idle_containers() {
    let srv = TestServer::start(pooled(4, 2, 2).tool("write_file", "ask")).await;
    srv.alice.workspace.write("a.txt", "hello\n");
    let (api, alice, admin) = (&srv.api, srv.alice.token.as_str(), srv.admin.token.as_str());
    let s = api.session(alice).await;
    read(api, alice, &s).await;
    let old = wait_idle(&srv, api, 2).await;

    // A reload (any change of the file's content) removes every idle container made before it.
    let mut text = std::fs::read_to_string(&srv.policy_path).expect("policy");
    text += "\n# reloaded\n";
    std::fs::write(&srv.policy_path, &text).expect("policy");
    wait_until("the old policy's idle containers gone", WAIT, || async {
        let now = idle(&srv).await;
        let left: Vec<_> = now.intersection(&old).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {left:?}"))
        }
    })
    .await;
    assert!(metric(api, admin, "airlock_pool_discards_total{reason=\"policy\"}").await >= 2);
    // The next call cannot run in one of them: they no longer exist, and it succeeds.
    let misses = "airlock_pool_takes_total{result=\"miss\"}";
    let missed = metric(api, admin, misses).await;
    read(api, alice, &s).await;
    assert_eq!(
        metric(api, admin, misses).await,
        missed + 1,
        "a fresh container ran it"
    );
    let fresh = wait_idle(&srv, api, 2).await;
    assert!(fresh.is_disjoint(&old));

    // An approved write runs with a writable workspace: the workspace's idle containers go.
    let c = api
        .propose_ok(
            alice,
            &s,
            "write_file",
            json!({"path": "b.txt", "content": "x\n"}),
        )
        .await;
    let id = c["id"].as_str().expect("id");
    api.decide(
        alice,
        id,
        "approve",
        c["args_sha256"].as_str().unwrap(),
        None,
    )
    .await
    .expect(200);
    api.wait_status(alice, id, &["succeeded"], WAIT).await;
    wait_until(
        "the idle containers made before the write gone",
        WAIT,
        || async {
            let now = idle(&srv).await;
            let left: Vec<_> = now.intersection(&fresh).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {left:?}"))
            }
        },
    )
    .await;
    // The write's preview took one of them; the other was discarded.
    assert!(metric(api, admin, "airlock_pool_discards_total{reason=\"write\"}").await >= 1);
    read(api, alice, &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_in_an_idle_container_is_skipped() {
    let srv = TestServer::start(pooled(4, 2, 2)).await;
    srv.alice.workspace.write("a.txt", "hello\n");
    let (api, alice, admin) = (&srv.api, srv.alice.token.as_str(), srv.admin.token.as_str());
    let s = api.session(alice).await;
    read(api, alice, &s).await;
    let ids = wait_idle(&srv, api, 2).await;
    // Kill the executor (PID 1) of both idle containers.
    for id in &ids {
        let out = std::process::Command::new("docker")
            .args(["kill", "--signal", "KILL", id])
            .output()
            .expect("docker kill");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The call does not fail: the dead containers are skipped and removed.
    read(api, alice, &s).await;
    wait_until("the killed containers removed", WAIT, || async {
        let left: Vec<String> = srv
            .containers(Some("pool"))
            .await
            .into_iter()
            .filter(|c| ids.contains(c))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    assert!(metric(api, admin, "airlock_pool_discards_total{reason=\"dead\"}").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_50_allowed_calls_stays_within_max_containers() {
    let cap = 3;
    let srv = TestServer::start(pooled(cap, 2, 2)).await;
    srv.alice.workspace.write("a.txt", "hello\n");
    let api = srv.api.clone();
    let alice = srv.alice.token.clone();
    let s = api.session(&alice).await;
    read(&api, &alice, &s).await;
    wait_idle(&srv, &api, 2).await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let calls = async {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (api, alice, s) = (api.clone(), alice.clone(), s.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    read(&api, &alice, &s).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("a burst task");
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    // Every container of this instance, sampled while the burst runs.
    let sampler = async {
        let mut most = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            most = most.max(srv.containers(None).await.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        most
    };
    let ((), most) = futures_util::future::join(calls, sampler).await;
    println!("at most {most} containers during a burst of 50 calls (cap {cap})");
    assert!(most <= cap, "{most} containers at once, cap {cap}");
    assert!(most >= 1, "the sampler saw the burst's containers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pooled_container_outlives_shutdown_or_a_kill_9_and_restart() {
    let fx = Fixture::new(pooled(4, 2, 2)).await;
    fx.alice.workspace.write("a.txt", "hello\n");
    let alice = fx.alice.token.clone();
    let mut srv = ServerProcess::start(&fx, 0).await;
    let s = srv.api.session(&alice).await;
    read(&srv.api, &alice, &s).await;
    let before = wait_idle(&fx, &srv.api, 2).await;
    srv.kill9();
    // kill -9 leaves them (nobody removes them), until the next start reaps them.
    assert_eq!(idle(&fx).await, before);
    let mut srv = ServerProcess::start(&fx, 1).await;
    wait_until(
        "the killed server's idle containers reaped",
        WAIT,
        || async {
            let left: Vec<String> = idle(&fx).await.intersection(&before).cloned().collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;
    read(&srv.api, &alice, &s).await;
    wait_idle(&fx, &srv.api, 2).await;
    srv.terminate().await;
    fx.assert_no_containers(None, "after a clean stop").await;
}
