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
