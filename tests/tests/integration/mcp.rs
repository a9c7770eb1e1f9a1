//! Airlock as an MCP server, driven by clients no one here wrote: the official Python SDK in
//! both protocol eras — mcp 2.x on 2026-07-28 (stateless, `input_required` + signed
//! `requestState`) and mcp 1.x on 2025-11-25 (`initialize`, sessions, `elicitation/create`) —
//! and the stdio bridge `airlock mcp` under the SDK's stdio client. Real server, real Redis,
//! real Docker. The Python side (tests/mcp/*.py) reports what the client saw; the workspace,
//! the calls and the audit are checked here.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use airlock_tests::server::{ServerOptions, TestServer};
use airlock_tests::wait_until;

/// The venv of one SDK era (scripts/setup-host.sh --tests makes them).
fn python(era: &str) -> PathBuf {
    let root = std::env::var("AIRLOCK_MCP_VENVS").unwrap_or_else(|_| "/opt/airlock-tests".into());
    let p = PathBuf::from(root).join(era).join("bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run `bash scripts/setup-host.sh --tests` (it installs the MCP Python SDK {} there)",
        p.display(),
        if era == "mcp2" { "2.x" } else { "1.x" }
    );
    p
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("mcp")
        .join(name)
}

/// Runs a client scenario to its end and returns what it printed.
async fn run_client(era: &str, file: &str, args: Vec<String>, env: Vec<(String, String)>) -> Value {
    let py = python(era);
    let path = script(file);
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(py)
            .arg(path)
            .args(&args)
            .envs(env)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("the {era} client ({args:?}) did not finish in 180 s"))
    .expect("start the python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {era} client failed ({args:?}):\nstdout: {stdout}\nstderr: {stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("client output is not JSON ({e}): {stdout}\nstderr: {stderr}"))
}

fn mcp_url(server: &TestServer) -> String {
    server.api.url("/mcp")
}

/// A scenario of alice's against this server: `era` is `mcp2` (modern.py) or `mcp1` (legacy.py).
async fn scenario(server: &TestServer, era: &str, name: &str, arg: Option<Value>) -> Value {
    let file = if era == "mcp2" {
        "modern.py"
    } else {
        "legacy.py"
    };
    let mut args = vec![
        mcp_url(server),
        server.alice.token.clone(),
        name.to_string(),
    ];
    args.extend(arg.map(|a| a.to_string()));
    run_client(era, file, args, vec![]).await
}

async fn modern(server: &TestServer, name: &str, arg: Option<Value>) -> Value {
    scenario(server, "mcp2", name, arg).await
}

async fn legacy(server: &TestServer, name: &str, arg: Option<Value>) -> Value {
    scenario(server, "mcp1", name, arg).await
}

/// Audit entries of one call (the chain verifies first).
async fn audit_of(server: &TestServer, call: &str) -> Vec<airlock::store::AuditEntry> {
    let mut entries = server.verified_audit().await;
    entries.retain(|e| e.call_id == call);
    entries
}

fn actions(entries: &[airlock::store::AuditEntry]) -> Vec<String> {
    entries.iter().map(|e| e.action.clone()).collect()
}

/// Every call of alice's, through the HTTP API (as a second client, the web UI, would).
async fn all_calls(server: &TestServer) -> Vec<Value> {
    let token = &server.alice.token;
    let r = server.api.get("/v1/sessions", token).await;
    r.expect(200);
    let mut calls = Vec::new();
    for s in r.json["sessions"].as_array().cloned().unwrap_or_default() {
        let sid = s["id"].as_str().unwrap();
        let c = server
            .api
            .get(&format!("/v1/sessions/{sid}/tool-calls"), token)
            .await;
        c.expect(200);
        calls.extend(c.json["calls"].as_array().cloned().unwrap_or_default());
    }
    calls
}

/// alice's calls that wait for approval.
async fn pending(server: &TestServer) -> Vec<Value> {
    all_calls(server)
        .await
        .into_iter()
        .filter(|c| c["status"] == "awaiting_approval")
        .collect()
}

/// alice's call of `tool` (the only one).
async fn call_of(server: &TestServer, tool: &str) -> String {
    let calls = all_calls(server).await;
    let found: Vec<&Value> = calls.iter().filter(|c| c["tool"] == tool).collect();
    assert_eq!(found.len(), 1, "{calls:?}");
    found[0]["id"].as_str().unwrap().to_string()
}

