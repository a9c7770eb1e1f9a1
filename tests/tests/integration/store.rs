//! The Redis store against a real `redis-server` (one per test): sessions, the call state
//! machine stored atomically, event streams with resume, approvals that race, expire and bind
//! to the arguments' hash, the audit stream, and Redis going away and coming back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airlock::calls::{CallStatus, Decision};
use airlock::events::{self as ev, Event};
use airlock::store::{
    now_ms, AuditEntry, CallRecord, DecisionResult, SessionRecord, Store, StoreError, StoreOptions,
};
use airlock_tests::redis_server::{RedisOptions, RedisServer};
use airlock_tests::wait_until;
use serde_json::json;

use crate::helpers::wait_redis_blocked;

pub(crate) const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const OTHER_HASH: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// A fresh UUID-shaped id (the tests crate has no uuid dependency).
pub(crate) fn new_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        t as u32,
        std::process::id() & 0xffff,
        (n >> 12) & 0xfff,
        n & 0xfff,
        t >> 16
    )
}

fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, ch)| {
            if [8, 13, 18, 23].contains(&i) {
                ch == '-'
            } else {
                ch.is_ascii_hexdigit()
            }
        })
}

pub(crate) async fn open_store(server: &RedisServer) -> Store {
    Store::connect(&server.url(), "airlock:")
        .await
        .expect("connect to the test redis")
}

pub(crate) async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A new call of `session` in `status`; awaiting calls expire `ttl_ms` from now.
pub(crate) fn new_call(session: &SessionRecord, status: CallStatus, ttl_ms: u64) -> CallRecord {
    let now = now_ms();
    let args = json!({"path": "notes.txt", "content": "SECRET FILE BODY"});
    CallRecord {
        args_sha256: HASH.into(),
        status,
        decision: Decision::Ask,
        rule: "ask-writes".into(),
        policy_sha256: "p".repeat(64),
        preview: Some(json!({"diff": "+hello\n"})),
        expected_sha256: Some("e".repeat(64)),
        expires_at_ms: (status == CallStatus::AwaitingApproval).then_some(now + ttl_ms),
        ..CallRecord::new(
            &new_id(),
            &session.id,
            &session.owner,
            "write_file",
            args,
            now,
        )
    }
}

/// A session of `owner` with one call awaiting approval for `ttl_ms`.
pub(crate) async fn pending_call(
    store: &Store,
    owner: &str,
    ttl_ms: u64,
) -> (SessionRecord, CallRecord) {
    let s = store.create_session(owner).await.unwrap();
    let c = new_call(&s, CallStatus::AwaitingApproval, ttl_ms);
    store.create_call(&c, proposed(&c)).await.unwrap();
    (s, c)
}

/// The `call_proposed` event of `c`, as the engine writes it.
pub(crate) fn proposed(c: &CallRecord) -> Event {
    Event::CallProposed(ev::CallProposed {
        call_id: c.id.clone(),
        status: c.status,
        tool: c.tool.clone(),
        args: c.args.clone(),
        args_sha256: c.args_sha256.clone(),
        decision: c.decision,
        rule: c.rule.clone(),
        preview: c.preview.clone(),
        error: c.error.clone(),
        expires_at_ms: c.expires_at_ms,
    })
}

/// The event the engine writes when call `id` moves to `to`.
fn moved(id: &str, to: CallStatus) -> Event {
    let state = ev::CallState {
        call_id: id.to_string(),
        status: to,
    };
    match to {
        CallStatus::Running => Event::CallStarted(state),
        CallStatus::Cancelled => Event::CallCancelled(state),
        CallStatus::AwaitingApproval => Event::ApprovalRequired(ev::ApprovalRequired {
            call_id: id.to_string(),
            status: to,
            args_sha256: HASH.into(),
            expires_at_ms: now_ms() + 60_000,
        }),
        s if s.is_terminal() => Event::CallFinished(ev::CallFinished {
            call_id: id.to_string(),
            status: to,
            result: None,
            error: None,
            outcome: None,
            undo: None,
        }),
        _ => Event::Approved(ev::CallDecided {
            call_id: id.to_string(),
            status: to,
            decided_by: None,
            reason: None,
        }),
    }
}

/// An `output` event of call `id` (it moves nothing).
fn output(id: &str, data: impl ToString) -> Event {
    Event::Output(ev::CallOutput {
        call_id: id.to_string(),
        stream: "stdout".into(),
        data: data.to_string(),
    })
}

async fn status(store: &Store, id: &str) -> CallStatus {
    store
        .get_call(id)
        .await
        .unwrap()
        .expect("call exists")
        .status
}

#[tokio::test]
async fn sessions_are_created_listed_per_owner_and_deleted_with_everything() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let a1 = store.create_session("alice").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let a2 = store.create_session("alice").await.unwrap();
    let b1 = store.create_session("bob").await.unwrap();
    assert_ne!(a1.id, a2.id);
    assert!(looks_like_uuid(&a1.id), "{}", a1.id);

    assert_eq!(store.get_session(&a1.id).await.unwrap(), Some(a1.clone()));
    assert_eq!(store.get_session("no-such-session").await.unwrap(), None);
    assert_eq!(store.get_session("x:events").await.unwrap(), None);
    assert_eq!(
        store.list_sessions("alice").await.unwrap(),
        vec![a2.clone(), a1.clone()],
        "newest first, only alice's"
    );
    assert_eq!(store.list_sessions("bob").await.unwrap(), vec![b1.clone()]);
    assert!(store.list_sessions("carol").await.unwrap().is_empty());

    // A session with events, a pending approval and a running call.
    let pending = new_call(&a1, CallStatus::AwaitingApproval, 60_000);
    store
        .create_call(&pending, proposed(&pending))
        .await
        .unwrap();
    let running = new_call(&a1, CallStatus::Approved, 0);
    store
        .create_call(&running, proposed(&running))
        .await
        .unwrap();
    store
        .transition(&running.id, CallStatus::Running, &[], None, None)
        .await
        .unwrap();
    store
        .append_event(&a1.id, &output(&running.id, "hi"))
        .await
        .unwrap();
    assert_eq!(store.pending_count().await.unwrap(), 1);
    assert_eq!(
        store.running_calls().await.unwrap(),
        vec![running.id.clone()]
    );
    // The agent's keys live in the session too (written here as the agent's store would).
    let k = store.keys();
    let mut r = raw(&server).await;
    for key in [k.history(&a1.id), k.turn(&a1.id), k.turn_cancel(&a1.id)] {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("x")
            .query_async(&mut r)
            .await
            .unwrap();
    }

    store.delete_session(&a1.id).await.unwrap();
    assert_eq!(store.get_session(&a1.id).await.unwrap(), None);
    assert_eq!(
        store.list_sessions("alice").await.unwrap(),
        vec![a2.clone()]
    );
    assert_eq!(store.get_call(&pending.id).await.unwrap(), None);
    assert_eq!(store.get_call(&running.id).await.unwrap(), None);
    assert!(store
        .read_events(&a1.id, None, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.pending_count().await.unwrap(), 0);
    assert!(store.running_calls().await.unwrap().is_empty());
    for key in [
        k.session(&a1.id),
        k.events(&a1.id),
        k.session_calls(&a1.id),
        k.call(&pending.id),
        k.approval(&pending.id),
        k.call(&running.id),
        k.history(&a1.id),
        k.turn(&a1.id),
        k.turn_cancel(&a1.id),
    ] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert!(!exists, "{key} survived the session's deletion");
    }
    assert_eq!(
        store.delete_session(&a1.id).await,
        Err(StoreError::NotFound)
    );
    // Events cannot be appended to a session that does not exist.
    assert_eq!(
        store.append_event(&a1.id, &output(&running.id, "x")).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.list_sessions("bob").await.unwrap(), vec![b1]);
}

