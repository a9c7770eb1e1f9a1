//! The audit trail as a hash chain, against a real `redis-server`: it verifies on real
//! entries, and `verify_audit` names the entry after one is edited, deleted or two are
//! swapped directly in Redis; a rewrite that recomputes the hashes is caught by an anchor;
//! trimming keeps what remains verifiable; retention removes idle sessions and keeps others.

use airlock::store::{chain_hash, ChainPoint, ChainProblem, Store, GENESIS_HASH};
use airlock_tests::redis_server::RedisServer;
use redis::aio::MultiplexedConnection;

use crate::store::{open_store, pending_call, raw, HASH};

type Raw = Vec<(String, Vec<String>)>;

async fn raw_audit(r: &mut MultiplexedConnection, store: &Store) -> Raw {
    redis::cmd("XRANGE")
        .arg(store.keys().audit())
        .arg("-")
        .arg("+")
        .query_async(r)
        .await
        .unwrap()
}

/// Replaces the audit stream with `entries` (same ids), as someone with Redis access could.
async fn rewrite(r: &mut MultiplexedConnection, store: &Store, entries: &Raw) {
    let key = store.keys().audit();
    let _: () = redis::cmd("DEL").arg(&key).query_async(r).await.unwrap();
    for (id, fields) in entries {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg(id)
            .arg(fields)
            .query_async(r)
            .await
            .unwrap();
    }
}

fn field<'a>(fields: &'a [String], name: &str) -> &'a str {
    let i = fields.iter().step_by(2).position(|k| k == name).unwrap();
    &fields[2 * i + 1]
}

fn set_field(fields: &mut [String], name: &str, value: &str) {
    let i = fields.iter().step_by(2).position(|k| k == name).unwrap();
    fields[2 * i + 1] = value.to_string();
}

/// `n` calls, each proposed then denied with a reason of a different length (so the entries
/// cross SHA-256's 64-byte block boundaries at every offset), some of them not ASCII.
async fn calls_with_varied_entries(store: &Store, n: usize) {
    for i in 0..n {
        let (_, c) = pending_call(store, "alice", 60_000).await;
        let reason = if i % 3 == 0 {
            "é".repeat(i / 2)
        } else {
            "r".repeat(i)
        };
        let reason = (!reason.is_empty()).then_some(reason);
        store
            .decide(
                &c.id,
                "alice",
                HASH,
                false,
                reason.as_deref(),
                None,
                airlock::store::now_ms(),
            )
            .await
            .unwrap();
    }
}

async fn problem(store: &Store, anchors: &[ChainPoint]) -> Option<ChainProblem> {
    store.verify_audit(anchors).await.unwrap().problem
}

