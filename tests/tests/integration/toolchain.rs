//! The `dev` toolchain image (issue 15): real development work in the sandbox through the API
//! — a git commit, a pytest run, a C program compiled and run — with the changes reported,
//! under runc and gVisor.

use std::time::Duration;

use serde_json::{json, Value};

use airlock_tests::server::{ServerOptions, TestServer};

const IMAGE: &str = "airlock-executor:dev";

fn policy(runtime: &str) -> String {
    format!(
        "[defaults]\nimage = \"{IMAGE}\"\nruntime = \"{runtime}\"\n\n[defaults.tools]\nread_file = \"allow\"\nlist_dir = \"allow\"\nrun_shell = \"ask\"\nwrite_file = \"ask\"\nedit_file = \"ask\"\n\n[defaults.limits]\ntimeout_secs = 120\nmemory = \"512MiB\"\n"
    )
}

async fn require_dev_image() {
    let docker = airlock::sandbox::connect_docker(None)
        .await
        .expect("these tests need a running Docker engine");
    if docker.inspect_image(IMAGE).await.is_err() {
        panic!(
            "the {IMAGE} image is missing: build it with `airlock image build --profile dev` (scripts/test.sh does)"
        );
    }
}

/// Approves a shell command and returns the finished call and its output.
async fn shell(server: &TestServer, sid: &str, command: &str) -> (Value, String) {
    let token = &server.alice.token;
    let call = server
        .api
        .propose_ok(token, sid, "run_shell", json!({ "command": command }))
        .await;
    let done = server
        .api
        .approve_wait(
            token,
            &call,
            &["succeeded", "failed", "timed_out"],
            Duration::from_secs(120),
        )
        .await;
    let output = done["output"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter_map(|c| c["data"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default();
    (done, output)
}

fn changed(call: &Value) -> Vec<String> {
    call["result"]["changes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    format!(
                        "{} {}",
                        c["kind"].as_str().unwrap(),
                        c["path"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn git_pytest_and_a_c_program_run_in_the_dev_image_under_both_runtimes() {
    require_dev_image().await;
    for runtime in ["runc", "runsc"] {
        let server = TestServer::start(ServerOptions {
            base_policy: Some(policy(runtime)),
            ..ServerOptions::default()
        })
        .await;
        let ws = &server.alice.workspace;
        ws.write(
            "test_calc.py",
            "def add(a, b):\n    return a + b\n\ndef test_add():\n    assert add(2, 3) == 5\n",
        )
        .write(
            "hello.c",
            "#include <stdio.h>\nint main(void) { printf(\"hello from c\\n\"); return 0; }\n",
        );
        let sid = server.api.session(&server.alice.token).await;

        let git = "git init -q && git -c user.name=Ada -c user.email=ada@example.com add -A \
                   && git -c user.name=Ada -c user.email=ada@example.com commit -qm first \
                   && git log --format='%an: %s'";
        let (done, out) = shell(&server, &sid, git).await;
        assert_eq!(done["status"], "succeeded", "{runtime}: {done:#}");
        assert_eq!(out.trim(), "Ada: first", "{runtime}");
        assert!(
            changed(&done).contains(&"created .git/HEAD".to_string()),
            "{runtime}: {:?}",
            changed(&done)
        );

        let (done, out) = shell(&server, &sid, "python3 -m pytest -q -p no:cacheprovider").await;
        assert_eq!(done["status"], "succeeded", "{runtime}: {out}");
        assert!(out.contains("1 passed"), "{runtime}: {out}");
        // A failing test fails the call, with pytest's own report.
        ws.write("test_bad.py", "def test_bad():\n    assert 1 == 2\n");
        let (done, out) = shell(&server, &sid, "python3 -m pytest -q -p no:cacheprovider").await;
        assert_eq!(done["status"], "failed", "{runtime}: {out}");
        assert_eq!(done["result"]["exit_code"], 1);
        assert!(out.contains("1 failed, 1 passed"), "{runtime}: {out}");

        let (done, out) = shell(&server, &sid, "gcc -O1 -o hello hello.c && ./hello").await;
        assert_eq!(done["status"], "succeeded", "{runtime}: {out}");
        assert_eq!(out, "hello from c\n", "{runtime}");
        assert!(
            changed(&done).contains(&"created hello".to_string()),
            "{runtime}: {:?}",
            changed(&done)
        );
        // The changes are revertible like any other: the binary goes away.
        assert!(ws.exists("hello"));
        server.finish().await;
    }
}
