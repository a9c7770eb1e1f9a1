//! Policy tests: loading and errors, layering, and evaluation as a table of cases.

use super::*;
use serde_json::json;

const TOKEN_A: &str = "0a041b9462caa4a31bac3567e0b6e6fd9100787db2ab433d96f6d178cabfce90"; // "user1"
const TOKEN_B: &str = "6025d18fe48abd45168528f18a82e265dd98d421a7084aa09f61b341703901a3"; // "user2"
const TOKEN_C: &str = "5860faf02b6bc6222ba5aca523560f0e364ccd8b67bee486fe8bf7c01d492ccb"; // "user3"

/// A policy with every kind of layer: defaults, two groups, per-user overrides.
const LAYERED: &str = r#"
[defaults]
session_grants = true

[defaults.tools]
read_file = "allow"
list_dir = "allow"
search = "allow"
write_file = "ask"
edit_file = "ask"
run_shell = "ask"

[defaults.limits]
memory = "256MiB"
pids = 128
concurrent_calls = 4

[[defaults.rules]]
tool = "*"
path = ["**/.env", "**/*.pem", "**/id_*"]
decision = "deny"
reason = "secrets never leave the workspace"

[[defaults.rules]]
tool = "run_shell"
command = ["curl *", "wget *", "nc *", "ssh *", "scp *"]
decision = "deny"

[[defaults.rules]]
tool = "run_shell"
command = "rm *"
decision = "ask"
session_grants = false

[[defaults.rules]]
tool = "run_shell"
command = ["ls *", "cat *", "grep *", "echo *", "wc *", "head *", "tail *", "pwd", "true"]
decision = "allow"

[[defaults.rules]]
tool = ["write_file", "edit_file"]
path = "docs/**"
decision = "allow"

[[defaults.rules]]
tool = "read_file"
path = "**/*.[Kk][Ee][Yy]"
decision = "ask"

[[defaults.rules]]
tool = "read_file"
path = "private/**"
decision = "deny"
ignore_case = true

[groups.dev]
description = "developers: build and test without asking"
tools = { write_file = "allow" }
limits = { memory = "1GiB", timeout_secs = 600, calls_per_minute = 120 }

[[groups.dev.rules]]
tool = "run_shell"
command = ["cargo build *", "cargo test *", "make *", "git status *", "git diff *", "git log *"]
decision = "allow"

[[groups.dev.rules]]
tool = "run_shell"
command = "curl *"
decision = "allow"
reason = "an allow never beats a deny"

[groups.locked]
tools = { read_file = "ask", list_dir = "ask", search = "ask" }
runtime = "runsc"
session_grants = false
limits = { memory = "128MiB", cpus = 0.5 }

[[users]]
name = "alice"
token_sha256 = "0a041b9462caa4a31bac3567e0b6e6fd9100787db2ab433d96f6d178cabfce90"
workspace = "/srv/ws/alice"
uid = 1000
gid = 1000
groups = ["dev"]

[[users]]
name = "bob"
token_sha256 = "6025d18fe48abd45168528f18a82e265dd98d421a7084aa09f61b341703901a3"
role = "admin"
workspace = "/srv/ws/bob"
uid = 1001
gid = 1001
groups = ["dev", "locked"]
limits = { pids = 256 }

[[users]]
name = "carol"
token_sha256 = "5860faf02b6bc6222ba5aca523560f0e364ccd8b67bee486fe8bf7c01d492ccb"
workspace = "/srv/ws/carol"
uid = 1002
gid = 1002
tools = { run_shell = "deny" }

[[users.rules]]
tool = "write_file"
path = "notes/*.md"
decision = "allow"
"#;

fn layered() -> Policy {
    Policy::parse("layered.toml", LAYERED).unwrap_or_else(|e| panic!("{e}"))
}

fn call(tool: &str, args: serde_json::Value) -> ToolCall {
    ToolCall::from_parts(tool, args).unwrap()
}

fn sh(cmd: &str) -> ToolCall {
    call("run_shell", json!({ "command": cmd }))
}