#[tokio::test]
async fn the_audit_chain_verifies_and_names_the_entry_that_was_tampered_with() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let mut r = raw(&server).await;
    assert_eq!(problem(&store, &[]).await, None, "an empty audit verifies");

    // More than one verify page (500 entries), written by both Rust-built and Lua-built entries.
    calls_with_varied_entries(&store, 260).await;
    let report = store.verify_audit(&[]).await.unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.entries, 520);
    let head = report.head.clone().expect("a head");
    assert_eq!(head.seq, 520);
    let original = raw_audit(&mut r, &store).await;
    assert_eq!(original.len(), 520);
    // The chain as documented: seq 1.., prev = the previous hash, hash over the fields.
    assert_eq!(field(&original[0].1, "prev"), GENESIS_HASH);
    for (i, (_, f)) in original.iter().enumerate() {
        assert_eq!(field(f, "seq"), (i + 1).to_string());
        if i > 0 {
            assert_eq!(field(f, "prev"), field(&original[i - 1].1, "hash"));
        }
        let pairs: Vec<(&str, &str)> = f[..f.len() - 2]
            .chunks(2)
            .map(|p| (p[0].as_str(), p[1].as_str()))
            .collect();
        assert_eq!(chain_hash(pairs), field(f, "hash"), "entry {i}");
        assert_eq!(
            field(f, "rule"),
            "ask-writes",
            "every entry names the deciding rule"
        );
    }
    assert_eq!(head.hash, field(&original[519].1, "hash"));
    // The head is a valid anchor; a wrong hash at that seq is not.
    assert_eq!(problem(&store, std::slice::from_ref(&head)).await, None);
    let wrong = ChainPoint {
        hash: "ab".repeat(32),
        ..head.clone()
    };
    assert!(matches!(
        problem(&store, &[wrong]).await,
        Some(ChainProblem::AnchorMismatch { seq: 520, .. })
    ));

    // Edited: the outcome of entry 100 (0-based 99) changed from "denied" to "approved".
    let mut edited = original.clone();
    assert_eq!(field(&edited[99].1, "action"), "denied");
    set_field(&mut edited[99].1, "outcome", "approved");
    rewrite(&mut r, &store, &edited).await;
    assert_eq!(
        problem(&store, &[]).await,
        Some(ChainProblem::Changed {
            id: original[99].0.clone(),
            seq: 100
        })
    );

    // Deleted: entry 300 removed with XDEL.
    rewrite(&mut r, &store, &original).await;
    assert_eq!(problem(&store, &[]).await, None, "restored");
    let _: i64 = redis::cmd("XDEL")
        .arg(store.keys().audit())
        .arg(&original[299].0)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        problem(&store, &[]).await,
        Some(ChainProblem::Removed {
            id: original[300].0.clone(),
            from: 300,
            to: 300,
            found: 301
        })
    );

    // Swapped: entries 10 and 11 change places (each keeps a valid hash of its own fields).
    let mut swapped = original.clone();
    let (a, b) = (swapped[9].1.clone(), swapped[10].1.clone());
    swapped[9].1 = b;
    swapped[10].1 = a;
    rewrite(&mut r, &store, &swapped).await;
    assert_eq!(
        problem(&store, &[]).await,
        Some(ChainProblem::Reordered {
            id: original[9].0.clone(),
            seq: 11,
            expected: 10
        })
    );

    // The newest entry removed: the head says the chain went further.
    rewrite(&mut r, &store, &original[..519].to_vec()).await;
    assert_eq!(
        problem(&store, &[]).await,
        Some(ChainProblem::Truncated {
            last: 519,
            head: 520
        })
    );

    // A rewrite that recomputes every hash from entry 200 on (and the head) is consistent in
    // itself; only an anchor kept outside Redis reveals it.
    let mut forged = original.clone();
    set_field(&mut forged[199].1, "actor", "mallory");
    for i in 199..forged.len() {
        let prev = field(&forged[i - 1].1, "hash").to_string();
        let f = &mut forged[i].1;
        set_field(f, "prev", &prev);
        let n = f.len();
        let pairs: Vec<(&str, &str)> = f[..n - 2]
            .chunks(2)
            .map(|p| (p[0].as_str(), p[1].as_str()))
            .collect();
        let h = chain_hash(pairs);
        f[n - 1] = h;
    }
    rewrite(&mut r, &store, &forged).await;
    let _: () = redis::cmd("HSET")
        .arg(store.keys().audit_head())
        .arg("hash")
        .arg(field(&forged[519].1, "hash"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(problem(&store, &[]).await, None);
    let anchor = ChainPoint {
        seq: 250,
        hash: field(&original[249].1, "hash").to_string(),
        id: String::new(),
    };
    assert!(matches!(
        problem(&store, &[anchor]).await,
        Some(ChainProblem::AnchorMismatch { seq: 250, .. })
    ));

    // Put back, the chain verifies and new entries continue it.
    rewrite(&mut r, &store, &original).await;
    let _: () = redis::cmd("HSET")
        .arg(store.keys().audit_head())
        .arg("hash")
        .arg(&head.hash)
        .query_async(&mut r)
        .await
        .unwrap();
    calls_with_varied_entries(&store, 3).await;
    let report = store
        .verify_audit(std::slice::from_ref(&head))
        .await
        .unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.entries, 526);
}

#[tokio::test]
async fn trimming_leaves_a_checkpoint_and_a_chain_that_still_verifies() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let mut r = raw(&server).await;
    calls_with_varied_entries(&store, 20).await;
    let before = raw_audit(&mut r, &store).await;
    let old_anchor = ChainPoint {
        seq: 5,
        hash: field(&before[4].1, "hash").to_string(),
        id: String::new(),
    };
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cutoff = airlock::store::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    calls_with_varied_entries(&store, 2).await;

    let t = store.trim_audit(cutoff).await.unwrap();
    assert_eq!(t.removed, 40);
    let cp = t.checkpoint.expect("a checkpoint");
    assert_eq!(
        (cp.seq, cp.hash.as_str()),
        (40, field(&before[39].1, "hash"))
    );
    let after = raw_audit(&mut r, &store).await;
    // 4 newer entries kept, then the entry recording the trim.
    assert_eq!(after.len(), 5);
    assert_eq!(field(&after[0].1, "prev"), cp.hash);
    let note = &after[4].1;
    assert_eq!(field(note, "action"), "audit_trimmed");
    assert!(field(note, "detail").contains(&cp.hash));
    let report = store.verify_audit(&[]).await.unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.checkpoint.as_ref().map(|c| c.seq), Some(40));
    // An anchor from before the trim can no longer be checked: said so, not passed.
    assert!(matches!(
        problem(&store, &[old_anchor]).await,
        Some(ChainProblem::AnchorMismatch { seq: 5, .. })
    ));
    // Nothing older: a second trim removes nothing.
    assert_eq!(store.trim_audit(cutoff).await.unwrap().removed, 0);
    // Removing the first kept entry is still caught.
    let _: i64 = redis::cmd("XDEL")
        .arg(store.keys().audit())
        .arg(&after[0].0)
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(matches!(
        problem(&store, &[]).await,
        Some(ChainProblem::Removed { from: 41, .. })
    ));
}

