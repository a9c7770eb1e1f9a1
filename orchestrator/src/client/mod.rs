//! The terminal client: `airlock chat` (interactive, over the session's WebSocket) and the plain
//! subcommands for scripts (`airlock sessions list`, `airlock calls list|approve|deny`,
//! `airlock audit tail`), all over the HTTP API of a running server.
//!
//! The token comes from `AIRLOCK_TOKEN`, else from the first line of
//! `$XDG_CONFIG_HOME/airlock/token` (`~/.config/airlock/token`). Everything the model or a tool
//! produced is printed through [`render::neutralize`]: no escape sequence of theirs reaches the
//! terminal.

pub mod chat;
pub mod mcp;
pub mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use render::{one_line, truncate, utc, Style};

/// Where the server is.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The Airlock server's base URL. The token comes from AIRLOCK_TOKEN or
    /// ~/.config/airlock/token.
    #[arg(long, env = "AIRLOCK_SERVER", default_value = "http://127.0.0.1:8420")]
    pub server: String,
}

/// `airlock chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Continue this session (its history is shown first). Default: a new session.
    #[arg(long)]
    pub session: Option<String>,
}

/// `airlock sessions …`.
#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// Your sessions, newest first.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `airlock calls …`.
#[derive(Subcommand, Debug)]
pub enum CallsCmd {
    /// Tool calls waiting for your approval (with --all: every call), oldest first.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Only this session. Default: all your sessions.
        #[arg(long)]
        session: Option<String>,
        /// Every call, not only those waiting for approval.
        #[arg(long)]
        all: bool,
        /// Print the calls as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a call: shows what is being approved (the diff or the command) and approves
    /// exactly that (the decision carries the call's args_sha256).
    Approve {
        #[command(flatten)]
        conn: Conn,
        /// The call's id.
        id: String,
        /// Only approve if the call's args_sha256 is this one (what you reviewed earlier).
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Deny a call; the reason goes back to the agent.
    Deny {
        #[command(flatten)]
        conn: Conn,
        /// The call's id.
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Undo an applied call: proposes putting back what it replaced (files it changed get
    /// their previous content, files it created are removed) as a new call, shows its diff,
    /// and waits for your approval like any change. Refused, naming the files, when a file
    /// changed since the call.
    Revert {
        #[command(flatten)]
        conn: Conn,
        /// The applied call's id (`airlock calls list --all`).
        id: String,
        /// Approve the revert at once, bound to the diff printed.
        #[arg(long)]
        approve: bool,
    },
}

/// `airlock audit tail`: the newest audit entries through the API (admins only).
#[derive(Args, Debug)]
pub struct AuditTailArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// How many of the newest entries to print first.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub lines: usize,
    /// Print the entries after this id instead of the newest ones.
    #[arg(long)]
    pub after: Option<String>,
    /// Keep polling for new entries (Ctrl-C stops).
    #[arg(short, long)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// A client-side failure: the message is for a person.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    fn new(m: impl Into<String>) -> ClientError {
        ClientError(m.into())
    }
}

/// An answer that is not a success: the status and the API's `error.code` / `message`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code,
            self.status,
            one_line(&self.message)
        )
    }
}

impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> ClientError {
        let hint = match e.status {
            401 => " — check AIRLOCK_TOKEN or ~/.config/airlock/token",
            _ => "",
        };
        ClientError(format!("{e}{hint}"))
    }
}

/// The token: `AIRLOCK_TOKEN`, else the first line of the config file.
pub fn load_token() -> Result<String, ClientError> {
    if let Ok(t) = std::env::var("AIRLOCK_TOKEN") {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let path = token_path();
    match &path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(s) => {
                let t = s.lines().next().unwrap_or_default().trim().to_string();
                if t.is_empty() {
                    return Err(ClientError::new(format!(
                        "{} is empty: put your token on its first line",
                        p.display()
                    )));
                }
                warn_if_readable_by_others(p);
                Ok(t)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(no_token(path.as_ref())),
            Err(e) => Err(ClientError::new(format!(
                "cannot read {}: {e}",
                p.display()
            ))),
        },
        None => Err(no_token(None)),
    }
}

