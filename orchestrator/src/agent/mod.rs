//! The agent: an LLM loop over an OpenAI-compatible API. A user's message starts a *turn*: the
//! stored conversation and the tool schemas go to the model, its text streams to the session as
//! events, and every tool call it makes is proposed through [`Engine::propose`] — exactly the
//! policy → preview → approval → sandbox path of `POST /v1/sessions/{id}/tool-calls` — and
//! waited for (including the user's approval). Results go back to the model, delimited and
//! marked untrusted, until it answers without tool calls or the step limit is reached.
//!
//! The conversation lives in Redis (see `store/history.rs`); one turn runs per session at a
//! time (a Redis lock, so this holds across orchestrators). The agent knows nothing of Docker
//! or of the Redis key layout.
//!
//! Events written to the session's stream (besides the engine's call events):
//! `user_message`, `assistant_delta`, `assistant_message`, `tool_result`, `agent_retry`,
//! `agent_error`, `turn_finished` (see docs/API.md).

pub mod prompt;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::calls::CallStatus;
use crate::config::LlmConfig;
use crate::engine::{Engine, EngineError, EventStream};
use crate::events::{self as ev, Event};
use crate::llm::{Completion, LlmClient, LlmError, LlmSettings, LlmSetupError, Usage};
use crate::policy::User;
use crate::store::now_ms;
use crate::store::{AgentStore, CallRecord, Heartbeat, StoreError, TURN_HEARTBEAT};

use prompt::{build_messages, render_tool_result, tool_schemas, validate_call, ToolOutcome};

/// History entries read per request (the byte cap of the config applies after).
const MAX_HISTORY_ENTRIES: usize = 5_000;
/// Text deltas are written as one event per this many bytes or this long, whichever first.
const DELTA_BYTES: usize = 1024;
const DELTA_DELAY: Duration = Duration::from_millis(50);
/// How long a cancelled call may take to reach a final status before the turn stops waiting.
const CANCEL_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent is not available: {0}")]
    Unavailable(String),
    #[error("a turn is already running in this session (turn {0}); wait for its `turn_finished` event or cancel it with POST /v1/sessions/{{id}}/cancel")]
    TurnRunning(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> AgentError {
        AgentError::Engine(EngineError::Store(e))
    }
}

/// Why a turn was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// The user cancelled it.
    Cancelled,
    /// The server is shutting down.
    Interrupted,
    /// Another turn took the session's lock (its heartbeat could not renew it in time).
    LockLost,
}

/// A turn running on this orchestrator.
#[derive(Clone)]
struct TurnHandle {
    turn_id: String,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl TurnHandle {
    fn stop(&self, why: StopReason) {
        self.reason.lock().expect("reason lock").get_or_insert(why);
        self.cancel.cancel();
    }
    fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().expect("reason lock")
    }
}

pub struct Agent {
    engine: Arc<Engine>,
    /// The agent's own keys (history, turn lock) and its session events.
    store: AgentStore,
    llm: Option<LlmClient>,
    cfg: LlmConfig,
    /// Running turns by session id.
    turns: Mutex<HashMap<String, TurnHandle>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// A turn's end: its status and, when it failed, why.
struct TurnEnd {
    status: &'static str,
    error: Option<Value>,
}

impl TurnEnd {
    fn failed(code: &str, message: impl Into<String>) -> TurnEnd {
        TurnEnd {
            status: "failed",
            error: Some(json!({"code": code, "message": message.into()})),
        }
    }
    fn with(status: &'static str) -> TurnEnd {
        TurnEnd {
            status,
            error: None,
        }
    }
}

impl Agent {
    /// The agent for `cfg`; without `llm.base_url` it exists but answers `Unavailable`.
    pub fn new(engine: Arc<Engine>, cfg: &LlmConfig) -> Result<Arc<Agent>, LlmSetupError> {
        let llm = match LlmSettings::from_config(cfg)? {
            Some(s) => Some(LlmClient::new(s)?),
            None => None,
        };
        Ok(Arc::new(Agent {
            store: engine.agent_store(),
            engine,
            llm,
            cfg: cfg.clone(),
            turns: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }))
    }

    pub fn enabled(&self) -> bool {
        self.llm.is_some()
    }

