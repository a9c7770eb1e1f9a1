//! Undo (issue 16): every applied write, edit and shell change keeps what it replaced, and
//! `POST /v1/tool-calls/{id}/revert` proposes the reverse change as a new previewed call,
//! bound to the files as the call left them.

use std::time::Duration;

use serde_json::{json, Value};

use airlock_tests::server::{ServerOptions, TestServer};

const WAIT: Duration = Duration::from_secs(60);

fn twenty_lines() -> String {
    (1..=20).map(|i| format!("line {i}\n")).collect()
}

/// Proposes a call the policy asks about, approves it and waits until it succeeded.
async fn applied(server: &TestServer, sid: &str, tool: &str, args: Value) -> Value {
    let token = &server.alice.token;
    let call = server.api.propose_ok(token, sid, tool, args).await;
    approve_done(server, &call).await
}

/// Approves a waiting call (bound to its hash) and waits until it succeeded.
async fn approve_done(server: &TestServer, call: &Value) -> Value {
    server
        .api
        .approve_wait(&server.alice.token, call, &["succeeded"], WAIT)
        .await
}

async fn revert(server: &TestServer, token: &str, id: &str) -> airlock_tests::server::Resp {
    server
        .api
        .post(&format!("/v1/tool-calls/{id}/revert"), token, json!({}))
        .await
}

fn id(call: &Value) -> String {
    call["id"].as_str().expect("a call id").to_string()
}

#[tokio::test]
async fn an_edit_and_a_new_file_are_reverted_as_previewed_calls_and_a_revert_is_redone() {
    let server = TestServer::start(ServerOptions::default()).await;
    let ws = &server.alice.workspace;
    ws.write("f.txt", twenty_lines());
    let (token, bob) = (&server.alice.token, &server.bob.token);
    let sid = server.api.session(token).await;
    let edit = applied(
        &server,
        &sid,
        "edit_file",
        json!({"path": "f.txt", "edits": [{"old_string": "line 2\n", "new_string": "LINE TWO\n"}]}),
    )
    .await;
    let created = applied(
        &server,
        &sid,
        "write_file",
        json!({"path": "new/made.txt", "content": "fresh\n"}),
    )
    .await;
    assert_eq!(
        edit["undo"]["files"],
        json!([{"path": "f.txt", "kind": "modified"}]),
        "{edit}"
    );
    assert!(edit["undo"]["expires_at_ms"].as_u64().is_some(), "{edit}");
    assert_eq!(
        created["undo"]["files"],
        json!([{"path": "new/made.txt", "kind": "created"}])
    );

    // Only the owner may revert; an unknown call is not found either.
    revert(&server, bob, &id(&edit)).await.expect(404);
    revert(&server, token, "00000000-0000-4000-8000-000000000000")
        .await
        .expect(404);

    // The revert is a new call in the same session, previewed (nothing written), waiting.
    let r = revert(&server, token, &id(&edit)).await;
    r.expect(201);
    let rv = r.json;
    assert_eq!(rv["tool"], "revert", "{rv}");
    assert_eq!(rv["session_id"], sid.as_str());
    assert_eq!(rv["status"], "awaiting_approval");
    assert_eq!(rv["args"]["reverts"], id(&edit).as_str());
    assert!(
        rv["args"]["files"][0].get("content_base64").is_none(),
        "the stored call names hashes, not content: {rv}"
    );
    let diff = rv["preview"]["changes"][0]["diff"].as_str().unwrap();
    assert!(diff.contains("-LINE TWO\n+line 2\n"), "{diff}");
    assert!(
        ws.read("f.txt").unwrap().contains("LINE TWO"),
        "a preview writes nothing"
    );
    let proposed = server
        .api
        .history(token, &sid)
        .await
        .into_iter()
        .any(|e| e["type"] == "approval_required" && e["data"]["call_id"] == rv["id"]);
    assert!(proposed, "the revert asks like any change");

    let done = approve_done(&server, &rv).await;
    assert_eq!(ws.read("f.txt"), Some(twenty_lines()), "{done}");
    let orig = server.api.get_call(token, &id(&edit)).await;
    assert_eq!(orig["reverted_by"], rv["id"], "{orig}");
    let again = revert(&server, token, &id(&edit)).await;
    again.expect(409);
    assert!(again.text.contains("reverted already"), "{}", again.text);

    // A new file is removed by its revert.
    let r = revert(&server, token, &id(&created)).await;
    r.expect(201);
    assert_eq!(r.json["preview"]["changes"][0]["kind"], "deleted");
    approve_done(&server, &r.json).await;
    assert!(!ws.exists("new/made.txt"));

    // A revert keeps what it replaced too: reverting it puts the edit back.
    assert_eq!(done["undo"]["files"][0]["path"], "f.txt", "{done}");
    let redo = revert(&server, token, &id(&done)).await;
    redo.expect(201);
    approve_done(&server, &redo.json).await;
    assert!(ws.read("f.txt").unwrap().contains("LINE TWO\n"));

    // Who decided is in the audit: alice proposed and approved the revert.
    let audit = server.verified_audit().await;
    let approvals: Vec<_> = audit
        .iter()
        .filter(|e| e.call_id == rv["id"].as_str().unwrap() && e.action == "approved")
        .collect();
    assert_eq!(approvals.len(), 1, "{audit:#?}");
    assert_eq!(approvals[0].actor, "alice");
    assert_eq!(approvals[0].tool, "revert");
    server.finish().await;
}

