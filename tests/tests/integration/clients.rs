//! The clients end to end: the real `airlock serve` binary with its own `redis-server`, real
//! Docker containers, and a scripted model (`airlock_tests::llm_mock`).
//!
//! - `airlock chat` runs in a tmux pane (a real terminal): a turn whose edit is approved, whose
//!   command is denied with a reason, whose next command is approved for the session (and then
//!   runs without asking), with hostile escape sequences in the model's text; the server is
//!   restarted and the chat resumes without losing or repeating events; Ctrl-C cancels a turn.
//!   The plain subcommands (`sessions list`, `calls list|approve|deny`, `audit tail`) too.
//! - The web UI in headless Chromium driven over WebDriver (chromedriver + fantoccini): a wrong
//!   token is refused; sign in → new session → message → the diff → approve → the result; a
//!   file whose name and content carry `<img src=x onerror=…>` and ANSI escapes renders as
//!   inert text; the UI reconnects after a server restart without repeating anything.
//!
//! Nothing is skipped: without tmux, chromium or chromedriver the tests panic and say to run
//! scripts/setup-host.sh. With `AIRLOCK_SCREENSHOTS=DIR` they save the screenshots used in the
//! README (docs/screenshots).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use airlock_tests::llm_mock::{answer, tool_calls, MockLlm, Stream};
use airlock_tests::server::{airlock_binary, Api, Fixture, ServerOptions, ServerProcess};
use airlock_tests::wait_until;
use fantoccini::{Client as Browser, Locator};
use serde_json::{json, Value};

/// Generous bound for anything involving a container, a turn or a browser (2 shared cores).
const WAIT: Duration = Duration::from_secs(90);
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Panics (never skips) when a program the tests need is missing.
fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is not installed: these tests need tmux, chromium and chromium-driver — run scripts/setup-host.sh"
    );
}

/// A fixture whose policy allows session grants, whose config has an `[llm]` pointing at the
/// mock and allows the UI's own origin (`http://127.0.0.1:PORT`) for WebSockets.
async fn fixture(llm: &MockLlm) -> Fixture {
    let fx = Fixture::new(ServerOptions::default()).await;
    let policy = std::fs::read_to_string(&fx.policy_path).unwrap();
    std::fs::write(
        &fx.policy_path,
        format!("[defaults]\nsession_grants = true\n\n{policy}"),
    )
    .unwrap();
    let key = format!("sk-test-{}", airlock::auth::new_token());
    std::fs::write(fx.dir().join("llm.key"), format!("{key}\n")).unwrap();
    let mut cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    let allowed = format!(
        "allowed_origins = [\"{}\"]",
        airlock_tests::server::ALLOWED_ORIGIN
    );
    assert!(
        cfg.contains(&allowed),
        "the fixture's config changed: {cfg}"
    );
    cfg = cfg.replace(
        &allowed,
        &format!(
            "allowed_origins = [\"{}\", \"http://127.0.0.1:{}\"]",
            airlock_tests::server::ALLOWED_ORIGIN,
            fx.port
        ),
    );
    cfg += &format!(
        "\n[llm]\nbase_url = \"{}\"\nmodel = \"mock-model\"\napi_key_file = \"llm.key\"\n\
         timeout_secs = 60\nmax_retries = 1\nretry_base_ms = 100\nmax_steps = 10\n",
        llm.base_url
    );
    std::fs::write(&fx.config_path, cfg).unwrap();
    fx
}

/// Polls the session's history until an event matches.
async fn wait_event(api: &Api, token: &str, sid: &str, what: &str, pred: impl Fn(&Value) -> bool) {
    wait_until(&format!("a {what} event"), WAIT, || async {
        let evs = api.history(token, sid).await;
        match evs.iter().any(&pred) {
            true => Ok(()),
            false => Err(format!("events: {:#}", Value::Array(evs))),
        }
    })
    .await
}

fn screenshots_dir() -> Option<PathBuf> {
    std::env::var_os("AIRLOCK_SCREENSHOTS").map(|d| {
        let p = PathBuf::from(d);
        let p = if p.is_absolute() {
            p
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
        };
        std::fs::create_dir_all(&p).expect("create the screenshot directory");
        p
    })
}

// ---- tmux -----------------------------------------------------------------------------------

