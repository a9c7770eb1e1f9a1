//! The HTTP API: axum routes, bearer-token auth, Origin checks, the session event stream over
//! WebSocket and SSE. Handlers translate between HTTP and the engine; nothing here talks to
//! Docker or Redis directly.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::agent::{Agent, AgentError};
use crate::engine::{Engine, EngineError, EventStream};
use crate::policy::{Role, User};
use crate::store::{CallRecord, StoreError, StoredEvent};

/// The WebSocket subprotocol the server speaks (and echoes back).
pub const WS_PROTOCOL: &str = "airlock.v1";
/// Prefix of the subprotocol value that carries a browser's token (never echoed).
pub const WS_TOKEN_PREFIX: &str = "airlock.token.";

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// The LLM loop (turns started by `POST /v1/sessions/{id}/messages` or the WebSocket).
    pub agent: Arc<Agent>,
    pub allowed_origins: Arc<Vec<String>>,
    /// Cancelled at shutdown so long-lived event streams end and the server can stop.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Open event streams per user (bounded by `limits.max_streams_per_user`).
    pub streams: StreamCounts,
}

/// Open event streams (WebSocket or SSE) per user.
#[derive(Clone, Default)]
pub struct StreamCounts(Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>);

/// One open event stream; dropping it frees the user's slot.
struct StreamSlot {
    counts: StreamCounts,
    user: String,
}