#[tokio::test]
async fn a_call_walks_the_legal_path_with_events_and_audit() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let s = store.create_session("alice").await.unwrap();
    let mut c = new_call(&s, CallStatus::Proposed, 0);
    let e0 = store.create_call(&c, proposed(&c)).await.unwrap();
    assert_eq!(store.get_call(&c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(store.list_calls(&s.id).await.unwrap(), vec![c.clone()]);
    assert_eq!(
        store.create_call(&c, proposed(&c)).await,
        Err(StoreError::Conflict {
            current: CallStatus::Proposed
        }),
        "a call id is created once"
    );

    // proposed -> awaiting_approval: needs an expiry, which arms the approval key.
    assert!(matches!(
        store
            .transition(&c.id, CallStatus::AwaitingApproval, &[], None, None)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(status(&store, &c.id).await, CallStatus::Proposed);
    let expires = now_ms() + 60_000;
    let (rec, e1) = store
        .transition(
            &c.id,
            CallStatus::AwaitingApproval,
            &[("expires_at_ms", expires.to_string())],
            Some(moved(&c.id, CallStatus::AwaitingApproval)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rec.status, CallStatus::AwaitingApproval);
    assert_eq!(rec.expires_at_ms, Some(expires));
    assert_eq!(store.pending_count().await.unwrap(), 1);
    let mut r = raw(&server).await;
    let bound: String = redis::cmd("GET")
        .arg(store.keys().approval(&c.id))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(bound, HASH);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(store.keys().approval(&c.id))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "approval key TTL {ttl}");

    // The owner approves with the hash they were shown.
    let DecisionResult::Approved { call, event_id: e2 } = store
        .decide(
            &c.id,
            "alice",
            HASH,
            true,
            Some("looks right"),
            None,
            now_ms(),
        )
        .await
        .unwrap()
    else {
        panic!("expected approval")
    };
    assert_eq!(call.status, CallStatus::Approved);
    assert_eq!(call.decided_by.as_deref(), Some("alice"));
    assert_eq!(call.reason.as_deref(), Some("looks right"));
    assert!(call.decided_at_ms.is_some());
    assert_eq!(store.pending_count().await.unwrap(), 0);
    let gone: bool = redis::cmd("EXISTS")
        .arg(store.keys().approval(&c.id))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!gone, "the approval is single use");

    let (rec, e3) = store
        .transition(
            &c.id,
            CallStatus::Running,
            &[],
            Some(moved(&c.id, CallStatus::Running)),
            Some(&AuditEntry::for_call(
                &call, "system", "started", "running", None,
            )),
        )
        .await
        .unwrap();
    assert_eq!(rec.status, CallStatus::Running);
    assert_eq!(store.running_calls().await.unwrap(), vec![c.id.clone()]);
    let result = json!({"diff": "+hello\n", "sha256": "f".repeat(64)});
    let (rec, e4) = store
        .transition(
            &c.id,
            CallStatus::Succeeded,
            &[
                ("result", result.to_string()),
                ("outcome", json!({"exit": 0}).to_string()),
            ],
            Some(moved(&c.id, CallStatus::Succeeded)),
            Some(&AuditEntry::for_call(
                &call,
                "system",
                "finished",
                "succeeded",
                None,
            )),
        )
        .await
        .unwrap();
    assert_eq!(rec.status, CallStatus::Succeeded);
    assert_eq!(rec.result, Some(result));
    assert_eq!(rec.outcome, Some(json!({"exit": 0})));
    assert!(rec.updated_at_ms >= rec.created_at_ms);
    assert!(store.running_calls().await.unwrap().is_empty());
    c = rec;

    // The session's events, in order, each stamped with the call and its new status.
    let events = store.read_events(&s.id, None, 100).await.unwrap();
    let ids: Vec<_> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        ids,
        vec![e0, e1.unwrap(), e2, e3.unwrap(), e4.unwrap()],
        "events: {events:#?}"
    );
    let kinds_seen: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds_seen,
        [
            "call_proposed",
            "approval_required",
            "approved",
            "call_started",
            "call_finished"
        ]
    );
    let statuses: Vec<_> = events
        .iter()
        .map(|e| e.data["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        statuses,
        [
            "proposed",
            "awaiting_approval",
            "approved",
            "running",
            "succeeded"
        ]
    );
    assert!(events.iter().all(|e| e.data["call_id"] == c.id.as_str()));
    assert_eq!(events[2].data["decided_by"], "alice");
    assert_eq!(events[0].data["preview"], json!({"diff": "+hello\n"}));

    // The audit trail: who proposed, who decided, with the args hash — never the arguments.
    let audit = store.read_audit(None, 100).await.unwrap();
    let actions: Vec<_> = audit
        .iter()
        .map(|e| {
            (
                e.entry.action.as_str(),
                e.entry.actor.as_str(),
                e.entry.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("proposed", "alice", "proposed"),
            ("approved", "alice", "approved"),
            ("started", "system", "running"),
            ("finished", "system", "succeeded"),
        ]
    );
    for a in audit.iter().map(|e| &e.entry) {
        assert_eq!(a.args_sha256, HASH);
        assert_eq!(a.call_id, c.id);
        assert_eq!(a.session_id, s.id);
        assert_eq!(a.tool, "write_file");
        assert_eq!(a.policy_sha256, "p".repeat(64));
    }
    let raw_audit: redis::Value = redis::cmd("XRANGE")
        .arg(store.keys().audit())
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(
        !format!("{raw_audit:?}").contains("SECRET FILE BODY"),
        "file contents leaked into the audit stream"
    );
    // Audit pages resume after an id, like events.
    let later = store.read_audit(Some(&audit[1].id), 100).await.unwrap();
    assert_eq!(later, audit[2..].to_vec());
}

#[tokio::test]
async fn an_illegal_transition_is_a_conflict_and_changes_nothing() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let s = store.create_session("alice").await.unwrap();
    let c = new_call(&s, CallStatus::Denied, 0);
    store.create_call(&c, proposed(&c)).await.unwrap();
    let before = store.get_call(&c.id).await.unwrap().unwrap();
    let events_before = store.read_events(&s.id, None, 100).await.unwrap();
    let audit_before = store.read_audit(None, 100).await.unwrap();
    for to in [
        CallStatus::Approved,
        CallStatus::Running,
        CallStatus::Succeeded,
        CallStatus::AwaitingApproval,
        CallStatus::Proposed,
    ] {
        let r = store
            .transition(
                &c.id,
                to,
                &[("result", "{}".into())],
                Some(moved(&c.id, to)),
                Some(&AuditEntry::for_call(&before, "x", "x", "x", None)),
            )
            .await;
        assert_eq!(
            r,
            Err(StoreError::Conflict {
                current: CallStatus::Denied
            }),
            "denied -> {to}"
        );
    }
    assert_eq!(store.get_call(&c.id).await.unwrap().unwrap(), before);
    assert_eq!(
        store.read_events(&s.id, None, 100).await.unwrap(),
        events_before
    );
    assert_eq!(store.read_audit(None, 100).await.unwrap(), audit_before);

    // Unknown calls, forbidden patch fields and bad starting states are refused up front.
    assert_eq!(
        store
            .transition("no-such-call", CallStatus::Running, &[], None, None)
            .await,
        Err(StoreError::NotFound)
    );
    assert!(matches!(
        store
            .transition(
                &c.id,
                CallStatus::Failed,
                &[("status", "running".into())],
                None,
                None
            )
            .await,
        Err(StoreError::Invalid(_))
    ));
    let bad = new_call(&s, CallStatus::Running, 0);
    assert!(matches!(
        store.create_call(&bad, proposed(&bad)).await,
        Err(StoreError::Invalid(_))
    ));
    let mut no_expiry = new_call(&s, CallStatus::AwaitingApproval, 0);
    no_expiry.expires_at_ms = None;
    assert!(matches!(
        store.create_call(&no_expiry, proposed(&no_expiry)).await,
        Err(StoreError::Invalid(_))
    ));
    let mut foreign = new_call(&s, CallStatus::Proposed, 0);
    foreign.owner = "mallory".into();
    assert!(matches!(
        store.create_call(&foreign, proposed(&foreign)).await,
        Err(StoreError::Invalid(_))
    ));
    let mut orphan = new_call(&s, CallStatus::Proposed, 0);
    orphan.session_id = new_id();
    assert_eq!(
        store.create_call(&orphan, proposed(&orphan)).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.get_call(&bad.id).await.unwrap(), None);
    assert_eq!(store.list_calls(&s.id).await.unwrap(), vec![before]);
}

#[tokio::test]
async fn events_resume_after_an_id_with_nothing_lost_or_repeated() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let s = store.create_session("alice").await.unwrap();
    let other = store.create_session("alice").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(store.append_event(&s.id, &output(&s.id, i)).await.unwrap());
        store
            .append_event(&other.id, &output(&other.id, i))
            .await
            .unwrap();
    }
    let parse = |id: &str| {
        let (a, b) = id.split_once('-').unwrap();
        (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap())
    };
    assert!(
        ids.windows(2).all(|w| parse(&w[0]) < parse(&w[1])),
        "{ids:?}"
    );

    // Page through with `after`, 7 at a time: every event exactly once, in order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.read_events(&s.id, after.as_deref(), 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = Some(page.last().unwrap().id.clone());
        seen.extend(page);
    }
    assert_eq!(seen.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
    for (i, e) in seen.iter().enumerate() {
        assert_eq!(e.kind, "output");
        assert_eq!(e.event().unwrap(), output(&s.id, i));
    }
    // Resuming after event 10 returns exactly the later ones.
    let later = store.read_events(&s.id, Some(&ids[10]), 100).await.unwrap();
    assert_eq!(
        later.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        ids[11..].to_vec()
    );
    assert!(store
        .read_events(&s.id, Some(ids.last().unwrap()), 100)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read_events(&s.id, Some("18446744073709551615-18446744073709551615"), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.read_events(&s.id, None, 0).await.unwrap().is_empty());
    for bad in ["", "abc", "1", "1-", "-1", "1-x", "+", "$", "(1-0", "1-0 "] {
        assert!(
            matches!(
                store.read_events(&s.id, Some(bad), 10).await,
                Err(StoreError::InvalidEventId(_))
            ),
            "after={bad:?}"
        );
        assert!(matches!(
            store
                .wait_events(&s.id, Some(bad), 10, Duration::from_millis(10))
                .await,
            Err(StoreError::InvalidEventId(_))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_events_wakes_up_on_append_without_stalling_other_commands() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let s = store.create_session("alice").await.unwrap();
    let first = store.append_event(&s.id, &output(&s.id, 0)).await.unwrap();

    // Something already there: no wait.
    let t = Instant::now();
    let got = store
        .wait_events(&s.id, None, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(t.elapsed() < Duration::from_secs(2));

    // Nothing there: wakes when another task appends.
    let writer = {
        let store = store.clone();
        let sid = s.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            store.append_event(&sid, &output(&sid, 1)).await.unwrap()
        })
    };
    // Meanwhile the shared connection keeps answering.
    let pinger = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t = Instant::now();
            store.ping().await.unwrap();
            t.elapsed()
        })
    };
    let t = Instant::now();
    let got = store
        .wait_events(&s.id, Some(&first), 10, Duration::from_secs(20))
        .await
        .unwrap();
    let waited = t.elapsed();
    let appended = writer.await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].id, appended);
    assert_eq!(got[0].data["data"], "1");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "woke after {waited:?}"
    );
    let ping_took = pinger.await.unwrap();
    assert!(
        ping_took < Duration::from_millis(500),
        "a blocked reader stalled the shared connection: ping took {ping_took:?}"
    );

    // Nothing arrives: returns empty after about `block`.
    let t = Instant::now();
    let got = store
        .wait_events(&s.id, Some(&appended), 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(3));

    // Many waiters at once all wake on one append.
    let mut waiters = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        let sid = s.id.clone();
        let after = appended.clone();
        waiters.push(tokio::spawn(async move {
            store
                .wait_events(&sid, Some(&after), 10, Duration::from_secs(20))
                .await
                .unwrap()
        }));
    }
    wait_redis_blocked(&server.url(), 20).await;
    let last = store.append_event(&s.id, &output(&s.id, 2)).await.unwrap();
    for w in waiters {
        let got = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("every waiter wakes")
            .unwrap();
        assert_eq!(
            got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            [last.as_str()]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_racing_approvals_exactly_one_wins() {
    let server = RedisServer::start();
    // Two stores = two orchestrators with their own connections.
    let a = open_store(&server).await;
    let b = open_store(&server).await;
    for i in 0..50 {
        let (s, c) = pending_call(&a, "alice", 60_000).await;
        let (ra, rb) = {
            let (a, b) = (a.clone(), b.clone());
            let (ida, idb) = (c.id.clone(), c.id.clone());
            let ta = tokio::spawn(async move {
                a.decide(&ida, "alice", HASH, true, None, None, now_ms())
                    .await
            });
            let tb = tokio::spawn(async move {
                // Half the time the second decision is a denial: still exactly one wins.
                b.decide(&idb, "alice", HASH, i % 2 == 0, None, None, now_ms())
                    .await
            });
            (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap())
        };
        let won = |r: &DecisionResult| {
            matches!(
                r,
                DecisionResult::Approved { .. } | DecisionResult::Denied { .. }
            )
        };
        assert!(
            won(&ra) ^ won(&rb),
            "iteration {i}: exactly one decision takes effect: {ra:?} / {rb:?}"
        );
        let loser = if won(&ra) { &rb } else { &ra };
        let winner_status = if won(&ra) || i % 2 == 0 {
            CallStatus::Approved
        } else {
            CallStatus::Denied
        };
        assert_eq!(
            loser,
            &DecisionResult::AlreadyDecided {
                current: winner_status
            },
            "iteration {i}"
        );
        assert_eq!(status(&a, &c.id).await, winner_status);
        let decisions = a
            .read_events(&s.id, None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "approved" || e.kind == "denied")
            .count();
        assert_eq!(decisions, 1, "iteration {i}: one decision event");
    }
    assert_eq!(a.pending_count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approval_racing_expiry_resolves_to_exactly_one() {
    let server = RedisServer::start();
    let a = open_store(&server).await;
    let b = open_store(&server).await;
    let (mut approved, mut expired) = (0, 0);
    for i in 0..50 {
        let (s, c) = pending_call(&a, "alice", 60_000).await;
        let expiry = c.expires_at_ms.unwrap();
        // The approver's clock says the window is open; the sweeper's says it has closed.
        let approve = {
            let a = a.clone();
            let id = c.id.clone();
            tokio::spawn(async move {
                a.decide(&id, "alice", HASH, true, None, None, now_ms())
                    .await
            })
        };
        let sweep = {
            let b = b.clone();
            tokio::spawn(async move { b.expire_due(expiry + 1).await })
        };
        let ra = approve.await.unwrap().unwrap();
        let swept = sweep.await.unwrap().unwrap();
        let final_status = status(&a, &c.id).await;
        match (&ra, swept.as_slice()) {
            (DecisionResult::Approved { .. }, []) => {
                approved += 1;
                assert_eq!(final_status, CallStatus::Approved, "iteration {i}");
            }
            (DecisionResult::AlreadyDecided { current }, [one]) => {
                expired += 1;
                assert_eq!(*current, CallStatus::Expired, "iteration {i}");
                assert_eq!(one.id, c.id);
                assert_eq!(one.status, CallStatus::Expired);
                assert_eq!(final_status, CallStatus::Expired);
            }
            other => panic!("iteration {i}: both or neither won: {other:?}"),
        }
        let terminal = a
            .read_events(&s.id, None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "approved" || e.kind == "expired")
            .count();
        assert_eq!(terminal, 1, "iteration {i}");
    }
    assert_eq!(approved + expired, 50);
    assert_eq!(a.pending_count().await.unwrap(), 0);
}

#[tokio::test]
async fn a_wrong_hash_or_another_user_changes_nothing() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let (_s, c) = pending_call(&store, "alice", 60_000).await;

    let r = store
        .decide(&c.id, "alice", OTHER_HASH, true, None, None, now_ms())
        .await
        .unwrap();
    let DecisionResult::HashMismatch { call } = r else {
        panic!("expected a hash mismatch, got {r:?}")
    };
    assert_eq!(call.status, CallStatus::AwaitingApproval);
    assert_eq!(call.decided_by, None);
    assert_eq!(
        store
            .decide(
                &c.id,
                "alice",
                "not-even-a-hash",
                true,
                None,
                None,
                now_ms()
            )
            .await
            .unwrap(),
        DecisionResult::HashMismatch { call: call.clone() }
    );

    assert_eq!(
        store
            .decide(&c.id, "mallory", HASH, true, None, None, now_ms())
            .await
            .unwrap(),
        DecisionResult::NotOwner
    );
    assert_eq!(
        store
            .decide(&c.id, "mallory", HASH, false, None, None, now_ms())
            .await
            .unwrap(),
        DecisionResult::NotOwner
    );
    assert_eq!(status(&store, &c.id).await, CallStatus::AwaitingApproval);
    assert_eq!(store.pending_count().await.unwrap(), 1);
    assert_eq!(
        store
            .decide("no-such-call", "alice", HASH, true, None, None, now_ms())
            .await,
        Err(StoreError::NotFound)
    );

    // The rejected attempts are audited, with who tried.
    let audit = store.read_audit(None, 100).await.unwrap();
    let rejected: Vec<_> = audit
        .iter()
        .map(|e| &e.entry)
        .filter(|a| a.action == "rejected")
        .map(|a| (a.actor.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        rejected,
        [
            ("alice", "hash_mismatch"),
            ("alice", "hash_mismatch"),
            ("mallory", "not_owner"),
            ("mallory", "not_owner"),
        ]
    );
    let mismatch = &audit
        .iter()
        .find(|e| e.entry.outcome == "hash_mismatch")
        .unwrap()
        .entry;
    assert_eq!(mismatch.args_sha256, HASH);
    assert!(mismatch.detail.as_deref().unwrap().contains(OTHER_HASH));

    // The right user with the right hash still can: the approval was not used up.
    let reason = format!("no thanks {}", "é".repeat(300));
    let r = store
        .decide(&c.id, "alice", HASH, false, Some(&reason), None, now_ms())
        .await
        .unwrap();
    let DecisionResult::Denied { call, .. } = r else {
        panic!("expected a denial, got {r:?}")
    };
    assert_eq!(call.status, CallStatus::Denied);
    assert_eq!(call.reason.as_deref(), Some(reason.as_str()));
    // The audit keeps a shortened reason, cut between characters.
    let audit = store.read_audit(None, 100).await.unwrap();
    let denial = &audit.last().unwrap().entry;
    assert_eq!(denial.action, "denied");
    let kept = denial.detail.as_deref().unwrap();
    assert!(
        kept.starts_with("no thanks ") && kept.chars().count() == 256,
        "{kept}"
    );
    assert_eq!(
        store
            .decide(&c.id, "alice", HASH, true, None, None, now_ms())
            .await
            .unwrap(),
        DecisionResult::AlreadyDecided {
            current: CallStatus::Denied
        }
    );
}

#[tokio::test]
async fn approvals_expire_with_their_ttl() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let (s, late) = pending_call(&store, "alice", 300).await;
    let (_, swept) = pending_call(&store, "bob", 300).await;
    let (_, fresh) = pending_call(&store, "alice", 60_000).await;
    assert_eq!(store.pending_count().await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(900)).await;

    // The approval key died with its TTL: deciding now, even with a clock that disagrees,
    // fails closed.
    let mut r = raw(&server).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(store.keys().approval(&late.id))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!exists, "the approval key outlived its TTL");
    let r = store
        .decide(
            &late.id,
            "alice",
            HASH,
            true,
            None,
            None,
            late.created_at_ms,
        )
        .await
        .unwrap();
    let DecisionResult::Expired { call, event_id } = r else {
        panic!("expected expiry, got {r:?}")
    };
    assert_eq!(call.status, CallStatus::Expired);
    assert_eq!(call.decided_by, None);
    let events = store.read_events(&s.id, None, 100).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.id, event_id);
    assert_eq!(last.kind, "expired");
    assert!(last
        .event()
        .unwrap()
        .ends_call(last.data["call_id"].as_str().unwrap()));
    assert_eq!(last.data, json!({"call_id": late.id, "status": "expired"}));

    // The sweeper expires the other one and leaves the fresh one alone.
    let expired = store.expire_due(now_ms()).await.unwrap();
    assert_eq!(
        expired.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [swept.id.as_str()]
    );
    assert_eq!(expired[0].status, CallStatus::Expired);
    assert!(store.expire_due(now_ms()).await.unwrap().is_empty());
    assert_eq!(
        status(&store, &fresh.id).await,
        CallStatus::AwaitingApproval
    );
    assert_eq!(store.pending_count().await.unwrap(), 1);
    assert_eq!(
        store
            .decide(&swept.id, "bob", HASH, true, None, None, now_ms())
            .await
            .unwrap(),
        DecisionResult::AlreadyDecided {
            current: CallStatus::Expired
        }
    );
    let audit = store.read_audit(None, 100).await.unwrap();
    let expiries: Vec<_> = audit
        .iter()
        .map(|e| &e.entry)
        .filter(|a| a.action == "expired")
        .map(|a| (a.call_id.clone(), a.actor.clone()))
        .collect();
    assert_eq!(
        expiries,
        [
            (late.id.clone(), "system".to_string()),
            (swept.id.clone(), "system".to_string())
        ]
    );

    // An expiry in the past by the decider's clock also fails closed, key or no key.
    let (_, c) = pending_call(&store, "alice", 60_000).await;
    assert!(matches!(
        store
            .decide(
                &c.id,
                "alice",
                HASH,
                true,
                None,
                None,
                c.expires_at_ms.unwrap()
            )
            .await
            .unwrap(),
        DecisionResult::Expired { .. }
    ));
}

#[tokio::test]
async fn many_due_approvals_are_swept_in_batches() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let s = store.create_session("alice").await.unwrap();
    for _ in 0..230 {
        let c = new_call(&s, CallStatus::AwaitingApproval, 1);
        store.create_call(&c, proposed(&c)).await.unwrap();
    }
    let expired = store.expire_due(now_ms() + 10).await.unwrap();
    assert_eq!(expired.len(), 230);
    assert_eq!(store.pending_count().await.unwrap(), 0);
}

