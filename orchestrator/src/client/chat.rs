//! `airlock chat`: the agent in a terminal.
//!
//! One task follows the session's events over a WebSocket (`Authorization: Bearer`) and
//! reconnects on its own with `?after=` the last id it passed on, dropping anything at or before
//! it, so nothing is lost or shown twice. The main loop prints events as they come (assistant
//! text streamed, each proposed call with its coloured diff or its whole command, live output
//! with a spinner while a call runs), asks about each call waiting for approval — approve,
//! deny with a reason, or approve and allow the pattern for the rest of the session when the
//! user's policy permits it — and sends messages. Ctrl-C cancels the running turn (twice, or
//! when no turn runs: quits). Decisions go over HTTP with the call's `args_sha256`.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use super::render::{self, neutralize, one_line, truncate, Style};
use super::{checked_id, ChatArgs, Client, ClientError};
use crate::calls::CallStatus;
use crate::events::{self as ev, Event};

/// What the event-stream task tells the main loop.
#[derive(Debug)]
enum StreamMsg {
    /// The WebSocket is open (`resumed_after`: the id it resumed after, if any).
    Connected { resumed_after: Option<String> },
    /// One stored event, in order, never repeated.
    Event(Value),
    /// A frame without id: a refusal or a stream problem.
    Error(Value),
    /// The connection ended; the task retries with a backoff.
    Disconnected { reason: String },
    /// The server refused the stream for good (token, session).
    Fatal(String),
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// `airlock chat --server URL [--session ID]`.
pub async fn run(args: ChatArgs) -> Result<ExitCode, ClientError> {
    let client = Client::from_conn(&args.conn)?;
    let session = match &args.session {
        Some(s) => {
            let s = checked_id("session", s)?;
            client.get(&format!("/v1/sessions/{s}?limit=1")).await?;
            s
        }
        None => {
            let v = client.post("/v1/sessions", json!({})).await?;
            v["id"]
                .as_str()
                .ok_or_else(|| ClientError::new("the server answered without a session id"))?
                .to_string()
        }
    };
    let grants_allowed = client
        .get(&format!("/v1/sessions/{session}/grants"))
        .await
        .map(|v| v["allowed"] == true)
        .unwrap_or(false);

    use std::io::IsTerminal;
    let mut chat = Chat {
        style: Style::detect(),
        tty: std::io::stdout().is_terminal(),
        out: std::io::stdout(),
        at_line_start: true,
        transient: false,
        prompt_shown: None,
        running_turn: None,
        calls: HashMap::new(),
        pending: VecDeque::new(),
        asking: None,
        text_open: None,
        own_message: None,
        grants_allowed,
        spin: 0,
        connected: false,
        client: client.clone(),
        session: session.clone(),
    };
    chat.banner(args.session.is_some());

    // Lines from the terminal, on a thread of their own (a blocked read never holds up exit),
    // one at a time when asked: while `$EDITOR` runs, nothing here reads the terminal.
    let (line_tx, mut line_rx) = mpsc::channel::<Option<String>>(16);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        while go_rx.recv().is_ok() {
            let Some(Ok(line)) = lines.next() else { break };
            if line_tx.blocking_send(Some(line)).is_err() {
                return;
            }
        }
        let _ = line_tx.blocking_send(None);
    });
    let _ = go_tx.send(());
    let (ev_tx, mut ev_rx) = mpsc::channel::<StreamMsg>(512);
    let follower = tokio::spawn(follow(client.clone(), session.clone(), ev_tx));

    let mut tick = tokio::time::interval(Duration::from_millis(120));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_interrupt: Option<Instant> = None;
    let code = loop {
        tokio::select! {
            msg = ev_rx.recv() => {
                let Some(msg) = msg else { break ExitCode::from(1) };
                if let Some(code) = chat.on_stream(msg) {
                    break code;
                }
                // Everything already here first: a replayed approval that was decided later
                // is not asked about.
                let mut fatal = None;
                while let Ok(m) = ev_rx.try_recv() {
                    if let Some(code) = chat.on_stream(m) {
                        fatal = Some(code);
                        break;
                    }
                }
                if let Some(code) = fatal {
                    break code;
                }
                chat.refresh().await;
            }
            line = line_rx.recv() => match line {
                Some(Some(l)) => {
                    if chat.on_line(&l).await {
                        break ExitCode::SUCCESS;
                    }
                    let _ = go_tx.send(());
                    chat.refresh().await;
                }
                _ => {
                    chat.block("\n");
                    break ExitCode::SUCCESS;
                }
            },
            _ = tokio::signal::ctrl_c() => {
                let again = last_interrupt.is_some_and(|t| t.elapsed() < Duration::from_secs(2));
                last_interrupt = Some(Instant::now());
                match chat.running_turn.clone() {
                    Some(_) if !again => {
                        chat.prompt_shown = None;
                        chat.transient = false;
                        chat.at_line_start = false;
                        chat.cancel_turn().await;
                        chat.refresh().await;
                    }
                    _ => {
                        chat.at_line_start = false;
                        break ExitCode::SUCCESS;
                    }
                }
            }
            _ = tick.tick() => chat.spinner(),
        }
    };
    follower.abort();
    chat.clear_transient();
    let s = chat.style;
    chat.block(&format!(
        "{}\n",
        s.dim(&format!(
            "left session {session}; continue with: airlock chat --session {session}"
        ))
    ));
    Ok(code)
}

