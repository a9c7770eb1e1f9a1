//! The approvals people ask for (issue 16): approving some hunks of a change, bound to the
//! file the change was computed against and to the content those hunks make.

use std::time::Duration;

use serde_json::json;

use airlock_tests::server::{ServerOptions, TestServer};

fn twenty_lines() -> String {
    (1..=20).map(|i| format!("line {i}\n")).collect()
}

/// An edit of lines 2 and 17: two hunks, far enough apart.
fn two_hunk_edit() -> serde_json::Value {
    json!({"path": "f.txt", "edits": [
        {"old_string": "line 2\n", "new_string": "LINE TWO\n"},
        {"old_string": "line 17\n", "new_string": "LINE SEVENTEEN\n"},
    ]})
}

#[tokio::test]
async fn approving_one_hunk_applies_exactly_that_hunk_bound_to_the_base() {
    let server = TestServer::start(ServerOptions::default()).await;
    let ws = &server.alice.workspace;
    ws.write("f.txt", twenty_lines());
    let token = &server.alice.token;
    let sid = server.api.session(token).await;
    let call = server
        .api
        .propose_ok(token, &sid, "edit_file", two_hunk_edit())
        .await;
    assert_eq!(call["status"], "awaiting_approval", "{call}");
    let hunks = call["preview"]["hunks"]
        .as_array()
        .expect("the preview lists hunks");
    assert_eq!(hunks.len(), 2, "{call}");
    assert_eq!(hunks[1]["id"], 1);
    let (id, sha) = (
        call["id"].as_str().unwrap(),
        call["args_sha256"].as_str().unwrap(),
    );

    // An id the change does not have, or hunks with a denial, are refused; nothing changes.
    let bad = server
        .api
        .post(
            &format!("/v1/tool-calls/{id}/decision"),
            token,
            json!({"decision": "approve", "args_sha256": sha, "hunks": [7]}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    let bad = server
        .api
        .post(
            &format!("/v1/tool-calls/{id}/decision"),
            token,
            json!({"decision": "deny", "args_sha256": sha, "hunks": [0]}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);

    // Approve hunk 1 only, with a note.
    let r = server
        .api
        .post(
            &format!("/v1/tool-calls/{id}/decision"),
            token,
            json!({"decision": "approve", "args_sha256": sha, "hunks": [1], "reason": "leave line 2 alone"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let done = server
        .api
        .wait_status(token, id, &["succeeded"], Duration::from_secs(30))
        .await;
    let want = twenty_lines().replace("line 17\n", "LINE SEVENTEEN\n");
    assert_eq!(ws.read("f.txt").as_deref(), Some(want.as_str()));
    assert_eq!(done["result"]["applied_hunks"], json!([1]), "{done}");
    assert!(
        !done["result"]["diff"]
            .as_str()
            .unwrap()
            .contains("LINE TWO"),
        "{done}"
    );
    let audit = server.verified_audit().await;
    let approved = audit
        .iter()
        .find(|e| e.call_id == id && e.action == "approved")
        .expect("approved");
    assert!(
        approved
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("hunks [1]"),
        "{approved:?}"
    );

    // The file changes after the proposal: approving hunks is refused as stale, nothing runs.
    ws.write("f.txt", twenty_lines());
    let call = server
        .api
        .propose_ok(token, &sid, "edit_file", two_hunk_edit())
        .await;
    ws.write("f.txt", twenty_lines() + "appended by someone else\n");
    let (id, sha) = (
        call["id"].as_str().unwrap(),
        call["args_sha256"].as_str().unwrap(),
    );
    let r = server
        .api
        .post(
            &format!("/v1/tool-calls/{id}/decision"),
            token,
            json!({"decision": "approve", "args_sha256": sha, "hunks": [0]}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("stale_file"), "{}", r.text);
    assert_eq!(
        ws.read("f.txt"),
        Some(twenty_lines() + "appended by someone else\n")
    );
    assert_eq!(
        server.api.get_call(token, id).await["status"],
        "awaiting_approval"
    );
}

#[tokio::test]
async fn an_edited_approval_applies_the_users_version_bound_to_its_own_hash() {
    let server = TestServer::start(ServerOptions::default()).await;
    let ws = &server.alice.workspace;
    ws.write("f.txt", twenty_lines());
    let (token, bob) = (&server.alice.token, &server.bob.token);
    let sid = server.api.session(token).await;
    let call = server
        .api
        .propose_ok(token, &sid, "edit_file", two_hunk_edit())
        .await;
    assert_eq!(call["status"], "awaiting_approval", "{call}");
    let (id, sha) = (
        call["id"].as_str().unwrap().to_string(),
        call["args_sha256"].as_str().unwrap().to_string(),
    );
    let edit = |who: &str, body: serde_json::Value| {
        let (api, id, who) = (&server.api, id.clone(), who.to_string());
        async move {
            api.post(&format!("/v1/tool-calls/{id}/edit"), &who, body)
                .await
        }
    };

    // Refused, nothing changes: another user (404), a stale hash (409), the wrong shape or
    // count (400), both fields, unknown fields, no change at all.
    let two = json!(["LINE 2 BY ALICE\n", "LINE 17 BY ALICE\n"]);
    let r = edit(bob, json!({"args_sha256": sha, "new_strings": two})).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = edit(
        token,
        json!({"args_sha256": "0".repeat(64), "new_strings": two}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text);
    for bad in [
        json!({"args_sha256": sha, "content": "whole file"}),
        json!({"args_sha256": sha, "new_strings": ["only one\n"]}),
        json!({"args_sha256": sha, "new_strings": two, "content": "x"}),
        json!({"args_sha256": sha, "new_strings": two, "old_strings": ["x"]}),
        json!({"args_sha256": sha, "new_strings": ["LINE TWO\n", "LINE SEVENTEEN\n"]}),
    ] {
        let r = edit(token, bad.clone()).await;
        assert_eq!(r.status, 400, "{bad} → {}", r.text);
    }
    assert_eq!(server.api.get_call(token, &id).await["args_sha256"], sha);

    // The edit: previewed in a read-only container (nothing written), a new hash, the call
    // still waiting.
    let r = edit(token, json!({"args_sha256": sha, "new_strings": two})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let edited = r.json;
    let new_sha = edited["args_sha256"].as_str().unwrap().to_string();
    assert_ne!(new_sha, sha);
    assert_eq!(edited["status"], "awaiting_approval");
    assert_eq!(edited["edited"]["by"], "alice", "{edited}");
    assert_eq!(edited["edited"]["from_args_sha256"], sha.as_str());
    assert_eq!(edited["args"]["edits"][0]["old_string"], "line 2\n");
    let diff = edited["preview"]["diff"].as_str().unwrap();
    assert!(
        diff.contains("+LINE 2 BY ALICE") && !diff.contains("LINE TWO"),
        "{diff}"
    );
    assert_eq!(
        ws.read("f.txt"),
        Some(twenty_lines()),
        "an edit writes nothing"
    );
    let evs = server.api.history(token, &sid).await;
    let ev = evs
        .iter()
        .find(|e| e["type"] == "call_edited")
        .expect("a call_edited event");
    assert_eq!(ev["data"]["args_sha256"], new_sha.as_str());
    assert_eq!(ev["data"]["edited_by"], "alice");

    // The approval binds to the edited version: the model's hash is refused now.
    server
        .api
        .decide(token, &id, "approve", &sha, None)
        .await
        .expect(409);
    server
        .api
        .decide(token, &id, "approve", &new_sha, None)
        .await
        .expect(200);
    let done = server
        .api
        .wait_status(token, &id, &["succeeded"], Duration::from_secs(30))
        .await;
    let want = twenty_lines()
        .replace("line 2\n", "LINE 2 BY ALICE\n")
        .replace("line 17\n", "LINE 17 BY ALICE\n");
    assert_eq!(ws.read("f.txt").as_deref(), Some(want.as_str()), "{done}");
    let audit = server.verified_audit().await;
    let e = audit
        .iter()
        .find(|e| e.call_id == id && e.action == "edited")
        .expect("the edit is audited");
    assert_eq!(e.actor, "alice");
    assert_eq!(e.args_sha256, new_sha);
    assert!(e.detail.as_deref().unwrap_or("").contains(&sha), "{e:?}");

    // A write edited after its file changed is stale; a decided call cannot be edited.
    ws.write("g.txt", "one\n");
    let call = server
        .api
        .propose_ok(
            token,
            &sid,
            "write_file",
            json!({"path": "g.txt", "content": "two\n"}),
        )
        .await;
    let (gid, gsha) = (
        call["id"].as_str().unwrap(),
        call["args_sha256"].as_str().unwrap(),
    );
    ws.write("g.txt", "someone else\n");
    let r = server
        .api
        .post(
            &format!("/v1/tool-calls/{gid}/edit"),
            token,
            json!({"args_sha256": gsha, "content": "three\n"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("stale_file"), "{}", r.text);
    let r = server
        .api
        .post(
            &format!("/v1/tool-calls/{id}/edit"),
            token,
            json!({"args_sha256": new_sha, "new_strings": two}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
}

#[tokio::test]
async fn an_edit_never_revives_or_extends_an_approval_window() {
    let server = TestServer::start(ServerOptions {
        approval_ttl_secs: 2,
        ..ServerOptions::default()
    })
    .await;
    let token = &server.alice.token;
    let sid = server.api.session(token).await;
    let call = server
        .api
        .propose_ok(
            token,
            &sid,
            "write_file",
            json!({"path": "n.txt", "content": "a\n"}),
        )
        .await;
    let (id, sha) = (
        call["id"].as_str().unwrap(),
        call["args_sha256"].as_str().unwrap(),
    );
    // The window ends; whether or not the sweeper has run yet, the edit is refused.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let r = server
        .api
        .post(
            &format!("/v1/tool-calls/{id}/edit"),
            token,
            json!({"args_sha256": sha, "content": "b\n"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("expired"), "{}", r.text);
    let after = server.api.get_call(token, id).await;
    assert_eq!(after["args_sha256"], sha, "nothing was re-bound: {after}");
    assert!(after["edited"].is_null(), "{after}");
    assert_eq!(server.alice.workspace.read("n.txt"), None);
}