/// A tmux server of our own (its own socket) with one pane running a command.
struct Tmux {
    socket: String,
    _conf: tempfile::NamedTempFile,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        require("tmux");
        let socket = format!(
            "airlock-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let conf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            conf.path(),
            "set -g history-limit 50000\nset -g default-terminal xterm-256color\nset -g set-titles off\n",
        )
        .unwrap();
        let t = Tmux {
            socket,
            _conf: conf,
        };
        let conf_path = t._conf.path().to_str().unwrap().to_string();
        t.run(&[
            "-f",
            &conf_path,
            "new-session",
            "-d",
            "-s",
            "chat",
            "-x",
            "150",
            "-y",
            "58",
            command,
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` and Enter.
    fn line(&self, text: &str) {
        self.run(&["send-keys", "-t", "chat", "-l", text]);
        self.run(&["send-keys", "-t", "chat", "Enter"]);
    }

    fn key(&self, key: &str) {
        self.run(&["send-keys", "-t", "chat", key]);
    }

    /// The whole pane (history included) as plain text, wrapped lines joined.
    fn text(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "chat"])
    }

    /// The visible screen with its colours (SGR sequences), for the screenshot.
    fn screen_with_colours(&self) -> String {
        self.run(&["capture-pane", "-p", "-e", "-J", "-t", "chat"])
    }

    /// Waits until the pane shows every one of `needles` (at least `times` times each).
    async fn wait_for(&self, needles: &[&str], times: usize) -> String {
        let what = format!("the terminal showing {needles:?} (x{times})");
        wait_until(&what, WAIT, || async {
            let t = self.text();
            match needles.iter().all(|n| t.matches(n).count() >= times) {
                true => Ok(t),
                false => Err(format!("it shows:\n{t}")),
            }
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// Runs an `airlock` subcommand with alice's token; returns (exit code, stdout + stderr).
fn cli(token: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(airlock_binary())
        .args(args)
        .env("AIRLOCK_TOKEN", token)
        .env("NO_COLOR", "1")
        .env_remove("AIRLOCK_SERVER")
        .stdin(Stdio::null())
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
async fn terminal_chat_approves_an_edit_denies_a_command_resumes_and_cancels() {
    require("tmux");
    let hostile = "Done. \u{1b}[2J\u{1b}]0;pwned-title\u{7}\u{1b}[31mnot red\u{1b}[0m <b>plain</b>";
    let llm = MockLlm::start(vec![
        Stream::new()
            .text("Let me change the greeting.")
            .tool_call(
                0,
                "call_edit",
                "edit_file",
                &json!({"path": "notes.txt", "edits": [{"old_string": "hello", "new_string": "goodbye"}]})
                    .to_string(),
                6,
            )
            .finish("tool_calls")
            .usage(100, 10)
            .done(),
        tool_calls(&[("call_rm", "run_shell", json!({"command": "rm -rf build"}))]),
        tool_calls(&[(
            "call_echo",
            "run_shell",
            json!({"command": "echo live-output-line"}),
        )]),
        tool_calls(&[(
            "call_echo2",
            "run_shell",
            json!({"command": "echo live-output-line"}),
        )]),
        tool_calls(&[("call_sleep", "run_shell", json!({"command": "sleep 3"}))]),
        answer(hostile),
        // The second turn: text, then the model hangs until the user presses Ctrl-C.
        Stream::new().text("Thinking it over").hang(),
    ])
    .await;
    let fx = fixture(&llm).await;
    fx.alice.workspace.write("notes.txt", "hello world\n");
    let mut server = ServerProcess::start(&fx, 0).await;
    let api = server.api.clone();
    let token = fx.alice.token.clone();

    let bin = airlock_binary();
    let tmux = Tmux::start(&format!(
        "env AIRLOCK_TOKEN={token} '{}' chat --server {}; echo \"[chat exited $?]\"; sleep 600",
        bin.display(),
        api.base
    ));
    let screen = tmux.wait_for(&["new session ", "you>"], 1).await;
    let sid = screen
        .split("new session ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the session id in the banner")
        .to_string();
    assert!(screen.contains("Ctrl-C cancels a running turn"), "{screen}");

    // The edit: its diff, then a question; nothing is written before the answer.
    tmux.line("Please change hello to goodbye in notes.txt");
    let t = tmux
        .wait_for(
            &[
                "Let me change the greeting.",
                "-hello world",
                "+goodbye world",
                "approve edit_file notes.txt",
                "[y]es / [n]o / [s]ession / [e]dit / [v]iew >",
            ],
            1,
        )
        .await;
    assert!(t.contains("policy: ask"), "{t}");
    assert_eq!(
        fx.alice.workspace.read("notes.txt").as_deref(),
        Some("hello world\n")
    );
    tmux.line("y");

    // The command: shown whole; denied with a reason.
    tmux.wait_for(
        &[
            "changed notes.txt",
            "$ rm -rf build",
            "approve run_shell rm -rf build",
        ],
        1,
    )
    .await;
    tmux.line("n");
    tmux.wait_for(&["reason for the agent (Enter for none) >"], 1)
        .await;
    tmux.line("not now, thanks");
    tmux.wait_for(&["denied", "reason: not now, thanks"], 1)
        .await;

    // Approved for the rest of the session: the first runs with live output, the second
    // runs without asking.
    tmux.wait_for(&["approve run_shell echo live-output-line"], 1)
        .await;
    tmux.line("s");
    tmux.wait_for(
        &[
            "allowed for the rest of this session: run_shell echo live-output-line",
            "session grant: run_shell echo live-output-line",
            "approve run_shell sleep 3",
        ],
        1,
    )
    .await;
    // A running call shows a spinner with what runs.
    tmux.line("y");
    tmux.wait_for(&["running run_shell sleep 3 · "], 1).await;
    let t = tmux.wait_for(&["turn completed"], 1).await;
    assert_eq!(
        t.matches("│ live-output-line").count(),
        2,
        "both commands' output is shown once each:\n{t}"
    );
    assert_eq!(
        t.matches("approve run_shell echo live-output-line").count(),
        1,
        "the granted command is not asked about again:\n{t}"
    );
    // The model's escape sequences are shown, not obeyed.
    assert!(
        t.contains("Done. ^[[2J^[]0;pwned-title^G^[[31mnot red^[[0m <b>plain</b>"),
        "{t}"
    );
    assert!(
        t.contains("Let me change the greeting."),
        "ESC[2J did not clear the screen: {t}"
    );
    let title = tmux.run(&["display-message", "-p", "-t", "chat", "#{pane_title}"]);
    assert!(!title.contains("pwned"), "the pane title was set: {title}");

    // The server agrees.
    let calls = api
        .get(&format!("/v1/sessions/{sid}/tool-calls"), &token)
        .await;
    calls.expect(200);
    let calls = calls.json["calls"].as_array().unwrap().clone();
    let summary: Vec<(String, String)> = calls
        .iter()
        .map(|c| {
            (
                c["tool"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("edit_file".into(), "succeeded".into()),
            ("run_shell".into(), "denied".into()),
            ("run_shell".into(), "succeeded".into()),
            ("run_shell".into(), "succeeded".into()),
            ("run_shell".into(), "succeeded".into()),
        ],
        "{calls:#?}"
    );
    assert_eq!(calls[1]["reason"], "not now, thanks");
    assert_eq!(
        calls[3]["rule"],
        "session grant: run_shell echo live-output-line"
    );
    assert_eq!(
        fx.alice.workspace.read("notes.txt").as_deref(),
        Some("goodbye world\n")
    );
    let reqs = llm.requests();
    assert!(
        reqs[2].tool_result("call_rm").contains("not now, thanks"),
        "the denial reason goes back to the model: {}",
        reqs[2].tool_result("call_rm")
    );

    // The server restarts; the chat reconnects and resumes after the last event it showed.
    server.terminate().await;
    tmux.wait_for(&["connection lost"], 1).await;
    let server = ServerProcess::start(&fx, 1).await;
    tmux.wait_for(&["reconnected; resuming after event"], 1)
        .await;

    // Ctrl-C cancels the running turn.
    tmux.wait_for(&["you>"], 1).await;
    tmux.line("Think it over");
    tmux.wait_for(&["Thinking it over"], 1).await;
    tmux.key("C-c");
    let t = tmux
        .wait_for(&["cancelling the turn", "turn cancelled"], 1)
        .await;
    wait_event(&api, &token, &sid, "turn_finished cancelled", |e| {
        e["type"] == "turn_finished" && e["data"]["status"] == "cancelled"
    })
    .await;
    // Nothing was lost or shown twice across the reconnect.
    for once in [
        "Let me change the greeting.",
        "+goodbye world",
        "turn completed",
        "reason: not now, thanks",
        "Thinking it over",
    ] {
        assert_eq!(t.matches(once).count(), 1, "`{once}` is shown once:\n{t}");
    }
    if let Some(dir) = screenshots_dir() {
        terminal_screenshot(&tmux, &dir.join("terminal-chat.png"));
    }
    tmux.line("/quit");
    tmux.wait_for(&["[chat exited 0]"], 1).await;

    // ---- the plain subcommands ----
    let server_url = api.base.as_str();
    let (code, out) = cli(&token, &["sessions", "list", "--server", server_url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&sid), "{out}");

    // A call proposed over the API (not by the model) waits; the CLI lists it, shows what it
    // approves, refuses a stale hash, approves; another is denied with a reason.
    let call = api
        .propose_ok(
            &token,
            &sid,
            "write_file",
            json!({"path": "cli.txt", "content": "from the cli\n"}),
        )
        .await;
    let call_id = call["id"].as_str().unwrap();
    let (code, out) = cli(&token, &["calls", "list", "--server", server_url]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(call_id) && out.contains("awaiting_approval") && out.contains("cli.txt"),
        "{out}"
    );
    let (code, out) = cli(
        &token,
        &[
            "calls", "approve", call_id, "--sha256", "0000", "--server", server_url,
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not what you reviewed"), "{out}");
    let (code, out) = cli(
        &token,
        &["calls", "approve", call_id, "--server", server_url],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("+from the cli")
            && out.contains(call["args_sha256"].as_str().unwrap())
            && out.contains("approved"),
        "{out}"
    );
    api.wait_status(&token, call_id, &["succeeded"], WAIT).await;
    assert_eq!(
        fx.alice.workspace.read("cli.txt").as_deref(),
        Some("from the cli\n")
    );
    // Undo it from the terminal: the revert's diff is shown and approved, bound to it; the
    // file the write created is removed; a second revert is refused.
    let (code, out) = cli(
        &token,
        &[
            "calls",
            "revert",
            call_id,
            "--approve",
            "--server",
            server_url,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("removes cli.txt")
            && out.contains("-from the cli")
            && out.contains("approved"),
        "{out}"
    );
    airlock_tests::wait_until("the revert removes cli.txt", WAIT, || async {
        if fx.alice.workspace.exists("cli.txt") {
            Err("cli.txt is still there".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    let (code, out) = cli(
        &token,
        &["calls", "revert", call_id, "--server", server_url],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("reverted already"), "{out}");
    let call2 = api
        .propose_ok(&token, &sid, "run_shell", json!({"command": "make deploy"}))
        .await;
    let id2 = call2["id"].as_str().unwrap();
    let (code, out) = cli(
        &token,
        &[
            "calls",
            "deny",
            id2,
            "--reason",
            "no deploys today",
            "--server",
            server_url,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("$ make deploy") && out.contains("denied"),
        "{out}"
    );
    let c2 = api.get_call(&token, id2).await;
    assert_eq!(c2["status"], "denied");
    assert_eq!(c2["reason"], "no deploys today");
    let (code, out) = cli(
        &token,
        &[
            "calls",
            "list",
            "--all",
            "--session",
            &sid,
            "--server",
            server_url,
        ],
    );
    assert_eq!(code, 0, "{out}");
    // Five of the model's and the API's calls, and the revert.
    assert_eq!(out.matches("succeeded").count(), 6, "{out}");
    assert_eq!(out.matches("denied").count(), 2, "{out}");
    assert!(out.contains("revert      succeeded"), "{out}");

    // The audit log: admins only.
    let (code, out) = cli(&token, &["audit", "tail", "--server", server_url]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("forbidden"), "{out}");
    let (code, out) = cli(
        &fx.admin.token,
        &["audit", "tail", "-n", "500", "--server", server_url],
    );
    assert_eq!(code, 0, "{out}");
    let approved = out
        .lines()
        .find(|l| l.contains(call_id) && l.contains(" approved "))
        .unwrap_or_else(|| panic!("the approval of {call_id} is not in the audit log: {out}"));
    assert!(
        approved.contains("alice") && approved.contains("write_file"),
        "{approved}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(id2) && l.contains("denied") && l.contains("no deploys today")),
        "{out}"
    );
    // The routes the clients added: owner only, admins only, tokens required.
    let path = format!("/v1/sessions/{sid}/tool-calls");
    api.call("GET", &path, None, None).await.expect(401);
    api.get(&path, &fx.bob.token).await.expect(404);
    api.call("GET", "/v1/audit", None, None).await.expect(401);
    let r = api.get("/v1/audit", &token).await;
    r.expect(403);
    assert_eq!(r.error_code(), "forbidden");
    let r = api.get("/v1/audit?limit=2", &fx.admin.token).await;
    r.expect(200);
    let first = r.json["entries"].as_array().unwrap().clone();
    assert_eq!(first.len(), 2);
    let r = api
        .get(
            &format!(
                "/v1/audit?limit=1&after={}",
                r.json["last_id"].as_str().unwrap()
            ),
            &fx.admin.token,
        )
        .await;
    r.expect(200);
    assert_ne!(
        r.json["entries"][0]["id"], first[1]["id"],
        "pages do not overlap"
    );
    api.get("/v1/audit?after=nonsense", &fx.admin.token)
        .await
        .expect(400);
    // A wrong token is refused with a hint.
    let (code, out) = cli("al_wrong", &["sessions", "list", "--server", server_url]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("unauthorized") && out.contains("AIRLOCK_TOKEN"),
        "{out}"
    );

    drop(tmux);
    let mut server = server;
    server.terminate().await;
    fx.assert_no_containers(None, "after the terminal test")
        .await;
}

/// Renders the pane's screen (with colours) as HTML and photographs it with headless Chromium.
fn terminal_screenshot(tmux: &Tmux, out: &Path) {
    require("chromium");
    let screen = tmux.screen_with_colours();
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><style>body{margin:0;background:#1e1f22}\
         pre{margin:0;padding:14px 16px;color:#d7dae0;font:13px/1.35 'DejaVu Sans Mono',monospace}\
         .b{font-weight:bold}.d{opacity:.6}.r{color:#f07178}.g{color:#a5d6a7}.y{color:#ffcb6b}\
         .bl{color:#82aaff}.m{color:#c792ea}.c{color:#89ddff}</style><pre>",
    );
    html += &ansi_to_html(&screen);
    html += "</pre>";
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("terminal.html");
    std::fs::write(&page, html).unwrap();
    let status = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,1050",
            &format!("--user-data-dir={}", dir.path().join("profile").display()),
            &format!("--screenshot={}", out.display()),
            &format!("file://{}", page.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run chromium");
    assert!(status.success(), "chromium --screenshot failed");
}

/// Enough of SGR for tmux's capture: bold, dim, the 8 colours, resets.
fn ansi_to_html(s: &str) -> String {
    let esc = |c: char| match c {
        '<' => "&lt;".to_string(),
        '>' => "&gt;".to_string(),
        '&' => "&amp;".to_string(),
        c => c.to_string(),
    };
    let mut out = String::new();
    let mut open = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            let mut params = String::new();
            for p in chars.by_ref() {
                if p.is_ascii_alphabetic() {
                    if p != 'm' {
                        params.clear();
                    }
                    break;
                }
                params.push(p);
            }
            for code in params.split(';') {
                let class = match code {
                    "" | "0" | "39" | "22" => {
                        out += &"</span>".repeat(open);
                        open = 0;
                        continue;
                    }
                    "1" => "b",
                    "2" => "d",
                    "31" | "91" => "r",
                    "32" | "92" => "g",
                    "33" | "93" => "y",
                    "34" | "94" => "bl",
                    "35" | "95" => "m",
                    "36" | "96" => "c",
                    _ => continue,
                };
                out += &format!("<span class={class}>");
                open += 1;
            }
        } else {
            out += &esc(c);
        }
    }
    out + &"</span>".repeat(open)
}

// ---- the web UI -----------------------------------------------------------------------------

/// chromedriver on a free port (its own process group, killed on drop) and a WebDriver session
/// of headless Chromium.
struct Driver {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: signals the process group of our own child (chromedriver and its browsers).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

async fn browser() -> (Driver, Browser) {
    require("chromium");
    require("chromedriver");
    let port = airlock_tests::free_port();
    use std::os::unix::process::CommandExt;
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver {
        child,
        _profile: profile,
    };
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    wait_until(
        "chromedriver answering",
        Duration::from_secs(30),
        || async {
            match reqwest::get(&status).await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,860", "--hide-scrollbars", "--no-first-run",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
        },
    });
    let client =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot start headless Chromium through chromedriver: {e}"));
    (driver, client)
}

async fn js(b: &Browser, script: &str) -> Value {
    b.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("script {script} failed: {e}"))
}

/// Polls a script until it returns `true`; panics with `what` and the page's text.
async fn wait_js(b: &Browser, what: &str, script: &str) {
    // One round trip a poll: the script's `true`, or else the page's text.
    let probe = format!("return (() => {{ {script} }})() === true || document.body.innerText;");
    wait_until(&format!("the page showing {what}"), WAIT, || async {
        match js(b, &probe).await {
            Value::Bool(true) => Ok(()),
            text => Err(format!("it shows:\n{}", text.as_str().unwrap_or_default())),
        }
    })
    .await
}

async fn shot(b: &Browser, name: &str) {
    if let Some(dir) = screenshots_dir() {
        let png = b.screenshot().await.expect("screenshot");
        std::fs::write(dir.join(name), png).unwrap();
    }
}

async fn fill(b: &Browser, css: &str, text: &str) {
    let e = b.find(Locator::Css(css)).await.expect(css);
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

async fn click(b: &Browser, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

/// Alice's only session.
async fn session_of(api: &Api, fx: &Fixture) -> String {
    let r = api.get("/v1/sessions", &fx.alice.token).await;
    r.expect(200);
    let list = r.json["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    list[0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn web_ui_signs_in_approves_a_diff_and_renders_hostile_content_inert() {
    require("chromium");
    require("chromedriver");
    let evil_name = "<img src=x onerror=window.__pwned=1>\u{1b}[31mred.txt";
    let evil_content =
        "first <img src=x onerror=window.__pwned=2>\n\u{1b}[2J\u{1b}]0;t\u{7}second <b>bold</b>\n";
    let evil_answer = "Wrote it: <img src=x onerror=window.__pwned=3> \u{1b}[1mdone";
    let llm = MockLlm::start(vec![
        Stream::new()
            .text("I'll add the greeting to notes.txt and write the other file.")
            .tool_call(
                0,
                "call_edit",
                "edit_file",
                &json!({"path": "notes.txt", "edits": [{"old_string": "hello", "new_string": "goodbye"}]})
                    .to_string(),
                8,
            )
            .finish("tool_calls")
            .usage(100, 10)
            .done(),
        tool_calls(&[(
            "call_write",
            "write_file",
            json!({"path": evil_name, "content": evil_content}),
        )]),
        tool_calls(&[("call_read", "read_file", json!({"path": evil_name}))]),
        answer(evil_answer),
        tool_calls(&[("call_deploy", "run_shell", json!({"command": "make deploy"}))]),
        answer("Second answer after the restart."),
    ])
    .await;
    let fx = fixture(&llm).await;
    fx.alice
        .workspace
        .write("notes.txt", "hello world\nsecond line\n");
    let mut server = ServerProcess::start(&fx, 0).await;
    let api = server.api.clone();
    let base = api.base.clone();

    // The UI's own responses: public, with the strict headers; the API still needs a token.
    for (path, ty) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let r = api.call("GET", path, None, None).await;
        r.expect(200);
        let h = |k: &str| {
            r.headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(h("content-security-policy"), airlock::web::CSP, "{path}");
        assert!(
            airlock::web::CSP.contains("default-src 'none'")
                && airlock::web::CSP.contains("frame-ancestors 'none'")
        );
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(h("referrer-policy"), "no-referrer", "{path}");
        assert!(
            h("content-type").starts_with(ty),
            "{path}: {}",
            h("content-type")
        );
    }
    api.call("GET", "/v1/sessions", None, None)
        .await
        .expect(401);

    let (_driver, b) = browser().await;
    b.goto(&format!("{base}/")).await.expect("open the UI");
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#signin-form"))
        .await
        .expect("the sign-in form");
    // A wrong token is refused.
    fill(&b, "#token", "al_thisisnotavalidtoken").await;
    click(&b, "#signin-button").await;
    wait_js(
        &b,
        "the refusal",
        "const e = document.getElementById('signin-error'); \
         return !e.classList.contains('hidden') && e.textContent.includes('refused');",
    )
    .await;
    assert_eq!(
        js(&b, "return sessionStorage.getItem('airlock.token')").await,
        Value::Null
    );
    shot(&b, "web-signin.png").await;

    // Sign in, start a session, send a message.
    fill(&b, "#token", &fx.alice.token).await;
    click(&b, "#signin-button").await;
    wait_js(
        &b,
        "the app",
        "return !document.getElementById('app').classList.contains('hidden')",
    )
    .await;
    click(&b, "#new-session").await;
    wait_js(
        &b,
        "a live session",
        "return document.getElementById('conn').dataset.state === 'live' && \
                !document.getElementById('composer').classList.contains('hidden')",
    )
    .await;
    fill(
        &b,
        "#message",
        "Change hello to goodbye, then write the other file.",
    )
    .await;
    click(&b, "#send").await;

    // The edit waits with its diff: removed and added lines, coloured classes.
    let edit = ".callcard[data-tool='edit_file'][data-status='awaiting_approval']";
    wait_js(
        &b,
        "the edit waiting for approval",
        &format!("return !!document.querySelector(\"{edit} button.approve\")"),
    )
    .await;
    let diff = js(
        &b,
        &format!(
            "const c = document.querySelector(\"{edit}\"); return {{
               del: [...c.querySelectorAll('.dl.del')].map(e => e.textContent),
               add: [...c.querySelectorAll('.dl.add')].map(e => e.textContent),
               text: c.textContent }}"
        ),
    )
    .await;
    assert_eq!(diff["del"], json!(["-hello world\n"]), "{diff:#}");
    assert_eq!(diff["add"], json!(["+goodbye world\n"]), "{diff:#}");
    assert!(
        diff["text"].as_str().unwrap().contains("notes.txt"),
        "{diff:#}"
    );
    assert_eq!(
        fx.alice.workspace.read("notes.txt").as_deref(),
        Some("hello world\nsecond line\n")
    );
    shot(&b, "web-approval.png").await;
    click(&b, &format!("{edit} button.approve")).await;

    // The hostile file: its name and content are shown as text, and approving writes it.
    let write = ".callcard[data-tool='write_file'][data-status='awaiting_approval']";
    wait_js(
        &b,
        "the write waiting for approval",
        &format!("return !!document.querySelector(\"{write} button.approve\")"),
    )
    .await;
    click(&b, &format!("{write} button.approve")).await;
    wait_js(
        &b,
        "the finished turn",
        "return [...document.querySelectorAll('.note.turn')].some(n => n.textContent.includes('Turn completed'))",
    )
    .await;
    let page = js(
        &b,
        "return {
           imgs: document.querySelectorAll('img').length,
           bold: document.querySelectorAll('#log b').length,
           onerror: document.querySelectorAll('[onerror]').length,
           pwned: window.__pwned === undefined ? null : window.__pwned,
           title: document.title,
           statuses: [...document.querySelectorAll('.callcard')].map(c => c.dataset.tool + ':' + c.dataset.status),
           log: document.getElementById('log').textContent }",
    )
    .await;
    assert_eq!(page["imgs"], 0, "{page:#}");
    assert_eq!(page["bold"], 0, "{page:#}");
    assert_eq!(page["onerror"], 0, "{page:#}");
    assert_eq!(
        page["pwned"],
        Value::Null,
        "an onerror handler ran: {page:#}"
    );
    assert_eq!(page["title"], "Airlock");
    assert_eq!(
        page["statuses"],
        json!([
            "edit_file:succeeded",
            "write_file:succeeded",
            "read_file:succeeded"
        ]),
        "{page:#}"
    );
    let log = page["log"].as_str().unwrap();
    for literal in [
        "<img src=x onerror=window.__pwned=1>^[[31mred.txt",
        "+first <img src=x onerror=window.__pwned=2>",
        "+^[[2J^[]0;t^Gsecond <b>bold</b>",
        "Wrote it: <img src=x onerror=window.__pwned=3> ^[[1mdone",
    ] {
        assert!(
            log.contains(literal),
            "`{literal}` is not shown literally in:\n{log}"
        );
    }
    assert!(!log.contains('\u{1b}'), "a raw ESC reached the page: {log}");
    assert_eq!(
        fx.alice.workspace.read(evil_name).as_deref(),
        Some(evil_content),
        "the approved write happened"
    );
    shot(&b, "web-result.png").await;

    // The server restarts; the UI reconnects, resumes without repeating, and goes on.
    server.terminate().await;
    wait_js(
        &b,
        "the lost connection",
        "return document.getElementById('conn').dataset.state !== 'live'",
    )
    .await;
    let server = ServerProcess::start(&fx, 1).await;
    wait_js(
        &b,
        "the resumed stream",
        "return document.getElementById('conn').dataset.state === 'live'",
    )
    .await;
    wait_js(
        &b,
        "the composer free again",
        "return !document.getElementById('send').disabled",
    )
    .await;
    fill(&b, "#message", "And now?").await;
    click(&b, "#send").await;
    // A command denied with a reason: the card says so, the agent goes on.
    let run = ".callcard[data-tool='run_shell'][data-status='awaiting_approval']";
    wait_js(
        &b,
        "the command waiting for approval",
        &format!(
            "const c = document.querySelector(\"{run}\"); \
             return !!c && c.querySelector('pre.command').textContent === 'make deploy'"
        ),
    )
    .await;
    fill(&b, &format!("{run} input.deny-reason"), "not today").await;
    click(&b, &format!("{run} button.deny")).await;
    wait_js(
        &b,
        "the denied command",
        "const c = document.querySelector(\".callcard[data-tool='run_shell']\"); \
         return c.dataset.status === 'denied' && c.textContent.includes('reason: not today') && \
                !c.querySelector('button')",
    )
    .await;
    wait_js(
        &b,
        "the second answer",
        "return document.getElementById('log').textContent.includes('Second answer after the restart.')",
    )
    .await;
    let counts = js(
        &b,
        "return { cards: document.querySelectorAll('.callcard').length,
                  users: document.querySelectorAll('.bubble.user').length,
                  turns: document.querySelectorAll('.note.turn').length,
                  first: document.getElementById('log').textContent.split('I\\'ll add the greeting').length - 1 }",
    )
    .await;
    assert_eq!(
        counts,
        json!({"cards": 4, "users": 2, "turns": 2, "first": 1}),
        "nothing lost or repeated across the reconnect"
    );
    // The session is in the list; a reload keeps the sign-in (sessionStorage) and the view.
    b.refresh().await.expect("reload");
    wait_js(
        &b,
        "the session after a reload",
        "return document.querySelectorAll('.callcard').length === 4 && \
                document.querySelectorAll('.session-link.active').length === 1",
    )
    .await;
    b.close().await.expect("close the browser");
    let calls = api
        .get(
            &format!(
                "/v1/sessions/{}/tool-calls?status=denied",
                session_of(&api, &fx).await
            ),
            &fx.alice.token,
        )
        .await;
    calls.expect(200);
    assert_eq!(calls.json["calls"][0]["args"]["command"], "make deploy");
    assert_eq!(calls.json["calls"][0]["reason"], "not today");

    let mut server = server;
    server.terminate().await;
    fx.assert_no_containers(None, "after the web test").await;
}

/// A phone-sized browser (390 × 844) opened at the link a webhook carries for call `id` —
/// no token in it — and signed in as `token`.
async fn phone_at_call(base: &str, id: &str, token: &str) -> (Driver, Browser) {
    let (driver, b) = browser().await;
    b.set_window_size(390, 844)
        .await
        .expect("a phone-sized window");
    b.goto(&format!("{base}/#call={id}"))
        .await
        .expect("open the link");
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#signin-form"))
        .await
        .expect("the sign-in form");
    fill(&b, "#token", token).await;
    click(&b, "#signin-button").await;
    (driver, b)
}

#[tokio::test]
async fn a_notification_link_opens_its_call_after_sign_in_on_a_phone_sized_screen() {
    require("chromium");
    require("chromedriver");
    let llm = MockLlm::start(vec![]).await;
    let fx = fixture(&llm).await;
    let server = ServerProcess::start(&fx, 0).await;
    let token = fx.alice.token.clone();
    let sid = server.api.session(&token).await;
    let call = server
        .api
        .propose_ok(
            &token,
            &sid,
            "write_file",
            json!({"path": "phone.txt", "content": "approved from a phone\n"}),
        )
        .await;
    let id = call["id"].as_str().unwrap().to_string();

    let (_driver, b) = phone_at_call(&server.api.base, &id, &token).await;
    let card = format!(".callcard.focused[data-call-id=\"{id}\"]");
    wait_js(
        &b,
        "the linked call, focused, waiting for approval",
        &format!(
            "const c = document.querySelector('{card}'); \
             return !!c && c.dataset.status === 'awaiting_approval' && !!c.querySelector('button.approve');"
        ),
    )
    .await;
    // Everything needed to decide fits the phone's width.
    let fits = js(
        &b,
        &format!(
            "const c = document.querySelector('{card}'); \
             const r = c.querySelector('button.approve').getBoundingClientRect(); \
             return r.right <= window.innerWidth && document.documentElement.scrollWidth <= window.innerWidth + 1;"
        ),
    )
    .await;
    assert_eq!(
        fits,
        Value::Bool(true),
        "the approval controls overflow a 390 px screen"
    );
    shot(&b, "web-phone-approval.png").await;
    click(&b, &format!("{card} button.approve")).await;
    server
        .api
        .wait_status(&token, &id, &["succeeded"], Duration::from_secs(30))
        .await;
    assert_eq!(
        fx.alice.workspace.read("phone.txt").as_deref(),
        Some("approved from a phone\n")
    );
}

#[tokio::test]
async fn on_a_phone_one_hunk_is_approved_an_edited_change_is_applied_and_undo_reverts_from_the_web_ui(
) {
    require("chromium");
    require("chromedriver");
    let llm = MockLlm::start(vec![]).await;
    let fx = fixture(&llm).await;
    let server = ServerProcess::start(&fx, 0).await;
    let token = fx.alice.token.clone();
    let twenty: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    fx.alice.workspace.write("f.txt", twenty.clone());
    let sid = server.api.session(&token).await;
    let two_hunks = server
        .api
        .propose_ok(
            &token,
            &sid,
            "edit_file",
            json!({"path": "f.txt", "edits": [
                {"old_string": "line 2\n", "new_string": "LINE TWO\n"},
                {"old_string": "line 17\n", "new_string": "LINE SEVENTEEN\n"},
            ]}),
        )
        .await;
    let write = server
        .api
        .propose_ok(
            &token,
            &sid,
            "write_file",
            json!({"path": "w.txt", "content": "the model's text\n"}),
        )
        .await;
    let (hid, wid) = (
        two_hunks["id"].as_str().unwrap().to_string(),
        write["id"].as_str().unwrap().to_string(),
    );

    let (_driver, b) = phone_at_call(&server.api.base, &hid, &token).await;
    let card = format!(".callcard[data-call-id=\"{hid}\"]");
    wait_js(
        &b,
        "two hunk checkboxes on the edit",
        &format!("return document.querySelectorAll('{card} .hunk-choice input').length === 2;"),
    )
    .await;
    // Untick hunk 0 (line 2), approve the rest.
    click(&b, &format!("{card} .hunk-choice input[data-hunk=\"0\"]")).await;
    shot(&b, "web-phone-hunks.png").await;
    click(&b, &format!("{card} button.approve")).await;
    let done = server
        .api
        .wait_status(&token, &hid, &["succeeded"], Duration::from_secs(30))
        .await;
    assert_eq!(done["result"]["applied_hunks"], json!([1]), "{done}");
    assert_eq!(
        fx.alice.workspace.read("f.txt"),
        Some(twenty.replace("line 17\n", "LINE SEVENTEEN\n"))
    );

    // Edit the write before approving: the card shows the new diff, then approve applies it.
    let card = format!(".callcard[data-call-id=\"{wid}\"]");
    click(&b, &format!("{card} button.edit-change")).await;
    fill(
        &b,
        &format!("{card} textarea.edit-text"),
        "the user's text\n",
    )
    .await;
    click(&b, &format!("{card} button.preview-edit")).await;
    wait_js(
        &b,
        "the edited diff, waiting for approval",
        &format!(
            "const c = document.querySelector('{card}'); \
             return !!c && c.innerText.includes('+the user') && !c.innerText.includes('+the model') \
               && c.innerText.includes('edited by alice') && !!c.querySelector('button.approve') \
               && !c.querySelector('.edit-box');"
        ),
    )
    .await;
    let fits = js(
        &b,
        "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
    )
    .await;
    assert_eq!(
        fits,
        Value::Bool(true),
        "the edit box overflows a 390 px screen"
    );
    shot(&b, "web-phone-edited.png").await;
    click(&b, &format!("{card} button.approve")).await;
    server
        .api
        .wait_status(&token, &wid, &["succeeded"], Duration::from_secs(30))
        .await;
    assert_eq!(
        fx.alice.workspace.read("w.txt").as_deref(),
        Some("the user's text\n")
    );

    // Undo the one-hunk edit: the revert arrives as a new card with the reverse diff, is
    // approved there, and the file is as it was; the edit's card says it was reverted.
    let card = format!(".callcard[data-call-id=\"{hid}\"]");
    click(&b, &format!("{card} button.undo")).await;
    let revert = ".callcard[data-tool=\"revert\"]";
    wait_js(
        &b,
        "the revert's card with its reverse diff, waiting for approval",
        &format!(
            "const c = document.querySelector('{revert}'); \
             return !!c && c.innerText.includes('-LINE SEVENTEEN') && c.innerText.includes('+line 17') \
               && !!c.querySelector('button.approve');"
        ),
    )
    .await;
    shot(&b, "web-phone-undo.png").await;
    let rid = js(
        &b,
        &format!("return document.querySelector('{revert}').dataset.callId;"),
    )
    .await
    .as_str()
    .unwrap()
    .to_string();
    click(&b, &format!("{revert} button.approve")).await;
    server
        .api
        .wait_status(&token, &rid, &["succeeded"], Duration::from_secs(30))
        .await;
    assert_eq!(fx.alice.workspace.read("f.txt"), Some(twenty));
    wait_js(
        &b,
        "the edit's card marked reverted, its Undo gone",
        &format!(
            "const c = document.querySelector('{card}'); \
             return !!c && c.innerText.includes('reverted by call') && !c.querySelector('button.undo');"
        ),
    )
    .await;
}

#[tokio::test]
async fn terminal_chat_approves_one_hunk_and_an_edit_made_in_the_editor() {
    require("tmux");
    let llm = MockLlm::start(vec![
        tool_calls(&[(
            "call_hunks",
            "edit_file",
            json!({"path": "f.txt", "edits": [
                {"old_string": "line 2\n", "new_string": "LINE TWO\n"},
                {"old_string": "line 17\n", "new_string": "LINE SEVENTEEN\n"},
            ]}),
        )]),
        tool_calls(&[(
            "call_write",
            "write_file",
            json!({"path": "w.txt", "content": "the model's text\n"}),
        )]),
        answer("All done."),
    ])
    .await;
    let fx = fixture(&llm).await;
    let twenty: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    fx.alice.workspace.write("f.txt", twenty.clone());
    let server = ServerProcess::start(&fx, 0).await;
    // The "editor": replaces the model's words in the file it is given.
    let editor = fx.dir().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i \"s/the model's text/the user's text/\" \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tmux = Tmux::start(&format!(
        "env AIRLOCK_TOKEN={} EDITOR='{}' '{}' chat --server {}; echo \"[chat exited $?]\"; sleep 600",
        fx.alice.token,
        editor.display(),
        airlock_binary().display(),
        server.api.base
    ));
    tmux.wait_for(&["you>"], 1).await;
    tmux.line("Change two lines, then write w.txt");
    tmux.wait_for(&["+LINE SEVENTEEN", "/ [h]unks / [e]dit / [v]iew >"], 1)
        .await;
    tmux.line("h");
    tmux.wait_for(&["hunks to approve, of 0..1"], 1).await;
    tmux.line("7");
    tmux.wait_for(&["hunk ids are numbers from 0 to 1"], 1)
        .await;
    tmux.line("1");
    tmux.wait_for(&["+the model's text", "/ [e]dit / [v]iew >"], 1)
        .await;
    assert_eq!(
        fx.alice.workspace.read("f.txt"),
        Some(twenty.replace("line 17\n", "LINE SEVENTEEN\n")),
        "only hunk 1 was applied"
    );
    tmux.line("e");
    tmux.wait_for(&["edited by alice", "+the user's text"], 1)
        .await;
    tmux.line("y");
    tmux.wait_for(&["All done."], 1).await;
    assert_eq!(
        fx.alice.workspace.read("w.txt").as_deref(),
        Some("the user's text\n")
    );
}