    /// Starts a turn with the user's message; returns the turn id. Refused while another turn
    /// of the session runs.
    pub async fn start_turn(
        self: &Arc<Self>,
        user: &User,
        session_id: &str,
        content: &str,
    ) -> Result<String, AgentError> {
        // Another user's session is "not found", whatever else is wrong.
        self.engine.owned_session(user, session_id).await?;
        let llm = self.llm.clone().ok_or_else(|| {
            AgentError::Unavailable(
                "no model is configured (set [llm] base_url and model in the server config)".into(),
            )
        })?;
        if self.stop.is_cancelled() {
            return Err(AgentError::Unavailable(
                "the server is shutting down".into(),
            ));
        }
        if content.trim().is_empty() {
            return Err(AgentError::BadRequest("`content` must not be empty".into()));
        }
        let max = self.engine.limits().max_body_bytes;
        if content.len() > max {
            return Err(AgentError::BadRequest(format!(
                "the message is {} bytes; the limit is {max}",
                content.len()
            )));
        }
        if let Some(h) = self.local_turn(session_id) {
            return Err(AgentError::TurnRunning(h.turn_id));
        }
        let turn_id = uuid::Uuid::new_v4().to_string();
        let store = &self.store;
        match store.begin_turn(session_id, &turn_id).await {
            Ok(Ok(())) => {}
            Ok(Err(holder)) => return Err(AgentError::TurnRunning(holder)),
            Err(StoreError::NotFound) => return Err(EngineError::NotFound("session").into()),
            Err(e) => return Err(e.into()),
        }
        let handle = TurnHandle {
            turn_id: turn_id.clone(),
            cancel: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
        };
        self.turns
            .lock()
            .expect("turns lock")
            .insert(session_id.to_string(), handle.clone());
        let stored = async {
            store
                .append_history(
                    session_id,
                    &json!({"v": 1, "kind": "message", "turn_id": turn_id, "at_ms": now_ms(),
                            "message": {"role": "user", "content": content}}),
                )
                .await?;
            store
                .append_event(
                    session_id,
                    &Event::UserMessage(ev::UserMessage {
                        turn_id: turn_id.clone(),
                        content: content.to_string(),
                    }),
                )
                .await
        }
        .await;
        if let Err(e) = stored {
            self.forget(session_id, &turn_id);
            let _ = store.end_turn(session_id, &turn_id).await;
            return Err(e.into());
        }
        let this = self.clone();
        let (user, sid) = (user.clone(), session_id.to_string());
        self.tasks
            .spawn(async move { this.run_turn(llm, user, sid, handle).await });
        Ok(turn_id)
    }

    /// Cancels the session's running turn (here or on another orchestrator sharing Redis);
    /// returns its id, or `None` when no turn runs.
    pub async fn cancel_turn(
        &self,
        user: &User,
        session_id: &str,
    ) -> Result<Option<String>, AgentError> {
        self.engine.owned_session(user, session_id).await?;
        if let Some(h) = self.local_turn(session_id) {
            h.stop(StopReason::Cancelled);
            return Ok(Some(h.turn_id));
        }
        Ok(self.store.request_turn_cancel(session_id).await?)
    }

    /// Stops a local turn of a session being deleted (no ownership check: the caller did it).
    pub fn cancel_local(&self, session_id: &str) {
        if let Some(h) = self.local_turn(session_id) {
            h.stop(StopReason::Cancelled);
        }
    }

    /// The running turn's id (anywhere), for `GET /v1/sessions/{id}/messages`.
    pub async fn current_turn(&self, session_id: &str) -> Result<Option<String>, AgentError> {
        Ok(self.store.current_turn(session_id).await?)
    }

    /// The stored conversation of a session the user owns.
    pub async fn history(&self, user: &User, session_id: &str) -> Result<Vec<Value>, AgentError> {
        self.engine.owned_session(user, session_id).await?;
        Ok(self
            .store
            .read_history(session_id, MAX_HISTORY_ENTRIES)
            .await?)
    }

