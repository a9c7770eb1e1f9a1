//! Server benchmark (`cargo bench -p airlock-tests --bench server`): the `airlock serve`
//! binary (release) against `docker run --rm` with the same flags, interleaved in one run.
//!
//! Prints: approve → result and allowed-call latency (p50, p99, ratio to `docker run`),
//! orchestrator overhead per call (HTTP allowed call − a direct sandbox call, paired), throughput
//! with 8 concurrent sessions against 8 concurrent `docker run` loops, and the server's RSS with
//! 200 idle WebSocket sessions.
//!
//! Also: what protecting paths inside the sandbox costs an allowed shell call (the executor's
//! check before the command, and a survey when the workspace has none cached), on a small
//! workspace and on one of 10,000 files, against the same call with no protected paths.
//!
//! Environment: `AIRLOCK_BENCH_N` (iterations, default 20), `AIRLOCK_BENCH_SECS` (throughput
//! window per side, default 10).

use std::time::{Duration, Instant};

use airlock::bench::{docker_run_args, percentile};
use airlock::protocol::{Event, Mode};
use airlock::protocol::{ProtectedPath, Protection};
use airlock::sandbox::{Profile, Runtime, Sandbox, SandboxConfig, SandboxEvent};
use airlock_tests::server::{Fixture, ServerOptions, ServerProcess};
use airlock_tests::{request, Workspace};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn ws_connect(base_ws: &str, session: &str, token: &str) -> Ws {
    let mut req = format!("{base_ws}/v1/sessions/{session}/events")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("airlock.v1, airlock.token.{token}")).unwrap(),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket")
        .0
}

/// Reads WS events until `call_finished` for `call`.
async fn wait_finished(ws: &mut Ws, call: &str) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("an event within 60 s")
            .expect("open")
            .expect("ws ok");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("json");
            if v["type"] == "call_finished" && v["data"]["call_id"] == call {
                return v;
            }
        }
    }
}