impl StreamCounts {
    fn acquire(&self, user: &str, max: usize) -> Result<StreamSlot, AppError> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(user.to_string()).or_default();
        if *n >= max {
            return Err(AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                format!("you already have {max} event streams open; close one first"),
            ));
        }
        *n += 1;
        Ok(StreamSlot {
            counts: self.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// Builds the router (for the server and for `oneshot` tests).
pub fn app(state: AppState) -> Router {
    let max_body = state.engine.limits().max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route(
            "/v1/sessions/{id}/tool-calls",
            post(propose).get(list_session_calls),
        )
        .route(
            "/v1/sessions/{id}/messages",
            post(send_message).get(get_messages),
        )
        .route("/v1/sessions/{id}/cancel", post(cancel_turn))
        .route("/v1/sessions/{id}/events", get(events))
        .route("/v1/sessions/{id}/grants", post(add_grant).get(list_grants))
        .route("/v1/tool-calls/{id}", get(get_call))
        .route("/v1/tool-calls/{id}/decision", post(decide))
        .route("/v1/tool-calls/{id}/cancel", post(cancel))
        .route("/v1/audit", get(audit_entries))
        .merge(crate::web::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

// ---- errors ---------------------------------------------------------------------------------

/// Every error the API returns: `{"error": {"code", "message"}}`. 5xx bodies are opaque.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AppError {
        AppError {
            status,
            code,
            message: message.into(),
        }
    }
    fn unauthorized() -> AppError {
        AppError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` is required",
        )
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

impl From<EngineError> for AppError {
    fn from(e: EngineError) -> AppError {
        use EngineError::*;
        match e {
            NotFound(_) => AppError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            Forbidden(m) => AppError::new(StatusCode::FORBIDDEN, "forbidden", m),
            BadRequest(m) => AppError::new(StatusCode::BAD_REQUEST, "invalid_request", m),
            Conflict(m) => AppError::new(StatusCode::CONFLICT, "conflict", m),
            Gone(m) => AppError::new(StatusCode::GONE, "expired", m),
            Busy(m) => AppError::new(StatusCode::TOO_MANY_REQUESTS, "busy", m),
            Store(StoreError::Unavailable(_)) => {
                tracing::warn!(error = %e, "state store unavailable");
                AppError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the state store (Redis) is unavailable; nothing was changed — try again shortly",
                )
            }
            Store(StoreError::InvalidEventId(_) | StoreError::Invalid(_)) => {
                AppError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
            }
            Store(StoreError::Conflict { current }) => AppError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("the call is already `{current}`"),
            ),
            Store(StoreError::NotFound) => {
                AppError::new(StatusCode::NOT_FOUND, "not_found", "not found")
            }
            Sandbox(_) => {
                tracing::error!(error = %e, "sandbox failure");
                AppError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "sandbox_unavailable",
                    "the sandbox (Docker) is unavailable; try again shortly",
                )
            }
            Store(_) => {
                tracing::error!(error = %e, "store failure");
                AppError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl From<AgentError> for AppError {
    fn from(e: AgentError) -> AppError {
        match e {
            AgentError::Unavailable(m) => AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "agent_unavailable",
                format!("the agent is not available: {m}"),
            ),
            e @ AgentError::TurnRunning(_) => {
                AppError::new(StatusCode::CONFLICT, "turn_in_progress", e.to_string())
            }
            AgentError::BadRequest(m) => {
                AppError::new(StatusCode::BAD_REQUEST, "invalid_request", m)
            }
            AgentError::Engine(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> AppError {
        let status = match r.status() {
            // A body that parses but does not fit (unknown field, wrong type) is as invalid
            // as one that does not parse: 400, as documented.
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        };
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "invalid_request"
        };
        AppError::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, "invalid_request", r.body_text())
    }
}

async fn not_found() -> AppError {
    AppError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

// ---- auth -----------------------------------------------------------------------------------

/// The authenticated user. Extracting it fails with 401 unless a known token is presented as
/// `Authorization: Bearer …` or, for browser WebSockets, as a `airlock.token.…` subprotocol.
pub struct AuthUser(pub User);

fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let token = v.strip_prefix("Bearer ")?.trim();
        return (!token.is_empty()).then(|| token.to_string());
    }
    let protos = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    protos
        .split(',')
        .map(str::trim)
        .find_map(|p| p.strip_prefix(WS_TOKEN_PREFIX))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.engine.metrics.count_request();
        let token = presented_token(&parts.headers).ok_or_else(AppError::unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let policy = state.engine.policy();
        let user = policy
            .user_by_token_hash(&digest)
            .cloned()
            .ok_or_else(AppError::unauthorized)?;
        Ok(AuthUser(user))
    }
}

/// A present Origin must be allowlisted (refuses cross-site WebSockets).
fn check_origin(headers: &HeaderMap, state: &AppState) -> Result<(), AppError> {
    match headers.get(header::ORIGIN) {
        None => Ok(()),
        Some(o) => {
            let o = o.to_str().unwrap_or_default();
            if state.allowed_origins.iter().any(|a| a == o) {
                Ok(())
            } else {
                Err(AppError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_origin",
                    "this Origin is not allowed; add it to allowed_origins in the server config",
                ))
            }
        }
    }
}

// ---- health ---------------------------------------------------------------------------------

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<AppState>) -> Response {
    let (redis, docker) = st.engine.readiness().await;
    let status = if redis && docker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"redis": if redis {"ok"} else {"unavailable"}, "docker": if docker {"ok"} else {"unavailable"}})),
    )
        .into_response()
}

async fn metrics(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Response, AppError> {
    if user.role != Role::Admin {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "metrics are for admins",
        ));
    }
    let text = st.engine.metrics_text().await;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

// ---- sessions -------------------------------------------------------------------------------

async fn create_session(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Response, AppError> {
    let s = st.engine.create_session(&user).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": s.id, "owner": s.owner, "created_at_ms": s.created_at_ms})),
    )
        .into_response())
}

async fn list_sessions(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Value>, AppError> {
    let list = st.engine.list_sessions(&user).await?;
    Ok(Json(json!({ "sessions": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AfterQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn get_session(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    q: Result<Query<AfterQuery>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(q) = q?;
    let s = st.engine.owned_session(&user, &id).await?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let events = st
        .engine
        .history(&user, &id, q.after.as_deref(), limit)
        .await?;
    Ok(Json(json!({
        "id": s.id, "owner": s.owner, "created_at_ms": s.created_at_ms,
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
    })))
}

async fn delete_session(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    st.engine.delete_session(&user, &id).await?;
    st.agent.cancel_local(&id);
    Ok(StatusCode::NO_CONTENT)
}

// ---- the agent ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    content: String,
}

/// `POST /v1/sessions/{id}/messages {content}`: starts a turn (202), or 409 while one runs.
async fn send_message(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Result<Json<MessageBody>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(body) = body?;
    let turn_id = st.agent.start_turn(&user, &id, &body.content).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"session_id": id, "turn_id": turn_id, "status": "running"})),
    )
        .into_response())
}

/// `GET /v1/sessions/{id}/messages`: the stored conversation and the running turn, if any.
async fn get_messages(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let entries = st.agent.history(&user, &id).await?;
    let turn = st.agent.current_turn(&id).await?;
    Ok(Json(
        json!({"session_id": id, "turn_id": turn, "entries": entries}),
    ))
}

/// `POST /v1/sessions/{id}/cancel`: cancels the running turn (idempotent).
async fn cancel_turn(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let turn = st.agent.cancel_turn(&user, &id).await?;
    Ok(Json(
        json!({"session_id": id, "turn_id": turn, "cancelled": turn.is_some()}),
    ))
}

/// A client's WebSocket message: `{"type": "message", "content": "…"}` or `{"type": "cancel"}`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Message { content: String },
    Cancel {},
}

/// Handles one client WebSocket message; an error goes back as `{"type": "error", "data"}`.
async fn ws_client_message(
    agent: &Arc<Agent>,
    user: &User,
    session: &str,
    text: &str,
) -> Option<Value> {
    let msg: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return Some(json!({"code": "invalid_request", "message": format!(
                "expected {{\"type\": \"message\", \"content\": \"…\"}} or {{\"type\": \"cancel\"}}: {e}"
            )}))
        }
    };
    let r = match msg {
        ClientMessage::Message { content } => {
            agent.start_turn(user, session, &content).await.map(|_| ())
        }
        ClientMessage::Cancel {} => agent.cancel_turn(user, session).await.map(|_| ()),
    };
    r.err().map(|e| {
        let e = AppError::from(e);
        json!({"code": e.code, "message": e.message})
    })
}

// ---- tool calls -----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposeBody {
    tool: String,
    #[serde(default = "empty_object")]
    args: Value,
}

fn empty_object() -> Value {
    json!({})
}

fn call_json(c: &CallRecord) -> Value {
    json!({
        "id": c.id,
        "session_id": c.session_id,
        "tool": c.tool,
        "args": c.args,
        "args_sha256": c.args_sha256,
        "status": c.status,
        "decision": c.decision,
        "rule": c.rule,
        "policy_sha256": c.policy_sha256,
        "preview": c.preview,
        "expires_at_ms": c.expires_at_ms,
        "decided_by": c.decided_by,
        "reason": c.reason,
        "result": c.result,
        "error": c.error,
        "outcome": c.outcome,
        "created_at_ms": c.created_at_ms,
        "updated_at_ms": c.updated_at_ms,
    })
}

async fn propose(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Result<Json<ProposeBody>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(body) = body?;
    let rec = st.engine.propose(&user, &id, &body.tool, body.args).await?;
    Ok((StatusCode::CREATED, Json(call_json(&rec))).into_response())
}

async fn get_call(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let rec = st.engine.owned_call(&user, &id).await?;
    let output = st.engine.call_output(&rec).await?;
    let mut v = call_json(&rec);
    v["output"] = Value::Array(output);
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    /// Only calls with this status (e.g. `awaiting_approval`).
    status: Option<String>,
}

/// `GET /v1/sessions/{id}/tool-calls[?status=S]`: the session's calls, oldest first (owner only).
async fn list_session_calls(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    q: Result<Query<CallsQuery>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(q) = q?;
    let calls = st.engine.list_calls(&user, &id).await?;
    let calls: Vec<Value> = calls
        .iter()
        .filter(|c| q.status.as_deref().is_none_or(|s| c.status.as_str() == s))
        .map(call_json)
        .collect();
    Ok(Json(json!({ "session_id": id, "calls": calls })))
}

/// `GET /v1/audit[?after=ID&limit=N]` (admin): audit entries after `after`, oldest first.
async fn audit_entries(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    q: Result<Query<AfterQuery>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = st
        .engine
        .audit_page(&user, q.after.as_deref(), limit)
        .await?;
    let last = entries.last().map(|(id, _)| id.clone()).or(q.after);
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(id, e)| {
            let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
            v["id"] = json!(id);
            v
        })
        .collect();
    Ok(Json(json!({ "entries": entries, "last_id": last })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: String,
    args_sha256: String,
    reason: Option<String>,
}

async fn decide(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
    let Json(body) = body?;
    let approve = match body.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("decision must be \"approve\" or \"deny\", not {other:?}"),
            ))
        }
    };
    if let Some(r) = &body.reason {
        if r.len() > 2000 {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "reason is longer than 2000 bytes",
            ));
        }
    }
    let rec = st
        .engine
        .decide(
            &user,
            &id,
            approve,
            &body.args_sha256,
            body.reason.as_deref(),
        )
        .await?;
    Ok(Json(call_json(&rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    tool: String,
    pattern: String,
}

/// `POST /v1/sessions/{id}/grants`: approve a tool + pattern for the rest of the session.
async fn add_grant(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Result<Json<GrantBody>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(body) = body?;
    if body.pattern.len() > 1000 {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "pattern is longer than 1000 bytes",
        ));
    }
    let g = st
        .engine
        .add_grant(&user, &id, &body.tool, &body.pattern)
        .await?;
    Ok((StatusCode::CREATED, Json(g)).into_response())
}

async fn list_grants(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(st.engine.list_grants(&user, &id).await?))
}

async fn cancel(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let rec = st.engine.cancel(&user, &id).await?;
    Ok(Json(call_json(&rec)))
}

// ---- events ---------------------------------------------------------------------------------

fn event_json(e: &StoredEvent) -> Value {
    json!({"id": e.id, "type": e.kind, "data": e.data})
}

/// `GET /v1/sessions/{id}/events`: a WebSocket when the request upgrades, SSE otherwise.
/// `?after=ID` (or SSE's `Last-Event-ID`) resumes after the last event the client saw.
async fn events(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<AfterQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, AppError> {
    let (mut parts, _) = req.into_parts();
    check_origin(&parts.headers, &st)?;
    let AuthUser(user) = AuthUser::from_request_parts(&mut parts, &st).await?;
    let Query(q) = q?;
    st.engine.owned_session(&user, &id).await?;
    let after = q.after.or_else(|| {
        parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    // A bad resume point is a 400 now rather than a dead stream.
    let follow = st.engine.follow(&user, &id, after, STREAM_BLOCK).await?;
    let slot = st
        .streams
        .acquire(&user.name, st.engine.limits().max_streams_per_user)?;
    let is_ws = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_ws {
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &st)
            .await
            .map_err(|e| {
                AppError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text())
            })?;
        let agent = st.agent.clone();
        let stop = st.shutdown.clone();
        return Ok(ws
            .protocols([WS_PROTOCOL])
            .max_message_size(st.engine.limits().max_body_bytes)
            .on_upgrade(move |socket| ws_events(socket, follow, (agent, user), id, stop, slot)));
    }
    let stop = st.shutdown.clone();
    // Ends at shutdown, and when Redis goes away (the client resumes with Last-Event-ID).
    let stream = follow
        .take_until(async move { stop.cancelled().await })
        .scan((), |_, e| std::future::ready(e.ok()))
        .map(move |e| {
            // The slot is freed when the client goes and the stream is dropped.
            let _held = &slot;
            Ok::<_, Infallible>(
                SseEvent::default()
                    .id(e.id.clone())
                    .event(e.kind.clone())
                    .data(event_json(&e).to_string()),
            )
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// How long one blocking read of a stream waits before it reads again.
const STREAM_BLOCK: Duration = Duration::from_secs(10);

async fn ws_events(
    socket: WebSocket,
    mut follow: EventStream,
    (agent, user): (Arc<Agent>, User),
    session: String,
    stop: tokio_util::sync::CancellationToken,
    _slot: StreamSlot,
) {
    let (mut tx, mut rx) = socket.split();
    // `follow` keeps its pending blocking read while client frames win the select: dropping
    // it mid-`XREAD` would throw away its dedicated Redis connection.
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = tx.send(Message::Close(None)).await;
                return;
            }
            msg = rx.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Text(t))) => {
                    if let Some(err) = ws_client_message(&agent, &user, &session, &t).await {
                        let m = json!({"type": "error", "data": err}).to_string();
                        if tx.send(Message::Text(m.into())).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(_)) => {} // pings are answered by axum; binary frames are ignored
            },
            ev = follow.next() => {
                match ev {
                    Some(Ok(e)) => {
                        if tx.send(Message::Text(event_json(&e).to_string().into())).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(_)) | None => {
                        let _ = tx.send(Message::Text(json!({"type": "error", "data": {"code": "store_unavailable", "message": "the state store is unavailable; reconnect with ?after= the last id you saw"}}).to_string().into())).await;
                        let _ = tx.send(Message::Close(None)).await;
                        return;
                    }
                }
            }
        }
    }
}
