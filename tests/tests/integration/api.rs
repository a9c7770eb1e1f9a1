//! The orchestrator's HTTP API end to end: a real server on 127.0.0.1:0 (or the `airlock`
//! binary, for `kill -9`), a real `redis-server`, real Docker containers. Propose → preview diff
//! → approve → streamed output → result → history, over HTTP, WebSocket and SSE; denial,
//! expiry, racing approvals, wrong hashes, other users, auth on every route, Origin checks,
//! resuming event streams, restarts, two orchestrators sharing one Redis, Redis going away, bad
//! bodies and metrics.

use std::time::{Duration, Instant};

use airlock_tests::server::{
    Api, Fixture, ServerOptions, ServerProcess, TestServer, ALLOWED_ORIGIN,
};
use airlock_tests::wait_until;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{redis_info, wait_redis_blocked};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Generous bound for anything that runs a container.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

// ---- helpers --------------------------------------------------------------------------------

/// How a WebSocket client authenticates.
#[derive(Clone, Copy)]
enum WsAuth<'a> {
    None,
    /// The browser way: `Sec-WebSocket-Protocol: airlock.v1, airlock.token.<TOKEN>`.
    Protocol(&'a str),
    /// The non-browser way: `Authorization: Bearer <TOKEN>`.
    Bearer(&'a str),
}

/// Opens a WebSocket; `Err(status)` when the handshake is refused with an HTTP status.
async fn ws_open(
    api: &Api,
    path: &str,
    auth: WsAuth<'_>,
    origin: Option<&str>,
) -> Result<(Ws, tungstenite::handshake::client::Response), u16> {
    let mut req = api.ws_url(path).into_client_request().expect("ws request");
    let h = req.headers_mut();
    match auth {
        WsAuth::None => {
            h.insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("airlock.v1"),
            );
        }
        WsAuth::Protocol(t) => {
            h.insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&format!("airlock.v1, airlock.token.{t}")).unwrap(),
            );
        }
        WsAuth::Bearer(t) => {
            h.insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("airlock.v1"),
            );
            h.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
    }
    if let Some(o) = origin {
        h.insert("origin", HeaderValue::from_str(o).unwrap());
    }
    match tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the WebSocket handshake answers within 30 s")
    {
        Ok(ok) => Ok(ok),
        Err(tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("WebSocket handshake failed without an HTTP status: {e}"),
    }
}

/// Opens the session's event WebSocket (must succeed).
async fn ws_events(api: &Api, session: &str, token: &str, after: Option<&str>) -> Ws {
    let path = match after {
        Some(a) => format!("/v1/sessions/{session}/events?after={a}"),
        None => format!("/v1/sessions/{session}/events"),
    };
    match ws_open(api, &path, WsAuth::Protocol(token), None).await {
        Ok((ws, _)) => ws,
        Err(status) => panic!("the event WebSocket was refused with {status}"),
    }
}

/// The next event on the WebSocket, or `None` when nothing arrives within `within`.
async fn ws_next(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("the event WebSocket closed"),
            Ok(Some(Err(e))) => panic!("the event WebSocket failed: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                return Some(serde_json::from_str(&t).expect("events are JSON"));
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected WebSocket message {other:?}"),
        }
    }
}

/// Events (with their arrival time) up to and including the first one that matches `stop`.
async fn ws_until(
    ws: &mut Ws,
    within: Duration,
    stop: impl Fn(&Value) -> bool,
) -> Vec<(Instant, Value)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(e) = ws_next(ws, left).await else {
            panic!(
                "no matching event within {within:?}; got {:#?}",
                got.iter().map(|(_, e)| e).collect::<Vec<_>>()
            );
        };
        let done = stop(&e);
        got.push((Instant::now(), e));
        if done {
            return got;
        }
    }
}

fn is(e: &Value, kind: &str, call: &str) -> bool {
    e["type"] == kind && e["data"]["call_id"] == call
}

fn kinds(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn ids(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["id"].as_str().expect("event id").to_string())
        .collect()
}

/// An event id `<ms>-<seq>` as a comparable pair.
fn eid(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').expect("event id <ms>-<seq>");
    (a.parse().unwrap(), b.parse().unwrap())
}

fn assert_increasing(evs: &[Value]) {
    let ids = ids(evs);
    for w in ids.windows(2) {
        assert!(eid(&w[0]) < eid(&w[1]), "event ids not increasing: {ids:?}");
    }
}

fn for_call<'a>(evs: &'a [Value], call: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| e["data"]["call_id"] == call)
        .collect()
}

fn id_of(call: &Value) -> String {
    call["id"].as_str().expect("call id").to_string()
}

fn sha_of(call: &Value) -> String {
    let s = call["args_sha256"]
        .as_str()
        .expect("args_sha256")
        .to_string();
    assert!(
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "args_sha256 is not a hex sha256: {s}"
    );
    s
}

/// A minimal SSE client over a streaming reqwest response.
struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buf: String,
}

impl Sse {
    /// Opens the session's events as SSE; `Err(status)` unless 200.
    async fn open(
        api: &Api,
        session: &str,
        token: &str,
        last_event_id: Option<&str>,
        query: &str,
    ) -> Result<Sse, (u16, String)> {
        let mut rb = api
            .http
            .get(api.url(&format!("/v1/sessions/{session}/events{query}")))
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            rb = rb.header("last-event-id", id);
        }
        let res = rb.send().await.expect("SSE request");
        let status = res.status().as_u16();
        if status != 200 {
            return Err((status, res.text().await.unwrap_or_default()));
        }
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        Ok(Sse {
            body: Box::pin(res.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
            buf: String::new(),
        })
    }

    /// The next event as `{"id", "type", "data"}` (the SSE `data` line, checked against the
    /// SSE `id` and `event` fields), or `None` when nothing arrives within `within`.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let v: Value = serde_json::from_str(&data).expect("SSE data is JSON");
                assert_eq!(id.as_deref(), v["id"].as_str(), "SSE id field: {block}");
                assert_eq!(
                    kind.as_deref(),
                    v["type"].as_str(),
                    "SSE event field: {block}"
                );
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("the SSE stream ended"),
                Ok(Some(Err(e))) => panic!("the SSE stream failed: {e}"),
                Ok(Some(Ok(chunk))) => self
                    .buf
                    .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n")),
            }
        }
    }
}

/// Proposes `count` searches, which the test policy denies outright: each writes one
/// `call_proposed` event and starts no container.
async fn denied_searches(api: &Api, token: &str, session: &str, count: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..count {
        let c = api
            .propose_ok(
                token,
                session,
                "search",
                json!({"pattern": format!("p{i}")}),
            )
            .await;
        assert_eq!(c["status"], "denied", "{c:#}");
        out.push(id_of(&c));
    }
    out
}

fn edit(path: &str, old: &str, new: &str) -> Value {
    json!({"path": path, "edits": [{"old_string": old, "new_string": new}]})
}

