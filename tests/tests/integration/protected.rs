//! Protected paths hold inside shell commands: through the API, with the default policy
//! (policies/default.toml), under runc and runsc. The container a call runs in has masks over
//! every `no_access` match (`/dev/null` over files, an empty read-only tmpfs over directories)
//! and read-only views over `read_only` ones, so no command — glob, recursive search, archive,
//! copy, symlink, hard link, `/proc` path, a name built at run time — reads a secret, and a
//! command nobody approved runs with a read-only workspace.

use std::time::Duration;

use airlock::sandbox::Runtime;
use airlock_tests::server::{ServerOptions, TestServer};
use airlock_tests::wait_until;
use serde_json::{json, Value};

const CALL_TIMEOUT: Duration = Duration::from_secs(90);
const SECRETS: [&str; 4] = [
    "SECRET_ENV_1",
    "SECRET_CFG_2",
    "SECRET_KEY_3",
    "SECRET_LATE_4",
];
const GIT_CONFIG: &str = "[core]\n\tbare = false\n";

/// The default policy as shipped, on `runtime`, plus `extra` rules.
fn default_policy(runtime: Runtime, extra: &str) -> ServerOptions {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/default.toml"
    ))
    .expect("policies/default.toml");
    let base = base.replace(
        "runtime = \"runc\"",
        &format!("runtime = \"{}\"", runtime.as_str()),
    );
    ServerOptions {
        base_policy: Some(format!("{base}\n{extra}\n")),
        ..ServerOptions::default()
    }
}

/// Proposes a shell command, approves it if the policy asks, and waits for its end.
async fn shell(srv: &TestServer, session: &str, command: &str) -> Value {
    let token = srv.alice.token.clone();
    let api = &srv.api;
    let c = api
        .propose_ok(&token, session, "run_shell", json!({ "command": command }))
        .await;
    let id = c["id"].as_str().expect("call id").to_string();
    let mut c = api
        .wait_status(
            &token,
            &id,
            &[
                "succeeded",
                "failed",
                "denied",
                "awaiting_approval",
                "timed_out",
            ],
            CALL_TIMEOUT,
        )
        .await;
    if c["status"] == "awaiting_approval" {
        let sha = c["args_sha256"].as_str().unwrap().to_string();
        api.decide(&token, &id, "approve", &sha, None)
            .await
            .expect(200);
        c = api
            .wait_status(
                &token,
                &id,
                &["succeeded", "failed", "timed_out"],
                CALL_TIMEOUT,
            )
            .await;
    }
    c
}

fn output(c: &Value) -> String {
    c["output"]
        .as_array()
        .map(|o| o.iter().filter_map(|e| e["data"].as_str()).collect())
        .unwrap_or_default()
}