    /// Stops every turn (their pending approvals are cancelled; running calls are left to the
    /// engine's drain) and waits for them to record their end.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let handles: Vec<TurnHandle> = self
            .turns
            .lock()
            .expect("turns lock")
            .values()
            .cloned()
            .collect();
        for h in handles {
            h.stop(StopReason::Interrupted);
        }
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(30), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("agent turns did not finish within 30 s of shutdown");
        }
    }

    fn local_turn(&self, session_id: &str) -> Option<TurnHandle> {
        self.turns
            .lock()
            .expect("turns lock")
            .get(session_id)
            .cloned()
    }

    fn forget(&self, session_id: &str, turn_id: &str) {
        let mut m = self.turns.lock().expect("turns lock");
        if m.get(session_id).is_some_and(|h| h.turn_id == turn_id) {
            m.remove(session_id);
        }
    }

    async fn run_turn(self: Arc<Self>, llm: LlmClient, user: User, sid: String, h: TurnHandle) {
        let store = self.store.clone();
        let beat_stop = CancellationToken::new();
        let beat = {
            let (store, sid, h, beat_stop) =
                (store.clone(), sid.clone(), h.clone(), beat_stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = beat_stop.cancelled() => return,
                        _ = tokio::time::sleep(TURN_HEARTBEAT) => {}
                    }
                    match store.turn_heartbeat(&sid, &h.turn_id).await {
                        Ok(Heartbeat::Held) => {}
                        Ok(Heartbeat::CancelRequested) => h.stop(StopReason::Cancelled),
                        Ok(Heartbeat::Lost) => h.stop(StopReason::LockLost),
                        Err(e) => tracing::debug!(error = %e, "turn heartbeat failed"),
                    }
                }
            })
        };
        let mut turn = Turn {
            agent: &self,
            llm: &llm,
            user: &user,
            sid: &sid,
            h: &h,
            usage: Usage::default(),
            usage_reported: false,
            steps: 0,
            after: None,
            calls: Vec::new(),
        };
        let end = match turn.run().await {
            Ok(end) | Err(end) => end,
        };
        let end = match h.reason() {
            Some(StopReason::Cancelled) if end.error.is_none() => TurnEnd::with("cancelled"),
            Some(StopReason::Interrupted) if end.error.is_none() => TurnEnd::with("interrupted"),
            Some(StopReason::LockLost) if end.error.is_none() => TurnEnd::failed(
                "turn_lock_lost",
                "another turn took over the session while this one could not renew its lock",
            ),
            _ => end,
        };
        if h.cancel.is_cancelled() {
            turn.cancel_open_calls(h.reason() != Some(StopReason::Interrupted))
                .await;
        }
        beat_stop.cancel();
        let _ = beat.await;
        let usage = turn.usage_reported.then_some(turn.usage);
        let _ = store
            .append_history(
                &sid,
                &json!({"v": 1, "kind": "turn_end", "turn_id": h.turn_id, "at_ms": now_ms(),
                        "status": end.status, "steps": turn.steps, "usage": usage, "error": end.error}),
            )
            .await;
        self.engine.metrics.count_turn(end.status);
        // The session is free before `turn_finished` is announced, so a client that answers
        // that event at once is not refused.
        self.forget(&sid, &h.turn_id);
        if let Err(e) = store.end_turn(&sid, &h.turn_id).await {
            tracing::warn!(error = %e, session_id = %sid, "could not release the turn lock; it lapses by itself");
        }
        let _ = store
            .append_event(
                &sid,
                &Event::TurnFinished(ev::TurnFinished {
                    turn_id: h.turn_id.clone(),
                    status: end.status.to_string(),
                    steps: turn.steps,
                    usage,
                    error: end.error,
                }),
            )
            .await;
    }
}

/// One running turn.
struct Turn<'a> {
    agent: &'a Agent,
    llm: &'a LlmClient,
    user: &'a User,
    sid: &'a str,
    h: &'a TurnHandle,
    usage: Usage,
    usage_reported: bool,
    steps: u32,
    /// The last session event this turn has looked at (calls are awaited from here).
    after: Option<String>,
    /// Ids of the calls this turn proposed.
    calls: Vec<String>,
}

/// Output of a call, capped: the start and the end are kept.
struct OutputBuf {
    head: String,
    tail: String,
    dropped: usize,
    cap: usize,
}

impl OutputBuf {
    fn new(cap: usize) -> OutputBuf {
        OutputBuf {
            head: String::new(),
            tail: String::new(),
            dropped: 0,
            cap,
        }
    }
    fn push(&mut self, s: &str) {
        let half = self.cap / 2;
        if self.head.len() < half && self.tail.is_empty() {
            let room = half - self.head.len();
            let mut cut = s.len().min(room);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.head.push_str(&s[..cut]);
            if cut == s.len() {
                return;
            }
            self.tail.push_str(&s[cut..]);
        } else {
            self.tail.push_str(s);
        }
        if self.tail.len() > half {
            let mut cut = self.tail.len() - half;
            while !self.tail.is_char_boundary(cut) {
                cut += 1;
            }
            self.dropped += cut;
            self.tail.drain(..cut);
        }
    }
    fn text(&self) -> String {
        if self.dropped == 0 {
            format!("{}{}", self.head, self.tail)
        } else {
            format!(
                "{}\n[… {} bytes of output left out …]\n{}",
                self.head, self.dropped, self.tail
            )
        }
    }
}