// ---- the whole flow -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_preview_approve_stream_result_and_history_over_http_and_websocket() {
    let s = TestServer::start(ServerOptions::default()).await;
    let (api, alice) = (&s.api, &s.alice);
    let token = alice.token.as_str();
    alice
        .workspace
        .write("notes.txt", "hello world\nsecond line\n");
    let sid = api.session(token).await;

    // The browser way to authenticate a WebSocket: the server echoes only its marker.
    let (mut ws, res) = ws_open(
        api,
        &format!("/v1/sessions/{sid}/events"),
        WsAuth::Protocol(token),
        None,
    )
    .await
    .expect("the event WebSocket opens");
    let protos: Vec<&str> = res
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        protos,
        ["airlock.v1"],
        "the server must echo exactly its marker"
    );
    for (name, value) in res.headers() {
        let v = String::from_utf8_lossy(value.as_bytes());
        assert!(!v.contains(token), "the token is echoed in {name}: {v}");
    }

    // Propose an edit: the answer carries the hash to approve and the preview diff.
    let call = api
        .propose_ok(
            token,
            &sid,
            "edit_file",
            edit("notes.txt", "world", "airlock"),
        )
        .await;
    let cid = id_of(&call);
    assert_eq!(call["status"], "awaiting_approval", "{call:#}");
    assert_eq!(call["session_id"], sid.as_str());
    let sha = sha_of(&call);
    let diff = call["preview"]["diff"].as_str().expect("a preview diff");
    assert!(
        diff.contains("-hello world") && diff.contains("+hello airlock"),
        "diff: {diff}"
    );
    assert_eq!(call["preview"]["applied"], false);
    assert!(call["expires_at_ms"].as_u64().is_some(), "{call:#}");
    assert_eq!(
        alice.workspace.read("notes.txt").as_deref(),
        Some("hello world\nsecond line\n"),
        "the preview wrote nothing"
    );

    // The stream shows the proposal (with the diff) and that approval is required.
    let seen = ws_until(&mut ws, CALL_TIMEOUT, |e| is(e, "approval_required", &cid)).await;
    let mut ws_seen: Vec<Value> = seen.into_iter().map(|(_, e)| e).collect();
    assert_eq!(kinds(&ws_seen), ["call_proposed", "approval_required"]);
    assert_eq!(ws_seen[0]["data"]["call_id"], cid.as_str());
    assert_eq!(ws_seen[0]["data"]["preview"]["diff"], diff);
    assert_eq!(ws_seen[0]["data"]["status"], "awaiting_approval");
    assert_eq!(ws_seen[1]["data"]["args_sha256"], sha.as_str());

    // Approve with the hash we were shown: approved, started, finished, file changed.
    let r = api.decide(token, &cid, "approve", &sha, None).await;
    r.expect(200);
    assert_eq!(r.json["status"], "approved", "{:#}", r.json);
    let seen = ws_until(&mut ws, CALL_TIMEOUT, |e| is(e, "call_finished", &cid)).await;
    let evs: Vec<Value> = seen.into_iter().map(|(_, e)| e).collect();
    assert_eq!(kinds(&evs), ["approved", "call_started", "call_finished"]);
    assert_eq!(evs[0]["data"]["decided_by"], "alice");
    assert_eq!(evs[2]["data"]["status"], "succeeded", "{:#}", evs[2]);
    ws_seen.extend(evs);
    assert_eq!(
        alice.workspace.read("notes.txt").as_deref(),
        Some("hello airlock\nsecond line\n")
    );
    let c = api.get_call(token, &cid).await;
    assert_eq!(c["status"], "succeeded", "{c:#}");
    assert_eq!(c["decided_by"], "alice");
    assert_eq!(c["result"]["tool"], "edit_file");
    assert_eq!(c["result"]["applied"], true);
    assert_eq!(c["result"]["diff"], diff);
    assert_eq!(c["error"], Value::Null);

    // A shell command's output streams while it runs, before the call finishes.
    let cmd = "for i in 1 2 3 4 5; do echo line$i; sleep 0.3; done";
    let shell = api
        .propose_ok(token, &sid, "run_shell", json!({ "command": cmd }))
        .await;
    let shid = id_of(&shell);
    assert_eq!(shell["status"], "awaiting_approval", "{shell:#}");
    let seen = ws_until(&mut ws, CALL_TIMEOUT, |e| is(e, "approval_required", &shid)).await;
    ws_seen.extend(seen.into_iter().map(|(_, e)| e));
    api.decide(token, &shid, "approve", &sha_of(&shell), None)
        .await
        .expect(200);
    let seen = ws_until(&mut ws, CALL_TIMEOUT, |e| is(e, "call_finished", &shid)).await;
    let outputs: Vec<&(Instant, Value)> = seen
        .iter()
        .filter(|(_, e)| is(e, "output", &shid))
        .collect();
    let stdout: String = outputs
        .iter()
        .filter(|(_, e)| e["data"]["stream"] == "stdout")
        .map(|(_, e)| e["data"]["data"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "line1\nline2\nline3\nline4\nline5\n");
    let (first_output, _) = outputs[0];
    let (finished_at, finished) = seen.last().unwrap();
    assert_eq!(finished["data"]["status"], "succeeded", "{finished:#}");
    assert!(
        *finished_at - *first_output >= Duration::from_millis(600),
        "output was not streamed: the first chunk arrived only {:?} before the end",
        *finished_at - *first_output
    );
    ws_seen.extend(seen.into_iter().map(|(_, e)| e));
    let c = api.get_call(token, &shid).await;
    assert_eq!(c["status"], "succeeded", "{c:#}");
    assert_eq!(c["result"]["exit_code"], 0);
    let out: String = c["output"]
        .as_array()
        .expect("output so far")
        .iter()
        .map(|o| o["data"].as_str().unwrap())
        .collect();
    assert_eq!(out, stdout);

    // The session's history holds exactly what the stream showed, in order.
    let history = s.api.history(token, &sid).await;
    assert_increasing(&history);
    assert_eq!(ids(&history), ids(&ws_seen));
    assert_eq!(history, ws_seen);
    assert!(ws_next(&mut ws, Duration::from_millis(300)).await.is_none());
    ws.close(None).await.unwrap();
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_read_answers_with_the_result_from_the_post() {
    let s = TestServer::start(ServerOptions::default()).await;
    let token = s.alice.token.as_str();
    s.alice.workspace.write("doc.txt", "one\ntwo\n");
    let sid = s.api.session(token).await;
    let t = Instant::now();
    let c = s
        .api
        .propose_ok(token, &sid, "read_file", json!({"path": "doc.txt"}))
        .await;
    assert_eq!(c["status"], "succeeded", "{c:#}");
    assert_eq!(c["decision"], "allow");
    assert_eq!(c["rule"], "defaults.tools.read_file");
    assert_eq!(c["result"]["tool"], "read_file");
    assert_eq!(c["result"]["content"], "one\ntwo\n");
    assert_eq!(c["result"]["total_bytes"], 8);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let history = s.api.history(token, &sid).await;
    assert_eq!(
        kinds(&history),
        ["call_proposed", "call_started", "call_finished"]
    );
    assert_eq!(history[2]["data"]["result"]["content"], "one\ntwo\n");
    s.finish().await;
}

// ---- deny, expiry, races, wrong hashes ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_writes_nothing_and_the_stream_says_why() {
    let s = TestServer::start(ServerOptions::default()).await;
    let token = s.alice.token.as_str();
    let sid = s.api.session(token).await;
    let call = s
        .api
        .propose_ok(
            token,
            &sid,
            "write_file",
            json!({"path": "new.txt", "content": "x\n"}),
        )
        .await;
    let cid = id_of(&call);
    assert_eq!(call["status"], "awaiting_approval", "{call:#}");
    assert_eq!(call["preview"]["created"], true);
    let sha = sha_of(&call);
    let r = s
        .api
        .decide(token, &cid, "deny", &sha, Some("not today"))
        .await;
    r.expect(200);
    assert_eq!(r.json["status"], "denied");
    assert_eq!(r.json["reason"], "not today");
    assert_eq!(r.json["decided_by"], "alice");
    let history = s.api.history(token, &sid).await;
    let mine = for_call(&history, &cid);
    assert_eq!(
        mine.iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["call_proposed", "approval_required", "denied"]
    );
    let denied = mine[2];
    assert_eq!(denied["data"]["status"], "denied");
    assert_eq!(denied["data"]["reason"], "not today");
    assert_eq!(denied["data"]["decided_by"], "alice");
    // A denial is final: approving now changes nothing.
    let again = s.api.decide(token, &cid, "approve", &sha, None).await;
    again.expect(409);
    assert_eq!(again.error_code(), "conflict");
    assert_eq!(s.api.get_call(token, &cid).await["status"], "denied");
    assert!(!s.alice.workspace.exists("new.txt"), "nothing was written");
    // The container started for the approval is gone.
    s.assert_no_containers(Some(&cid), "after the denial").await;

    // A tool the policy denies is denied at once, naming the rule, without a container.
    let c = s
        .api
        .propose_ok(token, &sid, "search", json!({"pattern": "x"}))
        .await;
    assert_eq!(c["status"], "denied", "{c:#}");
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .contains("defaults.tools.search"),
        "{c:#}"
    );
    let history = s.api.history(token, &sid).await;
    let last = history.last().unwrap();
    assert_eq!(last["type"], "call_proposed");
    assert_eq!(last["data"]["status"], "denied");
    assert!(s.containers(Some(&id_of(&c))).await.is_empty());
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_approval_expires_and_can_no_longer_be_approved() {
    let s = TestServer::start(ServerOptions {
        approval_ttl_secs: 1,
        ..Default::default()
    })
    .await;
    let token = s.alice.token.as_str();
    s.alice.workspace.write("a.txt", "old\n");
    let sid = s.api.session(token).await;
    let call = s
        .api
        .propose_ok(token, &sid, "edit_file", edit("a.txt", "old", "new"))
        .await;
    let cid = id_of(&call);
    assert_eq!(call["status"], "awaiting_approval", "{call:#}");
    let created = call["created_at_ms"].as_u64().unwrap();
    let expires = call["expires_at_ms"].as_u64().unwrap();
    assert!(
        (900..=1500).contains(&(expires - created)),
        "expires {expires}, created {created}"
    );
    let c = s
        .api
        .wait_status(token, &cid, &["expired"], Duration::from_secs(15))
        .await;
    assert_eq!(c["decided_by"], Value::Null);
    let r = s
        .api
        .decide(token, &cid, "approve", &sha_of(&call), None)
        .await;
    assert!(
        r.status == 410 || r.status == 409,
        "approving an expired call: {r:#?}"
    );
    // Nothing ran: no start, the file is unchanged, the prepared container is gone.
    s.assert_no_containers(Some(&cid), "after expiry").await;
    let history = s.api.history(token, &sid).await;
    let mine: Vec<&str> = for_call(&history, &cid)
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(mine, ["call_proposed", "approval_required", "expired"]);
    assert_eq!(s.alice.workspace.read("a.txt").as_deref(), Some("old\n"));
    assert_eq!(s.api.get_call(token, &cid).await["status"], "expired");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_racing_decisions_exactly_one_takes_effect() {
    let s = TestServer::start(ServerOptions::default()).await;
    let token = s.alice.token.clone();
    s.alice.workspace.write("log.txt", "END\n");
    let sid = s.api.session(&token).await;
    let mut expected = String::from("END\n");
    // Five approve/approve races, then two approve/deny races.
    let rounds = [
        ("approve", "approve"),
        ("approve", "approve"),
        ("approve", "approve"),
        ("approve", "approve"),
        ("approve", "approve"),
        ("approve", "deny"),
        ("deny", "approve"),
    ];
    for (i, (d1, d2)) in rounds.into_iter().enumerate() {
        let line = format!("line {i}\nEND");
        let call = s
            .api
            .propose_ok(&token, &sid, "edit_file", edit("log.txt", "END", &line))
            .await;
        let cid = id_of(&call);
        assert_eq!(call["status"], "awaiting_approval", "{call:#}");
        let sha = sha_of(&call);
        let spawn = |d: &'static str| {
            let (api, token, cid, sha) = (s.api.clone(), token.clone(), cid.clone(), sha.clone());
            tokio::spawn(async move { api.decide(&token, &cid, d, &sha, None).await })
        };
        let (a, b) = (spawn(d1), spawn(d2));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "round {i}: {a:#?} {b:#?}");
        let (winner, loser) = if a.status == 200 { (&a, &b) } else { (&b, &a) };
        assert_eq!(loser.error_code(), "conflict", "round {i}");
        let approved = winner.json["status"] == "approved";
        let c = s
            .api
            .wait_status(&token, &cid, &["succeeded", "denied"], CALL_TIMEOUT)
            .await;
        if approved {
            assert_eq!(c["status"], "succeeded", "round {i}: {c:#}");
            expected = expected.replace("END", &line);
        } else {
            assert_eq!(winner.json["status"], "denied", "round {i}");
            s.assert_no_containers(Some(&cid), "after the denial").await;
        }
        assert_eq!(
            s.alice.workspace.read("log.txt").as_deref(),
            Some(expected.as_str()),
            "round {i}"
        );
        // Exactly one decision event, and at most one run.
        let history = s.api.history(&token, &sid).await;
        let mine = for_call(&history, &cid);
        let count = |k: &str| mine.iter().filter(|e| e["type"] == k).count();
        assert_eq!(
            count("approved") + count("denied"),
            1,
            "round {i}: {mine:#?}"
        );
        assert_eq!(count("call_started"), usize::from(approved), "round {i}");
        assert_eq!(count("call_finished"), usize::from(approved), "round {i}");
    }
    // The five approve/approve rounds each applied their line once, in order.
    assert!(
        expected.starts_with("line 0\nline 1\nline 2\nline 3\nline 4\n")
            && expected.ends_with("END\n"),
        "{expected}"
    );
    assert_eq!(s.alice.workspace.read("log.txt").unwrap(), expected);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_args_sha256_is_refused_and_leaves_the_call_waiting() {
    let s = TestServer::start(ServerOptions::default()).await;
    let token = s.alice.token.as_str();
    s.alice.workspace.write("a.txt", "alpha\n");
    let sid = s.api.session(token).await;
    let call = s
        .api
        .propose_ok(token, &sid, "edit_file", edit("a.txt", "alpha", "beta"))
        .await;
    let cid = id_of(&call);
    let sha = sha_of(&call);
    let mut wrong = sha.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for (decision, hash) in [
        ("approve", wrong.as_str()),
        ("approve", "not-a-hash"),
        ("approve", ""),
        ("deny", wrong.as_str()),
    ] {
        let r = s.api.decide(token, &cid, decision, hash, None).await;
        assert!(
            r.status == 409 || (r.status == 400 && hash.len() != 64),
            "{decision} with {hash:?}: {r:#?}"
        );
        r.error_code();
        let c = s.api.get_call(token, &cid).await;
        assert_eq!(c["status"], "awaiting_approval", "{c:#}");
        assert_eq!(c["decided_by"], Value::Null);
    }
    assert_eq!(s.alice.workspace.read("a.txt").as_deref(), Some("alpha\n"));
    // The approval was not used up: the right hash still works.
    s.api
        .decide(token, &cid, "approve", &sha, None)
        .await
        .expect(200);
    s.api
        .wait_status(token, &cid, &["succeeded"], CALL_TIMEOUT)
        .await;
    assert_eq!(s.alice.workspace.read("a.txt").as_deref(), Some("beta\n"));
    s.finish().await;
}