#[tokio::test]
async fn calls_in_flight_name_their_runner_and_instance_leases_are_exclusive() {
    let server = RedisServer::start();
    let base = open_store(&server).await;
    let a = base.with_instance("orch-a");
    let b = base.with_instance("orch-b");
    assert_eq!(base.instance(), airlock::store::DEFAULT_INSTANCE);

    // Approved through A: A runs it. A proposal allowed at once (created in flight) through B.
    let (_, pending) = pending_call(&a, "alice", 600_000).await;
    let approved = a
        .decide(&pending.id, "alice", HASH, true, None, None, now_ms())
        .await
        .unwrap();
    assert!(matches!(approved, DecisionResult::Approved { .. }));
    let s = b.create_session("alice").await.unwrap();
    let direct = new_call(&s, CallStatus::Approved, 0);
    b.create_call(&direct, proposed(&direct)).await.unwrap();
    let mut expected = vec![
        (pending.id.clone(), Some("orch-a".to_string())),
        (direct.id.clone(), Some("orch-b".to_string())),
    ];
    expected.sort();
    assert_eq!(base.inflight_calls().await.unwrap(), expected);
    // Whoever moves a call on while in flight becomes its runner; leaving flight forgets it.
    b.transition(&pending.id, CallStatus::Running, &[], None, None)
        .await
        .unwrap();
    a.transition(&direct.id, CallStatus::Failed, &[], None, None)
        .await
        .unwrap();
    assert_eq!(
        base.inflight_calls().await.unwrap(),
        vec![(pending.id.clone(), Some("orch-b".to_string()))]
    );
    let mut r = raw(&server).await;
    let runners: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("airlock:runners")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(runners.len(), 1, "{runners:?}");
    // Deleting the session forgets the runner too.
    a.delete_session(&pending.session_id).await.unwrap();
    assert!(base.inflight_calls().await.unwrap().is_empty());
    let n: i64 = redis::cmd("HLEN")
        .arg("airlock:runners")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(n, 0);

    // Leases: one holder at a time; a known-dead predecessor can be replaced at once.
    use airlock::store::Claim;
    assert!(!a.instance_alive("orch-a").await.unwrap());
    assert_eq!(a.claim_instance("h1", None).await.unwrap(), Claim::Claimed);
    assert_eq!(a.claim_instance("h1", None).await.unwrap(), Claim::Claimed);
    assert!(b.instance_alive("orch-a").await.unwrap());
    assert!(!b.instance_alive("orch-b").await.unwrap());
    match a.claim_instance("h2", None).await.unwrap() {
        Claim::Held { holder, ttl_ms } => {
            assert_eq!(holder, "h1");
            assert!(
                ttl_ms > 0 && ttl_ms <= airlock::store::INSTANCE_LEASE.as_millis() as u64,
                "{ttl_ms}"
            );
        }
        other => panic!("a second holder got the lease: {other:?}"),
    }
    // Another instance's lease is separate.
    assert_eq!(b.claim_instance("h2", None).await.unwrap(), Claim::Claimed);
    // A takeover names the holder it replaces: a stale name changes nothing.
    assert!(matches!(
        a.claim_instance("h3", Some("h-other")).await.unwrap(),
        Claim::Held { .. }
    ));
    assert_eq!(
        a.claim_instance("h3", Some("h1")).await.unwrap(),
        Claim::Claimed
    );
    // The replaced holder can neither renew nor release it.
    assert!(!a.renew_instance("h1").await.unwrap());
    a.release_instance("h1").await.unwrap();
    assert!(a.instance_alive("orch-a").await.unwrap());
    assert!(a.renew_instance("h3").await.unwrap());
    a.release_instance("h3").await.unwrap();
    assert!(!a.instance_alive("orch-a").await.unwrap());
    // A holder whose lease lapsed (a Redis outage) takes it again when it renews.
    assert!(a.renew_instance("h3").await.unwrap());
    assert!(a.instance_alive("orch-a").await.unwrap());
    let pttl: i64 = redis::cmd("PTTL")
        .arg("airlock:instance:orch-a")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(pttl > 0, "the lease has a TTL: {pttl}");
}