/// Waits for alice's one call awaiting approval, lets a progress notification go out, then
/// approves it through the HTTP API (a second client, as the web UI).
async fn approve_when_pending(server: &TestServer) {
    let call = wait_until(
        "the MCP call to wait for approval",
        Duration::from_secs(60),
        || async {
            match pending(server).await.first() {
                Some(c) => Ok(c.clone()),
                None => Err("no pending call".to_string()),
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (id, sha) = (
        call["id"].as_str().unwrap(),
        call["args_sha256"].as_str().unwrap(),
    );
    server
        .api
        .decide(&server.alice.token, id, "approve", sha, None)
        .await
        .expect(200);
}

/// After a client's cancel: its call of `tool` ends `cancelled`; returns the call's id.
async fn withdrawn(server: &TestServer, r: &Value, tool: &str) -> String {
    assert_eq!(r["cancelled"], true, "{r}");
    let id = call_of(server, tool).await;
    let token = &server.alice.token;
    let within = Duration::from_secs(30);
    server
        .api
        .wait_status(token, &id, &["cancelled"], within)
        .await;
    id
}

/// A client of `era` cancels a write while it waits for approval (the client cannot be
/// asked): the call is withdrawn and nothing is written.
async fn cancel_while_pending(server: &TestServer, era: &str) {
    let arg =
        json!({"tool": "write_file", "args": {"path": "never.txt", "content": "x\n"}, "after": 3});
    let r = scenario(server, era, "cancel", Some(arg)).await;
    withdrawn(server, &r, "write_file").await;
    assert!(!server.alice.workspace.exists("never.txt"));
}

fn structured(result: &Value) -> &Value {
    &result["result"]["structured"]
}

async fn start() -> TestServer {
    let server = TestServer::start(ServerOptions::default()).await;
    server
        .alice
        .workspace
        .write("README.md", "hello from the workspace\n");
    server.alice.workspace.write(".env", "SECRET=hunter2\n");
    server
}

#[tokio::test]
async fn modern_client_lists_tools_reads_and_writes_with_approval_bound_to_the_call() {
    let server = start().await;

    // The six tools with the agent's schemas and honest hints, on 2026-07-28.
    let listed = modern(&server, "list", None).await;
    assert_eq!(listed["protocol"], "2026-07-28", "{listed}");
    let tools = listed["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, airlock::mcp::TOOL_NAMES);
    for (t, agent) in tools.iter().zip(airlock::agent::prompt::tool_schemas()) {
        assert_eq!(t["schema"], agent["function"]["parameters"], "{t}");
        let ro = ["read_file", "list_dir", "search"].contains(&t["name"].as_str().unwrap());
        assert_eq!(t["read_only"], json!(ro), "{t}");
        assert_eq!(t["destructive"], json!(!ro), "{t}");
    }

    // An allowed read runs at once and comes back as text and structured content.
    let read = modern(
        &server,
        "call",
        Some(json!({"tool": "read_file", "args": {"path": "README.md"}})),
    )
    .await;
    assert_eq!(read["result"]["is_error"], false, "{read}");
    assert!(
        read["result"]["text"]
            .as_str()
            .unwrap()
            .contains("hello from the workspace"),
        "{read}"
    );
    let s = structured(&read);
    assert_eq!(s["status"], "succeeded", "{read}");
    assert_eq!(s["sha256"].as_str().unwrap().len(), 64, "{read}");
    assert!(
        read["asked"].as_array().unwrap().is_empty(),
        "an allowed read asks nothing: {read}"
    );

    // A protected path is refused by the sandbox, whatever the client.
    let secret = modern(
        &server,
        "call",
        Some(json!({"tool": "read_file", "args": {"path": ".env"}})),
    )
    .await;
    assert_eq!(secret["result"]["is_error"], true, "{secret}");
    assert!(!secret.to_string().contains("hunter2"), "{secret}");
    assert!(structured(&secret)["error"]["code"].is_string(), "{secret}");

    // A write that asks: the client is asked with the exact diff, accepts, the file changes,
    // and the audit names the user who decided.
    let accepted = modern(
        &server,
        "call",
        Some(json!({"tool": "write_file", "args": {"path": "new.txt", "content": "written over MCP\n"}, "answer": "accept"})),
    )
    .await;
    assert_eq!(accepted["result"]["is_error"], false, "{accepted}");
    let asked = accepted["asked"][0].as_str().unwrap();
    assert!(
        asked.contains("+written over MCP") && asked.contains("new.txt"),
        "{asked}"
    );
    assert_eq!(
        server.alice.workspace.read("new.txt").as_deref(),
        Some("written over MCP\n")
    );
    let s = structured(&accepted);
    assert_eq!(s["decided_by"], "alice", "{accepted}");
    assert!(
        s["diff"].as_str().unwrap().contains("+written over MCP"),
        "{accepted}"
    );
    let call = s["call_id"].as_str().unwrap();
    let trail = audit_of(&server, call).await;
    let approved = trail
        .iter()
        .find(|e| e.action == "approved")
        .expect("approved");
    assert_eq!(approved.actor, "alice", "{trail:?}");

    // Declined: nothing is written and the model is told it was denied, with the reason.
    let declined = modern(
        &server,
        "call",
        Some(json!({"tool": "write_file", "args": {"path": "no.txt", "content": "x\n"}, "answer": "decline"})),
    )
    .await;
    assert_eq!(declined["result"]["is_error"], true, "{declined}");
    assert_eq!(structured(&declined)["status"], "denied", "{declined}");
    assert!(
        declined["result"]["text"]
            .as_str()
            .unwrap()
            .contains("declined in the MCP client (airlock-tests-modern)"),
        "{declined}"
    );
    assert!(!server.alice.workspace.exists("no.txt"));

    // Stateless calls of one client share its Airlock session; a conversation id gets its own.
    let sid = |r: &Value| structured(r)["session_id"].as_str().unwrap().to_string();
    assert_eq!(sid(&read), sid(&accepted), "one session per client");
    let other = modern(
        &server,
        "call",
        Some(json!({"tool": "list_dir", "args": {}, "conversation": "thread-42"})),
    )
    .await;
    let again = modern(
        &server,
        "call",
        Some(json!({"tool": "list_dir", "args": {}, "conversation": "thread-42"})),
    )
    .await;
    assert_ne!(sid(&other), sid(&read), "{other}");
    assert_eq!(sid(&other), sid(&again), "{again}");

    // An unknown tool is a JSON-RPC error (invalid params), not a call.
    let unknown = modern(&server, "unknown-tool", None).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
}

#[tokio::test]
async fn modern_answers_are_single_use_and_bound_to_their_call() {
    let server = start().await;
    let r = modern(&server, "replay", None).await;
    assert_eq!(
        r["first"],
        json!(["input_required", "input_required"]),
        "{r}"
    );
    // B's answer on A's request approves nothing.
    assert_eq!(
        structured(&json!({"result": r["transplanted"]}))["error"]["code"],
        "approval_mismatch",
        "{r}"
    );
    assert_eq!(
        r["forged"]["structured"]["error"]["code"], "approval_mismatch",
        "{r}"
    );
    // A's own answer approves A, once.
    assert_eq!(r["accepted"]["is_error"], false, "{r}");
    assert_eq!(
        server.alice.workspace.read("a.txt").as_deref(),
        Some("from a\n")
    );
    let a = r["accepted"]["structured"]["call_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Replayed: the same call's result, nothing approved or run again.
    assert_eq!(r["replayed"]["structured"]["call_id"], json!(a), "{r}");
    let trail = actions(&audit_of(&server, &a).await);
    assert_eq!(
        trail.iter().filter(|x| *x == "approved").count(),
        1,
        "{trail:?}"
    );
    assert_eq!(
        trail.iter().filter(|x| *x == "started").count(),
        1,
        "{trail:?}"
    );
    // B was never approved: it still waits, and b.txt does not exist.
    assert!(!server.alice.workspace.exists("b.txt"));
    let waiting = pending(&server).await;
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["args"]["path"], "b.txt");
}

#[tokio::test]
async fn modern_client_without_elicitation_waits_for_approval_in_airlock_with_progress() {
    let server = start().await;
    let client = {
        let url = mcp_url(&server);
        let token = server.alice.token.clone();
        tokio::spawn(async move {
            run_client(
                "mcp2",
                "modern.py",
                vec![url, token, "call".into(), json!({"tool": "write_file", "args": {"path": "ui.txt", "content": "approved in the UI\n"}}).to_string()],
                vec![],
            )
            .await
        })
    };
    // A second client (the HTTP API, as the web UI does) approves the waiting call.
    approve_when_pending(&server).await;
    let r = client.await.unwrap();
    assert_eq!(r["result"]["is_error"], false, "{r}");
    assert!(
        r["asked"].as_array().unwrap().is_empty(),
        "the client could not be asked: {r}"
    );
    let progress = r["progress"].as_array().unwrap();
    assert!(!progress.is_empty(), "progress while waiting: {r}");
    assert!(
        progress[0]["message"]
            .as_str()
            .unwrap()
            .contains("waiting for approval"),
        "{r}"
    );
    assert_eq!(
        server.alice.workspace.read("ui.txt").as_deref(),
        Some("approved in the UI\n")
    );
}

#[tokio::test]
async fn modern_cancel_withdraws_a_pending_approval_and_kills_a_running_command() {
    let server = TestServer::start(ServerOptions::default().tool("run_shell", "allow")).await;
    // Cancelled while it waits for approval (no elicitation: it waits in Airlock).
    cancel_while_pending(&server, "mcp2").await;

    // Cancelled while its command runs: the container is killed.
    let r = modern(
        &server,
        "cancel",
        Some(json!({"tool": "run_shell", "args": {"command": "sleep 60"}, "after": 3})),
    )
    .await;
    let shell = withdrawn(&server, &r, "run_shell").await;
    server
        .assert_no_containers(Some(&shell), "after the cancel")
        .await;

    // The same over 2025-11-25: notifications/cancelled kills the running command.
    let r = legacy(
        &server,
        "cancel",
        Some(json!({"tool": "run_shell", "args": {"command": "sleep 61"}, "after": 3})),
    )
    .await;
    assert_eq!(r["cancelled"], true, "{r}");
    let calls = all_calls(&server).await;
    let legacy_shell = calls
        .iter()
        .find(|c| c["args"]["command"] == "sleep 61")
        .expect("the legacy shell call");
    let id = legacy_shell["id"].as_str().unwrap();
    let token = &server.alice.token;
    server
        .api
        .wait_status(token, id, &["cancelled"], Duration::from_secs(30))
        .await;
    server
        .assert_no_containers(Some(id), "after the legacy cancel")
        .await;
}

#[tokio::test]
async fn mcp_needs_a_token_and_refuses_foreign_origins() {
    let server = start().await;
    let http = reqwest::Client::new();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}}}});
    let send = |token: Option<&str>, origin: Option<&str>| {
        let mut r = http
            .post(mcp_url(&server))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/list")
            .json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let none = send(None, None).await.unwrap();
    assert_eq!(none.status(), 401);
    let challenge = none.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer resource_metadata=\""),
        "{challenge}"
    );
    let bad = send(Some("not-a-token"), None).await.unwrap();
    assert_eq!(bad.status(), 401);
    let foreign = send(Some(&server.alice.token), Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    // The metadata the challenge points at is public and names the endpoint.
    let meta_url = challenge
        .trim_start_matches("Bearer resource_metadata=\"")
        .trim_end_matches('"');
    let meta: Value = http
        .get(meta_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["resource"], mcp_url(&server), "{meta}");
    assert_eq!(
        meta["bearer_methods_supported"],
        json!(["header"]),
        "{meta}"
    );
    // With the token, it answers.
    let ok = send(Some(&server.alice.token), None).await.unwrap();
    assert_eq!(ok.status(), 200);
    // A version mismatch between header and body is refused with the spec's error.
    let mismatch = http
        .post(mcp_url(&server))
        .bearer_auth(&server.alice.token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-method", "tools/list")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(mismatch.status(), 400);
    // Malformed JSON is a parse error, and the server keeps serving.
    let garbage = http
        .post(mcp_url(&server))
        .bearer_auth(&server.alice.token)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = garbage.status();
    let text = garbage.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    let parsed: Value = serde_json::from_str(&text).unwrap_or_default();
    assert_eq!(parsed["error"]["code"], -32700, "{text}");
    // An oversized message is refused before it is parsed.
    let huge = "x".repeat(ServerOptions::default().max_body_bytes + 1);
    let big = http
        .post(mcp_url(&server))
        .bearer_auth(&server.alice.token)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .body(format!("{{\"pad\": \"{huge}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    // An unknown method is the JSON-RPC `method not found`.
    let mut unknown = body.clone();
    unknown["method"] = json!("airlock/format_disk");
    let r = http
        .post(mcp_url(&server))
        .bearer_auth(&server.alice.token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "airlock/format_disk")
        .json(&unknown)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("-32601"), "{text}");
    let again = send(Some(&server.alice.token), None).await.unwrap();
    assert_eq!(again.status(), 200);

    // A 2025-11-25 session is its opener's: another user's token with its id is refused
    // before the SDK sees anything (an answer to an elicitation included).
    let init = http
        .post(mcp_url(&server))
        .bearer_auth(&server.alice.token)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    let sid = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let in_session = |token: &str| {
        http.post(mcp_url(&server))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-session-id", &sid)
            .json(&json!({"jsonrpc": "2.0", "id": 0, "result": {"action": "accept"}}))
            .send()
    };
    assert_eq!(in_session(&server.bob.token).await.unwrap().status(), 404);
    assert_eq!(in_session(&server.alice.token).await.unwrap().status(), 202);
}

async fn legacy_calls(server: &TestServer, answer: Option<&str>, calls: Value) -> Value {
    legacy(
        server,
        "calls",
        Some(json!({"answer": answer, "calls": calls})),
    )
    .await
}

#[tokio::test]
async fn legacy_client_lists_tools_reads_and_answers_elicitations() {
    let server = start().await;
    let r = legacy_calls(
        &server,
        Some("accept"),
        json!([
            {"tool": "read_file", "args": {"path": "README.md"}},
            {"tool": "write_file", "args": {"path": "legacy.txt", "content": "from 2025-11-25\n"}},
            {"tool": "read_file", "args": {"path": ".env"}},
        ]),
    )
    .await;
    assert_eq!(r["protocol"], "2025-11-25", "{r}");
    assert_eq!(r["server"], "airlock", "{r}");
    assert!(
        r["session_id"].as_str().is_some_and(|s| !s.is_empty()),
        "a session: {r}"
    );
    let names: Vec<&str> = r["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, airlock::mcp::TOOL_NAMES);
    assert_eq!(r["tools"][0]["read_only"], true, "{r}");
    assert_eq!(r["tools"][5]["destructive"], true, "{r}");
    let read = &r["results"][0];
    assert_eq!(read["is_error"], false, "{r}");
    assert!(
        read["text"]
            .as_str()
            .unwrap()
            .contains("hello from the workspace"),
        "{r}"
    );
    let write = &r["results"][1];
    assert_eq!(write["is_error"], false, "{r}");
    assert_eq!(
        r["asked"].as_array().unwrap().len(),
        1,
        "one question, for the write: {r}"
    );
    assert!(
        r["asked"][0].as_str().unwrap().contains("+from 2025-11-25"),
        "{r}"
    );
    assert_eq!(
        server.alice.workspace.read("legacy.txt").as_deref(),
        Some("from 2025-11-25\n")
    );
    // A protected path is refused by the sandbox.
    let secret = &r["results"][2];
    assert_eq!(secret["is_error"], true, "{r}");
    assert!(!r.to_string().contains("hunter2"), "{r}");
    // Both calls ran in the one Airlock session of this MCP session, audited as alice's.
    assert_eq!(
        read["structured"]["session_id"], write["structured"]["session_id"],
        "{r}"
    );
    let call = write["structured"]["call_id"].as_str().unwrap();
    let trail = audit_of(&server, call).await;
    assert!(
        trail
            .iter()
            .any(|e| e.action == "approved" && e.actor == "alice"),
        "{trail:?}"
    );

    // Declined: unchanged, denied with the reason.
    let r = legacy_calls(
        &server,
        Some("decline"),
        json!([{"tool": "edit_file", "args": {"path": "legacy.txt", "edits": [{"old_string": "from", "new_string": "FROM"}]}}]),
    )
    .await;
    let edit = &r["results"][0];
    assert_eq!(edit["is_error"], true, "{r}");
    assert_eq!(edit["structured"]["status"], "denied", "{r}");
    assert!(
        edit["text"]
            .as_str()
            .unwrap()
            .contains("declined in the MCP client (airlock-tests-legacy)"),
        "{r}"
    );
    assert_eq!(
        server.alice.workspace.read("legacy.txt").as_deref(),
        Some("from 2025-11-25\n")
    );
}

#[tokio::test]
async fn legacy_client_without_elicitation_waits_and_a_cancel_withdraws_the_call() {
    let server = start().await;
    // No elicitation callback: approved through the HTTP API while the call waits.
    let client = {
        let url = mcp_url(&server);
        let token = server.alice.token.clone();
        tokio::spawn(async move {
            let arg = json!({"answer": null, "calls": [{"tool": "run_shell", "args": {"command": "echo approved-elsewhere"}}]});
            run_client(
                "mcp1",
                "legacy.py",
                vec![url, token, "calls".into(), arg.to_string()],
                vec![],
            )
            .await
        })
    };
    approve_when_pending(&server).await;
    let r = client.await.unwrap();
    let shell = &r["results"][0];
    assert_eq!(shell["is_error"], false, "{r}");
    assert!(
        shell["text"]
            .as_str()
            .unwrap()
            .contains("approved-elsewhere"),
        "{r}"
    );
    assert_eq!(shell["structured"]["exit_code"], 0, "{r}");
    assert!(
        !r["progress"].as_array().unwrap().is_empty(),
        "progress while waiting: {r}"
    );

    // notifications/cancelled withdraws a call that waits for approval.
    cancel_while_pending(&server, "mcp1").await;
}

#[tokio::test]
async fn the_stdio_bridge_serves_the_sdks_stdio_client() {
    let server = start().await;
    let bin = airlock_tests::server::airlock_binary();
    let arg = json!({
        "server": server.api.url(""),
        "answer": "accept",
        "calls": [
            {"tool": "list_dir", "args": {}},
            {"tool": "write_file", "args": {"path": "stdio.txt", "content": "over stdio\n"}},
        ],
    });
    let r = run_client(
        "mcp1",
        "legacy.py",
        vec![
            bin.display().to_string(),
            server.alice.token.clone(),
            "stdio".into(),
            arg.to_string(),
        ],
        vec![],
    )
    .await;
    assert_eq!(r["protocol"], "2025-11-25", "{r}");
    assert_eq!(r["tools"].as_array().unwrap().len(), 6, "{r}");
    assert_eq!(r["results"][0]["is_error"], false, "{r}");
    assert!(
        r["results"][0]["text"]
            .as_str()
            .unwrap()
            .contains("README.md"),
        "{r}"
    );
    assert_eq!(r["results"][1]["is_error"], false, "{r}");
    assert_eq!(
        r["asked"].as_array().unwrap().len(),
        1,
        "the elicitation crossed the bridge: {r}"
    );
    assert_eq!(
        server.alice.workspace.read("stdio.txt").as_deref(),
        Some("over stdio\n")
    );
}

/// One 2026-07-28 request over plain HTTP (for what the SDKs do not drive yet: the tasks
/// extension); the result or error of its JSON-RPC response, from JSON or an SSE stream.
async fn rpc(server: &TestServer, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "airlock-tests-tasks", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {
            "elicitation": {},
            "extensions": {"io.modelcontextprotocol/tasks": {}},
        },
    });
    let mut req = reqwest::Client::new()
        .post(mcp_url(server))
        .bearer_auth(&server.alice.token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = params["name"].as_str().or(params["taskId"].as_str()) {
        req = req.header("mcp-name", name);
    }
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let resp = req.json(&body).send().await.unwrap();
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    // Every answer streams (progress may come first), and tells proxies not to buffer it.
    assert!(sse, "{method}: not an SSE answer");
    let proxies = &resp.headers()["x-accel-buffering"];
    assert_eq!(proxies, "no", "an SSE answer tells proxies not to buffer");
    let text = resp.text().await.unwrap();
    let messages: Vec<Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(&text).unwrap()]
    } else {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    };
    let response = messages
        .into_iter()
        .find(|m| m["id"] == 7)
        .unwrap_or_else(|| panic!("no response to {method}: {text}"));
    response
}