/// Follows the session's events: connects, passes each new event on, and on any break
/// reconnects with `?after=` the last id passed on (backing off up to 5 s).
async fn follow(client: Client, session: String, tx: mpsc::Sender<StreamMsg>) {
    let mut last: Option<String> = None;
    let mut backoff = Duration::from_millis(300);
    loop {
        let mut path = format!("/v1/sessions/{session}/events");
        if let Some(l) = &last {
            path += &format!("?after={l}");
        }
        let reason = match connect(&client, &path).await {
            Ok(ws) => {
                backoff = Duration::from_millis(300);
                if tx
                    .send(StreamMsg::Connected {
                        resumed_after: last.clone(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let (mut wtx, mut wrx) = ws.split();
                let mut ping = tokio::time::interval(Duration::from_secs(15));
                ping.tick().await;
                loop {
                    tokio::select! {
                        m = wrx.next() => match m {
                            Some(Ok(Message::Text(t))) => {
                                let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                                match v["id"].as_str() {
                                    Some(id) => {
                                        if last.as_deref().is_some_and(|l| !is_after(id, l)) {
                                            continue; // seen before the reconnect
                                        }
                                        last = Some(id.to_string());
                                        if tx.send(StreamMsg::Event(v)).await.is_err() {
                                            return;
                                        }
                                    }
                                    None => {
                                        if tx.send(StreamMsg::Error(v)).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                            Some(Ok(Message::Close(_))) | None => break "the server closed the stream".to_string(),
                            Some(Err(e)) => break e.to_string(),
                            Some(Ok(_)) => {}
                        },
                        _ = ping.tick() => {
                            if wtx.send(Message::Ping(Vec::new().into())).await.is_err() {
                                break "the connection broke".to_string();
                            }
                        }
                        _ = tx.closed() => return,
                    }
                }
            }
            Err(Connect::Fatal(m)) => {
                let _ = tx.send(StreamMsg::Fatal(m)).await;
                return;
            }
            Err(Connect::Retry(m)) => m,
        };
        if tx.send(StreamMsg::Disconnected { reason }).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum Connect {
    Retry(String),
    Fatal(String),
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(client: &Client, path: &str) -> Result<Ws, Connect> {
    let mut req = client
        .ws_url(path)
        .into_client_request()
        .map_err(|e| Connect::Fatal(format!("bad server URL: {e}")))?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", client.token()))
        .map_err(|_| Connect::Fatal("the token has characters a header cannot carry".into()))?;
    req.headers_mut().insert("authorization", auth);
    let attempt = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(req),
    )
    .await;
    match attempt {
        Err(_) => Err(Connect::Retry("no answer within 15 s".into())),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(res))) => {
            let status = res.status().as_u16();
            let body = res
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .unwrap_or(Value::Null);
            let msg = format!(
                "{} ({status}): {}",
                one_line(body["error"]["code"].as_str().unwrap_or("http_error")),
                one_line(body["error"]["message"].as_str().unwrap_or_default())
            );
            if matches!(status, 400 | 401 | 403 | 404) {
                Err(Connect::Fatal(msg))
            } else {
                Err(Connect::Retry(msg))
            }
        }
        Ok(Err(e)) => Err(Connect::Retry(e.to_string())),
    }
}

/// `id` comes strictly after `last` (`<ms>-<seq>` ids).
fn is_after(id: &str, last: &str) -> bool {
    match (
        crate::store::parse_event_id(id),
        crate::store::parse_event_id(last),
    ) {
        (Some(a), Some(b)) => a > b,
        _ => true,
    }
}

/// What one proposed call looks like to the chat.
struct CallInfo {
    tool: String,
    args: Value,
    sha: String,
    status: String,
    expires_at_ms: Option<u64>,
    started: Option<Instant>,
    /// Output not ended by a newline yet, per stream.
    partial: HashMap<String, String>,
    /// The change's hunks as the [h]unks question lists them (empty: not a change).
    hunks: Vec<String>,
}

/// `0: @@ -1,3 +1,3 @@ (+1 −1)` for each hunk of a change's preview.
fn hunk_labels(preview: &Value) -> Vec<String> {
    preview["hunks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            format!(
                "{}: {} (+{} −{})",
                h["id"],
                one_line(h["header"].as_str().unwrap_or_default()),
                h["added"],
                h["removed"]
            )
        })
        .collect()
}

/// The marker line before edit `i`'s new text (of `n`) in the file `$EDITOR` opens.
fn new_text_marker(i: usize, n: usize) -> String {
    format!(
        ">>> airlock: the new text of edit {} of {n} follows (keep this line) <<<\n",
        i + 1
    )
}

/// What the user edits for a change: a write's content; an edit's new texts, each after
/// its marker line.
fn editable_text(tool: &str, args: &Value) -> Option<String> {
    match tool {
        "write_file" => args["content"].as_str().map(str::to_string),
        "edit_file" => {
            let edits = args["edits"].as_array()?;
            let mut t = String::new();
            for (i, e) in edits.iter().enumerate() {
                t.push_str(&new_text_marker(i, edits.len()));
                t.push_str(e["new_string"].as_str().unwrap_or_default());
                t.push('\n');
            }
            Some(t)
        }
        _ => None,
    }
}

/// The `n` new texts back from [`editable_text`]'s form; `None` when a marker is missing.
fn split_new_strings(text: &str, n: usize) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    let mut rest = text;
    for i in 0..n {
        let m = new_text_marker(i, n);
        let at = rest.find(&m)?;
        if i == 0 && !rest[..at].trim().is_empty() {
            return None;
        }
        if i > 0 {
            out.push(strip_one_newline(&rest[..at]).to_string());
        }
        rest = &rest[at + m.len()..];
    }
    out.push(strip_one_newline(rest).to_string());
    Some(out)
}

/// The newline [`editable_text`] put after each text.
fn strip_one_newline(s: &str) -> &str {
    s.strip_suffix('\n').unwrap_or(s)
}

enum Asking {
    /// "approve? [y]es / [n]o / [s]ession"
    Choice(String),
    /// "reason for the agent:"
    Reason(String),
    /// "hunks to approve:"
    Hunks(String),
}

struct Chat {
    client: Client,
    session: String,
    style: Style,
    /// stdout is a terminal: prompts and the spinner are redrawn in place.
    tty: bool,
    out: std::io::Stdout,
    /// The cursor is at the start of a line.
    at_line_start: bool,
    /// The current line holds a prompt or the spinner, to be cleared before printing.
    transient: bool,
    /// The prompt on screen, if any.
    prompt_shown: Option<String>,
    running_turn: Option<String>,
    calls: HashMap<String, CallInfo>,
    /// Calls waiting for approval, in the order they were proposed.
    pending: VecDeque<String>,
    asking: Option<Asking>,
    /// The (turn, step) whose assistant text is being printed.
    text_open: Option<(String, u64)>,
    /// A message this client sent whose `user_message` has not come back yet.
    own_message: Option<String>,
    grants_allowed: bool,
    spin: usize,
    connected: bool,
}

impl Chat {
    fn write(&mut self, s: &str) {
        let _ = self.out.write_all(s.as_bytes());
        let _ = self.out.flush();
    }

    /// Removes the prompt or spinner from the current line.
    fn clear_transient(&mut self) {
        if self.transient {
            if self.tty {
                self.write("\r\x1b[2K");
                self.at_line_start = true;
            }
            self.transient = false;
            self.prompt_shown = None;
        }
    }

    /// Prints whole lines (`s` ends with a newline) on a fresh line.
    fn block(&mut self, s: &str) {
        self.clear_transient();
        if !self.at_line_start {
            self.write("\n");
        }
        self.write(s);
        self.at_line_start = s.is_empty() || s.ends_with('\n');
    }

    fn end_text(&mut self) {
        if self.text_open.take().is_some() {
            self.clear_transient();
            if !self.at_line_start {
                self.write("\n");
                self.at_line_start = true;
            }
        }
    }

    fn banner(&mut self, resumed: bool) {
        let s = self.style;
        let mut b = format!(
            "{} {} {}\n",
            s.bold("airlock chat"),
            s.dim("·"),
            if resumed {
                format!("session {} (history below)", self.session)
            } else {
                format!("new session {}", self.session)
            }
        );
        b += &s.dim(&format!("server {}\n", self.client.base()));
        b += &s.dim(
            "Type a message and press Enter. Ctrl-C cancels a running turn; Ctrl-C twice, Ctrl-D or /quit leaves; /help lists commands.\n",
        );
        if !self.grants_allowed {
            b += &s.dim("Approve-for-this-session is not allowed by your policy: each call is asked about.\n");
        }
        self.block(&b);
    }

    // ---- events ---------------------------------------------------------------------------

    /// Handles one message of the stream task; `Some` ends the chat with that exit code.
    fn on_stream(&mut self, msg: StreamMsg) -> Option<ExitCode> {
        let s = self.style;
        match msg {
            StreamMsg::Connected { resumed_after } => {
                if let Some(after) = resumed_after {
                    self.block(&format!(
                        "{}\n",
                        s.green(&format!("reconnected; resuming after event {after}"))
                    ));
                }
                self.connected = true;
            }
            StreamMsg::Disconnected { reason } => {
                if self.connected {
                    self.end_text();
                    self.block(&format!(
                        "{}\n",
                        s.yellow(&format!(
                            "connection lost ({}); reconnecting…",
                            one_line(&reason)
                        ))
                    ));
                }
                self.connected = false;
            }
            StreamMsg::Fatal(m) => {
                self.block(&format!(
                    "{}\n",
                    s.red(&format!("the server refused the event stream: {m}"))
                ));
                return Some(ExitCode::from(1));
            }
            StreamMsg::Error(v) => {
                let d = &v["data"];
                self.block(&format!(
                    "{}\n",
                    s.red(&format!(
                        "{}: {}",
                        one_line(d["code"].as_str().unwrap_or("error")),
                        one_line(d["message"].as_str().unwrap_or_default())
                    ))
                ));
            }
            StreamMsg::Event(v) => self.on_event(&v),
        }
        None
    }

    fn on_event(&mut self, raw: &Value) {
        let d = &raw["data"];
        // A kind this build does not know (a newer server) is skipped.
        let Ok(ev) = Event::from_parts(raw["type"].as_str().unwrap_or_default(), d) else {
            return;
        };
        match ev {
            Event::UserMessage(m) => self.on_user_message(m),
            Event::AssistantDelta(m) => self.on_delta(m),
            Event::AssistantMessage(m) => {
                let key = (m.turn_id, m.step as u64);
                if self.text_open.as_ref() == Some(&key) {
                    self.end_text();
                } else if !m.content.is_empty() {
                    self.end_text();
                    let lead = self.style.cyan("agent> ");
                    self.block(&format!("{lead}{}\n", neutralize(&m.content)));
                }
            }
            Event::CallProposed(c) => self.on_proposed(c, d),
            Event::ApprovalRequired(a) => {
                if let Some(c) = self.calls.get_mut(&a.call_id) {
                    c.sha = a.args_sha256;
                    c.expires_at_ms = Some(a.expires_at_ms);
                    c.status = a.status.as_str().into();
                }
                if !self.pending.contains(&a.call_id) {
                    self.pending.push_back(a.call_id);
                }
            }
            Event::CallEdited(e) => {
                let mut view = json!({"args": e.args, "preview": e.preview});
                if let Some(c) = self.calls.get_mut(&e.call_id) {
                    c.sha = e.args_sha256;
                    c.args = e.args;
                    c.hunks = hunk_labels(&view["preview"]);
                    view["tool"] = json!(c.tool);
                }
                let s = self.style;
                let out = format!(
                    "  {} {}\n{}",
                    s.blue("✎ edited by"),
                    one_line(&e.edited_by),
                    render::call(s, &view)
                );
                self.block(&out);
            }
            Event::Approved(x) | Event::Denied(x) | Event::Expired(x) => self.on_decided(x),
            Event::CallStarted(c) => {
                self.end_text();
                if let Some(c) = self.calls.get_mut(&c.call_id) {
                    c.status = "running".into();
                    c.started = Some(Instant::now());
                }
            }
            Event::Output(o) => self.on_output(o),
            Event::CallFinished(f) => {
                self.end_text();
                self.forget_pending(&f.call_id);
                let rest: Vec<(String, String)> = match self.calls.get_mut(&f.call_id) {
                    Some(c) => {
                        c.status = f.status.as_str().into();
                        c.partial.drain().filter(|(_, b)| !b.is_empty()).collect()
                    }
                    None => Vec::new(),
                };
                for (stream, line) in rest {
                    self.output_lines(&stream, &[line]);
                }
                let out = render::finished(self.style, d);
                self.block(&out);
            }
            Event::CallCancelled(c) => {
                self.forget_pending(&c.call_id);
                if let Some(c) = self.calls.get_mut(&c.call_id) {
                    c.status = "cancelled".into();
                }
                let (mark, word) = render::status_mark(self.style, "cancelled");
                self.block(&format!("  {mark} {word}\n"));
            }
            Event::ToolResult(t) => self.on_tool_result(t),
            Event::SessionGrant(g) => {
                let line = format!(
                    "allowed for the rest of this session: {} {}{}",
                    one_line(&g.tool),
                    one_line(&g.pattern),
                    if g.writable {
                        " (runs with a writable workspace, as approved)"
                    } else {
                        ""
                    }
                );
                self.block(&format!("{}\n", self.style.blue(&line)));
            }
            Event::AgentRetry(r) => {
                self.end_text();
                let line = format!(
                    "the model request failed ({}); retrying in {:.1} s (attempt {})",
                    one_line(&r.code),
                    r.delay_ms as f64 / 1000.0,
                    r.attempt
                );
                self.block(&format!("{}\n", self.style.dim(&line)));
            }
            Event::AgentError(e) => {
                self.end_text();
                let line = format!(
                    "agent error {}: {}",
                    one_line(&e.code),
                    one_line(&e.message)
                );
                self.block(&format!("{}\n", self.style.red(&line)));
            }
            Event::TurnFinished(t) => self.on_turn_finished(t),
        }
    }

    fn on_user_message(&mut self, m: ev::UserMessage) {
        let s = self.style;
        self.end_text();
        if self.own_message.as_deref() == Some(m.content.as_str()) {
            self.own_message = None;
        } else {
            let mut body = String::new();
            for (i, l) in neutralize(&m.content).lines().enumerate() {
                let lead = if i == 0 { "you> " } else { "     " };
                body += &format!("{}{l}\n", s.bold(lead));
            }
            self.block(&body);
        }
        self.running_turn = Some(m.turn_id);
    }

    fn on_delta(&mut self, m: ev::AssistantDelta) {
        let key = (m.turn_id, m.step as u64);
        if self.text_open.as_ref() != Some(&key) {
            self.end_text();
            self.block("");
            let lead = self.style.cyan("agent> ");
            self.write(&lead);
            self.at_line_start = false;
            self.text_open = Some(key);
        }
        self.clear_transient();
        let text = neutralize(&m.text);
        self.write(&text);
        self.at_line_start = text.ends_with('\n');
    }

    /// `d` is the event's data, which [`render::call`] draws like a call record.
    fn on_proposed(&mut self, c: ev::CallProposed, d: &Value) {
        let s = self.style;
        self.end_text();
        let mut out = render::call(s, d);
        match c.status {
            CallStatus::Denied => {
                out += &format!(
                    "  {} {}\n",
                    s.red("✗ denied by policy"),
                    s.dim(&format!("({}); it did not run", one_line(&c.rule)))
                );
            }
            CallStatus::Failed => {
                let e = c.error.clone().unwrap_or_default();
                out += &format!(
                    "  {} {}\n",
                    s.red("✗ failed:"),
                    one_line(&format!(
                        "{}: {}",
                        e["code"].as_str().unwrap_or("error"),
                        e["message"].as_str().unwrap_or_default()
                    ))
                );
            }
            _ => {}
        }
        self.calls.insert(
            c.call_id,
            CallInfo {
                tool: c.tool,
                args: c.args,
                sha: c.args_sha256,
                status: c.status.as_str().into(),
                expires_at_ms: c.expires_at_ms,
                started: None,
                partial: HashMap::new(),
                hunks: c.preview.as_ref().map(hunk_labels).unwrap_or_default(),
            },
        );
        self.block(&out);
    }

    fn on_decided(&mut self, x: ev::CallDecided) {
        let s = self.style;
        let kind = x.status.as_str();
        self.forget_pending(&x.call_id);
        if let Some(c) = self.calls.get_mut(&x.call_id) {
            c.status = kind.into();
        }
        let (mark, word) = render::status_mark(s, kind);
        let mut line = format!("  {mark} {word}");
        if let Some(by) = &x.decided_by {
            line += &s.dim(&format!(" by {}", one_line(by)));
        }
        if let Some(r) = x.reason.as_deref().filter(|r| !r.is_empty()) {
            line += &format!(" — reason: {}", one_line(r));
        }
        if x.status == CallStatus::Expired {
            line += &s.dim(" — nobody decided in time; the call did not run");
        }
        self.block(&format!("{line}\n"));
    }

    fn on_output(&mut self, o: ev::CallOutput) {
        self.end_text();
        let lines = match self.calls.get_mut(&o.call_id) {
            Some(c) => {
                let buf = c.partial.entry(o.stream.clone()).or_default();
                buf.push_str(&o.data);
                let mut done = Vec::new();
                while let Some(i) = buf.find('\n') {
                    done.push(buf[..i].to_string());
                    buf.drain(..=i);
                }
                done
            }
            None => o.data.lines().map(str::to_string).collect(),
        };
        self.output_lines(&o.stream, &lines);
    }

    fn on_tool_result(&mut self, t: ev::ToolResult) {
        let how = match t.status.as_str() {
            "rejected" => "rejected",
            "not_run" => "not run",
            // A call that was made shows through its own events.
            _ => return,
        };
        self.end_text();
        let why = t
            .error
            .as_ref()
            .and_then(|e| e["message"].as_str())
            .map(|m| format!(": {}", one_line(m)))
            .unwrap_or_default();
        let line = format!("the model's {} call was {how}{why}", one_line(&t.tool));
        self.block(&format!("{}\n", self.style.yellow(&line)));
    }

    fn on_turn_finished(&mut self, t: ev::TurnFinished) {
        let s = self.style;
        self.end_text();
        let mut line = format!("turn {}", one_line(&t.status));
        line += &format!(" · {} step{}", t.steps, if t.steps == 1 { "" } else { "s" });
        if let Some(u) = t.usage {
            line += &format!(" · {} tokens", u.total_tokens);
        }
        match &t.error {
            Some(Value::Object(e)) => {
                let m = e
                    .get("message")
                    .or_else(|| e.get("code"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                line += &format!(" · {}", one_line(m));
            }
            Some(Value::String(e)) => line += &format!(" · {}", one_line(e)),
            _ => {}
        }
        let painted = match t.status.as_str() {
            "completed" => s.dim(&format!("── {line} ──")),
            "cancelled" => s.yellow(&format!("── {line} ──")),
            _ => s.red(&format!("── {line} ──")),
        };
        self.block(&format!("{painted}\n"));
        if self.running_turn.as_deref() == Some(t.turn_id.as_str()) {
            self.running_turn = None;
        }
    }

    fn output_lines(&mut self, stream: &str, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let s = self.style;
        let mut out = String::new();
        for l in lines {
            let l = one_line(l);
            out += &format!(
                "  {} {}\n",
                s.dim("│"),
                if stream == "stderr" { s.red(&l) } else { l }
            );
        }
        self.block(&out);
    }

    fn forget_pending(&mut self, call: &str) {
        self.pending.retain(|c| c != call);
        let asked = match &self.asking {
            Some(Asking::Choice(c)) | Some(Asking::Reason(c)) | Some(Asking::Hunks(c)) => c == call,
            None => false,
        };
        if asked {
            self.asking = None;
            self.clear_transient();
        }
    }

    // ---- prompts --------------------------------------------------------------------------

    /// Starts asking about the next pending call (if it still waits) and shows the prompt.
    async fn refresh(&mut self) {
        while self.asking.is_none() {
            let Some(id) = self.pending.front().cloned() else {
                break;
            };
            // The call as it is now: a replayed approval may have been decided since.
            match self.client.get(&format!("/v1/tool-calls/{id}")).await {
                Ok(call) if call["status"] == "awaiting_approval" => {
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.sha = call["args_sha256"].as_str().unwrap_or_default().into();
                        c.expires_at_ms = call["expires_at_ms"].as_u64();
                    } else {
                        self.calls.insert(
                            id.clone(),
                            CallInfo {
                                tool: call["tool"].as_str().unwrap_or("?").into(),
                                args: call["args"].clone(),
                                sha: call["args_sha256"].as_str().unwrap_or_default().into(),
                                status: "awaiting_approval".into(),
                                expires_at_ms: call["expires_at_ms"].as_u64(),
                                started: None,
                                partial: HashMap::new(),
                                hunks: hunk_labels(&call["preview"]),
                            },
                        );
                        let out = render::call(self.style, &call);
                        self.block(&out);
                    }
                    self.asking = Some(Asking::Choice(id.clone()));
                    let intro = self.question_intro(&id);
                    self.block(&intro);
                }
                Ok(_) => {
                    self.pending.pop_front();
                }
                Err(e) => {
                    let s = self.style;
                    self.block(&format!(
                        "{}\n",
                        s.red(&format!("cannot fetch call {id}: {e}"))
                    ));
                    self.pending.pop_front();
                }
            }
        }
        self.show_prompt();
    }

    fn question_intro(&self, id: &str) -> String {
        let s = self.style;
        let Some(c) = self.calls.get(id) else {
            return String::new();
        };
        let left = c
            .expires_at_ms
            .map(|e| e.saturating_sub(crate::store::now_ms()) / 1000)
            .map(|l| format!(", expires in {}:{:02}", l / 60, l % 60))
            .unwrap_or_default();
        format!(
            "{} {} {} {}\n",
            s.blue("?"),
            s.bold(&format!("approve {}", one_line(&c.tool))),
            truncate(&render::target(&c.tool, &c.args), 100),
            s.dim(&format!(
                "(call {}, args_sha256 {}…{left})",
                &id[..id.len().min(8)],
                &c.sha[..c.sha.len().min(12)]
            ))
        )
    }

    fn prompt_text(&self) -> Option<String> {
        let s = self.style;
        match &self.asking {
            Some(Asking::Choice(_)) => Some(format!(
                "{} ",
                s.bold(&format!(
                    "[y]es / [n]o{}{} / [v]iew >",
                    if self.grants_allowed {
                        " / [s]ession"
                    } else {
                        ""
                    },
                    match &self.asking {
                        Some(Asking::Choice(id)) => match self.calls.get(id) {
                            Some(c) if c.hunks.len() > 1 => " / [h]unks / [e]dit",
                            Some(c) if c.tool == "write_file" || c.tool == "edit_file" => {
                                " / [e]dit"
                            }
                            _ => "",
                        },
                        _ => "",
                    }
                ))
            )),
            Some(Asking::Reason(_)) => Some(format!(
                "{} ",
                s.bold("reason for the agent (Enter for none) >")
            )),
            Some(Asking::Hunks(id)) => {
                let n = self.calls.get(id).map_or(0, |c| c.hunks.len());
                Some(format!(
                    "{} ",
                    s.bold(&format!(
                        "hunks to approve, of 0..{} (e.g. 0,2; Enter to go back) >",
                        n.saturating_sub(1)
                    ))
                ))
            }
            None if self.running_turn.is_none() && self.connected => {
                Some(format!("{} ", s.bold("you>")))
            }
            None => None,
        }
    }

    fn show_prompt(&mut self) {
        let want = self.prompt_text();
        if want == self.prompt_shown && (self.transient || want.is_none()) {
            return;
        }
        self.clear_transient();
        if let Some(p) = want {
            if !self.at_line_start {
                self.write("\n");
            }
            self.write(&p);
            self.at_line_start = false;
            self.transient = true;
            self.prompt_shown = Some(p);
        }
    }

    fn spinner(&mut self) {
        if !self.tty || self.asking.is_some() || self.prompt_shown.is_some() {
            return;
        }
        if !self.at_line_start && !self.transient {
            return; // in the middle of the assistant's text
        }
        let s = self.style;
        let running: Vec<(&String, &CallInfo)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.status == "running")
            .collect();
        let text = if let Some((_, c)) = running.first() {
            let secs = c.started.map(|t| t.elapsed().as_secs()).unwrap_or(0);
            format!(
                "running {} {} · {secs}s{}",
                one_line(&c.tool),
                truncate(&render::target(&c.tool, &c.args), 60),
                if running.len() > 1 {
                    format!(" (+{} more)", running.len() - 1)
                } else {
                    String::new()
                }
            )
        } else if !self.connected {
            "reconnecting…".to_string()
        } else if self.running_turn.is_some() {
            "the agent is working… (Ctrl-C cancels)".to_string()
        } else {
            return;
        };
        self.spin = (self.spin + 1) % SPINNER.len();
        let line = format!("\r\x1b[2K{} {}", s.yellow(SPINNER[self.spin]), s.dim(&text));
        self.write(&line);
        self.transient = true;
        self.at_line_start = false;
    }

    // ---- input ----------------------------------------------------------------------------

    /// Handles one line typed by the user; `true` to quit.
    async fn on_line(&mut self, line: &str) -> bool {
        // The prompt and what was typed stay on screen; the cursor is on a new line.
        self.transient = false;
        self.prompt_shown = None;
        self.at_line_start = true;
        let s = self.style;
        let input = line.trim();
        match self.asking.take() {
            Some(Asking::Choice(id)) => {
                match input.to_ascii_lowercase().as_str() {
                    "y" | "yes" | "a" | "approve" => self.decide(&id, true, None).await,
                    "n" | "no" | "d" | "deny" => self.asking = Some(Asking::Reason(id)),
                    "s" | "session" if self.grants_allowed => self.approve_for_session(&id).await,
                    "h" | "hunks" if self.calls.get(&id).is_some_and(|c| c.hunks.len() > 1) => {
                        let list: String = self.calls[&id]
                            .hunks
                            .iter()
                            .map(|l| format!("  {l}\n"))
                            .collect();
                        self.block(&s.dim(&list));
                        self.asking = Some(Asking::Hunks(id))
                    }
                    "e" | "edit"
                        if self
                            .calls
                            .get(&id)
                            .is_some_and(|c| c.tool == "write_file" || c.tool == "edit_file") =>
                    {
                        self.edit_in_editor(&id).await;
                        self.asking = Some(Asking::Choice(id));
                    }
                    "v" | "view" | "?" => {
                        match self.client.get(&format!("/v1/tool-calls/{id}")).await {
                            Ok(call) => {
                                let out = render::call(s, &call);
                                self.block(&out);
                            }
                            Err(e) => self.block(&format!("{}\n", s.red(&e.to_string()))),
                        }
                        self.asking = Some(Asking::Choice(id));
                    }
                    _ => {
                        self.block(&format!(
                            "{}\n",
                            s.dim(&format!(
                                "y: approve exactly this call · n: deny it (you may give a reason){} · h: approve only some hunks · e: edit the change in $EDITOR first · v: show it again",
                                if self.grants_allowed {
                                    " · s: approve it and allow this pattern for the rest of the session"
                                } else {
                                    ""
                                }
                            ))
                        ));
                        self.asking = Some(Asking::Choice(id));
                    }
                }
                false
            }
            Some(Asking::Reason(id)) => {
                let reason = (!input.is_empty()).then(|| input.to_string());
                self.decide(&id, false, reason).await;
                false
            }
            Some(Asking::Hunks(id)) => {
                if input.is_empty() {
                    self.asking = Some(Asking::Choice(id));
                    return false;
                }
                let n = self.calls.get(&id).map_or(0, |c| c.hunks.len());
                let ids: Result<Vec<u32>, _> = input
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|t| !t.is_empty())
                    .map(str::parse::<u32>)
                    .collect();
                match ids {
                    Ok(ids) if !ids.is_empty() && ids.iter().all(|&i| (i as usize) < n) => {
                        self.decide_hunks(&id, ids).await
                    }
                    _ => {
                        self.block(&format!(
                            "{}\n",
                            s.red(&format!(
                                "hunk ids are numbers from 0 to {}, separated by commas",
                                n.saturating_sub(1)
                            ))
                        ));
                        self.asking = Some(Asking::Hunks(id));
                    }
                }
                false
            }
            None => {
                if input.is_empty() {
                    return false;
                }
                match input {
                    "/quit" | "/exit" | "/q" => return true,
                    "/help" => {
                        self.block(&format!(
                            "{}\n",
                            s.dim(
                                "/cancel stops the running turn (also Ctrl-C) · /quit leaves (also Ctrl-D) · anything else is sent to the agent"
                            )
                        ));
                        return false;
                    }
                    "/cancel" => {
                        self.cancel_turn().await;
                        return false;
                    }
                    _ => {}
                }
                if let Some(turn) = &self.running_turn {
                    let t = turn.clone();
                    self.block(&format!(
                        "{}\n",
                        s.yellow(&format!(
                            "a turn is running ({t}): wait for it, or press Ctrl-C to cancel it; your message was not sent"
                        ))
                    ));
                    return false;
                }
                self.own_message = Some(input.to_string());
                match self
                    .client
                    .request(
                        reqwest::Method::POST,
                        &format!("/v1/sessions/{}/messages", self.session),
                        Some(json!({ "content": input })),
                    )
                    .await
                {
                    Ok(Ok(v)) => {
                        if let Some(t) = v["turn_id"].as_str() {
                            self.running_turn = Some(t.to_string());
                        }
                    }
                    Ok(Err(e)) => {
                        self.own_message = None;
                        self.block(&format!("{}\n", s.red(&format!("not sent: {e}"))));
                    }
                    Err(e) => {
                        self.own_message = None;
                        self.block(&format!("{}\n", s.red(&format!("not sent: {e}"))));
                    }
                }
                false
            }
        }
    }

    async fn decide(&mut self, id: &str, approve: bool, reason: Option<String>) {
        self.decide_with(id, approve, reason, None).await
    }

    /// Approves only the hunks `ids` of a change.
    async fn decide_hunks(&mut self, id: &str, ids: Vec<u32>) {
        self.decide_with(id, true, None, Some(ids)).await
    }

    async fn decide_with(
        &mut self,
        id: &str,
        approve: bool,
        reason: Option<String>,
        hunks: Option<Vec<u32>>,
    ) {
        let s = self.style;
        let sha = self
            .calls
            .get(id)
            .map(|c| c.sha.clone())
            .unwrap_or_default();
        let mut body = json!({
            "decision": if approve { "approve" } else { "deny" },
            "args_sha256": sha,
        });
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        if let Some(h) = hunks {
            body["hunks"] = json!(h);
        }
        match self
            .client
            .request(
                reqwest::Method::POST,
                &format!("/v1/tool-calls/{id}/decision"),
                Some(body),
            )
            .await
        {
            Ok(Ok(_)) => self.pending.retain(|c| c != id), // the events show the rest
            Ok(Err(e)) => {
                self.pending.retain(|c| c != id);
                self.block(&format!(
                    "{}\n",
                    s.red(&format!(
                        "not {}: {e}",
                        if approve { "approved" } else { "denied" }
                    ))
                ));
            }
            Err(e) => {
                // Not sent: ask again.
                self.block(&format!("{}\n", s.red(&e.to_string())));
                self.asking = Some(Asking::Choice(id.to_string()));
            }
        }
    }

    /// Opens the waiting change in `$EDITOR` (`$VISUAL`, else `vi`): a write's content, or an
    /// edit's new texts between marker lines. A changed file is sent as the user's version;
    /// the server previews it and the call keeps waiting, bound to the new hash (shown by
    /// its `call_edited` event), for y/n as before.
    async fn edit_in_editor(&mut self, id: &str) {
        let s = self.style;
        let Some(c) = self.calls.get(id) else { return };
        let (tool, args, sha) = (c.tool.clone(), c.args.clone(), c.sha.clone());
        let original = match editable_text(&tool, &args) {
            Some(t) => t,
            None => return,
        };
        let dir = std::env::temp_dir().join(format!("airlock-edit-{}", uuid::Uuid::new_v4()));
        let file = dir.join(
            std::path::Path::new(args["path"].as_str().unwrap_or("change.txt"))
                .file_name()
                .unwrap_or_default(),
        );
        // Only this user may read the change while it is being edited.
        let written = {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)
        }
        .and_then(|_| std::fs::write(&file, &original));
        if let Err(e) = written {
            self.block(&format!(
                "{}\n",
                s.red(&format!("cannot write a file to edit: {e}"))
            ));
            return;
        }
        let editor = std::env::var("VISUAL")
            .or_else(|_| std::env::var("EDITOR"))
            .unwrap_or_else(|_| "vi".into());
        self.clear_transient();
        // `$EDITOR` may carry arguments (`code --wait`): the shell splits it.
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&file)
            .status()
            .await;
        let edited = std::fs::read_to_string(&file);
        let _ = std::fs::remove_dir_all(&dir);
        let edited = match (status, edited) {
            (Ok(st), Ok(t)) if st.success() => t,
            (Ok(st), Ok(_)) => {
                let m = format!("{editor} exited with {st}; nothing was sent");
                self.block(&format!("{}\n", s.yellow(&m)));
                return;
            }
            (Ok(_), Err(e)) => {
                let m = format!("cannot read the edited file back: {e}; nothing was sent");
                self.block(&format!("{}\n", s.red(&m)));
                return;
            }
            (Err(e), _) => {
                self.block(&format!(
                    "{}\n",
                    s.red(&format!("cannot run {editor}: {e}"))
                ));
                return;
            }
        };
        if edited == original {
            self.block(&format!("{}\n", s.dim("unchanged: nothing was sent")));
            return;
        }
        let mut body = json!({ "args_sha256": sha });
        if tool == "write_file" {
            body["content"] = json!(edited);
        } else {
            let n = args["edits"].as_array().map_or(0, Vec::len);
            match split_new_strings(&edited, n) {
                Some(t) => body["new_strings"] = json!(t),
                None => {
                    self.block(&format!(
                        "{}\n",
                        s.red("the marker lines were changed or removed: nothing was sent")
                    ));
                    return;
                }
            }
        }
        match self
            .client
            .request(
                reqwest::Method::POST,
                &format!("/v1/tool-calls/{id}/edit"),
                Some(body),
            )
            .await
        {
            Ok(Ok(_)) => {} // the call_edited event shows the new diff
            Ok(Err(e)) => self.block(&format!("{}\n", s.red(&format!("not edited: {e}")))),
            Err(e) => self.block(&format!("{}\n", s.red(&format!("not edited: {e}")))),
        }
    }

    /// Grants the call's path (file tools) or exact command (run_shell) for the rest of the
    /// session, then approves the call.
    async fn approve_for_session(&mut self, id: &str) {
        let s = self.style;
        let Some(c) = self.calls.get(id) else {
            return;
        };
        let key = if c.tool == "run_shell" {
            "command"
        } else {
            "path"
        };
        let Some(pattern) = c.args[key].as_str().map(str::to_string) else {
            self.block(&format!(
                "{}\n",
                s.yellow("this call has no pattern to allow; approve or deny it")
            ));
            self.asking = Some(Asking::Choice(id.to_string()));
            return;
        };
        let tool = c.tool.clone();
        match self
            .client
            .request(
                reqwest::Method::POST,
                &format!("/v1/sessions/{}/grants", self.session),
                Some(json!({"tool": tool, "pattern": pattern})),
            )
            .await
        {
            Ok(Ok(_)) => self.decide(id, true, None).await,
            Ok(Err(e)) => {
                self.block(&format!(
                    "{}\n",
                    s.red(&format!("not allowed for the session: {e}"))
                ));
                self.asking = Some(Asking::Choice(id.to_string()));
            }
            Err(e) => {
                self.block(&format!("{}\n", s.red(&e.to_string())));
                self.asking = Some(Asking::Choice(id.to_string()));
            }
        }
    }

    async fn cancel_turn(&mut self) {
        let s = self.style;
        match self
            .client
            .request(
                reqwest::Method::POST,
                &format!("/v1/sessions/{}/cancel", self.session),
                Some(json!({})),
            )
            .await
        {
            Ok(Ok(v)) if v["cancelled"] == true => self.block(&format!(
                "{}\n",
                s.yellow("^C cancelling the turn… (Ctrl-C again within 2 s to quit)")
            )),
            Ok(Ok(_)) => self.block(&format!("{}\n", s.dim("no turn is running"))),
            Ok(Err(e)) => self.block(&format!("{}\n", s.red(&format!("cannot cancel: {e}")))),
            Err(e) => self.block(&format!("{}\n", s.red(&e.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_order() {
        assert!(is_after("2-0", "1-5"));
        assert!(is_after("1-6", "1-5"));
        assert!(!is_after("1-5", "1-5"));
        assert!(!is_after("1-4", "1-5"));
        assert!(!is_after("9-0", "10-0"));
    }

    #[test]
    fn an_edits_new_strings_survive_the_editor_file_and_a_lost_marker_is_refused() {
        let args = json!({"path": "f", "edits": [
            {"old_string": "a", "new_string": "one\ntwo"},
            {"old_string": "b", "new_string": ""},
            {"old_string": "c", "new_string": "three\n"},
        ]});
        let text = editable_text("edit_file", &args).unwrap();
        assert_eq!(
            split_new_strings(&text, 3).unwrap(),
            ["one\ntwo", "", "three\n"]
        );
        let edited = text.replace("one\ntwo", "ONE");
        assert_eq!(split_new_strings(&edited, 3).unwrap()[0], "ONE");
        let lost = text.replace(&new_text_marker(1, 3), "");
        assert_eq!(split_new_strings(&lost, 3), None);
        assert_eq!(split_new_strings(&format!("junk\n{text}"), 3), None);
        assert_eq!(
            editable_text("write_file", &json!({"path": "f", "content": "x"})).as_deref(),
            Some("x")
        );
        assert_eq!(editable_text("run_shell", &json!({"command": "ls"})), None);
    }
}