#[tokio::test]
async fn interrupted_calls_are_found_and_failed_after_a_restart() {
    let mut server = RedisServer::start_persistent();
    let store = open_store(&server).await;
    let s = store.create_session("alice").await.unwrap();
    let running = new_call(&s, CallStatus::Approved, 0);
    store
        .create_call(&running, proposed(&running))
        .await
        .unwrap();
    store
        .transition(&running.id, CallStatus::Running, &[], None, None)
        .await
        .unwrap();
    let approved = new_call(&s, CallStatus::Approved, 0);
    store
        .create_call(&approved, proposed(&approved))
        .await
        .unwrap();
    let (_, pending) = pending_call(&store, "alice", 600_000).await;

    server.restart();
    // A fresh store, as a new orchestrator process would make.
    let store = open_store(&server).await;
    let mut expected = vec![running.id.clone(), approved.id.clone()];
    expected.sort();
    assert_eq!(store.running_calls().await.unwrap(), expected);
    // What the engine's recovery does with each: failed, with its `call_finished` event.
    let error = json!({"code": "interrupted", "message": "the orchestrator restarted"});
    let fail = |id: &str| {
        let store = store.clone();
        let (id, error) = (id.to_string(), error.clone());
        async move {
            store
                .transition(
                    &id,
                    CallStatus::Failed,
                    &[("error", error.to_string())],
                    Some(moved(&id, CallStatus::Failed)),
                    None,
                )
                .await
        }
    };
    for id in &expected {
        let (rec, _) = fail(id).await.unwrap();
        assert_eq!(rec.status, CallStatus::Failed);
        assert_eq!(rec.error.as_ref().unwrap()["code"], "interrupted");
    }
    assert!(store.running_calls().await.unwrap().is_empty());
    assert_eq!(
        fail(&running.id).await,
        Err(StoreError::Conflict {
            current: CallStatus::Failed
        })
    );
    let failed_events = store
        .read_events(&s.id, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "call_finished")
        .count();
    assert_eq!(failed_events, 2);

    // The pending approval survived the restart and can still be approved.
    assert!(matches!(
        store
            .decide(&pending.id, "alice", HASH, true, None, None, now_ms())
            .await
            .unwrap(),
        DecisionResult::Approved { .. }
    ));
}