fn no_token(path: Option<&PathBuf>) -> ClientError {
    ClientError::new(format!(
        "no token: set AIRLOCK_TOKEN or write it to {} (an admin makes one with `airlock admin token --user NAME`)",
        path.map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.config/airlock/token".into())
    ))
}

/// `$XDG_CONFIG_HOME/airlock/token`, else `$HOME/.config/airlock/token`.
pub fn token_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("airlock").join("token"))
}

fn warn_if_readable_by_others(p: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(p) {
        if m.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: {} is readable by other users; chmod 600 it",
                p.display()
            );
        }
    }
}

/// The HTTP API of one server, with the user's token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `server` (http:// or https://) with the token from the environment.
    pub fn from_conn(conn: &Conn) -> Result<Client, ClientError> {
        Client::new(&conn.server, load_token()?)
    }

    pub fn new(server: &str, token: String) -> Result<Client, ClientError> {
        let base = server.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::new(format!(
                "--server `{base}`: expected http://HOST:PORT or https://HOST"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::new(format!("HTTP client: {e}")))?;
        Ok(Client { base, token, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// `ws://…` / `wss://…` for `path`.
    pub fn ws_url(&self, path: &str) -> String {
        let b = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", &self.base["http://".len()..])
        };
        format!("{b}{path}")
    }

    /// Sends a request; a non-2xx answer is an [`ApiError`], a transport failure a
    /// [`ClientError`].
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Result<Value, ApiError>, ClientError> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let res = rb.send().await.map_err(|e| {
            ClientError::new(format!(
                "cannot reach the server at {}: {}",
                self.base,
                error_chain(&e)
            ))
        })?;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(Ok(json));
        }
        Ok(Err(ApiError {
            status,
            code: json["error"]["code"]
                .as_str()
                .unwrap_or("http_error")
                .to_string(),
            message: json["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| truncate(&text, 200)),
        }))
    }

    /// GET, with any failure as a [`ClientError`].
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        Ok(self.request(reqwest::Method::GET, path, None).await??)
    }

    /// POST, with any failure as a [`ClientError`].
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        Ok(self
            .request(reqwest::Method::POST, path, Some(body))
            .await??)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s += &format!(": {c}");
        src = c.source();
    }
    s
}

/// A path segment for an id given on the command line (ids are `[A-Za-z0-9-]`).
fn checked_id(what: &str, id: &str) -> Result<String, ClientError> {
    if !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        Ok(id.to_string())
    } else {
        Err(ClientError::new(format!(
            "`{}` is not a {what} id",
            one_line(id)
        )))
    }
}

// ---- sessions list --------------------------------------------------------------------------