// ---- other users, auth, origins -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_can_neither_decide_nor_see_a_call_or_session() {
    let s = TestServer::start(ServerOptions::default()).await;
    let (alice, bob) = (s.alice.token.as_str(), s.bob.token.as_str());
    let sid = s.api.session(alice).await;
    let call = s
        .api
        .propose_ok(alice, &sid, "run_shell", json!({"command": "echo hi"}))
        .await;
    let cid = id_of(&call);
    let sha = sha_of(&call);
    assert_eq!(call["status"], "awaiting_approval", "{call:#}");
    let before = s.api.history(alice, &sid).await;

    for d in ["approve", "deny"] {
        let r = s.api.decide(bob, &cid, d, &sha, Some("mine now")).await;
        r.expect(404);
        assert_eq!(r.error_code(), "not_found");
    }
    let checks = [
        ("GET", format!("/v1/tool-calls/{cid}"), None),
        ("POST", format!("/v1/tool-calls/{cid}/cancel"), None),
        ("GET", format!("/v1/sessions/{sid}"), None),
        ("DELETE", format!("/v1/sessions/{sid}"), None),
        (
            "POST",
            format!("/v1/sessions/{sid}/tool-calls"),
            Some(json!({"tool": "read_file", "args": {"path": "x"}})),
        ),
        ("GET", format!("/v1/sessions/{sid}/events"), None),
    ];
    for (method, path, body) in checks {
        let r = s.api.call(method, &path, Some(bob), body).await;
        assert_eq!(r.status, 404, "bob {method} {path}: {r:#?}");
        assert_eq!(r.error_code(), "not_found");
    }
    let events = format!("/v1/sessions/{sid}/events");
    assert_eq!(
        ws_open(&s.api, &events, WsAuth::Protocol(bob), None)
            .await
            .err(),
        Some(404)
    );
    let listed = s.api.get("/v1/sessions", bob).await;
    listed.expect(200);
    assert_eq!(listed.json["sessions"], json!([]));

    // Nothing changed for alice.
    let c = s.api.get_call(alice, &cid).await;
    assert_eq!(c["status"], "awaiting_approval", "{c:#}");
    assert_eq!(c["decided_by"], Value::Null);
    assert_eq!(s.api.history(alice, &sid).await, before);
    s.api
        .decide(alice, &cid, "deny", &sha, None)
        .await
        .expect(200);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_health_needs_a_valid_token() {
    let s = TestServer::start(ServerOptions::default()).await;
    let alice = s.alice.token.as_str();
    let sid = s.api.session(alice).await;
    let call = s
        .api
        .propose_ok(alice, &sid, "run_shell", json!({"command": "echo hi"}))
        .await;
    let cid = id_of(&call);
    let sha = sha_of(&call);
    let before = s.api.history(alice, &sid).await;

    // A token that differs from alice's in its last character.
    let mut near = alice.to_string();
    let last = near.pop().unwrap();
    near.push(if last == 'A' { 'B' } else { 'A' });
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/sessions".into(), None),
        ("POST", "/v1/sessions".into(), None),
        ("GET", format!("/v1/sessions/{sid}"), None),
        ("DELETE", format!("/v1/sessions/{sid}"), None),
        (
            "POST",
            format!("/v1/sessions/{sid}/tool-calls"),
            Some(json!({"tool": "read_file", "args": {"path": "x"}})),
        ),
        ("GET", format!("/v1/sessions/{sid}/events"), None),
        ("GET", format!("/v1/tool-calls/{cid}"), None),
        (
            "POST",
            format!("/v1/tool-calls/{cid}/decision"),
            Some(json!({"decision": "approve", "args_sha256": sha})),
        ),
        ("POST", format!("/v1/tool-calls/{cid}/cancel"), None),
        ("GET", "/metrics".into(), None),
    ];
    let authorizations: Vec<Option<String>> = vec![
        None,
        Some("Bearer wrong-token".into()),
        Some(format!("Bearer {near}")),
        Some("Bearer ".into()),
        Some(alice.to_string()),
        Some(format!("Basic {alice}")),
        Some(format!("bearer{alice}")),
    ];
    for (method, path, body) in &routes {
        for auth in &authorizations {
            let mut rb = s.api.http.request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                s.api.url(path),
            );
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            if path.ends_with("/events") {
                rb = rb.header("accept", "text/event-stream");
            }
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let res = rb.send().await.expect("request");
            let status = res.status().as_u16();
            let www = res.headers().get("www-authenticate").cloned();
            let text = res.text().await.unwrap();
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {text}");
            assert_eq!(www.as_ref().map(|v| v.to_str().unwrap()), Some("Bearer"));
            let v: Value = serde_json::from_str(&text).expect("a JSON error");
            assert_eq!(v["error"]["code"], "unauthorized", "{text}");
            assert!(!text.contains(alice), "the token is echoed: {text}");
        }
    }
    // The WebSocket: no token, a bad token as subprotocol or as bearer.
    let events = format!("/v1/sessions/{sid}/events");
    for auth in [
        WsAuth::None,
        WsAuth::Protocol("wrong-token"),
        WsAuth::Protocol(&near),
        WsAuth::Protocol(""),
        WsAuth::Bearer("wrong-token"),
    ] {
        assert_eq!(ws_open(&s.api, &events, auth, None).await.err(), Some(401));
    }
    // Nothing happened: no new session, the call still waits, the history is unchanged.
    let listed = s.api.get("/v1/sessions", alice).await;
    assert_eq!(listed.json["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(
        s.api.get_call(alice, &cid).await["status"],
        "awaiting_approval"
    );
    assert_eq!(s.api.history(alice, &sid).await, before);

    // Health needs no token; readiness is public too.
    let h = s.api.call("GET", "/healthz", None, None).await;
    h.expect(200);
    let r = s.api.call("GET", "/readyz", None, None).await;
    r.expect(200);
    assert_eq!(r.json, json!({"redis": "ok", "docker": "ok"}));
    // And the right token works on the WebSocket, both ways.
    for auth in [WsAuth::Protocol(alice), WsAuth::Bearer(alice)] {
        let (mut ws, _) = ws_open(&s.api, &events, auth, None).await.expect("opens");
        assert!(ws_next(&mut ws, Duration::from_secs(10)).await.is_some());
        ws.close(None).await.unwrap();
    }
    s.api
        .decide(alice, &cid, "deny", &sha, None)
        .await
        .expect(200);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_on_the_event_stream() {
    let s = TestServer::start(ServerOptions::default()).await;
    let alice = s.alice.token.as_str();
    let sid = s.api.session(alice).await;
    denied_searches(&s.api, alice, &sid, 1).await;
    let events = format!("/v1/sessions/{sid}/events");
    for origin in [
        "http://evil.example",
        "http://allowed.example.evil.example",
        "https://allowed.example",
        "http://allowed.example/",
        "null",
    ] {
        assert_eq!(
            ws_open(&s.api, &events, WsAuth::Protocol(alice), Some(origin))
                .await
                .err(),
            Some(403),
            "Origin {origin}"
        );
        let r = s
            .api
            .http
            .get(s.api.url(&events))
            .bearer_auth(alice)
            .header("accept", "text/event-stream")
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "SSE with Origin {origin}");
    }
    for origin in [Some(ALLOWED_ORIGIN), None] {
        let (mut ws, _) = ws_open(&s.api, &events, WsAuth::Protocol(alice), origin)
            .await
            .unwrap_or_else(|st| panic!("Origin {origin:?} refused with {st}"));
        let e = ws_next(&mut ws, Duration::from_secs(10))
            .await
            .expect("an event");
        assert_eq!(e["type"], "call_proposed");
        ws.close(None).await.unwrap();
    }
    s.finish().await;
}

