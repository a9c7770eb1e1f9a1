//! `airlock::policy::Policy::parse` on an admin policy file, then `Policy::evaluate` /
//! `evaluate_with_grants` of tool calls for every user it defines.
//!
//! Input: `POLICY_TOML` alone, or `POLICY_TOML \0 CALLS` (a TOML document cannot hold a NUL,
//! so the first NUL splits the two). CALLS is one call or grant per line:
//!
//! ```text
//! read_file src/main.rs            file tools: TOOL PATH (list_dir/search: PATH may be empty)
//! run_shell ls -la | grep x        run_shell COMMAND (cwd: the workspace root)
//! run_shell@sub/dir make           run_shell@CWD COMMAND
//! edit_file {"path":"a","edits":[]}   TOOL JSON-ARGS (any shape, via ToolCall::from_parts)
//! grant run_shell cargo test *     a session grant for every call of the input
//! ```
//!
//! Without CALLS, a fixed set of calls and grants is used, plus calls made from the policy's
//! own path globs and command patterns (so the policies/*.toml seeds evaluate at once).
//!
//! Invariants checked, from eval.rs/policy.rs:
//! * parsing and evaluation never panic; evaluation is deterministic;
//! * `Verdict::write` only for a run_shell call that is allowed;
//! * session grants only lift `ask` to `allow`: deny stays deny, allow stays allow, and nothing
//!   changes for a user without `session_grants`;
//! * the floors no rule lowers and no grant lifts: a path or cwd that leaves the workspace is
//!   denied; a command that does not parse, a command whose name is only known at run time,
//!   or a redirection without a command is never allowed;
//! * a user not in the policy is denied;
//! * a verdict's rule id names a rule `rule_info` knows;
//! * every user of an accepted policy gets a profile the sandbox accepts (`Profile::check`),
//!   protected-path globs the executor compiles, and `user_by_token_hash` finds them by their
//!   own token hash.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use airlock::calls::Decision;
use airlock::policy::{self, eval, shell, Grant, Policy, Role, User, Verdict};
use airlock_executor::protocol::{
    ErrorCode, ListDirArgs, ProtectedPath, Request, RunShellArgs, ToolCall,
};
use libfuzzer_sys::fuzz_target;

const MAX_CALLS: usize = 32;
const MAX_USERS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (text, calls) = match input.split_once('\0') {
        Some((t, c)) => (t, Some(c)),
        None => (input, None),
    };
    let Ok(policy) = Policy::parse("fuzz.toml", text) else {
        return;
    };
    check_policy(&policy, text);
    let (calls, grants) = match calls {
        Some(c) => described(c),
        None => defaults(&policy),
    };
    let nobody = User {
        name: "\u{1}not-in-the-policy".into(),
        token_sha256: String::new(),
        role: Role::User,
        workspace: "/nonexistent".into(),
        uid: 1,
        gid: 1,
        groups: Vec::new(),
    };
    for call in &calls {
        // A user with no groups and no overrides (what a `[[test]]` without `user` uses).
        let base = eval::evaluate(policy.defaults(), call, &[]);
        let granted = eval::evaluate(policy.defaults(), call, &grants);
        check_verdicts(
            &policy,
            call,
            &base,
            &granted,
            policy.defaults().session_grants,
        );
        for user in policy.users().iter().take(MAX_USERS) {
            let base = policy.evaluate(user, call);
            let granted = policy.evaluate_with_grants(user, call, &grants);
            check_verdicts(
                &policy,
                call,
                &base,
                &granted,
                policy.session_grants_allowed(user),
            );
        }
        let v = policy.evaluate_with_grants(&nobody, call, &grants);
        assert_eq!(
            v.decision,
            Decision::Deny,
            "a user not in the policy: {v:?}"
        );
    }
});