#[tokio::test]
async fn retention_removes_idle_sessions_with_everything_and_keeps_recent_or_busy_ones() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let mut r = raw(&server).await;
    // Idle: one decided call, agent history.
    let (idle, c) = pending_call(&store, "alice", 60_000).await;
    store
        .decide(
            &c.id,
            "alice",
            HASH,
            false,
            None,
            None,
            airlock::store::now_ms(),
        )
        .await
        .unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg(store.keys().history(&idle.id))
        .arg(r#"{"role":"user","content":"hi"}"#)
        .query_async(&mut r)
        .await
        .unwrap();
    // Old but busy: a call still awaiting approval (its window outlives the cutoff here).
    let (busy, _) = pending_call(&store, "bob", 3_600_000).await;
    // Old but active: an event after the cutoff.
    let active = store.create_session("alice").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cutoff = airlock::store::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (_, c2) = pending_call(&store, "carol", 60_000).await;
    let recent = store.get_call(&c2.id).await.unwrap().unwrap().session_id;
    store
        .append_event(
            &active.id,
            &airlock::events::Event::UserMessage(airlock::events::UserMessage {
                turn_id: "t1".into(),
                content: "still here".into(),
            }),
        )
        .await
        .unwrap();

    let removed = store.sweep_sessions(cutoff, 100).await.unwrap();
    assert_eq!(removed, vec![idle.id.clone()]);
    for key in [
        store.keys().session(&idle.id),
        store.keys().events(&idle.id),
        store.keys().session_calls(&idle.id),
        store.keys().history(&idle.id),
        store.keys().call(&c.id),
    ] {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(n, 0, "{key} survived the sweep");
    }
    for s in [&busy.id, &active.id, &recent] {
        assert!(
            store.get_session(s).await.unwrap().is_some(),
            "{s} was removed"
        );
    }
    assert!(store
        .list_sessions("alice")
        .await
        .unwrap()
        .iter()
        .all(|s| s.id != idle.id));
    // The audit outlives the session and still verifies.
    assert!(store
        .read_audit(None, 100)
        .await
        .unwrap()
        .iter()
        .any(|e| e.entry.session_id == idle.id));
    assert_eq!(problem(&store, &[]).await, None);
}

/// `airlock audit verify|export --config F` against a Redis the config names.
fn audit_cli(config: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(airlock_tests::server::airlock_binary())
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("AIRLOCK_REDIS_URL")
        .output()
        .expect("run airlock");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn audit_verify_and_export_on_the_command_line() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let mut r = raw(&server).await;
    calls_with_varied_entries(&store, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{}\"\nprefix = \"airlock:\"\n",
            server.url()
        ),
    )
    .unwrap();

    let (code, out) = audit_cli(&config, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("10 entries read") && out.contains("✓ the audit chain verifies"),
        "{out}"
    );
    let head = store.verify_audit(&[]).await.unwrap().head.unwrap();
    let anchor = format!("{}:{}", head.seq, head.hash);
    let (code, out) = audit_cli(&config, &["verify", "--anchor", &anchor]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = audit_cli(&config, &["verify", "--anchor", "3:nothex"]);
    assert_eq!(code, 2, "a malformed anchor is a usage error: {out}");
    assert!(out.contains("64 hex digits"), "{out}");

    let file = dir.path().join("audit.jsonl");
    let (code, out) = audit_cli(
        &config,
        &["export", "--format", "jsonl", "-o", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[9]["seq"], 10);
    assert_eq!(lines[9]["hash"], head.hash.as_str());
    assert_eq!(lines[9]["prev"], lines[8]["hash"]);
    assert_eq!(lines[0]["actor"], "alice");
    assert_eq!(lines[0]["rule"], "ask-writes");
    // Resuming after the 8th entry gives the last two.
    let after = lines[7]["id"].as_str().unwrap();
    let file2 = dir.path().join("rest.jsonl");
    let (code, out) = audit_cli(
        &config,
        &["export", "--after", after, "-o", file2.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(&file2).unwrap().lines().count(), 2);

    // An entry edited in Redis: verify fails, naming it.
    let mut entries = raw_audit(&mut r, &store).await;
    set_field(&mut entries[2].1, "actor", "mallory");
    rewrite(&mut r, &store, &entries).await;
    let (code, out) = audit_cli(&config, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("✗ entry {} (seq 3) was changed", entries[2].0)),
        "{out}"
    );
    let (code, out) = audit_cli(&config, &["verify", "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["problem"]["kind"], "changed");
    assert_eq!(v["problem"]["id"], entries[2].0.as_str());
}