impl Turn<'_> {
    fn engine(&self) -> &Engine {
        &self.agent.engine
    }

    async fn event(&mut self, event: Event) -> Result<(), TurnEnd> {
        match self.agent.store.append_event(self.sid, &event).await {
            Ok(id) => {
                self.after = Some(id);
                Ok(())
            }
            Err(e) => Err(store_failed(e)),
        }
    }

    async fn remember(&self, entry: Value) -> Result<(), TurnEnd> {
        self.agent
            .store
            .append_history(self.sid, &entry)
            .await
            .map(|_| ())
            .map_err(store_failed)
    }

    async fn run(&mut self) -> Result<TurnEnd, TurnEnd> {
        let max_steps = self.agent.cfg.max_steps;
        let tools = tool_schemas();
        for step in 1..=max_steps {
            if self.h.cancel.is_cancelled() {
                return Ok(TurnEnd::with("cancelled"));
            }
            self.steps = step;
            let history = self
                .agent
                .store
                .read_history(self.sid, MAX_HISTORY_ENTRIES)
                .await
                .map_err(store_failed)?;
            let messages = build_messages(&history, self.agent.cfg.max_history_bytes);
            let body = self.llm.body(&messages, &tools);
            let c = self.complete(step, &body).await?;
            if let Some(u) = &c.usage {
                self.usage.add(u);
                self.usage_reported = true;
                self.engine()
                    .metrics
                    .count_tokens(u.prompt_tokens, u.completion_tokens);
            }
            let turn_id = self.h.turn_id.clone();
            // What goes back to the model next time: arguments that are not a JSON object are
            // replaced by `{}` (some servers refuse to render invalid JSON in a template);
            // the raw text is kept beside the message.
            let mut raw = serde_json::Map::new();
            let calls: Vec<Value> = c
                .tool_calls
                .iter()
                .map(|tc| {
                    let ok = prompt::parse_arguments(&tc.arguments).is_ok();
                    if !ok {
                        raw.insert(tc.id.clone(), json!(tc.arguments));
                    }
                    let name = if tc.name.is_empty() {
                        "unnamed"
                    } else {
                        tc.name.as_str()
                    };
                    json!({"id": tc.id, "type": "function", "function": {
                        "name": name,
                        "arguments": if ok { tc.arguments.as_str() } else { "{}" },
                    }})
                })
                .collect();
            let mut message = json!({"role": "assistant", "content": c.content});
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls.clone());
            }
            self.remember(json!({"v": 1, "kind": "message", "turn_id": turn_id, "at_ms": now_ms(),
                "step": step, "message": message, "usage": c.usage, "finish_reason": c.finish_reason,
                "raw_arguments": if raw.is_empty() { Value::Null } else { Value::Object(raw) }}))
                .await?;
            self.event(Event::AssistantMessage(ev::AssistantMessage {
                turn_id: turn_id.clone(),
                step,
                content: c.content.clone(),
                tool_calls: c
                    .tool_calls
                    .iter()
                    .map(|t| ev::ModelToolCall {
                        id: t.id.clone(),
                        name: t.name.clone(),
                        arguments: t.arguments.clone(),
                    })
                    .collect(),
                finish_reason: c.finish_reason.clone(),
                usage: c.usage,
            }))
            .await?;
            if c.tool_calls.is_empty() {
                return Ok(TurnEnd::with("completed"));
            }
            for tc in &c.tool_calls {
                let (content, status, call_id, error) = if self.h.cancel.is_cancelled() {
                    let why = "The turn was cancelled by the user before this call was made.";
                    let (t, s) = render_tool_result(&tc.name, &ToolOutcome::NotRun { why }, 0);
                    (t, s, None, None)
                } else {
                    self.run_tool(&tc.name, &tc.arguments).await?
                };
                self.remember(
                    json!({"v": 1, "kind": "message", "turn_id": turn_id, "at_ms": now_ms(),
                    "step": step, "tool": tc.name, "call_id": call_id, "status": status,
                    "message": {"role": "tool", "tool_call_id": tc.id, "content": content}}),
                )
                .await?;
                self.event(Event::ToolResult(ev::ToolResult {
                    turn_id: turn_id.clone(),
                    step,
                    tool_call_id: tc.id.clone(),
                    tool: tc.name.clone(),
                    call_id,
                    status,
                    error,
                }))
                .await?;
            }
        }
        if self.h.cancel.is_cancelled() {
            return Ok(TurnEnd::with("cancelled"));
        }
        let message = format!(
            "the turn reached its limit of {max_steps} model requests (llm.max_steps); send another message to continue"
        );
        let turn_id = self.h.turn_id.clone();
        self.event(Event::AgentError(ev::AgentError {
            turn_id,
            step: self.steps,
            code: "max_steps".into(),
            message: message.clone(),
            attempts: None,
            streamed: None,
        }))
        .await?;
        Ok(TurnEnd {
            status: "max_steps",
            error: Some(json!({"code": "max_steps", "message": message})),
        })
    }

    /// One model request, retried with backoff on transient faults as long as none of its
    /// output was streamed; otherwise the fault is reported (`agent_error`) and ends the turn.
    async fn complete(&mut self, step: u32, body: &Value) -> Result<Completion, TurnEnd> {
        let turn_id = self.h.turn_id.clone();
        let mut attempt = 0;
        loop {
            let (tx, rx) = mpsc::unbounded_channel();
            let flusher = tokio::spawn(flush_deltas(
                self.agent.store.clone(),
                self.sid.to_string(),
                turn_id.clone(),
                step,
                rx,
            ));
            let mut streamed = false;
            let r = tokio::select! {
                biased;
                _ = self.h.cancel.cancelled() => None,
                r = self.llm.stream(body, &tx, &mut streamed) => Some(r),
            };
            drop(tx);
            let text = flusher.await.unwrap_or_default();
            // Text already shown to the user is kept, marked as cut short.
            let partial = json!({"v": 1, "kind": "message", "turn_id": turn_id, "at_ms": now_ms(),
                "step": step, "interrupted": true, "message": {"role": "assistant", "content": text}});
            match r {
                None => {
                    if !text.is_empty() {
                        let _ = self.remember(partial).await;
                    }
                    return Err(TurnEnd::with("cancelled"));
                }
                Some(Ok(c)) => {
                    self.engine().metrics.count_llm_request("ok");
                    return Ok(c);
                }
                Some(Err(e)) => {
                    self.engine().metrics.count_llm_request(e.code());
                    let delay = if streamed {
                        None
                    } else {
                        self.llm.retry_delay(&e, attempt)
                    };
                    if let Some(d) = delay {
                        attempt += 1;
                        self.event(Event::AgentRetry(ev::AgentRetry {
                            turn_id: turn_id.clone(),
                            step,
                            attempt,
                            delay_ms: d.as_millis() as u64,
                            code: e.code().to_string(),
                            message: e.to_string(),
                        }))
                        .await?;
                        tokio::select! {
                            _ = self.h.cancel.cancelled() => return Err(TurnEnd::with("cancelled")),
                            _ = tokio::time::sleep(d) => {}
                        }
                        continue;
                    }
                    if !text.is_empty() {
                        let _ = self.remember(partial).await;
                    }
                    let message = report_message(&e, attempt, streamed);
                    self.event(Event::AgentError(ev::AgentError {
                        turn_id: turn_id.clone(),
                        step,
                        code: e.code().to_string(),
                        message: message.clone(),
                        attempts: Some(attempt + 1),
                        streamed: Some(streamed),
                    }))
                    .await?;
                    return Err(TurnEnd::failed(e.code(), message));
                }
            }
        }
    }

    /// Validates, proposes and awaits one tool call of the model. Returns the text for the
    /// model, the status, the Airlock call id (when a call was made) and an error for the event.
    async fn run_tool(
        &mut self,
        name: &str,
        raw_arguments: &str,
    ) -> Result<(String, String, Option<String>, Option<Value>), TurnEnd> {
        let max = self.agent.cfg.max_tool_result_bytes;
        let rejected = |code: &str, message: &str| {
            let (t, s) = render_tool_result(name, &ToolOutcome::Rejected { code, message }, max);
            (t, s, None, Some(json!({"code": code, "message": message})))
        };
        let args = match validate_call(name, raw_arguments) {
            Ok(a) => a,
            Err((code, message)) => return Ok(rejected(code, &message)),
        };
        // Not raced against cancellation: a proposal is one short, complete step.
        let rec = match self
            .agent
            .engine
            .clone()
            .propose_waiting(self.user, self.sid, name, args, Duration::ZERO)
            .await
        {
            Ok(r) => r,
            Err(EngineError::BadRequest(m)) => return Ok(rejected("invalid_arguments", &m)),
            Err(EngineError::NotFound(_)) => {
                return Err(TurnEnd::failed("session_gone", "the session was deleted"))
            }
            Err(e) => {
                let message = format!("a tool call could not be proposed: {e}");
                let turn_id = self.h.turn_id.clone();
                let _ = self
                    .event(Event::AgentError(ev::AgentError {
                        turn_id,
                        step: self.steps,
                        code: "tool_unavailable".into(),
                        message: message.clone(),
                        attempts: None,
                        streamed: None,
                    }))
                    .await;
                return Err(TurnEnd::failed("tool_unavailable", message));
            }
        };
        self.calls.push(rec.id.clone());
        let (rec, output) = self.wait_call(rec).await?;
        let (t, s) = render_tool_result(
            name,
            &ToolOutcome::Call {
                rec: &rec,
                output: &output,
            },
            max,
        );
        Ok((t, s, Some(rec.id.clone()), rec.error.clone()))
    }

    /// Follows the session's events until the call reaches a final status, collecting its
    /// output. When the turn is cancelled, the call is cancelled (a pending approval is
    /// withdrawn, a running container killed) and awaited; on shutdown the wait just ends.
    async fn wait_call(&mut self, rec: CallRecord) -> Result<(CallRecord, String), TurnEnd> {
        let engine = self.agent.engine.clone();
        let cid = rec.id.clone();
        let mut out = OutputBuf::new(self.agent.cfg.max_tool_result_bytes);
        let mut after = self.after.clone();
        let mut cancelling: Option<Instant> = None;
        let mut failures = 0u32;
        let mut events: Option<EventStream> = None;
        // A final status seen in the call's record (a backstop: the final event itself is
        // written atomically with the status, after every output event).
        let mut final_seen_at: Option<Instant> = None;
        loop {
            if self.h.cancel.is_cancelled() {
                if self.h.reason() == Some(StopReason::Interrupted) {
                    return Err(TurnEnd::with("interrupted"));
                }
                let since = *cancelling.get_or_insert_with(Instant::now);
                if since.elapsed() > CANCEL_GRACE {
                    return Err(TurnEnd::failed(
                        "cancel_timeout",
                        format!(
                            "call {cid} did not stop within {CANCEL_GRACE:?} of the cancellation"
                        ),
                    ));
                }
                // Repeated while waiting: covers a call between `approved` and `running`.
                if let Err(e) = engine.cancel(self.user, &cid).await {
                    tracing::debug!(call_id = %cid, error = %e, "cancel did not apply (yet)");
                }
            }
            let stream = match events.as_mut() {
                Some(s) => s,
                None => match engine
                    .follow(self.user, self.sid, after.clone(), Duration::from_secs(10))
                    .await
                {
                    Ok(s) => events.insert(s),
                    Err(EngineError::NotFound(_)) => {
                        return Err(TurnEnd::failed("session_gone", "the session was deleted"))
                    }
                    Err(e) => {
                        failures += 1;
                        if failures > 60 {
                            return Err(TurnEnd::failed(
                                "store_unavailable",
                                format!("the state store failed: {e}"),
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            let tick = if cancelling.is_some() {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(2)
            };
            let next = tokio::select! {
                _ = self.h.cancel.cancelled(), if cancelling.is_none() => continue,
                _ = tokio::time::sleep(tick) => None,
                e = stream.next() => Some(e),
            };
            // Either the call's final event arrived, or a quiet tick: look at the record (a
            // tick also lets a cancel repeat).
            let final_event = match next {
                Some(Some(Ok(e))) => {
                    failures = 0;
                    let typed = e.event();
                    after = Some(e.id);
                    let ended = match typed {
                        Ok(Event::Output(o)) if o.call_id == cid => {
                            out.push(&o.data);
                            false
                        }
                        Ok(e) => e.ends_call(&cid),
                        // A kind this build does not know is not about the call.
                        Err(_) => false,
                    };
                    if !ended {
                        continue;
                    }
                    true
                }
                Some(Some(Err(_))) | Some(None) => {
                    // Redis went away: follow again from the last event seen.
                    events = None;
                    continue;
                }
                None => false,
            };
            let cur = match engine.owned_call(self.user, &cid).await {
                Ok(c) if c.status.is_terminal() => c,
                Err(EngineError::NotFound(_)) => {
                    return Err(TurnEnd::failed("session_gone", "the session was deleted"))
                }
                _ => continue,
            };
            if !final_event {
                // The final event follows every output event and is written with the status:
                // give it a moment to arrive before answering without it.
                let seen = *final_seen_at.get_or_insert_with(Instant::now);
                if seen.elapsed() < Duration::from_secs(5) {
                    continue;
                }
                tracing::warn!(call_id = %cid, "the call ended without its final event reaching the turn");
            }
            self.after = after;
            return Ok((cur, out.text()));
        }
    }

    /// At the end of a stopped turn: withdraws the turn's pending approvals and, when the user
    /// cancelled (not at shutdown), stops its running calls too.
    async fn cancel_open_calls(&self, running_too: bool) {
        for cid in &self.calls {
            let Ok(rec) = self.engine().owned_call(self.user, cid).await else {
                continue;
            };
            let stop = match rec.status {
                CallStatus::AwaitingApproval | CallStatus::Proposed => true,
                CallStatus::Approved | CallStatus::Running => running_too,
                _ => false,
            };
            if stop {
                let _ = self.agent.engine.cancel(self.user, cid).await;
            }
        }
    }
}

fn store_failed(e: StoreError) -> TurnEnd {
    match e {
        StoreError::NotFound => TurnEnd::failed("session_gone", "the session was deleted"),
        e => TurnEnd::failed("store_unavailable", format!("the state store failed: {e}")),
    }
}

fn report_message(e: &LlmError, attempt: u32, streamed: bool) -> String {
    let mut m = e.to_string();
    if attempt > 0 {
        m.push_str(&format!(" (after {} attempts)", attempt + 1));
    }
    if streamed && e.transient() {
        m.push_str(" — not retried because part of the answer had already been streamed");
    }
    m
}

/// Writes streamed text as `assistant_delta` events, coalesced (at most one event per
/// `DELTA_BYTES` or `DELTA_DELAY`); returns the whole text.
async fn flush_deltas(
    store: AgentStore,
    sid: String,
    turn_id: String,
    step: u32,
    mut rx: mpsc::UnboundedReceiver<String>,
) -> String {
    let mut all = String::new();
    let mut buf = String::new();
    let mut due: Option<tokio::time::Instant> = None;
    let flush = |buf: &mut String| {
        let text = std::mem::take(buf);
        let store = store.clone();
        let (sid, turn_id) = (sid.clone(), turn_id.clone());
        async move {
            if !text.is_empty() {
                let _ = store
                    .append_event(
                        &sid,
                        &Event::AssistantDelta(ev::AssistantDelta {
                            turn_id: turn_id.clone(),
                            step,
                            text: text.clone(),
                        }),
                    )
                    .await;
            }
        }
    };
    loop {
        let next = match due {
            None => rx.recv().await,
            Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                Ok(n) => n,
                Err(_) => {
                    flush(&mut buf).await;
                    due = None;
                    continue;
                }
            },
        };
        match next {
            Some(s) => {
                all.push_str(&s);
                buf.push_str(&s);
                if buf.len() >= DELTA_BYTES {
                    flush(&mut buf).await;
                    due = None;
                } else if due.is_none() {
                    due = Some(tokio::time::Instant::now() + DELTA_DELAY);
                }
            }
            None => {
                flush(&mut buf).await;
                return all;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OutputBuf;

    #[test]
    fn output_keeps_its_start_and_end() {
        let mut o = OutputBuf::new(20);
        o.push("0123456789");
        o.push("abcdefghij");
        o.push("KLMNOPQRST");
        let t = o.text();
        assert!(t.starts_with("0123456789"), "{t}");
        assert!(t.ends_with("KLMNOPQRST"), "{t}");
        assert!(t.contains("10 bytes of output left out"), "{t}");
        let mut o = OutputBuf::new(100);
        o.push("short");
        assert_eq!(o.text(), "short");
    }
}
