//! Approval notifications: a call that waits for approval is announced to every configured
//! webhook — Airlock's JSON body and a Slack-compatible one — with who, which call, a
//! one-line summary, the expiry and a link, and no file contents; a dead or hanging endpoint
//! never delays the call. The endpoints are real HTTP servers in the test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use airlock_tests::server::{Fixture, ServerOptions, TestServer};
use airlock_tests::wait_until;

/// A webhook receiver on 127.0.0.1: its URL and what it received (path, body).
async fn receiver() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let g = got.clone();
    let app = Router::new().route(
        "/{*path}",
        post(move |uri: axum::http::Uri, Json(body): Json<Value>| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push((uri.path().to_string(), body));
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got)
}

/// An endpoint that accepts connections and never answers.
async fn black_hole() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    url
}

#[tokio::test]
async fn a_waiting_call_is_announced_to_every_webhook_without_contents_and_without_delay() {
    let (url, got) = receiver().await;
    let hole = black_hole().await;
    // A port nothing listens on.
    let dead = format!("http://127.0.0.1:{}/hook", airlock_tests::free_port());
    let fx = Fixture::new(ServerOptions::default()).await;
    let mut cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    cfg += &format!(
        "\n[notify]\nui_url = \"https://airlock.example\"\n\
         [[notify.webhooks]]\nurl = \"{hole}\"\n\
         [[notify.webhooks]]\nurl = \"{dead}\"\n\
         [[notify.webhooks]]\nurl = \"{url}/json\"\nformat = \"json\"\n\
         [[notify.webhooks]]\nurl = \"{url}/slack\"\nformat = \"slack\"\n"
    );
    std::fs::write(&fx.config_path, cfg).unwrap();
    let server = TestServer::start_on(fx).await;
    let token = &server.alice.token;
    let sid = server.api.session(token).await;

    // A proposal without hooks' effects to compare with: an allowed read (no notification).
    let started = Instant::now();
    server
        .api
        .propose_ok(token, &sid, "list_dir", json!({}))
        .await;
    let baseline = started.elapsed();
    let started = Instant::now();
    let call = server
        .api
        .propose_ok(
            token,
            &sid,
            "write_file",
            json!({"path": "notes.txt", "content": "TOP-SECRET-CONTENT\n"}),
        )
        .await;
    let proposing = started.elapsed();
    assert_eq!(call["status"], "awaiting_approval", "{call}");
    // The hanging and the dead endpoint cost the proposal nothing (generous: a hang is 10 s).
    assert!(
        proposing < baseline + Duration::from_secs(3),
        "proposing took {proposing:?} (an allowed read {baseline:?})"
    );

    let bodies = wait_until(
        "both live webhooks to be called",
        Duration::from_secs(30),
        || async {
            let g = got.lock().unwrap().clone();
            if g.len() >= 2 {
                Ok(g)
            } else {
                Err(format!("{g:?}"))
            }
        },
    )
    .await;
    let id = call["id"].as_str().unwrap();
    let json_body = &bodies
        .iter()
        .find(|(p, _)| p == "/json")
        .expect("json hook")
        .1;
    assert_eq!(json_body["event"], "approval_required", "{json_body}");
    assert_eq!(json_body["user"], "alice", "{json_body}");
    assert_eq!(json_body["session_id"], sid.as_str(), "{json_body}");
    assert_eq!(json_body["call_id"], id, "{json_body}");
    assert_eq!(json_body["tool"], "write_file", "{json_body}");
    assert_eq!(
        json_body["summary"], "write_file notes.txt (+1 −0 lines)",
        "{json_body}"
    );
    assert_eq!(
        json_body["expires_at_ms"], call["expires_at_ms"],
        "{json_body}"
    );
    assert_eq!(
        json_body["url"],
        format!("https://airlock.example/#call={id}"),
        "{json_body}"
    );
    let slack = &bodies
        .iter()
        .find(|(p, _)| p == "/slack")
        .expect("slack hook")
        .1;
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "<https://airlock.example/#call={id}|open call {id}>"
        )),
        "{text}"
    );
    for (_, b) in &bodies {
        let s = b.to_string();
        assert!(
            !s.contains("TOP-SECRET-CONTENT"),
            "a notification carried file contents: {s}"
        );
        assert!(
            !s.contains(token.as_str()),
            "a notification carried a token: {s}"
        );
    }
    // The call itself is untouched: it still waits, and approving it works at once.
    let sha = call["args_sha256"].as_str().unwrap();
    server
        .api
        .decide(token, id, "approve", sha, None)
        .await
        .expect(200);
    server
        .api
        .wait_status(token, id, &["succeeded"], Duration::from_secs(30))
        .await;
    // The failures are counted once their retries are spent (the dead one's come quickly).
    let metrics = server.api.get("/metrics", &server.admin.token).await;
    assert!(
        metrics
            .text
            .contains("airlock_webhook_deliveries_total{result=\"delivered\"} 2"),
        "{}",
        metrics.text
    );
}