/// Only the stdout chunks: stdout and stderr are two pipes, so their interleaving varies.
fn stdout(c: &Value) -> String {
    c["output"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter(|e| e["stream"] == "stdout")
                .filter_map(|e| e["data"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the call ran in a container (it was not refused by the lexical gate) and that
/// nothing it returned — output, result, change report, error — holds a secret.
#[track_caller]
fn ran_without_secrets(c: &Value, what: &str) {
    assert!(
        c["outcome"].is_object(),
        "{what}: the command did not run in the sandbox: {c:#}"
    );
    let all = c.to_string();
    for s in SECRETS {
        assert!(
            !all.contains(s),
            "{what}: the secret {s} reached the caller: {c:#}"
        );
    }
}

fn protected_workspace(srv: &TestServer) {
    let ws = &srv.alice.workspace;
    ws.write(".env", "SECRET_ENV_1=1\n")
        .write("config/.env", "SECRET_CFG_2=2\n")
        .write("deploy/id_rsa", "SECRET_KEY_3\n")
        .write(".git/config", GIT_CONFIG)
        .write("notes.txt", "b plain\na notes\n")
        .write("src/main.rs", "fn main() {}\n");
    // A symlink of the kind a cloned repository can ship, and a hard link to the secret.
    ws.symlink("env_link", ".env");
    std::fs::hard_link(ws.root().join(".env"), ws.root().join("alias")).unwrap();
}

async fn secrets_stay_masked(runtime: Runtime) {
    // `touch *` and `tee *` run without asking, read-only; `touch stamp-*` may write.
    let extra = r#"
[[defaults.rules]]
tool = "run_shell"
command = ["touch *", "tee *"]
decision = "allow"

[[defaults.rules]]
tool = "run_shell"
command = ["touch stamp-*"]
decision = "allow"
write = true
"#;
    let srv = TestServer::start(default_policy(runtime, extra)).await;
    protected_workspace(&srv);
    let s = srv.api.session(&srv.alice.token).await;
    let rt = runtime.as_str();

    // An ordinary command behaves as before, and says how many masks it had.
    let c = shell(&srv, &s, "cat notes.txt src/main.rs").await;
    assert_eq!(c["status"], "succeeded", "{c:#}");
    assert_eq!(stdout(&c), "b plain\na notes\nfn main() {}\n");
    assert_eq!(c["decision"], "allow", "{c:#}");
    assert_eq!(c["outcome"]["writable"], false, "{c:#}");
    let masks = c["outcome"]["masks"].as_u64().unwrap();
    assert!(
        masks >= 5,
        "[{rt}] .env, config/.env, deploy/id_rsa, alias, .git: {c:#}"
    );

    for cmd in [
        "cat .e*",
        "cat .en?",
        "cat .[e]nv",
        "cat */.e* deploy/id*",
        "cat env_link alias",
        "grep -r SECRET .",
        "grep -r SECRET /workspace",
        "find . -type f -exec cat {} +",
        "tar c . | tar t -v",
        "tar c -f /tmp/a.tar . && mkdir /tmp/x && tar x -f /tmp/a.tar -C /tmp/x; cat /tmp/x/.e* /tmp/x/*/.e* /tmp/x/alias /tmp/x/deploy/*",
        "cp alias /tmp/c; cp -r config /tmp/d; cat /tmp/c /tmp/d/.e*",
        "sh -c \"cat .e$(echo nv)\"",
        "od -c alias; base64 alias; strings alias; dd if=alias; xxd alias; hexdump -C alias",
        "cat /proc/self/cwd/alias /proc/self/root/workspace/alias",
        "exec 3< alias; cat /proc/self/fd/3",
        "ln -s .e* l2; cat l2",
        "ln alias h2; ln .e* h3; cat h2 h3",
    ] {
        let c = shell(&srv, &s, cmd).await;
        ran_without_secrets(&c, &format!("[{rt}] {cmd}"));
    }
    // The file tools refuse the aliases too: a hard link is protected as its target is.
    for path in ["alias", "env_link"] {
        let c = srv
            .api
            .propose_ok(&srv.alice.token, &s, "read_file", json!({ "path": path }))
            .await;
        let c = srv
            .api
            .wait_status(
                &srv.alice.token,
                c["id"].as_str().unwrap(),
                &["succeeded", "failed"],
                CALL_TIMEOUT,
            )
            .await;
        assert_eq!(
            c["error"]["code"], "protected_path",
            "[{rt}] read_file {path}: {c:#}"
        );
        ran_without_secrets(&c, &format!("[{rt}] read_file {path}"));
    }
    // A link made by one call, read by the next.
    let c = shell(&srv, &s, "ln -s config/.e* step1").await;
    assert_eq!(c["status"], "succeeded", "{c:#}");
    let c = shell(&srv, &s, "cat step1").await;
    ran_without_secrets(&c, "the two-step read");
    assert_eq!(c["decision"], "allow", "{c:#}");

    // `.git` is read-only for every command, approved or not.
    for cmd in ["echo x >> .git/config", "rm -rf .git", "mv .git g2"] {
        let c = shell(&srv, &s, cmd).await;
        assert_eq!(c["status"], "failed", "[{rt}] {cmd}: {c:#}");
        assert_eq!(c["outcome"]["writable"], true, "{c:#}");
    }
    let ws = &srv.alice.workspace;
    assert_eq!(ws.read(".git/config").as_deref(), Some(GIT_CONFIG));

    // What nobody approved cannot write.
    for (cmd, file) in [
        ("sort -o notes.txt notes.txt", "notes.txt"),
        // (busybox's find has no -delete; uniq writes its second operand)
        ("uniq notes.txt uniq-file", "uniq-file"),
        ("touch new-file", "new-file"),
        ("echo hi | tee tee-file", "tee-file"),
    ] {
        let c = shell(&srv, &s, cmd).await;
        assert_eq!(c["decision"], "allow", "[{rt}] {cmd}: {c:#}");
        assert_eq!(c["outcome"]["writable"], false, "[{rt}] {cmd}: {c:#}");
        assert_ne!(c["result"]["exit_code"], 0, "[{rt}] {cmd} must fail: {c:#}");
        assert!(
            output(&c).contains("Read-only file system"),
            "[{rt}] {cmd}: {c:#}"
        );
        if file == "notes.txt" {
            assert_eq!(
                ws.read(file).as_deref(),
                Some("b plain\na notes\n"),
                "{cmd}"
            );
        } else {
            assert!(!ws.exists(file), "[{rt}] {cmd} created {file}");
        }
    }
    // …unless the rule that allowed it says `write = true`.
    let c = shell(&srv, &s, "touch stamp-1").await;
    assert_eq!(c["status"], "succeeded", "{c:#}");
    assert_eq!(c["outcome"]["writable"], true, "{c:#}");
    assert!(ws.exists("stamp-1"));

    // A secret that appears after the workspace was surveyed: the call's executor sees it
    // unmasked, refuses, and the orchestrator surveys again and retries in a fresh container.
    let before = shell(&srv, &s, "ls").await["outcome"]["masks"]
        .as_u64()
        .unwrap();
    ws.write("later/.env", "SECRET_LATE_4\n");
    let c = shell(&srv, &s, "cat later/.e*").await;
    ran_without_secrets(&c, "a secret created after the survey");
    assert_eq!(c["outcome"]["masks"].as_u64().unwrap(), before + 1, "{c:#}");

    // The audit records how many masks each call had.
    let audit = srv.api.get("/v1/audit?limit=500", &srv.admin.token).await;
    audit.expect(200);
    assert!(
        audit.text.contains("masks over protected paths"),
        "{}",
        audit.text
    );
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_masked_runc() {
    secrets_stay_masked(Runtime::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_masked_runsc() {
    secrets_stay_masked(Runtime::Runsc).await;
}

/// A directory the sandbox user may enter but not list could hide a secret a command can
/// still open by name: the survey refuses it, and the call fails instead of running unmasked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlistable_directory_fails_closed() {
    use std::os::unix::fs::PermissionsExt;
    let srv = TestServer::start(default_policy(Runtime::Runc, "")).await;
    let ws = &srv.alice.workspace;
    ws.write(
        "locked/.env",
        "SECRET_ENV_1
",
    )
    .write(
        "README", "hi
",
    );
    let locked = ws.root().join("locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o311)).unwrap();
    let s = srv.api.session(&srv.alice.token).await;
    let c = shell(&srv, &s, "cat README locked/.e*").await;
    assert_eq!(c["status"], "failed", "{c:#}");
    assert_eq!(c["error"]["code"], "permission_denied", "{c:#}");
    assert!(
        c["error"]["message"].as_str().unwrap().contains("`locked`"),
        "{c:#}"
    );
    assert!(!c.to_string().contains("SECRET_ENV_1"), "{c:#}");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = shell(&srv, &s, "cat README locked/.e*").await;
    ran_without_secrets(&c, "once the directory is listable");
    srv.finish().await;
}

/// A monorepo with 1,000 `.env` files: more matches than masks a container may have, so they
/// are merged into directory masks, and the call says which.
async fn a_thousand_secrets_are_masked_by_directory(runtime: Runtime) {
    let srv = TestServer::start(default_policy(runtime, "")).await;
    let ws = &srv.alice.workspace;
    for i in 0..1000 {
        ws.write(&format!("pkgs/p{i}/.env"), format!("SECRET_ENV_1_{i}\n"));
    }
    ws.write("pkgs/p7/code.txt", "code\n")
        .write("README", "hello\n");
    let s = srv.api.session(&srv.alice.token).await;
    let c = shell(&srv, &s, "cat README pkgs/p7/.e* pkgs/p7/code.txt").await;
    ran_without_secrets(&c, "1,000 matches");
    assert_eq!(stdout(&c), "hello\n", "{c:#}");
    assert!(c["outcome"]["masks"].as_u64().unwrap() <= 64, "{c:#}");
    assert_eq!(c["outcome"]["masked_directories"], json!(["pkgs"]), "{c:#}");
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_secrets_are_masked_by_directory_runc() {
    a_thousand_secrets_are_masked_by_directory(Runtime::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_secrets_are_masked_by_directory_runsc() {
    a_thousand_secrets_are_masked_by_directory(Runtime::Runsc).await;
}

/// A command that swaps a read-only path's parent for a symlink to another directory of the
/// host, in a loop, while another writable call's container (which has a read-only view of that
/// path, a bind of a workspace path the engine resolves on the host) is created. The creation
/// waits for the running writer, so the view is never the other directory.
async fn swapping_a_view_source_during_creation(runtime: Runtime) {
    // Nested repositories' `.git` is read-only too (the top-level one cannot be swapped: it
    // is a mount point in every writer's container).
    let extra = "[[defaults.protected]]\nglob = \"**/.git/**\"\nprotection = \"read_only\"\n";
    let srv = TestServer::start(default_policy(runtime, extra)).await;
    let ws = &srv.alice.workspace;
    ws.write("repo/.git/config", GIT_CONFIG);
    let other = ws.outside().join("other");
    std::fs::create_dir_all(other.join(".git")).unwrap();
    std::fs::write(other.join(".git/config"), "SECRET_KEY_3 of another user\n").unwrap();
    let s = srv.api.session(&srv.alice.token).await;
    let token = srv.alice.token.clone();
    let swap = format!(
        "echo started; end=$(( $(date +%s) + 8 )); n=0; while [ $(date +%s) -lt $end ]; do \
         mv repo repo.real && ln -s {} repo && usleep 20000; rm repo && mv repo.real repo && n=$((n+1)); usleep 20000; done; echo swapped $n",
        other.display()
    );
    let c = srv
        .api
        .propose_ok(&token, &s, "run_shell", json!({ "command": swap }))
        .await;
    let swapper = c["id"].as_str().unwrap().to_string();
    srv.api
        .decide(
            &token,
            &swapper,
            "approve",
            c["args_sha256"].as_str().unwrap(),
            None,
        )
        .await
        .expect(200);
    // Wait until its command runs (not only its status): from then on it holds the workspace.
    wait_until("the swapper's command started", CALL_TIMEOUT, || async {
        let c = srv.api.get_call(&token, &swapper).await;
        match output(&c).contains("started") {
            true => Ok(()),
            false => Err(format!("{c:#}")),
        }
    })
    .await;
    // While it swaps: writable calls whose containers need the view of repo/.git.
    // A view mounted through the symlink lands where the symlink points, inside the container:
    // read both places.
    let read = format!(
        "cat repo/.git/config {}/.git/config; rm -f scratch",
        other.display()
    );
    let mut reads = Vec::new();
    for _ in 0..3 {
        let c = shell(&srv, &s, &read).await;
        ran_without_secrets(&c, &format!("[{}] read during the swap", runtime.as_str()));
        assert_eq!(c["status"], "succeeded", "{c:#}");
        assert_eq!(
            c["outcome"]["writable"], true,
            "approved, so writable: {c:#}"
        );
        reads.push(c);
    }
    let done = srv
        .api
        .wait_status(&token, &swapper, &["succeeded", "failed"], CALL_TIMEOUT)
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    // Serialised: a container with the view of repo/.git was only made once the swapper's
    // container had ended. (One made while `repo` was a symlink needs no view: its workspace
    // has no repo/.git, and it may run beside the swapper.)
    for c in &reads {
        if c["outcome"]["masks"].as_u64() >= Some(1) {
            assert_eq!(stdout(c), GIT_CONFIG, "{c:#}");
            assert!(
                c["updated_at_ms"].as_u64() > done["updated_at_ms"].as_u64(),
                "a container with a view of repo/.git ran while the swapper ran: {c:#} {done:#}"
            );
        }
    }
    let after = shell(&srv, &s, &read).await;
    assert_eq!(after["outcome"]["masks"], 1, "{after:#}");
    assert_eq!(stdout(&after), GIT_CONFIG, "{after:#}");
    let swaps: u64 = output(&done)
        .trim()
        .rsplit_once("swapped ")
        .map(|(_, n)| n)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(swaps > 10, "the swapper must really have swapped: {done:#}");
    assert_eq!(ws.read("repo/.git/config").as_deref(), Some(GIT_CONFIG));
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_a_view_source_during_creation_runc() {
    swapping_a_view_source_during_creation(Runtime::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_a_view_source_during_creation_runsc() {
    swapping_a_view_source_during_creation(Runtime::Runsc).await;
}

/// A session grant is made from an approval, and what it allows runs with the writable
/// workspace that approval had; what the admin's rules allow stays read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_grant_carries_the_approved_mount() {
    let mut opts = default_policy(Runtime::Runc, "");
    opts.base_policy = opts
        .base_policy
        .map(|p| p.replacen("session_grants = false", "session_grants = true", 1));
    let srv = TestServer::start(opts).await;
    let ws = &srv.alice.workspace;
    ws.write("a.txt", "a\n");
    let s = srv.api.session(&srv.alice.token).await;
    let c = shell(&srv, &s, "touch g1").await;
    assert_eq!(c["decision"], "ask", "{c:#}");
    assert_eq!(c["outcome"]["writable"], true, "{c:#}");
    assert!(ws.exists("g1"));
    let g = srv
        .api
        .post(
            &format!("/v1/sessions/{s}/grants"),
            &srv.alice.token,
            json!({"tool": "run_shell", "pattern": "touch *"}),
        )
        .await;
    g.expect(201);
    assert_eq!(g.json["writable"], true, "{}", g.text);
    let c = shell(&srv, &s, "touch g2").await;
    assert_eq!(c["decision"], "allow", "{c:#}");
    assert!(
        c["rule"].as_str().unwrap().starts_with("session grant"),
        "{c:#}"
    );
    assert_eq!(c["outcome"]["writable"], true, "{c:#}");
    assert!(ws.exists("g2"));
    // A command the policy's own rules allow is still read-only.
    let c = shell(&srv, &s, "sort -o a.txt a.txt").await;
    assert_eq!(c["outcome"]["writable"], false, "{c:#}");
    assert_eq!(ws.read("a.txt").as_deref(), Some("a\n"));
    srv.finish().await;
}