#[tokio::test]
async fn a_shell_change_to_two_files_is_reverted_and_a_later_change_is_a_conflict_naming_the_file()
{
    let server = TestServer::start(ServerOptions::default()).await;
    let ws = &server.alice.workspace;
    ws.write("a.txt", "a\n")
        .write("b.txt", "b\n")
        .write("c.bin", [0u8, 1, 2, 255]);
    let token = &server.alice.token;
    let sid = server.api.session(token).await;
    let cmd = "echo A > a.txt && printf 'B' > b.txt && rm c.bin && mkdir -p sub && echo SECRET=hunter2 > sub/.env";
    let shell = applied(&server, &sid, "run_shell", json!({"command": cmd})).await;
    let files: Vec<&str> = shell["undo"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, vec!["a.txt", "b.txt", "c.bin"], "{shell}");
    let not_kept = &shell["undo"]["not_kept"];
    assert_eq!(not_kept[0]["path"], "sub/.env", "{shell}");
    assert!(not_kept[0]["reason"]
        .as_str()
        .unwrap()
        .contains("protected"));
    // What Redis holds for it: the previous content of the three files, never the
    // protected file's.
    let client = redis::Client::open(server.fx.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("airlock-test:undo:{}", id(&shell)))
        .query_async(&mut conn)
        .await
        .unwrap();
    let raw = raw.expect("the undo record is in Redis");
    assert!(
        raw.contains("YQo="),
        "a.txt's previous content (a\\n) is kept: {raw}"
    );
    assert!(
        !raw.contains("hunter2") && !raw.contains("aHVudGVyMg"),
        "{raw}"
    );

    // b.txt changes after the command: the revert is refused, naming it, and nothing is
    // proposed.
    ws.write("b.txt", "later\n");
    let r = revert(&server, token, &id(&shell)).await;
    r.expect(409);
    let msg = r.json["error"]["message"].as_str().unwrap();
    assert!(msg.contains("b.txt") && !msg.contains("a.txt"), "{msg}");
    let calls = server
        .api
        .get(&format!("/v1/sessions/{sid}/tool-calls"), token)
        .await;
    assert!(
        calls.json["calls"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["tool"] != "revert"),
        "a conflict proposes nothing"
    );

    // Put back as the command left it, the revert goes through: text, binary and deleted.
    ws.write("b.txt", "B");
    let r = revert(&server, token, &id(&shell)).await;
    r.expect(201);
    let kinds: Vec<(&str, &str)> = r.json["preview"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("a.txt", "modified"),
            ("b.txt", "modified"),
            ("c.bin", "created")
        ]
    );
    approve_done(&server, &r.json).await;
    assert_eq!(ws.read("a.txt").as_deref(), Some("a\n"));
    assert_eq!(ws.read("b.txt").as_deref(), Some("b\n"));
    assert_eq!(
        std::fs::read(ws.root().join("c.bin")).unwrap(),
        vec![0u8, 1, 2, 255]
    );
    assert!(ws.exists("sub/.env"), "what was not kept is not touched");

    // Deleting the session takes what its calls replaced with it.
    server
        .api
        .call("DELETE", &format!("/v1/sessions/{sid}"), Some(token), None)
        .await
        .expect(204);
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("airlock-test:undo:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, Vec::<String>::new());
    server.finish().await;
}