/// The table: (user, tool, args, expected decision, expected deciding rule).
#[test]
fn evaluation_table() {
    let p = layered();
    #[rustfmt::skip]
    let cases: &[(&str, &str, serde_json::Value, Decision, &str)] = &[
        // Fallbacks per tool, and where they come from.
        ("alice", "read_file", json!({"path": "src/main.rs"}), Decision::Allow, "defaults.tools.read_file"),
        ("alice", "write_file", json!({"path": "src/a.rs", "content": ""}), Decision::Allow, "groups.dev.tools.write_file"),
        ("carol", "write_file", json!({"path": "src/a.rs", "content": ""}), Decision::Ask, "defaults.tools.write_file"),
        ("carol", "run_shell", json!({"command": "ls"}), Decision::Allow, "defaults.rules[3]"),
        ("carol", "run_shell", json!({"command": "make"}), Decision::Deny, "users.carol.tools.run_shell"),
        // Later groups override earlier ones; the user's own settings override groups.
        ("bob", "read_file", json!({"path": "src/main.rs"}), Decision::Ask, "groups.locked.tools.read_file"),
        // Precedence: deny beats ask beats allow, whatever layer each rule is in.
        ("alice", "read_file", json!({"path": ".env"}), Decision::Deny, "defaults.rules[0]"),
        ("alice", "write_file", json!({"path": "docs/.env", "content": ""}), Decision::Deny, "defaults.rules[0]"),
        ("alice", "run_shell", json!({"command": "curl https://example.com"}), Decision::Deny, "defaults.rules[1]"),
        ("carol", "write_file", json!({"path": "notes/todo.md", "content": ""}), Decision::Allow, "users.carol.rules[0]"),
        ("carol", "write_file", json!({"path": "notes/sub/todo.md", "content": ""}), Decision::Ask, "defaults.tools.write_file"),
        ("carol", "edit_file", json!({"path": "docs/a/b.md", "edits": []}), Decision::Allow, "defaults.rules[4]"),
        // Globs: `**`, classes, case.
        ("alice", "read_file", json!({"path": "deep/er/id_rsa"}), Decision::Deny, "defaults.rules[0]"),
        ("alice", "read_file", json!({"path": "certs/server.pem"}), Decision::Deny, "defaults.rules[0]"),
        ("alice", "read_file", json!({"path": "certs/server.PEM"}), Decision::Allow, "defaults.tools.read_file"),
        ("alice", "read_file", json!({"path": "a/b.KEY"}), Decision::Ask, "defaults.rules[5]"),
        ("alice", "read_file", json!({"path": "a/b.kEy"}), Decision::Ask, "defaults.rules[5]"),
        ("alice", "read_file", json!({"path": "a/b.kez"}), Decision::Allow, "defaults.tools.read_file"),
        ("alice", "read_file", json!({"path": "Private/notes.txt"}), Decision::Deny, "defaults.rules[6]"),
        ("alice", "list_dir", json!({"path": "private"}), Decision::Allow, "defaults.tools.list_dir"),
        ("alice", "read_file", json!({"path": "./src/../.env"}), Decision::Deny, "defaults.rules[0]"),
        ("alice", "read_file", json!({"path": "../escape"}), Decision::Deny, "built-in: the path is absolute or leaves the workspace"),
        ("alice", "read_file", json!({"path": "/etc/passwd"}), Decision::Deny, "built-in: the path is absolute or leaves the workspace"),
        // Shell segments: each one is judged, the strictest wins.
        ("alice", "run_shell", json!({"command": "ls; curl x"}), Decision::Deny, "defaults.rules[1]"),
        ("alice", "run_shell", json!({"command": "cat a | sh"}), Decision::Ask, "defaults.tools.run_shell"),
        ("alice", "run_shell", json!({"command": "echo $(cat .env)"}), Decision::Deny, "defaults.rules[0]"),
        ("alice", "run_shell", json!({"command": "echo `cat id_rsa`"}), Decision::Deny, "defaults.rules[0]"),
        ("alice", "run_shell", json!({"command": "true && rm -rf /"}), Decision::Ask, "defaults.rules[2]"),
        ("alice", "run_shell", json!({"command": "cargo test --all && git status"}), Decision::Allow, "groups.dev.rules[0]"),
        ("carol", "run_shell", json!({"command": "cargo test --all"}), Decision::Deny, "users.carol.tools.run_shell"),
        ("alice", "run_shell", json!({"command": "ls -la | grep foo | wc -l"}), Decision::Allow, "defaults.rules[3]"),
        ("alice", "run_shell", json!({"command": "ls\ncurl x"}), Decision::Deny, "defaults.rules[1]"),
        ("alice", "run_shell", json!({"command": "(cd src && ls) || wget y"}), Decision::Deny, "defaults.rules[1]"),
        ("alice", "run_shell", json!({"command": "sh -c 'ls; curl x'"}), Decision::Deny, "defaults.rules[1]"),
        ("alice", "run_shell", json!({"command": "ls | xargs rm -rf"}), Decision::Ask, "defaults.rules[2]"),
        ("alice", "run_shell", json!({"command": "/usr/bin/curl x"}), Decision::Deny, "defaults.rules[1]"),
        ("alice", "run_shell", json!({"command": "c'u'rl x"}), Decision::Deny, "defaults.rules[1]"),
        ("alice", "run_shell", json!({"command": "$(echo curl) x"}), Decision::Ask, "built-in: a command whose name is only known at run time is never allowed without asking"),
        ("alice", "run_shell", json!({"command": "echo 'curl x; rm -rf /'"}), Decision::Allow, "defaults.rules[3]"),
        ("alice", "run_shell", json!({"command": "echo hi > out.txt"}), Decision::Ask, "defaults.tools.run_shell"),
        ("alice", "run_shell", json!({"command": "echo hi > /dev/null 2>&1"}), Decision::Allow, "defaults.rules[3]"),
        ("alice", "run_shell", json!({"command": "echo hi > .env"}), Decision::Deny, "defaults.rules[0]"),
        ("alice", "run_shell", json!({"command": "cat src/../.env"}), Decision::Deny, "defaults.rules[0]"),
        ("alice", "run_shell", json!({"command": "cat /workspace/.env"}), Decision::Deny, "defaults.rules[0]"),
        ("alice", "run_shell", json!({"command": "cat .env", "cwd": "sub"}), Decision::Deny, "defaults.rules[0]"),
        // Unparseable commands are never allowed without asking.
        ("alice", "run_shell", json!({"command": "echo 'unbalanced"}), Decision::Ask, "built-in: a command that cannot be analysed is never allowed without asking"),
        ("alice", "run_shell", json!({"command": "cat <<EOF\nx\nEOF"}), Decision::Ask, "built-in: a command that cannot be analysed is never allowed without asking"),
        ("carol", "run_shell", json!({"command": "echo \"unbalanced"}), Decision::Deny, "users.carol.tools.run_shell"),
        // Empty command: nothing runs; the fallback decides.
        ("alice", "run_shell", json!({"command": "# just a comment"}), Decision::Ask, "defaults.tools.run_shell"),
    ];
    let mut failures = Vec::new();
    for (user, tool, args, want, rule) in cases {
        let u = p.user(user).unwrap();
        let v = p.evaluate(u, &call(tool, args.clone()));
        if v.decision != *want || v.rule != *rule {
            failures.push(format!(
                "{user} {tool} {args}: want {want:?} by `{rule}`, got {:?} by `{}` {:?}",
                v.decision, v.rule, v.details
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A revert is judged as a write of each of its files: the strictest wins, and what the
/// policy would allow still asks (its reverse diff is always shown first).
#[test]
fn a_revert_is_judged_as_writes_of_its_files_and_always_asks() {
    let p = layered();
    let revert = |paths: &[&str]| {
        ToolCall::from_record(
            "revert",
            json!({"reverts": "c", "files": paths.iter().map(|p| json!({
                "path": p, "expected_sha256": "absent", "restore_sha256": "absent"
            })).collect::<Vec<_>>()}),
        )
        .unwrap()
    };
    assert!(
        ToolCall::from_parts("revert", json!({"reverts": "c", "files": []})).is_err(),
        "a revert is never proposed directly"
    );
    let alice = p.user("alice").unwrap();
    let carol = p.user("carol").unwrap();
    // alice's group allows writes: the revert still asks.
    let v = p.evaluate(alice, &revert(&["src/a.rs"]));
    assert_eq!(v.decision, Decision::Ask, "{v:?}");
    assert!(
        v.rule.contains("always shown first") && v.rule.contains("groups.dev.tools.write_file"),
        "{v:?}"
    );
    // One denied path denies the whole revert.
    let v = p.evaluate(alice, &revert(&["src/a.rs", "docs/.env"]));
    assert_eq!(
        (v.decision, v.rule.as_str()),
        (Decision::Deny, "defaults.rules[0]")
    );
    assert_eq!(v.details.len(), 2, "{v:?}");
    // Leaving the workspace is denied like any write.
    let v = p.evaluate(carol, &revert(&["../x"]));
    assert_eq!(v.decision, Decision::Deny, "{v:?}");
}

#[test]
fn rule_reasons_and_details_explain_the_decision() {
    let p = layered();
    let u = p.user("alice").unwrap();
    let v = p.evaluate(u, &call("read_file", json!({"path": "x/.env"})));
    assert_eq!(
        v.reason.as_deref(),
        Some("secrets never leave the workspace")
    );
    let v = p.evaluate(u, &sh("ls; curl x"));
    assert_eq!(v.details.len(), 2, "{v:?}");
    assert!(v.details[0].contains("`ls` → allow"), "{v:?}");
    assert!(
        v.details[1].contains("`curl x` → deny by defaults.rules[1]"),
        "{v:?}"
    );
    assert_eq!(v.to_string(), "deny by defaults.rules[1]");
}

#[test]
fn layers_merge_limits_runtime_and_protected_paths() {
    let p = layered();
    let alice = p.profile_for(p.user("alice").unwrap());
    assert_eq!(alice.memory_bytes, 1 << 30);
    assert_eq!(alice.timeout_secs, 600);
    assert_eq!(alice.pids, 128);
    assert_eq!((alice.uid, alice.gid), (1000, 1000));
    assert_eq!(alice.runtime, Runtime::Runc);
    let bob = p.user("bob").unwrap();
    let bp = p.profile_for(bob);
    assert_eq!(bp.memory_bytes, 128 << 20, "locked comes after dev");
    assert_eq!(bp.cpus, 0.5);
    assert_eq!(bp.pids, 256, "the user's own setting wins");
    assert_eq!(bp.runtime, Runtime::Runsc);
    assert_eq!(bob.role, Role::Admin);
    assert_eq!(bob.groups, vec!["dev", "locked"]);
    assert_eq!(p.call_limits(bob), (Some(4), Some(120)));
    assert!(!p.session_grants_allowed(bob));
    assert!(p.session_grants_allowed(p.user("alice").unwrap()));
    assert_eq!(p.protected_for(bob), default_protected());
    assert_eq!(p.runtimes(), BTreeSet::from(["runc", "runsc"]));
}

#[test]
fn session_grants_lift_asks_but_never_denies_or_forbidden_asks() {
    let p = layered();
    let alice = p.user("alice").unwrap();
    let grants = vec![
        Grant::new("run_shell", "npm *").unwrap(),
        Grant::new("run_shell", "curl *").unwrap(),
        Grant::new("run_shell", "rm *").unwrap(),
        Grant::new("edit_file", "src/**").unwrap(),
        Grant::new("read_file", "**").unwrap(),
    ];
    let v = p.evaluate_with_grants(alice, &sh("npm test && ls"), &grants);
    assert_eq!(v.decision, Decision::Allow);
    let v = p.evaluate_with_grants(alice, &sh("npm test > out"), &grants);
    assert_eq!(
        v.decision,
        Decision::Ask,
        "a grant never covers a redirection into a file"
    );
    let v = p.evaluate_with_grants(alice, &sh("curl x"), &grants);
    assert_eq!(v.decision, Decision::Deny);
    let v = p.evaluate_with_grants(alice, &sh("rm -rf build"), &grants);
    assert_eq!(
        (v.decision, v.rule.as_str()),
        (Decision::Ask, "defaults.rules[2]"),
        "rule forbids grants"
    );
    let v = p.evaluate_with_grants(
        alice,
        &call("edit_file", json!({"path": "src/a.rs", "edits": []})),
        &grants,
    );
    assert_eq!(v.decision, Decision::Allow);
    assert_eq!(v.rule, "session grant: edit_file src/**");
    let v = p.evaluate_with_grants(
        alice,
        &call("edit_file", json!({"path": "lib/a.rs", "edits": []})),
        &grants,
    );
    assert_eq!(v.decision, Decision::Ask);
    let v = p.evaluate_with_grants(alice, &call("read_file", json!({"path": ".env"})), &grants);
    assert_eq!(v.decision, Decision::Deny);
    // Bob's group forbids session grants altogether.
    let bob = p.user("bob").unwrap();
    let v = p.evaluate_with_grants(bob, &call("read_file", json!({"path": "a"})), &grants);
    assert_eq!(v.decision, Decision::Ask);
    assert!(Grant::new("rm_rf", "x").is_err());
    assert!(Grant::new("run_shell", "a | b").is_err());
    assert!(Grant::new("read_file", "").is_err());
}

#[test]
fn unknown_users_are_denied() {
    let p = layered();
    let ghost = User {
        name: "ghost".into(),
        ..p.user("alice").unwrap().clone()
    };
    let v = p.evaluate(&ghost, &call("read_file", json!({"path": "a"})));
    assert_eq!(v.decision, Decision::Deny);
}

#[test]
fn token_lookup_matches_only_the_right_hash() {
    let p = layered();
    let mut h = [0u8; 32];
    for (tok, hash, name) in [
        ("user1", TOKEN_A, "alice"),
        ("user2", TOKEN_B, "bob"),
        ("user3", TOKEN_C, "carol"),
    ] {
        assert_eq!(token_sha256(tok), hash);
        hex::decode_to_slice(hash, &mut h).unwrap();
        assert_eq!(
            p.user_by_token_hash(&h).map(|u| u.name.as_str()),
            Some(name)
        );
    }
    hex::decode_to_slice(token_sha256("user4"), &mut h).unwrap();
    assert!(p.user_by_token_hash(&h).is_none());
}

/// Errors: (replace this, with that) → the message's position and content.
#[test]
fn errors_name_file_line_column_and_what_is_valid() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, &[&str])] = &[
        // Unknown keys anywhere are errors, with the valid keys listed.
        ("session_grants = true", "session_grant = true", "layered.toml:3:1:", &["unknown field `session_grant`", "session_grants"]),
        ("pids = 128\n", "pids = 128\nprivileged = true\n", "layered.toml:16:1:", &["unknown field `privileged`", "memory"]),
        ("reason = \"secrets never leave the workspace\"", "reasons = \"x\"", "layered.toml:22:1:", &["unknown field `reasons`"]),
        // Unknown tools and decisions.
        ("read_file = \"allow\"", "read_files = \"allow\"", "layered.toml:6:1:", &["unknown variant `read_files`", "read_file"]),
        ("list_dir = \"allow\"", "list_dir = \"maybe\"", "layered.toml:7:12:", &["unknown variant `maybe`", "`deny`, `ask`, `allow`"]),
        ("tool = \"*\"", "tool = \"rm_rf\"", "layered.toml:19:8:", &["defaults.rules[0]: unknown tool `rm_rf`", "run_shell"]),
        // Semantic errors point at the value.
        ("path = [\"**/.env\",", "path = [\"**/.env[\",", "layered.toml:20:8:", &["invalid glob `**/.env[`"]),
        ("command = [\"curl *\",", "command = [\"curl | sh\",", "layered.toml:26:11:", &["command pattern `curl | sh`", "one simple command"]),
        ("tool = [\"write_file\", \"edit_file\"]", "tool = [\"write_file\", \"edit_file\"]\ncommand = \"x\"", "layered.toml:42:11:", &["`command` only applies to run_shell"]),
        ("memory = \"256MiB\"", "memory = \"256 parsecs\"", "layered.toml:14:10:", &["unknown size unit"]),
        ("memory = \"256MiB\"", "memory = \"1MiB\"", "layered.toml:14:1:", &["limits.memory", "8 MiB"]),
        ("groups = [\"dev\"]", "groups = [\"devs\"]", "layered.toml:84:11:", &["no group `devs`", "dev, locked"]),
        ("workspace = \"/srv/ws/carol\"", "workspace = \"srv/ws/carol\"", "layered.toml:99:13:", &["absolute path"]),
        ("uid = 1002", "uid = 0", "layered.toml:97:8:", &["must not be 0"]),
        ("token_sha256 = \"5860", "token_sha256 = \"zz60", "layered.toml:98:16:", &["64 hex digits", "airlock admin token --user carol"]),
        ("name = \"carol\"", "name = \"alice\"", "layered.toml:97:8:", &["user `alice` is defined twice"]),
        ("uid = 1001", "uid = 1001\nlimits = { pids = 64 }", "layered.toml:95:1:", &["duplicate key `limits`"]),
    ];
    for (from, to, at, wants) in cases {
        assert!(LAYERED.contains(from), "fixture lacks {from:?}");
        let bad = LAYERED.replacen(from, to, 1);
        let e = match Policy::parse("layered.toml", &bad) {
            Ok(_) => panic!("{to:?} should be rejected"),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with(at), "{to:?}: want {at}, got:\n{e}");
        for w in *wants {
            assert!(e.contains(w), "{to:?}: want {w:?} in:\n{e}");
        }
    }
}

#[test]
fn combined_limits_are_validated_per_user() {
    // runsc needs pids >= 128: a group that picks runsc with a user who lowers pids fails.
    let bad = LAYERED.replace("limits = { pids = 256 }", "limits = { pids = 64 }");
    let e = Policy::parse("layered.toml", &bad).unwrap_err().to_string();
    assert!(
        e.contains("user `bob`") && e.contains("too small for runsc"),
        "{e}"
    );
    let d = Policy::parse("layered.toml", &bad).unwrap_err();
    assert_eq!(d.diagnostics().len(), 1);
    assert_eq!(d.diagnostics()[0].line, 87); // bob's name
}

#[test]
fn several_errors_are_reported_together() {
    let bad = LAYERED
        .replacen("tool = \"*\"", "tool = \"nope\"", 1)
        .replacen("uid = 1002", "uid = 0", 1);
    let e = Policy::parse("layered.toml", &bad).unwrap_err();
    assert_eq!(e.diagnostics().len(), 2, "{e}");
}

const WITH_TESTS: &str = r#"
[defaults.tools]
read_file = "allow"
run_shell = "ask"

[[defaults.rules]]
tool = "run_shell"
command = "ls *"
decision = "allow"

[[users]]
name = "alice"
token_sha256 = "0a041b9462caa4a31bac3567e0b6e6fd9100787db2ab433d96f6d178cabfce90"
workspace = "/srv/ws/alice"
uid = 1000
gid = 1000

[[test]]
name = "listing is fine"
user = "alice"
tool = "run_shell"
args = { command = "ls -la" }
expect = "allow"
rule = "defaults.rules[0]"

[[test]]
user = "alice"
tool = "run_shell"
args = { command = "ls; curl x" }
expect = "ask"

[[test]]
user = "alice"
tool = "read_file"
args = { path = "README.md" }
expect = "allow"
"#;

#[test]
fn inline_tests_run_at_load_and_a_failing_one_rejects_the_file() {
    let p = Policy::parse("t.toml", WITH_TESTS).unwrap();
    assert_eq!(p.tests_passed, 3);
    assert!(p.summary().contains("3 inline test(s) passed"));
    let bad = WITH_TESTS.replace("expect = \"ask\"", "expect = \"allow\"");
    let e = Policy::parse("t.toml", &bad).unwrap_err().to_string();
    assert!(e.starts_with("t.toml:26:1: test[1] failed:"), "{e}");
    assert!(
        e.contains("expected allow, got ask by `defaults.tools.run_shell`"),
        "{e}"
    );
    let bad = WITH_TESTS.replace(
        "rule = \"defaults.rules[0]\"",
        "rule = \"defaults.rules[1]\"",
    );
    let e = Policy::parse("t.toml", &bad).unwrap_err().to_string();
    assert!(
        e.contains("test `listing is fine` failed") && e.contains("by `defaults.rules[1]`"),
        "{e}"
    );
    let bad = WITH_TESTS.replace(
        "user = \"alice\"\ntool = \"read_file\"",
        "user = \"mallory\"\ntool = \"read_file\"",
    );
    let e = Policy::parse("t.toml", &bad).unwrap_err().to_string();
    assert!(e.contains("no user `mallory`; users: alice"), "{e}");
    let bad = WITH_TESTS.replace(
        "args = { path = \"README.md\" }",
        "args = { file = \"README.md\" }",
    );
    let e = Policy::parse("t.toml", &bad).unwrap_err().to_string();
    assert!(e.contains("invalid arguments for `read_file`"), "{e}");
}

#[test]
fn shipped_policies_are_valid() {
    for (name, text) in [
        (
            "policies/default.toml",
            include_str!("../../../policies/default.toml"),
        ),
        (
            "policies/strict.toml",
            include_str!("../../../policies/strict.toml"),
        ),
        (
            "policies/team.toml",
            include_str!("../../../policies/team.toml"),
        ),
    ] {
        let p = Policy::parse(name, text).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.tests_passed > 0, "{name} should carry inline tests");
    }
    let p = Policy::parse("d", include_str!("../../../policies/default.toml")).unwrap();
    assert_eq!(p.defaults().protected, default_protected());
    assert_eq!(
        p.defaults().profile.memory_bytes,
        Profile::default().memory_bytes
    );
}

#[test]
fn strict_example_asks_for_everything_under_runsc() {
    let p = Policy::parse("strict", include_str!("../../../policies/strict.toml")).unwrap();
    let eff = p.defaults();
    let prof = &eff.profile;
    assert_eq!(prof.runtime, Runtime::Runsc);
    assert!(prof.pids >= crate::limits::RUNSC_MIN_PIDS);
    assert!(prof.memory_bytes <= 256 << 20);
    assert!(!eff.session_grants);
    for tool in ToolName::ALL {
        let args = match tool {
            ToolName::RunShell => json!({"command": "ls"}),
            ToolName::EditFile => json!({"path": "a", "edits": []}),
            ToolName::WriteFile => json!({"path": "a", "content": ""}),
            ToolName::Search => json!({"pattern": "x"}),
            _ => json!({"path": "a"}),
        };
        let v = evaluate(eff, &call(tool.as_str(), args), &[]);
        assert_eq!(v.decision, Decision::Ask, "{}", tool.as_str());
    }
}

#[test]
fn schema_file_is_up_to_date() {
    let committed = include_str!("../../../policies/policy.schema.json");
    let now = json_schema();
    assert!(
        committed == now,
        "policies/policy.schema.json is stale: run `cargo run -p airlock -- policy schema > policies/policy.schema.json`"
    );
    let v: serde_json::Value = serde_json::from_str(&now).unwrap();
    assert_eq!(v["additionalProperties"], json!(false));
    assert!(v["$defs"]["Rule"]["properties"]["command"].is_object());
}