#[tokio::test]
async fn redis_going_away_gives_unavailable_quickly_and_the_store_recovers() {
    let mut server = RedisServer::start_persistent();
    let store = open_store(&server).await;
    let (s, c) = pending_call(&store, "alice", 600_000).await;
    store.ping().await.unwrap();

    server.stop();
    let t = Instant::now();
    let results = [
        store.ping().await.map(|_| ()),
        store.get_session(&s.id).await.map(|_| ()),
        store
            .decide(&c.id, "alice", HASH, true, None, None, now_ms())
            .await
            .map(|_| ()),
        store
            .append_event(&s.id, &output(&c.id, "x"))
            .await
            .map(|_| ()),
        store.read_events(&s.id, None, 10).await.map(|_| ()),
        store
            .wait_events(&s.id, None, 10, Duration::from_secs(1))
            .await
            .map(|_| ()),
        store.pending_count().await.map(|_| ()),
        store.create_session("alice").await.map(|_| ()),
    ];
    let took = t.elapsed();
    for (i, r) in results.iter().enumerate() {
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "operation {i} while redis is down: {r:?}"
        );
    }
    assert!(
        took < Duration::from_secs(10),
        "8 operations against a dead redis took {took:?}"
    );
    let t = Instant::now();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    server.restart();
    // The same Store reconnects by itself; nothing was approved while Redis was away.
    let t = Instant::now();
    store
        .ping()
        .await
        .expect("the store works again after redis restarts");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(store.get_session(&s.id).await.unwrap().unwrap(), s);
    assert_eq!(status(&store, &c.id).await, CallStatus::AwaitingApproval);
    store
        .wait_events(&s.id, None, 10, Duration::from_millis(100))
        .await
        .expect("blocking reads recover too");
    assert!(matches!(
        store
            .decide(&c.id, "alice", HASH, true, None, None, now_ms())
            .await
            .unwrap(),
        DecisionResult::Approved { .. }
    ));
}