pub async fn sessions_cmd(cmd: SessionsCmd) -> Result<ExitCode, ClientError> {
    let SessionsCmd::List { conn, json } = cmd;
    let c = Client::from_conn(&conn)?;
    let v = c.get("/v1/sessions").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let list = v["sessions"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!("no sessions (start one with `airlock chat`)");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<36}  {:<19}  OWNER", "SESSION", "CREATED (UTC)");
    for s in list {
        println!(
            "{:<36}  {:<19}  {}",
            one_line(s["id"].as_str().unwrap_or_default()),
            utc(s["created_at_ms"].as_u64().unwrap_or(0)),
            one_line(s["owner"].as_str().unwrap_or_default())
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ---- calls ----------------------------------------------------------------------------------

pub async fn calls_cmd(cmd: CallsCmd) -> Result<ExitCode, ClientError> {
    match cmd {
        CallsCmd::List {
            conn,
            session,
            all,
            json,
        } => calls_list(&Client::from_conn(&conn)?, session, all, json).await,
        CallsCmd::Approve { conn, id, sha256 } => {
            decide(&Client::from_conn(&conn)?, &id, true, sha256, None).await
        }
        CallsCmd::Deny { conn, id, reason } => {
            decide(&Client::from_conn(&conn)?, &id, false, None, reason).await
        }
        CallsCmd::Revert { conn, id, approve } => {
            revert(&Client::from_conn(&conn)?, &id, approve).await
        }
    }
}

async fn revert(c: &Client, id: &str, approve: bool) -> Result<ExitCode, ClientError> {
    let id = checked_id("tool call", id)?;
    let call = c
        .post(&format!("/v1/tool-calls/{id}/revert"), json!({}))
        .await?;
    let new_id = call["id"].as_str().unwrap_or_default().to_string();
    let sha = call["args_sha256"].as_str().unwrap_or_default().to_string();
    if call["status"] != "awaiting_approval" {
        print!("{}", render::call(Style::detect(), &call));
        return Err(ClientError::new(format!(
            "the revert of call {id} is `{}`: {}",
            one_line(call["status"].as_str().unwrap_or("?")),
            one_line(
                call["reason"]
                    .as_str()
                    .unwrap_or("it is not waiting for approval")
            )
        )));
    }
    if approve {
        return decide(c, &new_id, true, Some(sha), None).await;
    }
    print!("{}", render::call(Style::detect(), &call));
    println!("  args_sha256 {sha}");
    println!(
        "the revert is call {new_id}, waiting for approval: airlock calls approve {new_id} --sha256 {sha}"
    );
    Ok(ExitCode::SUCCESS)
}

async fn calls_list(
    c: &Client,
    session: Option<String>,
    all: bool,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let sessions: Vec<String> = match session {
        Some(s) => vec![checked_id("session", &s)?],
        None => c.get("/v1/sessions").await?["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect(),
    };
    let query = if all { "" } else { "?status=awaiting_approval" };
    let mut calls = Vec::new();
    for s in &sessions {
        let v = c
            .get(&format!("/v1/sessions/{s}/tool-calls{query}"))
            .await?;
        calls.extend(v["calls"].as_array().cloned().unwrap_or_default());
    }
    calls.sort_by_key(|c| c["created_at_ms"].as_u64().unwrap_or(0));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "calls": calls })).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if calls.is_empty() {
        eprintln!(
            "{}",
            if all {
                "no tool calls"
            } else {
                "no tool calls waiting for approval"
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36}  {:<8}  {:<10}  {:<17}  WHAT",
        "CALL", "SESSION", "TOOL", "STATUS"
    );
    for call in calls {
        let tool = call["tool"].as_str().unwrap_or("?");
        println!(
            "{:<36}  {:<8}  {:<10}  {:<17}  {}",
            one_line(call["id"].as_str().unwrap_or_default()),
            truncate(
                &one_line(call["session_id"].as_str().unwrap_or_default()),
                8
            ),
            one_line(tool),
            one_line(call["status"].as_str().unwrap_or_default()),
            truncate(&render::target(tool, &call["args"]), 70)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn decide(
    c: &Client,
    id: &str,
    approve: bool,
    expect_sha: Option<String>,
    reason: Option<String>,
) -> Result<ExitCode, ClientError> {
    let id = checked_id("tool call", id)?;
    let call = c.get(&format!("/v1/tool-calls/{id}")).await?;
    let style = Style::detect();
    let status = call["status"].as_str().unwrap_or_default();
    let sha = call["args_sha256"].as_str().unwrap_or_default().to_string();
    print!("{}", render::call(style, &call));
    println!("  args_sha256 {sha}");
    if status != "awaiting_approval" {
        return Err(ClientError::new(format!(
            "call {id} is `{}`, not waiting for approval: nothing to decide",
            one_line(status)
        )));
    }
    if let Some(want) = expect_sha {
        if want != sha {
            return Err(ClientError::new(format!(
                "call {id} has args_sha256 {sha}, not {} — it is not what you reviewed; nothing was decided",
                one_line(&want)
            )));
        }
    }
    let mut body = json!({
        "decision": if approve { "approve" } else { "deny" },
        "args_sha256": sha,
    });
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    let after = c
        .post(&format!("/v1/tool-calls/{id}/decision"), body)
        .await?;
    let (mark, word) = render::status_mark(
        style,
        after["status"]
            .as_str()
            .unwrap_or(if approve { "approved" } else { "denied" }),
    );
    println!(
        "{} {}: call {id} is now {word}",
        mark,
        if approve { "approved" } else { "denied" }
    );
    Ok(ExitCode::SUCCESS)
}

// ---- audit tail -----------------------------------------------------------------------------

pub async fn audit_tail(args: AuditTailArgs) -> Result<ExitCode, ClientError> {
    let AuditTailArgs {
        conn,
        lines,
        after,
        follow,
        json,
    } = args;
    let c = Client::from_conn(&conn)?;
    let page = |after: Option<String>| {
        let c = c.clone();
        async move {
            let q = match &after {
                Some(a) => format!("?limit=1000&after={}", checked_event_id(a)?),
                None => "?limit=1000".into(),
            };
            c.get(&format!("/v1/audit{q}")).await
        }
    };
    let print = |e: &Value| {
        if json {
            println!("{e}");
        } else {
            println!("{}", audit_line(e));
        }
    };
    // First the newest `lines` entries (or everything after --after), page by page.
    let mut cursor = after.clone();
    let mut tail: std::collections::VecDeque<Value> = Default::default();
    loop {
        let v = page(cursor.clone()).await?;
        let entries = v["entries"].as_array().cloned().unwrap_or_default();
        let n = entries.len();
        for e in entries {
            if after.is_some() {
                print(&e);
            } else {
                tail.push_back(e);
                if tail.len() > lines {
                    tail.pop_front();
                }
            }
        }
        if let Some(l) = v["last_id"].as_str() {
            cursor = Some(l.to_string());
        }
        if n < 1000 {
            break;
        }
    }
    for e in &tail {
        print(e);
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let v = page(cursor.clone()).await?;
        for e in v["entries"].as_array().into_iter().flatten() {
            print(e);
        }
        if let Some(l) = v["last_id"].as_str() {
            cursor = Some(l.to_string());
        }
    }
}

fn checked_event_id(s: &str) -> Result<&str, ClientError> {
    crate::store::parse_event_id(s)
        .map(|_| s)
        .ok_or_else(|| ClientError::new(format!("`{}` is not an event id", one_line(s))))
}

fn audit_line(e: &Value) -> String {
    let s = |k: &str| one_line(e[k].as_str().unwrap_or_default());
    let mut line = format!(
        "{}  {:<14} {:<10} {:<10} {:<10} call {} session {} → {}",
        utc(e["at_ms"].as_u64().unwrap_or(0)),
        s("actor"),
        s("action"),
        s("tool"),
        truncate(&s("args_sha256"), 10),
        s("call_id"),
        truncate(&s("session_id"), 9),
        s("outcome"),
    );
    if let Some(d) = e["detail"].as_str() {
        line += &format!("  ({})", truncate(&one_line(d), 200));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_ids() {
        let c = Client::new("http://127.0.0.1:8420/", "t".into()).unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:8420");
        assert_eq!(c.ws_url("/v1/x"), "ws://127.0.0.1:8420/v1/x");
        let c = Client::new("https://airlock.example", "t".into()).unwrap();
        assert_eq!(c.ws_url("/v1/x"), "wss://airlock.example/v1/x");
        assert!(Client::new("ftp://x", "t".into()).is_err());
        assert!(checked_id("call", "0a1b-2c").is_ok());
        assert!(checked_id("call", "../admin").is_err());
        assert!(checked_id("call", "").is_err());
    }

    #[test]
    fn audit_lines_are_one_line_and_inert() {
        let e = json!({"at_ms": 0, "actor": "alice\x1b[2J", "action": "approved", "tool": "edit_file",
            "args_sha256": "abcdef0123456789", "call_id": "c", "session_id": "s", "outcome": "approved",
            "detail": "x\ny"});
        let l = audit_line(&e);
        assert!(!l.contains('\x1b') && !l.contains('\n'), "{l:?}");
        assert!(l.contains("alice^[[2J") && l.contains("(x^Jy)"), "{l}");
    }
}