async fn docker_run(args: &[String], line: &[u8]) -> Duration {
    use tokio::io::AsyncWriteExt;
    let t = Instant::now();
    let mut child = tokio::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker cli");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(line)
        .await
        .expect("write");
    let out = child.wait_with_output().await.expect("docker run");
    assert!(
        out.status.success(),
        "docker run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn line(name: &str, v: &[Duration], base: Duration) {
    println!(
        "{name:<34} p50 {:>8.1} ms   p99 {:>8.1} ms   ratio {:.3}",
        ms(percentile(v, 0.5)),
        ms(percentile(v, 0.99)),
        ms(percentile(v, 0.5)) / ms(base).max(f64::EPSILON)
    );
}

#[tokio::main]
async fn main() {
    let n = env_num("AIRLOCK_BENCH_N", 20) as usize;
    let secs = env_num("AIRLOCK_BENCH_SECS", 10);
    let opts = ServerOptions {
        max_streams_per_user: 256,
        max_containers: 24,
        pool: (2, 8),
        ..ServerOptions::default()
    }
    .tool("write_file", "ask")
    .tool("run_shell", "allow");
    let fx = Fixture::new(opts).await;
    // Room for 8 concurrent sessions (the test fixture's limits are deliberately tiny).
    let cfg = std::fs::read_to_string(&fx.config_path).expect("config");
    let cfg = cfg
        .replace("max_running_per_user = 2", "max_running_per_user = 8")
        .replace("max_running_total = 4", "max_running_total = 16")
        .replace("max_prepared = 1", "max_prepared = 16");
    std::fs::write(&fx.config_path, cfg).expect("config");
    fx.alice
        .workspace
        .write("bench.txt", "hello from the benchmark\n".repeat(40));

    let server = ServerProcess::start(&fx, 0).await;
    let api = &server.api;
    let token = fx.alice.token.clone();
    let base_ws = api.ws_url("");

    // The baseline and the direct sandbox path use the same profile the server gives alice.
    let profile = Profile {
        uid: fx.alice.workspace.uid,
        gid: fx.alice.workspace.gid,
        timeout_secs: 60,
        runtime: Runtime::Runc,
        ..Profile::default()
    };
    let sandbox = Sandbox::new(&SandboxConfig {
        instance: format!("{}-direct", fx.instance),
        max_containers: 16,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let req = request("read_file", json!({"path": "bench.txt"}), Mode::Preview);
    let mut req_line = serde_json::to_vec(&req).unwrap();
    req_line.push(b'\n');
    let args = docker_run_args(sandbox.image_id(), &profile, &fx.alice.workspace.root());

    let session = api.session(&token).await;
    let mut ws = ws_connect(&base_ws, &session, &token).await;
    let admin = fx.admin.token.clone();
    // Not timed: waits until the pool holds its two idle containers for alice again, so a
    // refill never runs during a timed call or the baseline.
    let settle = || async {
        let t = Instant::now();
        loop {
            let m = api.get("/metrics", &admin).await.text;
            let idle = m
                .lines()
                .find_map(|l| l.strip_prefix("airlock_pool_idle_containers "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if idle >= 2 {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the pool did not refill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // The first call of alice's key runs cold and fills the pool.
    api.propose_ok(&token, &session, "read_file", json!({"path": "bench.txt"}))
        .await;
    settle().await;

    let (mut allowed, mut approve, mut direct, mut baseline, mut overhead) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut shell, mut miss) = (vec![], vec![]);
    eprintln!("latency: {n} interleaved iterations (+1 warm-up)");
    for i in 0..=n {
        // Allowed call from the pool: POST returns the finished call.
        let t = Instant::now();
        let r = api
            .propose_ok(&token, &session, "read_file", json!({"path": "bench.txt"}))
            .await;
        let d_allowed = t.elapsed();
        assert_eq!(r["status"], "succeeded", "{r}");
        settle().await;

        // An allowed read-only shell command from the pool.
        let t = Instant::now();
        let r = api
            .propose_ok(
                &token,
                &session,
                "run_shell",
                json!({"command": "cat bench.txt"}),
            )
            .await;
        let d_shell = t.elapsed();
        assert_eq!(r["status"], "succeeded", "{r}");
        settle().await;

        // Approval path: propose, let the container start while "the user reads", approve.
        let c = api
            .propose_ok(
                &token,
                &session,
                "write_file",
                json!({"path": format!("out-{i}.txt"), "content": "x\n"}),
            )
            .await;
        let id = c["id"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let t = Instant::now();
        api.decide(
            &token,
            &id,
            "approve",
            c["args_sha256"].as_str().unwrap(),
            None,
        )
        .await
        .expect(200);
        let fin = wait_finished(&mut ws, &id).await;
        let d_approve = t.elapsed();
        assert_eq!(fin["data"]["status"], "succeeded", "{fin}");

        // Not timed: the write's container is still being removed (it holds the workspace's
        // writer lock until then); the miss is measured on a quiet engine, as the cold row is.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The write discarded alice's idle containers: this read is a pool miss (cold).
        let t = Instant::now();
        let r = api
            .propose_ok(&token, &session, "read_file", json!({"path": "bench.txt"}))
            .await;
        let d_miss = t.elapsed();
        assert_eq!(r["status"], "succeeded", "{r}");
        settle().await;

        // Direct sandbox call (no server) for the overhead.
        let t = Instant::now();
        let mut h = sandbox
            .run(&profile, &fx.alice.workspace.spec(&req.call, false), &req)
            .await
            .expect("run");
        let mut d_direct = None;
        while let Some(ev) = h.next().await {
            if matches!(ev, SandboxEvent::Executor(Event::Result { .. })) {
                d_direct = Some(t.elapsed());
            }
        }
        let d_direct = d_direct.expect("direct result");

        let d_base = docker_run(&args, &req_line).await;
        if i == 0 {
            continue; // warm-up
        }
        allowed.push(d_allowed);
        shell.push(d_shell);
        miss.push(d_miss);
        approve.push(d_approve);
        direct.push(d_direct);
        baseline.push(d_base);
        overhead.push(d_miss.saturating_sub(d_direct));
        eprint!("\r{i}/{n}");
    }
    eprintln!();
    let base = percentile(&baseline, 0.5);
    println!("\n== latency (n = {n}, read_file / write_file of a small file, runc) ==");
    line("docker run --rm (baseline)", &baseline, base);
    line("approve -> result (prepared)", &approve, base);
    line("allowed read_file (pool hit)", &allowed, base);
    line("allowed run_shell (pool hit)", &shell, base);
    line("allowed read_file (pool miss)", &miss, base);
    line("direct sandbox call (cold)", &direct, base);
    println!(
        "{:<34} p50 {:>8.1} ms   p99 {:>8.1} ms",
        "orchestrator overhead (miss-direct)",
        ms(percentile(&overhead, 0.5)),
        ms(percentile(&overhead, 0.99))
    );

    // What an idle pooled container costs the host: its cgroup's memory and its runtime shim.
    settle().await;
    let probe = airlock::sandbox::engine::EngineProbe::connect(None)
        .await
        .expect("docker");
    println!("\n== idle pooled containers ==");
    for id in fx.containers(Some("pool")).await {
        let mem = probe.container_memory(&id).await;
        let shim = airlock::sandbox::engine::shim_rss_kib(&id);
        println!(
            "container {}: cgroup memory {}, runtime shim RSS {}",
            &id[..12],
            mem.map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            shim.map_or("? (not visible)".into(), |k| format!(
                "{:.1} MiB",
                k as f64 / 1024.0
            )),
        );
    }

    // Throughput: 8 sessions calling as fast as they can, then 8 docker run loops.
    eprintln!("throughput: {secs} s per side");
    let window = Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let s = api.session(&token).await;
            let end = Instant::now() + window;
            let mut done = 0u64;
            while Instant::now() < end {
                let r = api
                    .propose_ok(&token, &s, "read_file", json!({"path": "bench.txt"}))
                    .await;
                assert_eq!(r["status"], "succeeded", "{r}");
                done += 1;
            }
            done
        }));
    }
    let t = Instant::now();
    let mut airlock_calls = 0;
    for task in tasks {
        airlock_calls += task.await.unwrap();
    }
    let airlock_rate = airlock_calls as f64 / t.elapsed().as_secs_f64();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let args = args.clone();
        let line = req_line.clone();
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + window;
            let mut done = 0u64;
            while Instant::now() < end {
                docker_run(&args, &line).await;
                done += 1;
            }
            done
        }));
    }
    let t = Instant::now();
    let mut docker_calls = 0;
    for task in tasks {
        docker_calls += task.await.unwrap();
    }
    let docker_rate = docker_calls as f64 / t.elapsed().as_secs_f64();
    println!("\n== throughput, 8 concurrent sessions ==");
    println!("airlock       {airlock_rate:>7.2} calls/s ({airlock_calls} calls)");
    println!("docker run    {docker_rate:>7.2} calls/s ({docker_calls} calls)");
    println!("ratio         {:>7.3}", airlock_rate / docker_rate);

    // Memory: 200 idle WebSocket sessions.
    let pid = server.pid();
    let before = rss_kib(pid);
    let mut sockets = Vec::new();
    for _ in 0..200 {
        let s = api.session(&token).await;
        sockets.push(ws_connect(&base_ws, &s, &token).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    println!("\n== memory ==");
    println!(
        "server RSS: {:.1} MiB idle, {:.1} MiB with 200 idle WebSocket sessions ({:.1} KiB each)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 200.0
    );
    for mut s in sockets {
        let _ = s.close(None).await;
    }
    let _ = ws.close(None).await;
    get_call_in_a_long_session(api, &token, &fx.redis.url(), n).await;
    protected_paths_cost(&sandbox, &profile, n, base).await;
    sandbox.drain().await;
}

/// `GET /v1/tool-calls/{id}` for a call in a session that already holds 50,000 older events,
/// against the same in a fresh session.
async fn get_call_in_a_long_session(
    api: &airlock_tests::server::Api,
    token: &str,
    redis_url: &str,
    n: usize,
) {
    let long = api.session(token).await;
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let key = format!("airlock-test:session:{long}:events");
    let data = json!({"call_id": "an-older-call", "stream": "stdout", "data": "x\n"}).to_string();
    for chunk in 0..50 {
        let mut pipe = redis::pipe();
        for i in 0..1000u64 {
            // Ids far in the past: the history of a long-running session.
            pipe.cmd("XADD")
                .arg(&key)
                .arg(format!("1-{}", chunk * 1000 + i + 1))
                .arg("kind")
                .arg("output")
                .arg("data")
                .arg(&data)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.expect("XADD");
    }
    let fresh = api.session(token).await;
    let mut ids = Vec::new();
    for s in [&long, &fresh] {
        let c = api
            .propose_ok(token, s, "read_file", json!({"path": "bench.txt"}))
            .await;
        ids.push(c["id"].as_str().unwrap().to_string());
    }
    let (mut in_long, mut in_fresh) = (vec![], vec![]);
    for _ in 0..n {
        for (id, out) in [(&ids[0], &mut in_long), (&ids[1], &mut in_fresh)] {
            let t = Instant::now();
            let c = api.get_call(token, id).await;
            out.push(t.elapsed());
            assert_eq!(c["status"], "succeeded", "{c}");
        }
    }
    println!("\n== GET /v1/tool-calls/{{id}} ==");
    println!(
        "session with 50,000 older events   p50 {:>8.1} ms   p99 {:>8.1} ms",
        ms(percentile(&in_long, 0.5)),
        ms(percentile(&in_long, 0.99))
    );
    println!(
        "fresh session                      p50 {:>8.1} ms   p99 {:>8.1} ms",
        ms(percentile(&in_fresh, 0.5)),
        ms(percentile(&in_fresh, 0.99))
    );
}

/// One allowed `run_shell` through the sandbox (cold container), to its result.
async fn shell_once(
    sandbox: &Sandbox,
    profile: &Profile,
    ws: &Workspace,
    protected: Vec<ProtectedPath>,
) -> Duration {
    let req = request(
        "run_shell",
        json!({"command": "cat bench.txt"}),
        Mode::Apply,
    );
    let mut spec = ws.spec(&req.call, false);
    spec.protected = protected;
    let t = Instant::now();
    let mut h = sandbox.run(profile, &spec, &req).await.expect("run");
    let mut done = None;
    while let Some(ev) = h.next().await {
        match ev {
            SandboxEvent::Executor(Event::Result { .. }) => done = Some(t.elapsed()),
            SandboxEvent::Executor(Event::Error { code, message }) => {
                panic!("the benchmark call failed: {code}: {message}")
            }
            _ => {}
        }
    }
    done.expect("a result")
}

async fn protected_paths_cost(sandbox: &Sandbox, profile: &Profile, n: usize, base: Duration) {
    let rules = |extra: Option<usize>| {
        let p = |glob: &str, protection| ProtectedPath {
            glob: glob.into(),
            protection,
        };
        let mut v = vec![
            p(".git/**", Protection::ReadOnly),
            p("**/.env", Protection::NoAccess),
            p("**/*.pem", Protection::NoAccess),
            p("**/id_*", Protection::NoAccess),
        ];
        // A rule set never seen before: no cached survey, so the call surveys first.
        if let Some(i) = extra {
            v.push(p(&format!("no-such-name-{i}"), Protection::NoAccess));
        }
        v
    };
    let secrets = |ws: &Workspace| {
        ws.write("bench.txt", "hello from the benchmark\n".repeat(40))
            .write(".env", "S=1\n")
            .write("config/.env", "S=2\n")
            .write("deploy/id_rsa", "K\n")
            .write(".git/config", "[core]\n");
    };
    let small = Workspace::new();
    secrets(&small);
    let big = Workspace::new();
    secrets(&big);
    for i in 0..10_000 {
        big.write(&format!("src/d{}/f{i}.txt", i / 100), "x\n");
    }
    let mut rows: Vec<(&str, Vec<Duration>)> = vec![
        ("no protected paths (baseline)", vec![]),
        ("masks, small workspace", vec![]),
        ("masks, 10,000 files", vec![]),
        ("survey + masks, small workspace", vec![]),
        ("survey + masks, 10,000 files", vec![]),
    ];
    eprintln!("protected paths: {n} interleaved iterations (+1 warm-up)");
    for i in 0..=n {
        let d = [
            shell_once(sandbox, profile, &small, vec![]).await,
            shell_once(sandbox, profile, &small, rules(None)).await,
            shell_once(sandbox, profile, &big, rules(None)).await,
            shell_once(sandbox, profile, &small, rules(Some(2 * i))).await,
            shell_once(sandbox, profile, &big, rules(Some(2 * i + 1))).await,
        ];
        if i > 0 {
            for (row, d) in rows.iter_mut().zip(d) {
                row.1.push(d);
            }
        }
        eprint!("\r{i}/{n}");
    }
    eprintln!();
    println!(
        "\n== protected paths: an allowed run_shell (`cat bench.txt`), direct sandbox, runc =="
    );
    let zero = percentile(&rows[0].1, 0.5);
    for (name, v) in &rows {
        line(name, v, base);
        println!(
            "{:<34} added p50 {:>+7.1} ms",
            "",
            ms(percentile(v, 0.5)) - ms(zero)
        );
    }
}