#[tokio::test]
async fn a_command_cannot_forge_an_undo_record() {
    let server = TestServer::start(ServerOptions::default().tool("run_shell", "allow")).await;
    let token = &server.alice.token;
    let sid = server.api.session(token).await;
    // The executor is PID 1 of the container and the command runs as the same user, but the
    // executor is not dumpable: its stdout (the event stream) cannot be opened through /proc.
    // (Were it reachable, an allowed command keeps no undo record, and the engine drops one it
    // did not ask for.)
    let forged = r#"{"event":"undo","undo":{"files":[{"path":"evil.txt","expected_sha256":"absent","restore_sha256":"c2e0a2ea2e3d27c3a2ee0ecbb25d0e4fc3b7a4e0e8bcb5a47d2ba3a11c3f7d5e","content_base64":"ZXZpbAo="}]}}"#;
    let call = server
        .api
        .propose_ok(
            token,
            &sid,
            "run_shell",
            json!({"command": format!("printf '%s\\n' '{forged}' > /proc/1/fd/1")}),
        )
        .await;
    let done = server
        .api
        .wait_status(token, &id(&call), &["succeeded", "failed"], WAIT)
        .await;
    assert_eq!(done["result"]["exit_code"], 1, "{done:#}");
    let out = server.api.get_call(token, &id(&call)).await["output"].to_string();
    assert!(out.contains("/proc/1/fd/1: Permission denied"), "{out}");
    assert!(done["undo"].is_null(), "{done:#}");
    revert(&server, token, &id(&call)).await.expect(409);
    server.finish().await;
}

#[tokio::test]
async fn undo_is_bounded_per_call_and_per_user_and_expires() {
    // Kept 15 s, at most 50 KiB per call and 100 KiB per user (stored base64).
    let server = TestServer::start(ServerOptions {
        undo: Some((15, 50 * 1024, 100 * 1024)),
        ..ServerOptions::default()
    })
    .await;
    let ws = &server.alice.workspace;
    let big = "x".repeat(45 * 1024);
    ws.write("one.txt", &big)
        .write("two.txt", &big)
        .write("huge.txt", "y".repeat(60 * 1024));
    let token = &server.alice.token;
    let sid = server.api.session(token).await;
    let write = |path: &'static str| json!({"path": path, "content": "small\n"});

    // Over the per-call limit: listed as not kept, and the revert says why.
    let huge = applied(&server, &sid, "write_file", write("huge.txt")).await;
    assert_eq!(huge["undo"]["files"], json!([]), "{huge}");
    assert!(huge["undo"]["not_kept"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("undo limit"));
    let r = revert(&server, token, &id(&huge)).await;
    r.expect(409);
    assert!(r.text.contains("huge.txt"), "{}", r.text);

    // Two records of ~60 KiB (base64) each are more than the user may hold: the older goes.
    let one = applied(&server, &sid, "write_file", write("one.txt")).await;
    let two = applied(&server, &sid, "write_file", write("two.txt")).await;
    let r = revert(&server, token, &id(&one)).await;
    r.expect(410);
    assert!(r.text.contains("no longer kept"), "{}", r.text);
    let pending = revert(&server, token, &id(&two)).await;
    pending.expect(201);

    // Past the retention the record is gone: proposing fails, and an approval of a revert
    // proposed before fails cleanly (the file is left as it is).
    let expires = two["undo"]["expires_at_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(expires.saturating_sub(now) + 1000)).await;
    revert(&server, token, &id(&two)).await.expect(410);
    let rv = &pending.json;
    server
        .api
        .decide(
            token,
            &id(rv),
            "approve",
            rv["args_sha256"].as_str().unwrap(),
            None,
        )
        .await
        .expect(200);
    let failed = server
        .api
        .wait_status(token, &id(rv), &["failed"], WAIT)
        .await;
    assert_eq!(failed["error"]["code"], "undo_unavailable", "{failed}");
    assert_eq!(ws.read("two.txt").as_deref(), Some("small\n"));
    server.finish().await;
}