async fn task_until(server: &TestServer, task: &str, status: &str) -> Value {
    wait_until(
        &format!("task {task} to be {status}"),
        Duration::from_secs(60),
        || async {
            let r = rpc(server, "tasks/get", json!({"taskId": task})).await;
            if r["result"]["status"] == status {
                Ok(r["result"].clone())
            } else {
                Err(format!("{r}"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn tasks_extension_turns_a_waiting_call_into_a_task_the_client_answers_and_polls() {
    let server = TestServer::start(ServerOptions::default().tool("run_shell", "allow")).await;
    // The server says it speaks the extension.
    let d = rpc(&server, "server/discover", json!({})).await;
    assert!(
        d["result"]["capabilities"]["extensions"]["io.modelcontextprotocol/tasks"].is_object(),
        "{d}"
    );

    // A write that asks becomes a task that needs input: the approval question.
    let args = json!({"path": "task.txt", "content": "via a task\n"});
    let r = rpc(
        &server,
        "tools/call",
        json!({"name": "write_file", "arguments": args}),
    )
    .await;
    assert_eq!(r["result"]["resultType"], "task", "{r}");
    let task = r["result"]["taskId"].as_str().unwrap().to_string();
    let got = task_until(&server, &task, "input_required").await;
    let question = got["inputRequests"]["airlock_approval"]["params"]["message"]
        .as_str()
        .unwrap();
    assert!(question.contains("+via a task"), "{got}");
    // Another user cannot see or answer it.
    let theirs = {
        let mut r = reqwest::Client::new()
            .post(mcp_url(&server))
            .bearer_auth(&server.bob.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tasks/get")
            .header("mcp-name", &task);
        r = r.json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"taskId": task, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}}}}));
        r.send().await.unwrap().text().await.unwrap()
    };
    assert!(theirs.contains("unknown task"), "{theirs}");
    // The answer decides the call; the task completes with the call's result.
    let accept = json!({"airlock_approval": {"action": "accept", "content": {}}});
    let ack = rpc(
        &server,
        "tasks/update",
        json!({"taskId": task, "inputResponses": accept}),
    )
    .await;
    assert!(ack["error"].is_null(), "{ack}");
    let done = task_until(&server, &task, "completed").await;
    assert_eq!(done["result"]["isError"], false, "{done}");
    assert_eq!(
        done["result"]["structuredContent"]["status"], "succeeded",
        "{done}"
    );
    assert_eq!(
        server.alice.workspace.read("task.txt").as_deref(),
        Some("via a task\n")
    );

    // A long command becomes a working task; tasks/cancel kills it.
    let r = rpc(
        &server,
        "tools/call",
        json!({"name": "run_shell", "arguments": {"command": "sleep 60"}}),
    )
    .await;
    assert_eq!(r["result"]["resultType"], "task", "{r}");
    let task = r["result"]["taskId"].as_str().unwrap().to_string();
    assert_eq!(r["result"]["status"], "working", "{r}");
    let ack = rpc(&server, "tasks/cancel", json!({"taskId": task})).await;
    assert!(ack["error"].is_null(), "{ack}");
    let done = task_until(&server, &task, "completed").await;
    assert_eq!(
        done["result"]["structuredContent"]["status"], "cancelled",
        "{done}"
    );
    server
        .assert_no_containers(Some(&task), "after tasks/cancel")
        .await;

    // A quick read still answers at once, without a task.
    let r = rpc(
        &server,
        "tools/call",
        json!({"name": "list_dir", "arguments": {}}),
    )
    .await;
    assert_eq!(r["result"]["resultType"], "complete", "{r}");
}

#[tokio::test]
async fn approve_in_airlock_keeps_the_question_away_from_a_client_that_could_answer() {
    let fx = airlock_tests::server::Fixture::new(ServerOptions::default()).await;
    let policy = std::fs::read_to_string(&fx.policy_path).unwrap();
    std::fs::write(
        &fx.policy_path,
        format!("[defaults]\napprove_in_airlock = true\n\n{policy}"),
    )
    .unwrap();
    let server = TestServer::start_on(fx).await;
    // The client would accept anything; the policy wants the approval given in Airlock.
    let client = {
        let url = mcp_url(&server);
        let token = server.alice.token.clone();
        tokio::spawn(async move {
            let arg = json!({"tool": "write_file", "args": {"path": "kept.txt", "content": "approved in Airlock\n"}, "answer": "accept"});
            run_client(
                "mcp2",
                "modern.py",
                vec![url, token, "call".into(), arg.to_string()],
                vec![],
            )
            .await
        })
    };
    approve_when_pending(&server).await;
    let r = client.await.unwrap();
    assert!(
        r["asked"].as_array().unwrap().is_empty(),
        "the client was asked: {r}"
    );
    assert_eq!(r["result"]["is_error"], false, "{r}");
    assert!(!r["progress"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(
        server.alice.workspace.read("kept.txt").as_deref(),
        Some("approved in Airlock\n")
    );
}
