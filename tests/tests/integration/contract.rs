//! The API fuzzed against its own contract: schemathesis (PyPI) loads `GET /v1/openapi.json`
//! from a live server and sends generated requests — valid and invalid — to every operation,
//! checking that none answers 5xx, every answer matches the documented status codes, content
//! types and schemas, and the server keeps serving.

use std::process::Command;

use airlock_tests::llm_mock::{answer, MockLlm};
use airlock_tests::server::{Fixture, ServerOptions, TestServer};

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_response_outside_the_schema() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("schemathesis").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`schemathesis` is not installed: run scripts/setup-host.sh --tests (pip install schemathesis)"
    );
    // A scripted model, so that messages start real turns (each answers with text).
    let llm = MockLlm::start((0..500).map(|i| answer(&format!("reply {i}"))).collect()).await;
    let fx = Fixture::new(ServerOptions::default()).await;
    let mut cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    cfg += &format!(
        "\n[llm]\nbase_url = \"{}\"\nmodel = \"mock-model\"\ntimeout_secs = 10\nmax_retries = 0\n",
        llm.base_url
    );
    std::fs::write(&fx.config_path, cfg).unwrap();
    let server = TestServer::start_on(fx).await;
    // Something real to find: a session with an allowed read and a call awaiting approval.
    let token = server.alice.token.clone();
    let sid = server.api.session(&token).await;
    server
        .api
        .propose_ok(
            &token,
            &sid,
            "read_file",
            serde_json::json!({"path": "README.md"}),
        )
        .await;
    server
        .api
        .propose_ok(
            &token,
            &sid,
            "write_file",
            serde_json::json!({"path": "new.txt", "content": "hi\n"}),
        )
        .await;

    let schema = server.api.url("/v1/openapi.json");
    let report = server.dir().join("schemathesis.xml");
    let auth = format!("Authorization: Bearer {token}");
    let cwd = server.dir().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .current_dir(cwd)
            .args(["run", &schema, "-H", &auth])
            .args(["--checks", "all", "--workers", "1", "--seed", "1"])
            .args(["--max-examples", "25", "--request-timeout", "20"])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            // The event stream never ends by design (SSE); its contract is tested in api.rs.
            .args(["--exclude-path", "/v1/sessions/{id}/events"])
            .args(["--report", "junit", "--report-junit-path"])
            .arg(&report)
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // It really ran the operations (not an empty or unreachable schema).
    assert!(text.contains("passed"), "{text}");
    // The server still serves after the run.
    server.api.get("/healthz", "").await.expect(200);
    server.api.get("/v1/sessions", &token).await.expect(200);
    server.finish().await;
}