#[tokio::test]
async fn a_hung_redis_gives_unavailable_within_the_response_timeout() {
    let mut server = RedisServer::start();
    let store = open_store(&server).await;
    let s = store.create_session("alice").await.unwrap();
    server.pause();
    for _ in 0..3 {
        let t = Instant::now();
        let r = store.get_session(&s.id).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "a hung redis held a request for {:?}",
            t.elapsed()
        );
    }
    server.resume();
    let recovered = "recovery after the server resumed";
    let got = wait_until(recovered, Duration::from_secs(10), || async {
        store.get_session(&s.id).await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(got, Some(s));
}

#[tokio::test]
async fn a_dead_redis_at_startup_is_unavailable_not_a_hang() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();
    let t = Instant::now();
    let r = Store::connect(&url, "airlock:").await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(matches!(
        Store::connect("http://nope", "airlock:").await,
        Err(StoreError::BadUrl(_))
    ));
}

#[tokio::test]
async fn a_password_protected_redis_needs_the_right_password() {
    let pw = "correct-horse-battery";
    let server = RedisServer::start_with(RedisOptions {
        password: Some(pw.into()),
        acl_user: Some(("airlock".into(), "acl-secret-pw".into())),
        persistent: false,
    });
    let store = open_store(&server).await;
    store.ping().await.unwrap();
    store.create_session("alice").await.unwrap();

    // Wrong password: an Unavailable error (503), the password nowhere in it.
    let bad_url = format!("redis://:wrong-password-xyz@127.0.0.1:{}", server.port());
    let err = match Store::connect(&bad_url, "airlock:").await {
        Err(e) => e,
        Ok(s) => s.ping().await.unwrap_err(),
    };
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("wrong-password-xyz"), "{err}");

    // No password at all.
    let no_pw = format!("redis://127.0.0.1:{}", server.port());
    let err = match Store::connect(&no_pw, "airlock:").await {
        Err(e) => e,
        Ok(s) => s.ping().await.unwrap_err(),
    };
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    // An ACL user, over TCP and over the unix socket.
    let acl = format!("redis://airlock:acl-secret-pw@127.0.0.1:{}", server.port());
    let s = Store::connect(&acl, "airlock:").await.unwrap();
    s.ping().await.unwrap();
    assert_eq!(s.list_sessions("alice").await.unwrap().len(), 1);
    let unix = Store::connect(&server.unix_url(), "airlock:")
        .await
        .unwrap();
    unix.ping().await.unwrap();
    assert!(!format!("{unix:?}").contains(pw));
    let wrong_acl = format!("redis://airlock:nope-nope@127.0.0.1:{}", server.port());
    let err = match Store::connect(&wrong_acl, "airlock:").await {
        Err(e) => e,
        Ok(s) => s.ping().await.unwrap_err(),
    };
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("nope-nope"), "{err}");
}