// ---- resuming event streams -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_resume_after_a_disconnect_with_nothing_lost_or_repeated() {
    let s = TestServer::start(ServerOptions::default()).await;
    let alice = s.alice.token.as_str();
    let sid = s.api.session(alice).await;

    // WebSocket: read three events, disconnect, three more happen, resume after the last seen.
    let mut ws = ws_events(&s.api, &sid, alice, None).await;
    let first = denied_searches(&s.api, alice, &sid, 3).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            ws_next(&mut ws, Duration::from_secs(10))
                .await
                .expect("event"),
        );
    }
    assert_eq!(
        seen.iter()
            .map(|e| e["data"]["call_id"].clone())
            .collect::<Vec<_>>(),
        first.iter().map(|c| json!(c)).collect::<Vec<_>>()
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let last = seen.last().unwrap()["id"].as_str().unwrap().to_string();
    let more = denied_searches(&s.api, alice, &sid, 3).await;
    let mut ws = ws_events(&s.api, &sid, alice, Some(&last)).await;
    for c in &more {
        let e = ws_next(&mut ws, Duration::from_secs(10))
            .await
            .expect("event");
        assert_eq!(e["data"]["call_id"], c.as_str(), "{e:#}");
        seen.push(e);
    }
    assert!(
        ws_next(&mut ws, Duration::from_millis(500)).await.is_none(),
        "an event was repeated or invented"
    );
    ws.close(None).await.unwrap();
    let history = s.api.history(alice, &sid).await;
    assert_eq!(history, seen);
    assert_increasing(&history);

    // SSE: the same with Last-Event-ID, and with ?after=.
    let mut sse = Sse::open(&s.api, &sid, alice, None, "").await.unwrap();
    let mut sse_seen = Vec::new();
    for _ in 0..history.len() {
        sse_seen.push(sse.next(Duration::from_secs(10)).await.expect("SSE event"));
    }
    assert_eq!(sse_seen, history);
    drop(sse);
    let last = history.last().unwrap()["id"].as_str().unwrap().to_string();
    let later = denied_searches(&s.api, alice, &sid, 2).await;
    let mut sse = Sse::open(&s.api, &sid, alice, Some(&last), "")
        .await
        .unwrap();
    for c in &later {
        let e = sse.next(Duration::from_secs(10)).await.expect("SSE event");
        assert_eq!(e["data"]["call_id"], c.as_str(), "{e:#}");
        sse_seen.push(e);
    }
    assert!(
        sse.next(Duration::from_millis(500)).await.is_none(),
        "an SSE event was repeated or invented"
    );
    drop(sse);
    let mid = &history[2];
    let mut sse = Sse::open(
        &s.api,
        &sid,
        alice,
        None,
        &format!("?after={}", mid["id"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let first_after = sse.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(first_after, history[3]);
    drop(sse);
    assert_eq!(s.api.history(alice, &sid).await, sse_seen);
    // The history resumes the same way.
    let r = s
        .api
        .get(
            &format!("/v1/sessions/{sid}?after={}", mid["id"].as_str().unwrap()),
            alice,
        )
        .await;
    r.expect(200);
    assert_eq!(r.json["events"].as_array().unwrap()[..], sse_seen[3..]);

    // A malformed resume point is a 400, on every form of the stream.
    for bad in ["abc", "12-", "-1", "1-2-3", "99999999999999999999999-0"] {
        let path = format!("/v1/sessions/{sid}/events?after={bad}");
        assert_eq!(
            ws_open(&s.api, &path, WsAuth::Protocol(alice), None)
                .await
                .err(),
            Some(400),
            "WebSocket after={bad}"
        );
        let e = Sse::open(&s.api, &sid, alice, Some(bad), "")
            .await
            .err()
            .unwrap_or_else(|| panic!("SSE Last-Event-ID {bad} accepted"));
        assert_eq!(e.0, 400, "SSE Last-Event-ID {bad}: {}", e.1);
        let r = s
            .api
            .get(&format!("/v1/sessions/{sid}?after={bad}"), alice)
            .await;
        r.expect(400);
        assert_eq!(r.error_code(), "invalid_request");
    }
    s.finish().await;
}

// ---- restarts -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_pending_approvals_survive_running_calls_fail_and_leftovers_are_reaped() {
    let fx = Fixture::new(ServerOptions::default().tool("run_shell", "allow")).await;
    let alice = fx.alice.token.clone();
    fx.alice.workspace.write("a.txt", "before\n");
    let mut p1 = ServerProcess::start(&fx, 1).await;
    let api = p1.api.clone();
    let sid = api.session(&alice).await;
    let call = api
        .propose_ok(&alice, &sid, "edit_file", edit("a.txt", "before", "after"))
        .await;
    let cid = id_of(&call);
    let sha = sha_of(&call);
    assert_eq!(call["status"], "awaiting_approval", "{call:#}");
    // Wait until the container prepared for the approval is there.
    wait_prepared(&fx, &cid).await;
    // A long shell call (allowed by this test's policy) is running when the server dies.
    let bg = {
        let (api, alice, sid) = (api.clone(), alice.clone(), sid.clone());
        tokio::spawn(async move {
            // The answer never comes: the server is killed first.
            let _ = api
                .http
                .post(api.url(&format!("/v1/sessions/{sid}/tool-calls")))
                .bearer_auth(&alice)
                .json(&json!({"tool": "run_shell", "args": {"command": "sleep 30"}}))
                .send()
                .await;
        })
    };
    let shid = wait_until("the shell call started", CALL_TIMEOUT, || async {
        let h = api.history(&alice, &sid).await;
        let started = h
            .iter()
            .find(|e| e["type"] == "call_started" && e["data"]["call_id"] != cid.as_str());
        if let Some(e) = started {
            let id = e["data"]["call_id"].as_str().unwrap().to_string();
            if !fx.containers(Some(&id)).await.is_empty() {
                return Ok(id);
            }
        }
        Err(format!("{h:#?}"))
    })
    .await;
    assert_eq!(api.get_call(&alice, &shid).await["status"], "running");
    let last_seen = api.history(&alice, &sid).await.last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before_kill = fx.containers(None).await;
    assert!(before_kill.len() >= 2, "{before_kill:?}");
    p1.kill9();
    let _ = bg.await;
    assert_eq!(
        fx.containers(None).await.len(),
        before_kill.len(),
        "the killed server's containers are still there, to be reaped"
    );

    // Start again on the same config.
    let mut p2 = ServerProcess::start(&fx, 2).await;
    let api = p2.api.clone();
    let now: Vec<String> = fx.containers(None).await;
    for old in &before_kill {
        assert!(
            !now.contains(old),
            "leftover {old} was not reaped: {}",
            p2.log()
        );
    }
    // The interrupted call is failed, with the reason.
    let sh = api.get_call(&alice, &shid).await;
    assert_eq!(sh["status"], "failed", "{sh:#}");
    assert_eq!(sh["error"]["code"], "interrupted", "{sh:#}");
    assert!(
        sh["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restarted"),
        "{sh:#}"
    );
    // A client resuming after the last event it saw gets what happened since, once.
    let mut ws = ws_events(&api, &sid, &alice, Some(&last_seen)).await;
    let e = ws_next(&mut ws, Duration::from_secs(10))
        .await
        .expect("event");
    assert_eq!(e["type"], "call_finished", "{e:#}");
    assert_eq!(e["data"]["call_id"], shid.as_str());
    assert_eq!(e["data"]["status"], "failed");
    assert!(ws_next(&mut ws, Duration::from_millis(300)).await.is_none());

    // The pending approval survived and runs (in a cold container).
    let c = api.get_call(&alice, &cid).await;
    assert_eq!(c["status"], "awaiting_approval", "{c:#}");
    assert_eq!(
        fx.alice.workspace.read("a.txt").as_deref(),
        Some("before\n")
    );
    api.decide(&alice, &cid, "approve", &sha, None)
        .await
        .expect(200);
    let c = api
        .wait_status(&alice, &cid, &["succeeded", "failed"], CALL_TIMEOUT)
        .await;
    assert_eq!(c["status"], "succeeded", "{c:#}");
    assert_eq!(fx.alice.workspace.read("a.txt").as_deref(), Some("after\n"));
    let seen = ws_until(&mut ws, CALL_TIMEOUT, |e| is(e, "call_finished", &cid)).await;
    assert_eq!(
        kinds(&seen.into_iter().map(|(_, e)| e).collect::<Vec<_>>()),
        ["approved", "call_started", "call_finished"]
    );
    drop(ws);

    p2.terminate().await;
    fx.assert_no_containers(None, "after the second server stopped")
        .await;
}

/// Proposes an allowed shell command from a task of its own (its answer comes only when it
/// ends) and returns the call's id once it is running in its container.
async fn running_shell(api: &Api, token: &str, sid: &str, command: &str) -> String {
    let before: Vec<String> = api
        .history(token, sid)
        .await
        .iter()
        .filter(|e| e["type"] == "call_started")
        .map(|e| {
            e["data"]["call_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    {
        let (api, token, sid) = (api.clone(), token.to_string(), sid.to_string());
        let command = command.to_string();
        tokio::spawn(async move {
            let _ = api
                .http
                .post(api.url(&format!("/v1/sessions/{sid}/tool-calls")))
                .bearer_auth(&token)
                .json(&json!({"tool": "run_shell", "args": {"command": command}}))
                .send()
                .await;
        });
    }
    wait_until(&format!("`{command}` started"), CALL_TIMEOUT, || async {
        let h = api.history(token, sid).await;
        let started = h.iter().find(|e| {
            e["type"] == "call_started"
                && !before.iter().any(|b| e["data"]["call_id"] == b.as_str())
        });
        if let Some(e) = started {
            let id = e["data"]["call_id"].as_str().unwrap().to_string();
            if !docker_ps(&id).is_empty() {
                return Ok(id);
            }
        }
        Err(format!("{h:#?}"))
    })
    .await
}

/// Ids of the containers (running or not) of call `call`, whichever orchestrator started them.
fn docker_ps(call: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!(
            "label={}={call}",
            airlock::sandbox::profile::LABEL_CALL
        ))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits (up to `within`) until no container of call `call` is left, whoever started it.
async fn wait_no_container(call: &str, within: Duration, what: &str) {
    wait_until(what, within, || async {
        match docker_ps(call) {
            left if left.is_empty() => Ok(()),
            left => Err(format!("containers {left}")),
        }
    })
    .await
}

/// Waits until a container was prepared for call `cid` (which awaits approval).
async fn wait_prepared(fx: &Fixture, cid: &str) {
    let what = format!("a container prepared for {cid}");
    wait_until(&what, CALL_TIMEOUT, || async {
        match fx.containers(Some(cid)).await.is_empty() {
            true => Err("none".to_string()),
            false => Ok(()),
        }
    })
    .await
}

/// Waits (up to 15 s) until `/readyz` answers 200.
async fn wait_ready(api: &Api, what: &str) {
    wait_until(what, Duration::from_secs(15), || async {
        let r = api.call("GET", "/readyz", None, None).await;
        match r.status {
            200 => Ok(()),
            _ => Err(format!("{r:#?}")),
        }
    })
    .await
}

/// Removes an instance's containers when dropped (a second orchestrator killed by a test).
struct ReapOnDrop(String);

impl Drop for ReapOnDrop {
    fn drop(&mut self) {
        airlock_tests::remove_labelled(&self.0);
    }
}

/// Two orchestrators on one Redis, each under its own instance name: a restart of one leaves
/// the other's running call alone; when one dies for good, the survivor fails its calls once
/// its lease lapses; a third process claiming a live instance's name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrators_sharing_redis_keep_their_calls_and_fail_a_dead_ones() {
    let fx = Fixture::new(ServerOptions::default().tool("run_shell", "allow")).await;
    let alice = fx.alice.token.clone();
    let instance_b = format!("{}-b", fx.instance);
    let _reap_b = ReapOnDrop(instance_b.clone());
    let (config_b, port_b) = fx.second_config("airlock-b.toml", &instance_b);
    let mut a = ServerProcess::start(&fx, 1).await;
    let mut b = ServerProcess::start_with(&fx, 2, &config_b, port_b).await;
    let sid = a.api.session(&alice).await;

    // A runs a call; B restarts meanwhile (kill -9, then its recovery): A's call is not B's.
    // (Long enough to outlast B's restart on a loaded machine; had B's recovery failed it,
    // A could not finish it as `succeeded` afterwards.)
    let on_a = running_shell(&a.api, &alice, &sid, "sleep 12; echo done-on-a").await;
    b.kill9();
    let mut b = ServerProcess::start_with(&fx, 3, &config_b, port_b).await;
    let c = b.api.get_call(&alice, &on_a).await;
    assert!(
        c["status"] == "running" || c["status"] == "succeeded",
        "B's recovery touched A's call: {c:#}"
    );
    let c = a
        .api
        .wait_status(&alice, &on_a, &["succeeded", "failed"], CALL_TIMEOUT)
        .await;
    assert_eq!(c["status"], "succeeded", "{c:#}");
    assert!(c.to_string().contains("done-on-a"), "{c:#}");

    // B dies for good with a call running: A fails it once B's lease lapses.
    let on_b = running_shell(&b.api, &alice, &sid, "sleep 120").await;
    b.kill9();
    let bound = airlock::store::INSTANCE_LEASE + airlock::store::INSTANCE_RENEW * 3;
    let c = a
        .api
        .wait_status(
            &alice,
            &on_b,
            &["failed", "succeeded"],
            bound + CALL_TIMEOUT,
        )
        .await;
    assert_eq!(c["status"], "failed", "{c:#}");
    assert_eq!(c["error"]["code"], "interrupted", "{c:#}");
    let message = c["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&instance_b), "{c:#}");
    // …and removes the container B left running (its deadline died with B).
    wait_no_container(
        &on_b,
        CALL_TIMEOUT,
        "the dead orchestrator's container removed",
    )
    .await;
    let audit = a.api.get("/v1/audit?limit=500", &fx.admin.token).await;
    assert!(
        audit
            .json
            .to_string()
            .contains(&format!("\"call_id\":\"{on_b}\"")),
        "the orphaned call is in the audit trail: {audit:?}"
    );

    // A second process under A's live instance name waits for the lease, then refuses to run.
    let (config_dup, _) = fx.second_config("airlock-dup.toml", &fx.instance);
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(airlock_tests::server::airlock_binary())
            .args(["serve", "--config"])
            .arg(&config_dup)
            .env("AIRLOCK_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run airlock serve")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another orchestrator is running as instance `{}`",
            fx.instance
        )),
        "{stderr}"
    );
    assert!(
        started.elapsed() >= airlock::store::INSTANCE_LEASE,
        "it waited for the lease to lapse first: {:?}",
        started.elapsed()
    );
    // A kept serving throughout, and its lease is released on a clean stop.
    let sid2 = a.api.session(&alice).await;
    assert!(!sid2.is_empty());
    a.terminate().await;
    let mut a2 = ServerProcess::start(&fx, 4).await;
    a2.terminate().await;
    fx.assert_no_containers(None, "after both servers stopped")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_goes_away_the_api_answers_503_and_recovers_when_it_returns() {
    let mut s = TestServer::start(ServerOptions {
        persistent_redis: true,
        ..Default::default()
    })
    .await;
    let alice = s.alice.token.clone();
    s.alice.workspace.write("a.txt", "one\n");
    let sid = s.api.session(&alice).await;
    let call = s
        .api
        .propose_ok(&alice, &sid, "edit_file", edit("a.txt", "one", "two"))
        .await;
    let cid = id_of(&call);
    let sha = sha_of(&call);

    s.fx.redis.stop();
    let bound = Duration::from_secs(15);
    let api = s.api.clone();
    let attempts: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", "/v1/sessions".into(), None),
        ("GET", format!("/v1/sessions/{sid}"), None),
        ("GET", format!("/v1/tool-calls/{cid}"), None),
        (
            "POST",
            format!("/v1/tool-calls/{cid}/decision"),
            Some(json!({"decision": "approve", "args_sha256": sha})),
        ),
        (
            "POST",
            format!("/v1/sessions/{sid}/tool-calls"),
            Some(json!({"tool": "read_file", "args": {"path": "a.txt"}})),
        ),
    ];
    for (method, path, body) in attempts {
        let t = Instant::now();
        let r = api.call(method, &path, Some(&alice), body).await;
        assert!(
            t.elapsed() < bound,
            "{method} {path} took {:?}",
            t.elapsed()
        );
        assert_eq!(r.status, 503, "{method} {path}: {r:#?}");
        assert_eq!(r.error_code(), "store_unavailable");
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Redis"),
            "{r:#?}"
        );
    }
    let t = Instant::now();
    assert_eq!(
        ws_open(
            &api,
            &format!("/v1/sessions/{sid}/events"),
            WsAuth::Protocol(&alice),
            None
        )
        .await
        .err(),
        Some(503)
    );
    assert!(t.elapsed() < bound);
    let t = Instant::now();
    let r = api.call("GET", "/readyz", None, None).await;
    assert!(t.elapsed() < bound);
    r.expect(503);
    assert_eq!(r.json["redis"], "unavailable");
    api.call("GET", "/healthz", None, None).await.expect(200);
    assert_eq!(
        s.alice.workspace.read("a.txt").as_deref(),
        Some("one\n"),
        "nothing ran while Redis was away"
    );

    // Redis returns (with its data): the same server recovers without a restart.
    s.fx.redis.restart();
    wait_ready(&api, "ready after Redis returned").await;
    let c = api.get_call(&alice, &cid).await;
    assert_eq!(
        c["status"], "awaiting_approval",
        "nothing was approved: {c:#}"
    );
    api.decide(&alice, &cid, "approve", &sha, None)
        .await
        .expect(200);
    api.wait_status(&alice, &cid, &["succeeded"], CALL_TIMEOUT)
        .await;
    assert_eq!(s.alice.workspace.read("a.txt").as_deref(), Some("two\n"));
    let history = api.history(&alice, &sid).await;
    assert_eq!(
        for_call(&history, &cid)
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "call_proposed",
            "approval_required",
            "approved",
            "call_started",
            "call_finished"
        ]
    );
    api.session(&alice).await;

    // A hung Redis (SIGSTOP: connections open, no answers) gives 503s in bounded time too. The
    // decision Redis did not confirm may still be applied when it wakes up (the command waits in
    // the connection): then the server must fail the call closed, never leave it approved or
    // run it.
    let call = api
        .propose_ok(&alice, &sid, "edit_file", edit("a.txt", "two", "three"))
        .await;
    let (cid, sha) = (id_of(&call), sha_of(&call));
    s.fx.redis.pause();
    let t = Instant::now();
    let (d, n, r) = tokio::join!(
        api.decide(&alice, &cid, "approve", &sha, None),
        api.call("POST", "/v1/sessions", Some(&alice), None),
        api.call("GET", "/readyz", None, None),
    );
    assert!(t.elapsed() < bound, "answers took {:?}", t.elapsed());
    for x in [&d, &n] {
        x.expect(503);
        assert_eq!(x.error_code(), "store_unavailable");
    }
    r.expect(503);
    s.fx.redis.resume();
    wait_ready(&api, "ready after Redis resumed").await;
    // Give a decision still queued in Redis every chance to land, then let the server settle it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = api
        .wait_status(
            &alice,
            &cid,
            &["awaiting_approval", "failed"],
            Duration::from_secs(15),
        )
        .await;
    let history = api.history(&alice, &sid).await;
    let mine = for_call(&history, &cid);
    assert!(
        !mine.iter().any(|e| e["type"] == "call_started"),
        "a decision answered with 503 ran the call: {mine:#?}"
    );
    assert_eq!(s.alice.workspace.read("a.txt").as_deref(), Some("two\n"));
    let (cid, sha) = if c["status"] == "failed" {
        // The late approval landed and was failed closed; propose again.
        assert_eq!(c["error"]["code"], "unconfirmed", "{c:#}");
        let call = api
            .propose_ok(&alice, &sid, "edit_file", edit("a.txt", "two", "three"))
            .await;
        (id_of(&call), sha_of(&call))
    } else {
        assert_eq!(c["decided_by"], Value::Null, "{c:#}");
        (cid, sha)
    };
    api.decide(&alice, &cid, "approve", &sha, None)
        .await
        .expect(200);
    api.wait_status(&alice, &cid, &["succeeded"], CALL_TIMEOUT)
        .await;
    assert_eq!(s.alice.workspace.read("a.txt").as_deref(), Some("three\n"));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_event_streams_are_capped_per_user() {
    let s = TestServer::start(ServerOptions {
        max_streams_per_user: 2,
        ..Default::default()
    })
    .await;
    let (alice, bob) = (s.alice.token.as_str(), s.bob.token.as_str());
    let sid = s.api.session(alice).await;
    let bob_sid = s.api.session(bob).await;
    let events = format!("/v1/sessions/{sid}/events");
    let mut ws1 = ws_events(&s.api, &sid, alice, None).await;
    let _sse = Sse::open(&s.api, &sid, alice, None, "").await.unwrap();
    assert_eq!(
        ws_open(&s.api, &events, WsAuth::Protocol(alice), None)
            .await
            .err(),
        Some(429)
    );
    let e = Sse::open(&s.api, &sid, alice, None, "")
        .await
        .err()
        .unwrap();
    assert_eq!(e.0, 429, "{}", e.1);
    assert!(e.1.contains("busy"), "{}", e.1);
    // Per user: bob is not affected.
    let mut bob_ws = ws_events(&s.api, &bob_sid, bob, None).await;
    // Closing a stream frees its slot.
    ws1.close(None).await.unwrap();
    drop(ws1);
    let freed = "the closed stream's slot freed";
    let mut ws3 = wait_until(freed, Duration::from_secs(15), || async {
        match ws_open(&s.api, &events, WsAuth::Protocol(alice), None).await {
            Ok((ws, _)) => Ok(ws),
            Err(429) => Err("refused with 429".to_string()),
            Err(st) => panic!("refused with {st}"),
        }
    })
    .await;
    denied_searches(&s.api, alice, &sid, 1).await;
    assert_eq!(
        ws_next(&mut ws3, Duration::from_secs(10)).await.unwrap()["type"],
        "call_proposed"
    );
    ws3.close(None).await.unwrap();
    bob_ws.close(None).await.unwrap();
    s.finish().await;
}

// ---- bad requests and metrics ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_oversized_and_invalid_bodies_are_refused_clearly() {
    let s = TestServer::start(ServerOptions {
        max_body_bytes: 64 * 1024,
        max_args_bytes: 16 * 1024,
        ..Default::default()
    })
    .await;
    let alice = s.alice.token.as_str();
    let sid = s.api.session(alice).await;
    let propose_path = format!("/v1/sessions/{sid}/tool-calls");
    let raw = |path: &str, body: Vec<u8>, content_type: Option<&str>| {
        let mut rb = s
            .api
            .http
            .post(s.api.url(path))
            .bearer_auth(alice)
            .body(body);
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        async move {
            let res = rb.send().await.expect("request");
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("not a JSON error ({status}): {text}"));
            assert!(v["error"]["code"].is_string(), "{text}");
            assert!(
                !v["error"]["message"].as_str().unwrap().is_empty(),
                "{text}"
            );
            (status, v)
        }
    };
    let json_ct = Some("application/json");

    let (st, _) = raw(&propose_path, b"{not json".to_vec(), json_ct).await;
    assert_eq!(st, 400, "malformed JSON");
    let (st, _) = raw(&propose_path, b"".to_vec(), json_ct).await;
    assert_eq!(st, 400, "empty body");
    let (st, _) = raw(&propose_path, br#"{"tool": "read_file"}"#.to_vec(), None).await;
    assert!(st == 400 || st == 415, "no content type: {st}");
    let (st, _) = raw(
        &propose_path,
        br#"{"tool": "read_file", "args": {"path": "a"}, "sudo": true}"#.to_vec(),
        json_ct,
    )
    .await;
    assert_eq!(st, 400, "unknown field");
    let (st, _) = raw(&propose_path, br#"["read_file"]"#.to_vec(), json_ct).await;
    assert_eq!(st, 400, "wrong shape");

    // Over limits.max_body_bytes: 413.
    let big = json!({"tool": "write_file", "args": {"path": "big.txt", "content": "x".repeat(100 * 1024)}});
    let (st, v) = raw(&propose_path, big.to_string().into_bytes(), json_ct).await;
    assert_eq!(st, 413, "{v:#}");
    // Under the body limit but over limits.max_args_bytes: 400 naming the limit.
    let r = s
        .api
        .propose(
            alice,
            &sid,
            "write_file",
            json!({"path": "big.txt", "content": "x".repeat(20 * 1024)}),
        )
        .await;
    r.expect(400);
    assert!(r.text.contains("16384"), "{r:#?}");

    // Unknown tool: 400 with the list of tools.
    let r = s.api.propose(alice, &sid, "rm_rf", json!({})).await;
    r.expect(400);
    assert_eq!(r.error_code(), "invalid_request");
    let msg = r.json["error"]["message"].as_str().unwrap();
    for tool in [
        "read_file",
        "list_dir",
        "search",
        "write_file",
        "edit_file",
        "run_shell",
    ] {
        assert!(msg.contains(tool), "{msg}");
    }
    // Invalid arguments: 400.
    for (tool, args) in [
        ("read_file", json!({})),
        ("read_file", json!({"path": 7})),
        ("read_file", json!({"path": "a", "mode": "raw"})),
        (
            "edit_file",
            json!({"path": "a", "edits": "replace everything"}),
        ),
        ("run_shell", json!({"command": ["ls"]})),
        ("read_file", json!("a.txt")),
    ] {
        let r = s.api.propose(alice, &sid, tool, args.clone()).await;
        assert_eq!(r.status, 400, "{tool} {args}: {r:#?}");
        assert_eq!(r.error_code(), "invalid_request");
        assert!(r.text.contains(tool), "{r:#?}");
    }

    // Decisions: malformed, unknown decision, unknown field.
    let call = s
        .api
        .propose_ok(alice, &sid, "run_shell", json!({"command": "true"}))
        .await;
    let cid = id_of(&call);
    let sha = sha_of(&call);
    let decision_path = format!("/v1/tool-calls/{cid}/decision");
    let (st, _) = raw(&decision_path, b"{\"decision\": ".to_vec(), json_ct).await;
    assert_eq!(st, 400);
    let (st, _) = raw(
        &decision_path,
        json!({"decision": "maybe", "args_sha256": sha})
            .to_string()
            .into_bytes(),
        json_ct,
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = raw(
        &decision_path,
        json!({"decision": "approve", "args_sha256": sha, "force": true})
            .to_string()
            .into_bytes(),
        json_ct,
    )
    .await;
    assert_eq!(st, 400, "unknown field");
    let (st, _) = raw(
        &decision_path,
        json!({"decision": "approve"}).to_string().into_bytes(),
        json_ct,
    )
    .await;
    assert_eq!(st, 400, "missing args_sha256");
    // Bad query strings are JSON 400s too (after authentication).
    for q in ["?limit=many", "?after=1-0&bogus=1"] {
        for path in [
            format!("/v1/sessions/{sid}{q}"),
            format!("/v1/sessions/{sid}/events{q}"),
        ] {
            let r = s.api.get(&path, alice).await;
            r.expect(400);
            assert_eq!(r.error_code(), "invalid_request");
            let r = s.api.call("GET", &path, None, None).await;
            r.expect(401);
        }
    }
    assert_eq!(
        s.api.get_call(alice, &cid).await["status"],
        "awaiting_approval"
    );
    // Only that one call was accepted.
    let history = s.api.history(alice, &sid).await;
    assert_eq!(kinds(&history), ["call_proposed", "approval_required"]);
    s.api
        .decide(alice, &cid, "deny", &sha, None)
        .await
        .expect(200);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_tool_and_outcome_for_admins_only() {
    let s = TestServer::start(ServerOptions::default()).await;
    let alice = s.alice.token.as_str();
    let admin = s.admin.token.as_str();
    s.alice.workspace.write("a.txt", "a\n");
    let sid = s.api.session(alice).await;
    for _ in 0..2 {
        let c = s
            .api
            .propose_ok(alice, &sid, "read_file", json!({"path": "a.txt"}))
            .await;
        assert_eq!(c["status"], "succeeded", "{c:#}");
    }
    let c = s
        .api
        .propose_ok(alice, &sid, "read_file", json!({"path": "missing.txt"}))
        .await;
    assert_eq!(c["status"], "failed", "{c:#}");
    assert_eq!(c["error"]["code"], "not_found", "{c:#}");
    denied_searches(&s.api, alice, &sid, 1).await;

    let r = s.api.get("/metrics", admin).await;
    r.expect(200);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/plain"), "{ct}");
    for line in [
        "airlock_tool_calls_total{tool=\"read_file\",outcome=\"succeeded\"} 2",
        "airlock_tool_calls_total{tool=\"read_file\",outcome=\"failed\"} 1",
        "airlock_tool_calls_total{tool=\"search\",outcome=\"denied\"} 1",
        "airlock_tool_call_seconds_count 3",
        "airlock_approvals_pending 0",
    ] {
        assert!(
            r.text.lines().any(|l| l == line),
            "missing `{line}` in:\n{}",
            r.text
        );
    }
    assert!(r.text.contains("# TYPE airlock_tool_calls_total counter"));
    let r = s.api.get("/metrics", alice).await;
    r.expect(403);
    assert_eq!(r.error_code(), "forbidden");
    s.finish().await;
}

/// Redis's count of connections accepted so far.
async fn redis_connections_received(url: &str) -> u64 {
    redis_info(url, "stats", "total_connections_received").await
}

/// A client that pings every 100 ms (the terminal client pings every 15 s) keeps the one Redis
/// connection its stream blocks on: a client frame no longer drops the blocking read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_keep_the_stream_s_redis_connection() {
    let s = TestServer::start(ServerOptions::default()).await;
    let token = s.alice.token.clone();
    let sid = s.api.session(&token).await;
    let mut ws = ws_events(&s.api, &sid, &token, None).await;
    // Once the stream is on its blocking read (the only client Redis blocks), count.
    let url = s.redis.url();
    wait_redis_blocked(&url, 1).await;
    let before = redis_connections_received(&url).await;
    for i in 0..100u32 {
        use futures_util::SinkExt;
        ws.send(Message::Ping(i.to_be_bytes().to_vec().into()))
            .await
            .expect("ping");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stream still delivers.
    s.api
        .propose_ok(&token, &sid, "read_file", json!({"path": "nothing.txt"}))
        .await;
    let got = ws_until(&mut ws, Duration::from_secs(30), |e| {
        e["type"] == "call_finished"
    })
    .await;
    assert_eq!(got.last().unwrap().1["type"], "call_finished");
    // Our own INFO connection counts once; a reconnect per ping would be ~100.
    let opened = redis_connections_received(&url).await - before;
    assert!(
        opened <= 3,
        "{opened} Redis connections were opened while the client pinged 100 times"
    );
    s.finish().await;
}

/// Two orchestrators on one Redis: a cancel sent to B stops the call A runs (A's container is
/// killed within a few sweeps), and a call proposed on A but approved on B runs on B while A's
/// container prepared for it goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_and_decisions_reach_the_orchestrator_that_holds_the_container() {
    let fx = Fixture::new(ServerOptions::default().tool("run_shell", "allow")).await;
    let alice = fx.alice.token.clone();
    fx.alice.workspace.write("a.txt", "before\n");
    let instance_b = format!("{}-b", fx.instance);
    let _reap_b = ReapOnDrop(instance_b.clone());
    let (config_b, port_b) = fx.second_config("airlock-b.toml", &instance_b);
    let a = ServerProcess::start(&fx, 1).await;
    let b = ServerProcess::start_with(&fx, 2, &config_b, port_b).await;
    let sid = a.api.session(&alice).await;
    let sweeps = airlock::store::INSTANCE_RENEW * 4 + Duration::from_secs(5);

    // Cancel on B, the call runs on A.
    let on_a = running_shell(&a.api, &alice, &sid, "sleep 120").await;
    b.api
        .post(&format!("/v1/tool-calls/{on_a}/cancel"), &alice, json!({}))
        .await
        .expect(200);
    let c = a
        .api
        .wait_status(&alice, &on_a, &["cancelled", "failed", "succeeded"], sweeps)
        .await;
    assert_eq!(c["status"], "cancelled", "{c:#}");
    assert_eq!(c["outcome"]["cancelled"], true, "{c:#}");
    wait_no_container(&on_a, sweeps, "A's container of the cancelled call removed").await;

    // Proposed on A (its container starts while the user reads), approved on B.
    let call = a
        .api
        .propose_ok(&alice, &sid, "edit_file", edit("a.txt", "before", "after"))
        .await;
    let cid = id_of(&call);
    wait_prepared(&fx, &cid).await;
    b.api
        .decide(&alice, &cid, "approve", &sha_of(&call), None)
        .await
        .expect(200);
    let c = b
        .api
        .wait_status(&alice, &cid, &["succeeded", "failed"], CALL_TIMEOUT)
        .await;
    assert_eq!(c["status"], "succeeded", "{c:#}");
    assert_eq!(fx.alice.workspace.read("a.txt").as_deref(), Some("after\n"));
    // A's prepared container (labelled with A's instance) is removed by A's sweep.
    fx.assert_no_containers(Some(&cid), "A's container prepared for a call B ran")
        .await;
    drop(b);
    drop(a);
}

/// Quotas and session grants live in Redis: two orchestrators on one Redis enforce one
/// `concurrent_calls`, and a grant made on A applies on B and outlives both processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_grants_are_shared_by_replicas_and_kept_across_restarts() {
    let policy = "[defaults]\nsession_grants = true\n\
                  [defaults.tools]\nread_file = \"allow\"\nrun_shell = \"allow\"\nwrite_file = \"ask\"\n\
                  [defaults.limits]\ntimeout_secs = 60\nconcurrent_calls = 2\n";
    let fx = Fixture::new(ServerOptions {
        base_policy: Some(policy.to_string()),
        ..Default::default()
    })
    .await;
    let alice = fx.alice.token.clone();
    let instance_b = format!("{}-b", fx.instance);
    let _reap_b = ReapOnDrop(instance_b.clone());
    let (config_b, port_b) = fx.second_config("airlock-b.toml", &instance_b);
    let a = ServerProcess::start(&fx, 1).await;
    let b = ServerProcess::start_with(&fx, 2, &config_b, port_b).await;
    let sid = a.api.session(&alice).await;

    // One call runs on A, one on B: alice's two places are taken on both replicas.
    let on_a = running_shell(&a.api, &alice, &sid, "sleep 120").await;
    let on_b = running_shell(&b.api, &alice, &sid, "sleep 120").await;
    for api in [&a.api, &b.api] {
        let r = api
            .propose(&alice, &sid, "run_shell", json!({"command": "echo third"}))
            .await;
        assert_eq!(r.status, 429, "{}", r.text);
        assert!(
            r.text.contains("2 tool call(s) running") && r.text.contains("2 at once"),
            "{}",
            r.text
        );
    }
    // Cancelling A's call frees a place that B sees.
    a.api
        .post(&format!("/v1/tool-calls/{on_a}/cancel"), &alice, json!({}))
        .await
        .expect(200);
    a.api
        .wait_status(&alice, &on_a, &["cancelled"], CALL_TIMEOUT)
        .await;
    let what = "the place A's cancelled call held freed for B";
    wait_until(what, Duration::from_secs(10), || async {
        let r = b
            .api
            .propose(&alice, &sid, "run_shell", json!({"command": "echo freed"}))
            .await;
        if r.status == 201 {
            return Ok(());
        }
        assert_eq!(r.status, 429, "{}", r.text);
        Err(r.text)
    })
    .await;
    b.api
        .post(&format!("/v1/tool-calls/{on_b}/cancel"), &alice, json!({}))
        .await
        .expect(200);
    b.api
        .wait_status(&alice, &on_b, &["cancelled"], CALL_TIMEOUT)
        .await;

    // A grant made on A applies on B.
    let write = |path: &str| json!({"path": path, "content": "granted\n"});
    let before = b
        .api
        .propose_ok(&alice, &sid, "write_file", write("notes/one.txt"))
        .await;
    assert_eq!(before["status"], "awaiting_approval", "{before:#}");
    a.api
        .post(
            &format!("/v1/sessions/{sid}/grants"),
            &alice,
            json!({"tool": "write_file", "pattern": "notes/*"}),
        )
        .await
        .expect(201);
    let listed = b
        .api
        .get(&format!("/v1/sessions/{sid}/grants"), &alice)
        .await;
    listed.expect(200);
    assert_eq!(
        listed.json["grants"],
        json!([{"tool": "write_file", "pattern": "notes/*"}])
    );
    let granted = b
        .api
        .propose_ok(&alice, &sid, "write_file", write("notes/two.txt"))
        .await;
    let c = b
        .api
        .wait_status(
            &alice,
            &id_of(&granted),
            &["succeeded", "failed"],
            CALL_TIMEOUT,
        )
        .await;
    assert_eq!(c["status"], "succeeded", "{c:#}");
    assert_eq!(
        fx.alice.workspace.read("notes/two.txt").as_deref(),
        Some("granted\n")
    );

    // Both orchestrators stop and start again: the grant is still there.
    drop(b);
    drop(a);
    let a = ServerProcess::start(&fx, 3).await;
    let b = ServerProcess::start_with(&fx, 4, &config_b, port_b).await;
    for (api, path) in [(&a.api, "notes/three.txt"), (&b.api, "notes/four.txt")] {
        let call = api
            .propose_ok(&alice, &sid, "write_file", write(path))
            .await;
        let c = api
            .wait_status(
                &alice,
                &id_of(&call),
                &["succeeded", "failed"],
                CALL_TIMEOUT,
            )
            .await;
        assert_eq!(c["status"], "succeeded", "{c:#}");
    }
    // Outside the pattern it still asks.
    let other = b
        .api
        .propose_ok(&alice, &sid, "write_file", write("elsewhere.txt"))
        .await;
    assert_eq!(other["status"], "awaiting_approval", "{other:#}");
    // Deleting the session deletes its grants with it.
    a.api
        .call("DELETE", &format!("/v1/sessions/{sid}"), Some(&alice), None)
        .await
        .expect(204);
    drop(b);
    drop(a);
    let client = redis::Client::open(fx.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*grants*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "grant keys left behind: {keys:?}");
}