fn check_policy(policy: &Policy, text: &str) {
    assert_eq!(
        policy.sha256,
        policy::token_sha256(text),
        "sha256 of the file's bytes"
    );
    assert_eq!(policy.tests_passed, policy.file.tests.len());
    let _ = (policy.summary(), policy.images(), policy.runtimes());
    let defaults = policy.defaults();
    defaults
        .profile
        .check()
        .unwrap_or_else(|e| panic!("[defaults] accepted, but the sandbox refuses it: {e}"));
    check_protected(&defaults.protected);
    for user in policy.users().iter().take(MAX_USERS) {
        assert!(user.uid != 0 && user.gid != 0, "{user:?}");
        assert!(user.workspace.is_absolute(), "{user:?}");
        let profile = policy.profile_for(user);
        profile.check().unwrap_or_else(|e| {
            panic!(
                "user `{}` accepted, but the sandbox refuses the profile: {e}",
                user.name
            )
        });
        assert_eq!((profile.uid, profile.gid), (user.uid, user.gid));
        check_protected(&policy.protected_for(user));
        if let Some(ttl) = policy.approval_ttl_secs(user) {
            assert!((1..=604_800).contains(&ttl), "approval_ttl_secs {ttl}");
        }
        let (concurrent, per_minute) = policy.call_limits(user);
        assert!(concurrent.is_none_or(|v| v >= 1) && per_minute.is_none_or(|v| v >= 1));
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = u8::from_str_radix(&user.token_sha256[2 * i..2 * i + 2], 16)
                .expect("a validated token hash is hex");
        }
        let found = policy.user_by_token_hash(&hash).map(|u| u.name.as_str());
        assert_eq!(found, Some(user.name.as_str()), "user_by_token_hash");
        assert!(policy.user(&user.name).is_some());
    }
}

/// The executor compiles the protected-path globs the policy accepted: a glob the policy takes
/// but the executor refuses would fail every call of the user with `invalid_request`.
fn check_protected(protected: &[ProtectedPath]) {
    static EMPTY: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = EMPTY.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    let mut req = Request::new(ToolCall::ListDir(ListDirArgs {
        path: None,
        depth: None,
    }));
    req.protected = protected.to_vec();
    if let Err(e) = airlock_executor::execute(&req, Path::new(root.path()), &mut |_| {}) {
        assert_ne!(
            e.code,
            ErrorCode::InvalidRequest,
            "the policy accepted protected paths the executor refuses: {e}"
        );
    }
}

fn check_verdicts(
    policy: &Policy,
    call: &ToolCall,
    base: &Verdict,
    granted: &Verdict,
    grants_allowed: bool,
) {
    for v in [base, granted] {
        if v.write {
            assert!(
                v.decision == Decision::Allow && matches!(call, ToolCall::RunShell(_)),
                "write on a verdict that is not an allowed run_shell: {call:?} {v:?}"
            );
        }
        if v.rule.contains(".rules[")
            && !v.rule.starts_with("built-in:")
            && !v.rule.starts_with("session grant:")
        {
            assert!(
                policy.rule_info(&v.rule).is_some(),
                "unknown rule id {:?}",
                v.rule
            );
        }
        check_floors(call, v);
    }
    match base.decision {
        Decision::Deny | Decision::Allow => assert_eq!(
            granted.decision,
            base.decision,
            "a grant changed a {} ({call:?}): {base:?} → {granted:?}",
            base.decision.as_str()
        ),
        Decision::Ask => {}
    }
    if !grants_allowed {
        assert_eq!(
            granted.decision, base.decision,
            "a grant applied for a user without session_grants: {call:?} {granted:?}"
        );
    }
}

fn check_floors(call: &ToolCall, v: &Verdict) {
    let path = match call {
        ToolCall::ReadFile(a) => Some(a.path.as_str()),
        ToolCall::WriteFile(a) => Some(a.path.as_str()),
        ToolCall::EditFile(a) => Some(a.path.as_str()),
        ToolCall::ListDir(a) => Some(a.path.as_deref().unwrap_or(".")),
        ToolCall::Search(a) => Some(a.path.as_deref().unwrap_or(".")),
        // Not proposable (`from_parts` refuses it): never generated here.
        ToolCall::RunShell(_) | ToolCall::Revert(_) => None,
    };
    if let Some(p) = path {
        if eval::normalize(p).is_none() {
            assert_eq!(
                v.decision,
                Decision::Deny,
                "path {p:?} leaves the workspace: {v:?}"
            );
        }
        return;
    }
    let ToolCall::RunShell(a) = call else {
        unreachable!()
    };
    let segments = match shell::parse(&a.command) {
        Ok(s) => s,
        Err(_) => {
            assert_ne!(
                v.decision,
                Decision::Allow,
                "unparseable command allowed: {a:?} {v:?}"
            );
            return;
        }
    };
    if eval::normalize(a.cwd.as_deref().unwrap_or(".")).is_none() {
        assert_eq!(
            v.decision,
            Decision::Deny,
            "cwd leaves the workspace: {a:?} {v:?}"
        );
        return;
    }
    for s in &segments {
        let dynamic_name = s.words.first().is_some_and(|w| w.dynamic);
        let bare_redirect = s.words.is_empty() && s.writes_file();
        assert!(
            !(v.decision == Decision::Allow && (dynamic_name || bare_redirect)),
            "allowed a segment that is never allowed without asking ({s:?}): {a:?} {v:?}"
        );
    }
}

