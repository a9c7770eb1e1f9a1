//! The HTTP contract, driven through `airlock::api::app(state)` with `oneshot` (no listener, no
//! client): every route of `api::ROUTES` refuses a missing or unknown token and a cross-site
//! Origin, admin routes refuse users, public ones need nothing, and bad input gets the one error
//! shape with a stable code. A real Redis behind it; no container is started (no call runs).

use std::sync::Arc;
use std::time::Instant;

use airlock::api::{Access, AppState, ROUTES};
use airlock_tests::server::{Fixture, ServerOptions};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

/// The router of a real engine on the fixture's Redis and policy.
async fn app(fx: &Fixture) -> (Router, Arc<airlock::engine::Engine>) {
    let config = fx.config();
    let engine = airlock::server::build(&config)
        .await
        .unwrap_or_else(|e| panic!("the engine does not start: {e}"));
    let agent = airlock::agent::Agent::new(engine.clone(), &config.llm).expect("agent");
    let state = AppState::new(engine.clone(), agent, config.allowed_origins.clone());
    (airlock::api::app(state), engine)
}

struct Answer {
    status: StatusCode,
    json: Value,
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Body>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let res = app
        .clone()
        .oneshot(req.body(body.unwrap_or_else(Body::empty)).unwrap())
        .await
        .expect("the router answers");
    let status = res.status();
    let sse = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if sse {
        // An event stream does not end by itself: it is dropped unread.
        return Answer {
            status,
            json: json!({"stream": "text/event-stream"}),
        };
    }
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .expect("body");
    Answer {
        status,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// `{"error": {"code": code, "message": …}}` with a non-empty message.
fn assert_error(a: &Answer, status: StatusCode, code: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.json);
    assert_eq!(a.json["error"]["code"], code, "{what}: {}", a.json);
    assert!(
        a.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: no message in {}",
        a.json
    );
}

/// The router's fallback: the route is not mounted at all.
fn is_fallback(a: &Answer) -> bool {
    a.status == StatusCode::NOT_FOUND && a.json["error"]["message"] == "no such route"
}

fn with_id(path: &str, id: &str) -> String {
    path.replace("{id}", id)
}

#[tokio::test]
async fn every_route_refuses_missing_tokens_foreign_origins_and_the_wrong_role() {
    let fx = Fixture::new(ServerOptions::default()).await;
    let (app, engine) = app(&fx).await;
    let alice = fx.alice.token.as_str();
    let admin = fx.admin.token.as_str();
    let evil = [("origin", "https://evil.example")];
    let own_origin = fx.config().allowed_origins[0].clone();
    let started = Instant::now();
    let mut requests = 0;
    for (method, path, access) in ROUTES {
        // A fresh session of alice's for each route (one of them deletes it), so that her
        // requests reach the handlers.
        let created = send(&app, "POST", "/v1/sessions", Some(alice), &[], None).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
        let sid = created.json["id"].as_str().expect("id").to_string();
        let path = with_id(path, &sid);
        let what = format!("{method} {path}");
        match access {
            Access::Public => {
                let a = send(&app, method, &path, None, &[], None).await;
                requests += 1;
                assert!(
                    a.status.is_success(),
                    "{what} is public: {} {}",
                    a.status,
                    a.json
                );
            }
            Access::User | Access::Admin => {
                for token in [None, Some("not-a-token"), Some("")] {
                    let a = send(&app, method, &path, token, &[], None).await;
                    requests += 1;
                    assert_error(
                        &a,
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        &format!("{what} with token {token:?}"),
                    );
                }
                // A page on another site is refused even with a valid token.
                let a = send(&app, method, &path, Some(admin), &evil, None).await;
                requests += 1;
                assert_error(&a, StatusCode::FORBIDDEN, "forbidden_origin", &what);
                // An origin the config lists (the web UI's own) is fine.
                let own = [("origin", own_origin.as_str())];
                let a = send(&app, method, &path, Some(admin), &own, None).await;
                requests += 1;
                assert!(!is_fallback(&a), "{what} is not mounted");
                assert_ne!(a.status, StatusCode::FORBIDDEN, "{what}: {}", a.json);
                let a = send(&app, method, &path, Some(alice), &[], None).await;
                requests += 1;
                assert!(!is_fallback(&a), "{what} is not mounted");
                assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{what}: {}", a.json);
                if path.ends_with("/events") {
                    assert_eq!(a.status, StatusCode::OK, "{what}: {}", a.json);
                    assert_eq!(a.json["stream"], "text/event-stream", "{what}");
                }
                if *access == Access::Admin {
                    assert_error(&a, StatusCode::FORBIDDEN, "forbidden", &what);
                    let a = send(&app, method, &path, Some(admin), &[], None).await;
                    requests += 1;
                    assert_eq!(a.status, StatusCode::OK, "{what} as admin: {}", a.json);
                }
            }
        }
    }
    // The table is the router: a path it does not list is the fallback, and a listed path
    // with another method is a 405 of the same shape.
    let a = send(&app, "GET", "/v1/nope", Some(alice), &[], None).await;
    assert!(is_fallback(&a), "{}", a.json);
    let a = send(&app, "PUT", "/v1/sessions", Some(alice), &[], None).await;
    assert_error(
        &a,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "PUT /v1/sessions",
    );
    let per = started.elapsed() / requests;
    println!("{requests} requests through the router, {per:?} each on average");
    engine.shutdown().await;
    engine.release_lease().await;
}

#[tokio::test]
async fn bad_input_gets_one_error_shape_and_changes_nothing() {
    let fx = Fixture::new(ServerOptions::default()).await;
    let (app, engine) = app(&fx).await;
    let alice = fx.alice.token.as_str();
    let bob = fx.bob.token.as_str();
    let created = send(&app, "POST", "/v1/sessions", Some(alice), &[], None).await;
    let sid = created.json["id"].as_str().expect("id").to_string();
    let calls = format!("/v1/sessions/{sid}/tool-calls");
    let body = |s: &str| Some(Body::from(s.to_string()));
    let bad = StatusCode::BAD_REQUEST;
    for (what, payload) in [
        ("malformed JSON", "{\"tool\": "),
        ("not an object", "[1, 2]"),
        (
            "an unknown field",
            r#"{"tool": "list_dir", "args": {}, "extra": 1}"#,
        ),
        ("an unknown tool", r#"{"tool": "format_disk", "args": {}}"#),
        (
            "arguments of the wrong shape",
            r#"{"tool": "read_file", "args": {"path": 7}}"#,
        ),
    ] {
        let a = send(&app, "POST", &calls, Some(alice), &[], body(payload)).await;
        assert_error(&a, bad, "invalid_request", what);
    }
    // Larger than limits.max_body_bytes (2 MiB by default).
    let huge = format!(
        r#"{{"tool": "write_file", "args": {{"path": "a", "content": "{}"}}}}"#,
        "x".repeat(3 << 20)
    );
    let a = send(
        &app,
        "POST",
        &calls,
        Some(alice),
        &[],
        Some(Body::from(huge)),
    )
    .await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "too_large", "3 MiB body");
    // Nothing above made a call.
    let a = send(&app, "GET", &calls, Some(alice), &[], None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["calls"], json!([]), "{}", a.json);
    // Another user's session and a malformed resume point.
    let a = send(
        &app,
        "GET",
        &format!("/v1/sessions/{sid}"),
        Some(bob),
        &[],
        None,
    )
    .await;
    assert_error(
        &a,
        StatusCode::NOT_FOUND,
        "not_found",
        "bob reads alice's session",
    );
    let a = send(
        &app,
        "DELETE",
        &format!("/v1/sessions/{sid}"),
        Some(bob),
        &[],
        None,
    )
    .await;
    assert_error(
        &a,
        StatusCode::NOT_FOUND,
        "not_found",
        "bob deletes alice's session",
    );
    let a = send(
        &app,
        "GET",
        &format!("/v1/sessions/{sid}?after=yesterday"),
        Some(alice),
        &[],
        None,
    )
    .await;
    assert_error(&a, bad, "invalid_request", "after=yesterday");
    let a = send(
        &app,
        "GET",
        "/v1/audit?limit=ten",
        Some(fx.admin.token.as_str()),
        &[],
        None,
    )
    .await;
    assert_error(&a, bad, "invalid_request", "limit=ten");
    // A decision that names no call, and one without the hash.
    let a = send(
        &app,
        "POST",
        "/v1/tool-calls/00000000-0000-4000-8000-000000000000/decision",
        Some(alice),
        &[],
        body(r#"{"decision": "approve", "args_sha256": "00"}"#),
    )
    .await;
    assert_error(
        &a,
        StatusCode::NOT_FOUND,
        "not_found",
        "decision on no call",
    );
    let a = send(
        &app,
        "POST",
        "/v1/tool-calls/00000000-0000-4000-8000-000000000000/decision",
        Some(alice),
        &[],
        body(r#"{"decision": "approve"}"#),
    )
    .await;
    assert_error(&a, bad, "invalid_request", "decision without args_sha256");
    // The session is intact after all of it.
    let a = send(
        &app,
        "GET",
        &format!("/v1/sessions/{sid}"),
        Some(alice),
        &[],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    engine.shutdown().await;
    engine.release_lease().await;
}
