//! Agent-shaped workload (`cargo bench -p airlock-tests --bench agent`): one turn of 30 model
//! steps against the release `airlock serve` binary with the warm pool on, the model a
//! scripted OpenAI-compatible server that answers at once. Most steps read (`read_file`,
//! `list_dir`, a read-only `run_shell`), every tenth is an `edit_file` that a client approves
//! as soon as it is asked (its client polls every 20 ms). A step's time is from one model request arriving to the next:
//! everything Airlock does between two model answers (proposing, policy, the container, the
//! result, the history, the next prompt) — the time the user waits outside the model.
//!
//! Two turns: the model answering at once (the pool's worst case: nothing refills while the
//! model thinks), then taking 500 ms per answer (that pause is subtracted from each step).
//!
//! Environment: `AIRLOCK_BENCH_STEPS` (default 30).

use std::time::{Duration, Instant};

use airlock::bench::percentile;
use airlock_tests::llm_mock::{answer, MockLlm, Reply, Stream};
use airlock_tests::server::{Fixture, ServerOptions, ServerProcess};
use serde_json::json;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The model's reply at step `i` of turn `turn` (notes-{turn}.txt is that turn's file).
fn step(turn: usize, i: usize, think: Duration) -> Reply {
    let id = format!("call_{turn}_{i}");
    let notes = format!("notes-{turn}.txt");
    let (name, args) = match i % 10 {
        9 => (
            "edit_file",
            json!({"path": notes, "edits": [{"old_string": format!("step {}", i / 10), "new_string": format!("step {}", i / 10 + 1)}]}),
        ),
        0 | 3 | 6 => ("list_dir", json!({"path": "src"})),
        2 | 5 => ("run_shell", json!({"command": "wc -l src/lib.rs"})),
        _ => ("read_file", json!({"path": "src/lib.rs"})),
    };
    Stream::new()
        .pause(think)
        .tool_call(0, &id, name, &args.to_string(), 5)
        .finish("tool_calls")
        .usage(50, 10)
        .done()
}

#[tokio::main]
async fn main() {
    let steps = std::env::var("AIRLOCK_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30usize);
    let thinks = [Duration::ZERO, Duration::from_millis(500)];
    let opts = ServerOptions {
        max_containers: 12,
        pool: (2, 4),
        ..ServerOptions::default()
    }
    .tool("run_shell", "allow")
    .tool("edit_file", "ask");
    let fx = Fixture::new(opts).await;
    fx.alice
        .workspace
        .write("notes-0.txt", "step 0\n")
        .write("notes-1.txt", "step 0\n")
        .write("src/lib.rs", "pub fn answer() -> u32 { 42 }\n".repeat(20));
    let mut script = Vec::new();
    for (turn, think) in thinks.iter().enumerate() {
        for i in 0..steps {
            script.push(step(turn, i, *think));
        }
        script.push(answer("done"));
    }
    let llm = MockLlm::start(script).await;
    std::fs::write(fx.dir().join("llm.key"), "sk-bench\n").expect("key");
    let mut cfg = std::fs::read_to_string(&fx.config_path).expect("config");
    cfg += &format!(
        "\n[llm]\nbase_url = \"{}\"\nmodel = \"mock-model\"\napi_key_file = \"llm.key\"\nmax_steps = {}\n",
        llm.base_url,
        steps + 5
    );
    std::fs::write(&fx.config_path, cfg).expect("config");
    let server = ServerProcess::start(&fx, 0).await;
    let api = &server.api;
    let token = fx.alice.token.clone();
    let mut seen = 0;
    for think in thinks {
        let session = api.session(&token).await;
        let started = Instant::now();
        api.post(
            &format!("/v1/sessions/{session}/messages"),
            &token,
            json!({"content": "tidy the notes"}),
        )
        .await
        .expect(202);
        // The approving client: approves each edit as soon as it sees it waiting.
        let mut approved = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let calls = api
                .get(
                    &format!("/v1/sessions/{session}/tool-calls?status=awaiting_approval"),
                    &token,
                )
                .await;
            for c in calls.json["calls"].as_array().into_iter().flatten() {
                let id = c["id"].as_str().unwrap_or_default().to_string();
                if approved.insert(id.clone()) {
                    api.decide(
                        &token,
                        &id,
                        "approve",
                        c["args_sha256"].as_str().unwrap(),
                        None,
                    )
                    .await
                    .expect(200);
                }
            }
            let m = api
                .get(&format!("/v1/sessions/{session}/messages"), &token)
                .await;
            if m.json["turn_id"].is_null() && llm.requests().len() > seen + steps {
                break;
            }
            assert!(Instant::now() < deadline, "the turn did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let total = started.elapsed();
        let reqs = llm.requests();
        let turn = &reqs[seen..seen + steps + 1];
        seen += steps + 1;
        // From one model request to the next, less the model's own time.
        let per_step: Vec<Duration> = turn
            .windows(2)
            .map(|w| (w[1].at - w[0].at).saturating_sub(think))
            .collect();
        let pick = |edit: bool| -> Vec<Duration> {
            per_step
                .iter()
                .enumerate()
                .filter(|(i, _)| (i % 10 == 9) == edit)
                .map(|(_, d)| *d)
                .collect()
        };
        let (reads, edits) = (pick(false), pick(true));
        println!(
            "\n== agent-shaped turn: {steps} steps, the model taking {} ms per answer, warm pool on ==",
            think.as_millis()
        );
        println!("turn wall time {:.0} ms", ms(total));
        for (name, v) in [
            ("every step (outside the model)", &per_step),
            ("read steps (allowed)", &reads),
            ("edit steps (approved at once)", &edits),
        ] {
            println!(
                "{name:<32} n {:>3}   p50 {:>7.1} ms   p99 {:>7.1} ms",
                v.len(),
                ms(percentile(v, 0.5)),
                ms(percentile(v, 0.99))
            );
        }
        let m = api.get("/metrics", &fx.admin.token).await.text;
        for l in m.lines().filter(|l| l.starts_with("airlock_pool_takes")) {
            println!("{l}");
        }
    }
}