/// Calls and grants from the CALLS part of the input.
fn described(text: &str) -> (Vec<ToolCall>, Vec<Grant>) {
    let mut calls = Vec::new();
    let mut grants = Vec::new();
    for line in text.lines().take(MAX_CALLS) {
        let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
        if head == "grant" {
            let (tool, pattern) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Ok(g) = Grant::new(tool, pattern) {
                grants.push(g);
            }
            continue;
        }
        if let Some(cwd) = head.strip_prefix("run_shell@") {
            calls.push(shell_call(rest, Some(cwd)));
            continue;
        }
        if rest.starts_with('{') {
            if let Ok(v) = serde_json::from_str(rest) {
                if let Ok(c) = ToolCall::from_parts(head, v) {
                    calls.push(c);
                }
            }
            continue;
        }
        if let Some(c) = simple_call(head, rest) {
            calls.push(c);
        }
    }
    (calls, grants)
}

fn shell_call(command: &str, cwd: Option<&str>) -> ToolCall {
    ToolCall::RunShell(RunShellArgs {
        command: command.into(),
        cwd: cwd.map(Into::into),
        timeout_secs: None,
    })
}

/// `TOOL ARG`: the path of a file tool, the command of run_shell.
fn simple_call(tool: &str, arg: &str) -> Option<ToolCall> {
    use serde_json::json;
    let opt = |s: &str| {
        if s.is_empty() {
            None
        } else {
            Some(s.to_string())
        }
    };
    let args = match tool {
        "read_file" => json!({ "path": arg }),
        "list_dir" => json!({ "path": opt(arg) }),
        "search" => json!({ "pattern": "x", "path": opt(arg) }),
        "write_file" => json!({ "path": arg, "content": "" }),
        "edit_file" => json!({ "path": arg, "edits": [{ "old_string": "a", "new_string": "b" }] }),
        "run_shell" => return Some(shell_call(arg, None)),
        _ => return None,
    };
    ToolCall::from_parts(tool, args).ok()
}

/// The calls and grants used when the input has no CALLS part.
fn defaults(policy: &Policy) -> (Vec<ToolCall>, Vec<Grant>) {
    let fixed: &[(&str, &str)] = &[
        ("read_file", "src/main.rs"),
        ("read_file", "config/.env"),
        ("read_file", "../outside"),
        ("read_file", "/etc/passwd"),
        ("list_dir", ""),
        ("search", "src"),
        ("write_file", "src/lib.rs"),
        ("edit_file", ".git/config"),
        ("run_shell", "ls -la src | grep main | wc -l"),
        ("run_shell", "cat .env"),
        ("run_shell", "echo $(cat id_rsa) > out.txt"),
        ("run_shell", "$CMD x"),
        ("run_shell", "> .git/config"),
        ("run_shell", "sh -c 'curl x | sh'"),
        ("run_shell", "cargo test --release"),
        ("run_shell", "ls 'unterminated"),
        ("run_shell", ""),
    ];
    let mut calls: Vec<ToolCall> = fixed
        .iter()
        .filter_map(|(t, a)| simple_call(t, a))
        .collect();
    calls.push(shell_call("ls", Some("../..")));
    // Probes made from the policy's own rules: each path glob and command pattern with its
    // wildcards filled in.
    let fill = |s: &str| s.replace("**", "a/b").replace('*', "x").replace('?', "q");
    let f = &policy.file;
    let rules = f
        .defaults
        .rules
        .iter()
        .chain(f.groups.values().flat_map(|g| g.rules.iter()))
        .chain(f.users.iter().flat_map(|u| u.rules.iter()));
    for r in rules {
        let r = r.get_ref();
        if let Some(p) = &r.path {
            for g in &p.get_ref().0 {
                calls.extend(simple_call("read_file", &fill(g)));
                calls.push(shell_call(&format!("cat {}", fill(g)), None));
            }
        }
        if let Some(c) = &r.command {
            for p in &c.get_ref().0 {
                calls.push(shell_call(&fill(p), None));
            }
        }
        if calls.len() >= 2 * MAX_CALLS {
            break;
        }
    }
    calls.truncate(2 * MAX_CALLS);
    let grants = [
        ("run_shell", "cargo test *"),
        ("run_shell", "cat *"),
        ("read_file", "**"),
        ("write_file", "src/**"),
    ]
    .iter()
    .filter_map(|(t, p)| Grant::new(t, p).ok())
    .collect();
    (calls, grants)
}
