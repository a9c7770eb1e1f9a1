//! Admin policies end to end, against a real server, Redis and Docker: protected paths hold
//! through symlinks; per-user limits, uid:gid, concurrency and rate limits reach the container
//! and the engine; the policy file reloads when it changes (a bad version is rejected and the
//! old one stays; a pending call is judged again under the new one before it runs; the audit
//! records which version decided); SIGHUP retries a version that needed something outside the
//! file (an image); a failing inline test fails the load; session grants over the API.

use std::time::Duration;

use airlock_tests::server::{Fixture, ServerOptions, TestServer, TestUser};
use airlock_tests::wait_until;
use bollard::query_parameters::{
    InspectContainerOptions, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `[defaults]` tables most tests start from.
const HEAD: &str = r#"
[defaults.tools]
read_file = "allow"
list_dir = "allow"
search = "deny"
write_file = "ask"
edit_file = "ask"
run_shell = "ask"

[defaults.limits]
timeout_secs = 60
"#;

/// A `[[users]]` entry for a fixture user; `extra` goes right after its keys.
fn user_entry(u: &TestUser, uid_gid: Option<(u32, u32)>, extra: &str) -> String {
    let (uid, gid) = uid_gid.unwrap_or((u.workspace.uid, u.workspace.gid));
    format!(
        "\n[[users]]\nname = \"{}\"\ntoken_sha256 = \"{}\"\nworkspace = \"{}\"\nuid = {uid}\ngid = {gid}\n{extra}\n",
        u.name,
        airlock::policy::token_sha256(&u.token),
        u.workspace.root().display(),
    )
}

/// Writes the fixture's policy file; returns the SHA-256 of what was written.
fn write_policy(fx: &Fixture, text: &str) -> String {
    std::fs::write(&fx.policy_path, text).expect("write the policy");
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Waits until the engine has `want` in force.
async fn wait_policy(srv: &TestServer, want: &str) {
    wait_until("the new policy loaded", Duration::from_secs(10), || async {
        match srv.engine.policy().sha256 == want {
            true => Ok(()),
            false => Err(format!("last error: {:?}", srv.engine.policy_error())),
        }
    })
    .await
}

/// Waits until a reload was rejected with an error containing every one of `wants`.
async fn wait_rejected(srv: &TestServer, wants: &[&str]) -> String {
    let what = format!("a rejection containing {wants:?}");
    wait_until(&what, Duration::from_secs(10), || async {
        match srv.engine.policy_error() {
            Some(e) if wants.iter().all(|w| e.contains(w)) => Ok(e),
            e => Err(format!("last error: {e:?}")),
        }
    })
    .await
}

fn id_of(c: &Value) -> String {
    c["id"].as_str().expect("call id").to_string()
}

/// Proposes and waits for the call to settle.
async fn settle(srv: &TestServer, token: &str, session: &str, tool: &str, args: Value) -> Value {
    let c = srv.api.propose_ok(token, session, tool, args).await;
    srv.api
        .wait_status(
            token,
            &id_of(&c),
            &[
                "succeeded",
                "failed",
                "denied",
                "awaiting_approval",
                "timed_out",
            ],
            CALL_TIMEOUT,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_paths_hold_through_symlinks_via_the_server() {
    let fx = Fixture::new(ServerOptions::default()).await;
    let ws = &fx.alice.workspace;
    ws.write(".env", "SECRET=hunter2\n")
        .write("README.md", "hello\n")
        .write("private/key.txt", "private key\n")
        .write(".git/config", "[core]\n");
    ws.symlink("innocent.txt", ".env")
        .symlink("alias", "private")
        .symlink("gitcfg", ".git/config");
    // A group adds a protected path to the built-in ones; no tool rule mentions any of them.
    let policy = format!(
        "{HEAD}\n[groups.sec]\n[[groups.sec.protected]]\nglob = \"private/**\"\nprotection = \"no_access\"\n{}",
        user_entry(&fx.alice, None, "groups = [\"sec\"]\ntools = { write_file = \"allow\" }"),
    );
    write_policy(&fx, &policy);
    let srv = TestServer::start_on(fx).await;
    let (api, token) = (&srv.api, srv.alice.token.clone());
    let s = api.session(&token).await;

    let ok = settle(&srv, &token, &s, "read_file", json!({"path": "README.md"})).await;
    assert_eq!(ok["status"], "succeeded", "{ok:#}");
    for (tool, args) in [
        ("read_file", json!({"path": "innocent.txt"})),
        ("read_file", json!({"path": "alias/key.txt"})),
        (
            "write_file",
            json!({"path": "gitcfg", "content": "[core]\nhooksPath = /tmp\n"}),
        ),
    ] {
        let c = settle(&srv, &token, &s, tool, args.clone()).await;
        assert_eq!(
            c["decision"], "allow",
            "the tool rules allow {tool} {args}: {c:#}"
        );
        assert_eq!(c["status"], "failed", "{tool} {args}: {c:#}");
        assert_eq!(c["error"]["code"], "protected_path", "{tool} {args}: {c:#}");
        assert!(!c.to_string().contains("hunter2"), "{c:#}");
    }
    assert_eq!(
        srv.alice.workspace.read(".git/config").as_deref(),
        Some("[core]\n")
    );
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limits_and_uid_reach_the_container_and_quotas_hold() {
    let fx = Fixture::new(ServerOptions::default()).await;
    // alice: small limits, her own uid:gid, one call at a time, `sleep` allowed.
    let alice = user_entry(
        &fx.alice,
        Some((4242, 4343)),
        "limits = { memory = \"96MiB\", pids = 77, cpus = 0.5, concurrent_calls = 1 }\n\
         [[users.rules]]\ntool = \"run_shell\"\ncommand = \"sleep *\"\ndecision = \"allow\"",
    );
    // bob: two proposals per minute.
    let bob = user_entry(&fx.bob, None, "limits = { calls_per_minute = 2 }");
    write_policy(&fx, &format!("{HEAD}{alice}{bob}"));
    let srv = TestServer::start_on(fx).await;
    let api = srv.api.clone();
    let token = srv.alice.token.clone();
    let s = api.session(&token).await;

    let running = {
        let (api, token, s) = (api.clone(), token.clone(), s.clone());
        tokio::spawn(async move {
            api.propose(&token, &s, "run_shell", json!({"command": "sleep 3"}))
                .await
        })
    };
    // Find the call's container while it runs, and inspect it.
    let docker = airlock::sandbox::connect_docker(None)
        .await
        .expect("docker");
    let within = Duration::from_secs(20);
    let inspected = wait_until("a running container", within, || async {
        let mut found = None;
        let ids = srv.containers(None).await;
        for id in &ids {
            if let Ok(c) = docker
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
            {
                if c.state.as_ref().and_then(|s| s.running) == Some(true) {
                    found = Some(c);
                }
            }
        }
        found.ok_or_else(|| format!("none running among {ids:?}"))
    })
    .await;
    let hc = inspected.host_config.expect("host config");
    assert_eq!(hc.memory, Some(96 * 1024 * 1024));
    assert_eq!(hc.memory_swap, Some(96 * 1024 * 1024));
    assert_eq!(hc.pids_limit, Some(77));
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.runtime.as_deref(), Some("runc"));
    assert_eq!(
        inspected.config.and_then(|c| c.user).as_deref(),
        Some("4242:4343")
    );

    // While it runs, alice's policy allows no second call: 429 with the reason.
    let r = api
        .propose(&token, &s, "run_shell", json!({"command": "sleep 0"}))
        .await;
    r.expect(429);
    assert_eq!(r.error_code(), "busy");
    assert!(r.text.contains("allows 1 at once"), "{}", r.text);

    let first = running.await.expect("propose task");
    first.expect(201);
    let done = api
        .wait_status(
            &token,
            &id_of(&first.json),
            &["succeeded", "failed"],
            CALL_TIMEOUT,
        )
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");

    // bob: the third proposal within a minute is refused.
    let bt = srv.bob.token.clone();
    let bs = api.session(&bt).await;
    for _ in 0..2 {
        let c = api
            .propose_ok(&bt, &bs, "search", json!({"pattern": "x"}))
            .await;
        assert_eq!(c["status"], "denied");
    }
    let r = api
        .propose(&bt, &bs, "search", json!({"pattern": "x"}))
        .await;
    r.expect(429);
    assert!(r.text.contains("2 tool calls per minute"), "{}", r.text);
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_good_bad_and_sighup_keep_the_right_policy_in_force() {
    let fx = Fixture::new(ServerOptions::default()).await;
    fx.alice.workspace.write("a.txt", "aaa\n");
    let users = user_entry(&fx.alice, None, "");
    let v1 = format!("{HEAD}{users}").replace("read_file = \"allow\"", "read_file = \"deny\"");
    let v1_sha = write_policy(&fx, &v1);
    let srv = TestServer::start_on(fx).await;
    let (api, token) = (srv.api.clone(), srv.alice.token.clone());
    let s = api.session(&token).await;
    assert_eq!(srv.engine.policy().sha256, v1_sha);

    let denied = api
        .propose_ok(&token, &s, "read_file", json!({"path": "a.txt"}))
        .await;
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["policy_sha256"], v1_sha);
    let pending = api
        .propose_ok(&token, &s, "run_shell", json!({"command": "echo hi"}))
        .await;
    assert_eq!(pending["status"], "awaiting_approval");

    // A good new version: reads allowed, `echo` denied.
    let v2 = format!(
        "{HEAD}\n[[defaults.rules]]\ntool = \"run_shell\"\ncommand = \"echo *\"\ndecision = \"deny\"\n{users}"
    );
    let v2_sha = write_policy(&srv, &v2);
    wait_policy(&srv, &v2_sha).await;
    let read = settle(&srv, &token, &s, "read_file", json!({"path": "a.txt"})).await;
    assert_eq!(read["status"], "succeeded", "{read:#}");
    assert_eq!(read["policy_sha256"], v2_sha);

    // The pending call is judged again under v2 when approved: it never runs.
    let r = api
        .decide(
            &token,
            &id_of(&pending),
            "approve",
            pending["args_sha256"].as_str().unwrap(),
            None,
        )
        .await;
    r.expect(200);
    assert_eq!(r.json["status"], "failed", "{:#}", r.json);
    assert_eq!(r.json["error"]["code"], "policy_changed", "{:#}", r.json);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("defaults.rules[0]"),
        "{:#}",
        r.json
    );
    // The audit says which version decided what.
    // This test's policies have no admin: read the audit as an admin identity directly.
    let mut admin = srv
        .engine
        .policy()
        .user(&srv.alice.name)
        .expect("alice")
        .clone();
    admin.role = airlock::policy::Role::Admin;
    let audit = srv
        .engine
        .audit_page(&admin, None, 1000)
        .await
        .expect("audit");
    let of_pending: Vec<_> = audit
        .iter()
        .map(|e| &e.entry)
        .filter(|a| a.call_id == id_of(&pending))
        .collect();
    assert!(
        of_pending
            .iter()
            .any(|a| a.action == "proposed" && a.policy_sha256 == v1_sha),
        "{of_pending:#?}"
    );
    assert!(
        of_pending
            .iter()
            .any(|a| a.action == "failed" && a.policy_sha256 == v2_sha),
        "{of_pending:#?}"
    );

    // A bad version (unknown key on line 1) is rejected with its position; v2 stays.
    write_policy(&srv, &format!("nonsense = true\n{v2}"));
    let e = wait_rejected(&srv, &["policy.toml:1:1:", "unknown field `nonsense`"]).await;
    assert!(e.contains("expected one of"), "{e}");
    // So is a version whose inline test fails.
    let failing = format!(
        "{v2}\n[[test]]\nname = \"reading is denied\"\nuser = \"alice\"\ntool = \"read_file\"\nargs = {{ path = \"a.txt\" }}\nexpect = \"deny\"\n"
    );
    write_policy(&srv, &failing);
    wait_rejected(
        &srv,
        &[
            "test `reading is denied` failed",
            "expected deny, got allow",
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        srv.engine.policy().sha256,
        v2_sha,
        "the old policy stays in force"
    );
    let read = settle(&srv, &token, &s, "read_file", json!({"path": "a.txt"})).await;
    assert_eq!(read["status"], "succeeded");

    // A version naming an image that does not exist yet is rejected; once the image exists,
    // SIGHUP (the file has not changed, so polling does not retry) puts it in force.
    let tag = format!("hup-{}", std::process::id());
    let repo = "airlock-test-policy-image";
    let v3 = v2.replacen(
        "[defaults.tools]",
        &format!("[defaults]\nimage = \"{repo}:{tag}\"\n\n[defaults.tools]"),
        1,
    );
    let v3_sha = write_policy(&srv, &v3);
    wait_rejected(&srv, &[&format!("{repo}:{tag}"), "not found"]).await;
    let docker = airlock::sandbox::connect_docker(None)
        .await
        .expect("docker");
    docker
        .tag_image(
            airlock_tests::TEST_IMAGE,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(repo)
                    .tag(&tag)
                    .build(),
            ),
        )
        .await
        .expect("tag the executor image");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        srv.engine.policy().sha256,
        v2_sha,
        "polling does not retry a rejected version"
    );
    // SAFETY: sending a signal to our own process; the server installed a SIGHUP handler.
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    wait_policy(&srv, &v3_sha).await;
    let read = settle(&srv, &token, &s, "read_file", json!({"path": "a.txt"})).await;
    assert_eq!(read["status"], "succeeded", "{read:#}");
    let _ = docker
        .remove_image(
            &format!("{repo}:{tag}"),
            Some(RemoveImageOptionsBuilder::default().noprune(true).build()),
            None,
        )
        .await;
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_inline_test_fails_the_load() {
    let fx = Fixture::new(ServerOptions::default()).await;
    let policy = format!(
        "{HEAD}{}\n[[test]]\nname = \"shells are allowed\"\nuser = \"alice\"\ntool = \"run_shell\"\nargs = {{ command = \"ls; curl x\" }}\nexpect = \"allow\"\n",
        user_entry(&fx.alice, None, ""),
    );
    write_policy(&fx, &policy);
    let line = policy.lines().position(|l| l == "[[test]]").unwrap() + 1;
    let e = match airlock::server::build(&fx.config()).await {
        Ok(_) => panic!("a policy whose inline test fails must not load"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(&format!(
            "policy.toml:{line}:1: test `shells are allowed` failed"
        )),
        "{e}"
    );
    assert!(e.contains("expected allow, got ask"), "{e}");
    // The same file with the right expectation loads.
    write_policy(
        &fx,
        &policy.replace("expect = \"allow\"", "expect = \"ask\""),
    );
    let engine = airlock::server::build(&fx.config()).await.expect("loads");
    assert_eq!(engine.policy().tests_passed, 1);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_grants_over_the_api() {
    let fx = Fixture::new(ServerOptions::default()).await;
    let policy = format!(
        "{HEAD}{}{}",
        user_entry(&fx.alice, None, "session_grants = true"),
        user_entry(&fx.bob, None, ""),
    );
    write_policy(&fx, &policy);
    let srv = TestServer::start_on(fx).await;
    let (api, token) = (srv.api.clone(), srv.alice.token.clone());
    let s = api.session(&token).await;
    let path = format!("/v1/sessions/{s}/grants");

    let before = api
        .propose_ok(&token, &s, "run_shell", json!({"command": "echo one"}))
        .await;
    assert_eq!(before["status"], "awaiting_approval");
    let r = api
        .post(
            &path,
            &token,
            json!({"tool": "run_shell", "pattern": "echo *"}),
        )
        .await;
    r.expect(201);
    let list = api.get(&path, &token).await;
    list.expect(200);
    assert_eq!(
        list.json["grants"],
        json!([{"tool": "run_shell", "pattern": "echo *"}])
    );
    let after = settle(
        &srv,
        &token,
        &s,
        "run_shell",
        json!({"command": "echo granted"}),
    )
    .await;
    assert_eq!(after["status"], "succeeded", "{after:#}");
    assert_eq!(after["rule"], "session grant: run_shell echo *");
    let redirect = api
        .propose_ok(
            &token,
            &s,
            "run_shell",
            json!({"command": "echo x > out.txt"}),
        )
        .await;
    assert_eq!(
        redirect["status"], "awaiting_approval",
        "grants never cover writes by redirection"
    );
    // Another session of alice's is not covered.
    let s2 = api.session(&token).await;
    let other = api
        .propose_ok(&token, &s2, "run_shell", json!({"command": "echo two"}))
        .await;
    assert_eq!(other["status"], "awaiting_approval");

    api.post(&path, &token, json!({"tool": "rm_rf", "pattern": "*"}))
        .await
        .expect(400);
    let bt = srv.bob.token.clone();
    let bs = api.session(&bt).await;
    let r = api
        .post(
            &format!("/v1/sessions/{bs}/grants"),
            &bt,
            json!({"tool": "run_shell", "pattern": "echo *"}),
        )
        .await;
    r.expect(403);
    // Nobody else's session.
    api.post(
        &format!("/v1/sessions/{bs}/grants"),
        &token,
        json!({"tool": "run_shell", "pattern": "x"}),
    )
    .await
    .expect(404);
    srv.finish().await;
}
