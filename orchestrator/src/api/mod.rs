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
use crate::engine::{Engine, EngineError, EventStream, Replacement};
use crate::policy::{Role, User};
use crate::store::{CallRecord, StoreError, StoredEvent};

mod agent;
mod auth;
mod calls;
mod error;
pub mod model;
pub mod openapi;
mod sessions;
mod streams;
use agent::*;
pub use auth::AuthUser;
use auth::*;
pub(crate) use auth::{check_origin, presented_token};
use calls::*;
pub use error::AppError;
use error::*;
use model::*;
use sessions::*;
use streams::*;

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

impl AppState {
    pub fn new(engine: Arc<Engine>, agent: Arc<Agent>, allowed_origins: Vec<String>) -> AppState {
        AppState {
            engine,
            agent,
            allowed_origins: Arc::new(allowed_origins),
            shutdown: tokio_util::sync::CancellationToken::new(),
            streams: StreamCounts::default(),
        }
    }
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
/// Every route of the API, as (method, path), and whether it needs no token. The router below
/// mounts exactly these (the HTTP contract tests walk this table, and fail on a route that
/// answers the fallback's 404).
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    ("GET", "/metrics", Access::Admin),
    ("POST", "/v1/sessions", Access::User),
    ("GET", "/v1/sessions", Access::User),
    ("GET", "/v1/sessions/{id}", Access::User),
    ("DELETE", "/v1/sessions/{id}", Access::User),
    ("POST", "/v1/sessions/{id}/tool-calls", Access::User),
    ("GET", "/v1/sessions/{id}/tool-calls", Access::User),
    ("POST", "/v1/sessions/{id}/messages", Access::User),
    ("GET", "/v1/sessions/{id}/messages", Access::User),
    ("POST", "/v1/sessions/{id}/cancel", Access::User),
    ("GET", "/v1/sessions/{id}/events", Access::User),
    ("POST", "/v1/sessions/{id}/grants", Access::User),
    ("GET", "/v1/sessions/{id}/grants", Access::User),
    ("GET", "/v1/tool-calls/{id}", Access::User),
    ("POST", "/v1/tool-calls/{id}/decision", Access::User),
    ("POST", "/v1/tool-calls/{id}/edit", Access::User),
    ("POST", "/v1/tool-calls/{id}/revert", Access::User),
    ("POST", "/v1/tool-calls/{id}/cancel", Access::User),
    ("GET", "/v1/audit", Access::Admin),
    ("GET", "/v1/openapi.json", Access::User),
    ("GET", "/", Access::Public),
    ("GET", "/index.html", Access::Public),
    ("GET", "/assets/app.js", Access::Public),
    ("GET", "/assets/app.css", Access::Public),
    ("GET", "/assets/icon.svg", Access::Public),
];

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token: health checks and the web UI's static files.
    Public,
    /// Any user's token.
    User,
    /// An admin's token (others get 403).
    Admin,
}

pub fn app(state: AppState) -> Router {
    let max_body = state.engine.limits().max_body_bytes;
    let authenticated = Router::new()
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
        .route("/v1/tool-calls/{id}/edit", post(edit_call))
        .route("/v1/tool-calls/{id}/revert", post(revert_call))
        .route("/v1/tool-calls/{id}/cancel", post(cancel))
        .route("/v1/audit", get(audit_entries))
        .route("/v1/openapi.json", get(openapi_json))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_cross_site,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(authenticated)
        .merge(crate::mcp::routes(&state))
        .merge(crate::web::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

// ---- health ---------------------------------------------------------------------------------

/// `GET /v1/openapi.json` (any user): the API's contract, from `openapi.rs`.
async fn openapi_json(AuthUser(_): AuthUser) -> Json<&'static Value> {
    Json(openapi::document())
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
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
        Json(Readiness {
            redis: if redis { "ok" } else { "unavailable" }.into(),
            docker: if docker { "ok" } else { "unavailable" }.into(),
        }),
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