#[tokio::test]
async fn prefixes_keep_two_deployments_apart() {
    let server = RedisServer::start();
    let a = Store::connect(&server.url(), "a:").await.unwrap();
    let b = Store::connect(&server.url(), "b:").await.unwrap();
    let (s, c) = pending_call(&a, "alice", 60_000).await;
    assert_eq!(b.get_session(&s.id).await.unwrap(), None);
    assert_eq!(b.get_call(&c.id).await.unwrap(), None);
    assert!(b.list_sessions("alice").await.unwrap().is_empty());
    assert_eq!(b.pending_count().await.unwrap(), 0);
    assert!(b.read_audit(None, 10).await.unwrap().is_empty());
    let mut r = raw(&server).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(keys.iter().all(|k| k.starts_with("a:")), "{keys:?}");
}

#[tokio::test]
async fn blocking_reads_are_bounded_by_the_reader_cap() {
    let server = RedisServer::start();
    let store = Store::connect_with(
        &server.url(),
        "airlock:",
        StoreOptions {
            max_blocking_readers: 1,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let s = store.create_session("alice").await.unwrap();
    let holder = {
        let store = store.clone();
        let sid = s.id.clone();
        tokio::spawn(async move {
            store
                .wait_events(&sid, Some("0-0"), 10, Duration::from_secs(3))
                .await
        })
    };
    wait_redis_blocked(&server.url(), 1).await;
    // The one slot is taken: this waiter gives up after its block time with a plain read.
    let t = Instant::now();
    let got = store
        .wait_events(&s.id, None, 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let id = store.append_event(&s.id, &output(&s.id, 1)).await.unwrap();
    let held = holder.await.unwrap().unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].id, id);
}

/// Concurrent-call places: a limit holds, a released or lapsed place is free again, and a
/// renewal keeps only the places still held.
#[tokio::test]
async fn call_slots_hold_a_limit_lapse_and_renew() {
    use airlock::store::{Reservation, SLOT_TTL};
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let mut conn = raw(&server).await;
    let key = "airlock:user:alice:slots";
    assert_eq!(
        store.reserve_slot("alice", "t1", Some(2)).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        store.reserve_slot("alice", "t2", Some(2)).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        store.reserve_slot("alice", "t3", Some(2)).await.unwrap(),
        Reservation::Full { running: 2 }
    );
    // Other users and unlimited reservations are not affected.
    assert_eq!(
        store.reserve_slot("bob", "b1", Some(2)).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(store.held_slots("alice").await.unwrap(), 2);
    store.release_slot("alice", "t1").await.unwrap();
    assert_eq!(
        store.reserve_slot("alice", "t3", Some(2)).await.unwrap(),
        Reservation::Reserved
    );
    // A place whose holder stopped renewing lapses: t2's time is up.
    let _: () = redis::cmd("ZADD")
        .arg(key)
        .arg(now_ms() - 1)
        .arg("t2")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(store.held_slots("alice").await.unwrap(), 1);
    assert_eq!(
        store.reserve_slot("alice", "t4", Some(2)).await.unwrap(),
        Reservation::Reserved
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= SLOT_TTL.as_millis() as i64, "{ttl}");
    // Renewing pushes a held place's lapse forward and does not bring back a released one.
    let _: () = redis::cmd("ZADD")
        .arg(key)
        .arg(now_ms() + 1_000)
        .arg("t3")
        .query_async(&mut conn)
        .await
        .unwrap();
    store.release_slot("alice", "t4").await.unwrap();
    store
        .renew_slots(&[("alice".into(), "t3".into()), ("alice".into(), "t4".into())])
        .await
        .unwrap();
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(key)
        .arg("t3")
        .query_async(&mut conn)
        .await
        .unwrap();
    let left = score.unwrap() as i64 - now_ms() as i64;
    assert!(
        left > SLOT_TTL.as_millis() as i64 - 5_000,
        "t3 was not renewed: {left} ms left"
    );
    let gone: Option<f64> = redis::cmd("ZSCORE")
        .arg(key)
        .arg("t4")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gone, None, "a released place came back");
    assert_eq!(
        store.reserve_slot("alice", "t5", None).await.unwrap(),
        Reservation::Reserved
    );
}

/// `calls_per_minute`: the window counts proposals of the last minute and slides.
#[tokio::test]
async fn the_proposal_window_counts_and_slides() {
    use airlock::store::Rate;
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let mut conn = raw(&server).await;
    for _ in 0..3 {
        assert_eq!(
            store.count_proposal("alice", Some(3)).await.unwrap(),
            Rate::Counted
        );
    }
    match store.count_proposal("alice", Some(3)).await.unwrap() {
        Rate::Limited { retry_after } => assert!(
            retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60),
            "{retry_after:?}"
        ),
        other => panic!("the fourth proposal was {other:?}"),
    }
    assert_eq!(
        store.count_proposal("bob", Some(3)).await.unwrap(),
        Rate::Counted
    );
    // Age two proposals past the window: two more fit, then it refuses again.
    let key = "airlock:user:alice:proposals";
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    for m in &members {
        let _: () = redis::cmd("ZADD")
            .arg(key)
            .arg(now_ms() - 61_000)
            .arg(m)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for _ in 0..2 {
        assert_eq!(
            store.count_proposal("alice", Some(3)).await.unwrap(),
            Rate::Counted
        );
    }
    assert!(matches!(
        store.count_proposal("alice", Some(3)).await.unwrap(),
        Rate::Limited { .. }
    ));
    // Unlimited users are counted but never refused.
    for _ in 0..5 {
        assert_eq!(
            store.count_proposal("alice", None).await.unwrap(),
            Rate::Counted
        );
    }
}

/// Grants: atomic with their event, deduplicated, bounded, and deleted with the session.
#[tokio::test]
async fn grants_are_stored_with_their_event_and_deleted_with_the_session() {
    use airlock::store::GrantAdded;
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let grant = |tool: &str, pattern: &str| ev::SessionGrant {
        tool: tool.into(),
        pattern: pattern.into(),
        writable: tool == "run_shell",
    };
    let shell = grant("run_shell", "cargo test *");
    assert_eq!(
        store.add_grant(&new_id(), &shell, 2).await.unwrap(),
        GrantAdded::NoSession
    );
    let s = store.create_session("alice").await.unwrap();
    for want in [GrantAdded::Added, GrantAdded::Exists] {
        assert_eq!(store.add_grant(&s.id, &shell, 2).await.unwrap(), want);
    }
    assert_eq!(
        store
            .add_grant(&s.id, &grant("write_file", "notes/*"), 2)
            .await
            .unwrap(),
        GrantAdded::Added
    );
    assert_eq!(
        store
            .add_grant(&s.id, &grant("read_file", "*"), 2)
            .await
            .unwrap(),
        GrantAdded::Full
    );
    let grants = store.grants(&s.id).await.unwrap();
    assert_eq!(grants.len(), 2, "{grants:?}");
    assert!(grants.contains(&("run_shell".into(), "cargo test *".into())));
    assert!(grants.contains(&("write_file".into(), "notes/*".into())));
    // One event per grant actually added.
    let events = store.read_events(&s.id, None, 100).await.unwrap();
    let granted: Vec<Event> = events.iter().map(|e| e.event().unwrap()).collect();
    assert_eq!(
        granted,
        vec![
            Event::SessionGrant(shell.clone()),
            Event::SessionGrant(grant("write_file", "notes/*"))
        ]
    );
    store.delete_session(&s.id).await.unwrap();
    assert!(store.grants(&s.id).await.unwrap().is_empty());
    let mut conn = raw(&server).await;
    let n: u64 = redis::cmd("EXISTS")
        .arg(format!("airlock:session:{}:grants", s.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

/// A call awaiting approval is written with both its events in one script: `call_proposed`
/// then `approval_required`, each naming the call and its status, which the store checks.
#[tokio::test]
async fn a_new_call_and_its_approval_request_are_one_write() {
    let server = RedisServer::start();
    let store = open_store(&server).await;
    let s = store.create_session("alice").await.unwrap();
    let c = new_call(&s, CallStatus::AwaitingApproval, 60_000);
    let first = store
        .create_call_with(
            &c,
            vec![proposed(&c), moved(&c.id, CallStatus::AwaitingApproval)],
        )
        .await
        .unwrap();
    let events = store.read_events(&s.id, None, 10).await.unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].id, first);
    assert_eq!(
        (events[0].kind.as_str(), events[1].kind.as_str()),
        ("call_proposed", "approval_required")
    );
    for e in &events {
        assert_eq!(e.data["call_id"], c.id.as_str(), "{e:?}");
        assert_eq!(e.data["status"], "awaiting_approval", "{e:?}");
    }
    assert_eq!(events[1].data["args_sha256"], HASH);
    // Events about another call, or another status, are refused before Redis is asked.
    let other = new_call(&s, CallStatus::AwaitingApproval, 60_000);
    for wrong in [
        vec![proposed(&c)],
        vec![proposed(&other), moved(&other.id, CallStatus::Running)],
    ] {
        assert!(matches!(
            store.create_call_with(&other, wrong).await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert!(matches!(
        store
            .transition(
                &c.id,
                CallStatus::Cancelled,
                &[],
                Some(moved(&c.id, CallStatus::Failed)),
                None
            )
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(status(&store, &c.id).await, CallStatus::AwaitingApproval);
    // A call with no event at all is refused before Redis is asked.
    let other = new_call(&s, CallStatus::AwaitingApproval, 60_000);
    assert!(matches!(
        store.create_call_with(&other, vec![]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store.get_call(&other.id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_racing_edits_of_one_version_exactly_one_lands() {
    let server = RedisServer::start();
    let a = open_store(&server).await;
    let b = open_store(&server).await;
    for i in 0..30 {
        let (_, c) = pending_call(&a, "alice", 60_000).await;
        let edit = |store: Store, who: char| {
            let c = c.clone();
            tokio::spawn(async move {
                let new = who.to_string().repeat(64);
                let patch = [
                    (
                        "args",
                        json!({"path": "notes.txt", "content": who.to_string()}).to_string(),
                    ),
                    ("args_sha256", new.clone()),
                    ("preview", json!({"diff": ""}).to_string()),
                    ("edited", json!({"by": "alice"}).to_string()),
                    ("expect_args_sha256", c.args_sha256.clone()),
                ];
                let event = Event::CallEdited(ev::CallEdited {
                    call_id: c.id.clone(),
                    status: CallStatus::AwaitingApproval,
                    args: json!({}),
                    args_sha256: new,
                    preview: None,
                    edited_by: "alice".into(),
                    from_args_sha256: c.args_sha256.clone(),
                });
                let audit = AuditEntry::for_call(&c, "alice", "edited", "awaiting_approval", None);
                store.edit_pending(&c.id, &patch, event, &audit).await
            })
        };
        let (ra, rb) = (edit(a.clone(), 'a'), edit(b.clone(), 'b'));
        let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
        assert!(
            ra.is_ok() ^ rb.is_ok(),
            "iteration {i}: exactly one edit lands: {ra:?} / {rb:?}"
        );
        let lost = if ra.is_ok() { rb } else { ra };
        assert!(
            matches!(
                lost,
                Err(airlock::store::StoreError::Conflict {
                    current: CallStatus::AwaitingApproval
                })
            ),
            "iteration {i}: {lost:?}"
        );
        let now = a.get_call(&c.id).await.unwrap().unwrap();
        assert!(
            now.args_sha256 == "a".repeat(64) || now.args_sha256 == "b".repeat(64),
            "{now:?}"
        );
    }
}
