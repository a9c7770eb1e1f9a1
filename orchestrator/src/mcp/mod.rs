//! Airlock as an MCP server: Streamable HTTP at `/mcp`, both protocol eras (2026-07-28
//! stateless, 2025-11-25 with sessions) through the official Rust SDK (`rmcp`), the six tools
//! with the agent's schemas, and every `tools/call` on the one path of every call — policy →
//! preview → approval → sandbox — in an Airlock session of the token's user. docs/MCP.md
//! tells how approvals reach the user.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api::AppState;
use crate::policy::User;

mod approval;
mod handler;
mod tools;
pub use handler::AirlockMcp;
pub use tools::{mcp_tools, TOOL_NAMES};

/// The MCP endpoint's path.
pub const PATH: &str = "/mcp";
/// RFC 9728 protected-resource metadata (public, like the health checks).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// The `_meta` key a stateless (2026-07-28) client may set to keep its calls in one Airlock
/// session per conversation; without it, all of a client's calls share one session.
pub const CONVERSATION_META: &str = "dev.airlock/conversation";

/// The `/mcp` routes (authenticated, Origin-checked) and the public metadata document.
pub fn routes(state: &AppState) -> Router<AppState> {
    let engine = state.engine.clone();
    let keys = handler::StateKey::default();
    let config = StreamableHttpServerConfig::default()
        // Host and Origin are checked by `guard` below against the server's own
        // allowed_origins (the same rule as every other route); the token does the rest.
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(state.engine.limits().max_body_bytes)
        .with_cancellation_token(state.shutdown.child_token());
    // A 2025-11-25 session must outlive a call that waits for approval without traffic
    // (rmcp closes idle sessions after 5 minutes by default, which would cancel the call).
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(SESSION_IDLE);
    let service = StreamableHttpService::new(
        move || Ok(AirlockMcp::new(engine.clone(), keys.clone())),
        Arc::new(sessions),
        config,
    );
    let guarded = Guard {
        app: state.clone(),
        owners: SessionOwners::default(),
    };
    Router::new()
        .route_service(PATH, service)
        .route_layer(axum::middleware::from_fn_with_state(guarded, guard))
        .route(METADATA_PATH, get(resource_metadata))
}

/// How long a 2025-11-25 session lives without a request.
const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Sessions whose owner is remembered, at most (beyond it the oldest are forgotten, and
/// refused: fail closed).
const MAX_SESSIONS: usize = 10_000;

/// Which user opened each 2025-11-25 session: a session id presented with another user's
/// token is refused before the SDK sees it (answers to elicitations, streams and DELETE
/// included, not only tool calls).
#[derive(Clone, Default)]
struct SessionOwners(Arc<std::sync::Mutex<Owners>>);

/// Session id → user, and the ids oldest first (to forget the oldest beyond the cap).
type Owners = (HashMap<String, String>, VecDeque<String>);

impl SessionOwners {
    fn owner(&self, sid: &str) -> Option<String> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.0.get(sid).cloned()
    }
    fn insert(&self, sid: String, user: String) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if map.insert(sid.clone(), user).is_none() {
            order.push_back(sid);
        }
        while order.len() > MAX_SESSIONS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
    fn remove(&self, sid: &str) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.0.remove(sid);
        g.1.retain(|s| s != sid);
    }
}

#[derive(Clone)]
struct Guard {
    app: AppState,
    owners: SessionOwners,
}

/// The authenticated user of an MCP request, put in the request's extensions by [`guard`].
#[derive(Clone)]
pub(crate) struct McpUser(pub User);

/// Before the MCP service sees a request: a present Origin must be allowlisted (403), and a
/// known bearer token must be presented (401 with `WWW-Authenticate` naming the metadata).
async fn guard(State(g): State<Guard>, mut req: Request, next: axum::middleware::Next) -> Response {
    let st = &g.app;
    st.engine.metrics.count_request();
    if crate::api::check_origin(req.headers(), st).is_err() {
        return rpc_error_response(
            StatusCode::FORBIDDEN,
            -32600,
            "this Origin is not allowed; add it to allowed_origins in the server config",
        );
    }
    let user = crate::api::presented_token(req.headers()).and_then(|token| {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        st.engine.policy().user_by_token_hash(&digest).cloned()
    });
    let Some(user) = user else {
        let mut resp = rpc_error_response(
            StatusCode::UNAUTHORIZED,
            -32600,
            "missing or unknown bearer token: send `Authorization: Bearer <token>` (airlock admin token)",
        );
        let challenge = format!(
            "Bearer resource_metadata=\"{}\"",
            metadata_url(req.headers())
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return resp;
    };
    let session = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(sid) = &session {
        if g.owners.owner(sid).as_deref() != Some(user.name.as_str()) {
            // Another user's session, or one this server does not know: the same answer.
            return rpc_error_response(
                StatusCode::NOT_FOUND,
                -32600,
                "no such MCP session: start a new one with initialize",
            );
        }
    }
    let name = user.name.clone();
    req.extensions_mut().insert(McpUser(user));
    if req.method() != axum::http::Method::POST {
        let delete = req.method() == axum::http::Method::DELETE;
        let resp = next.run(req).await;
        if let (true, Some(sid)) = (delete && resp.status().is_success(), &session) {
            g.owners.remove(sid);
        }
        return resp;
    }
    // The body is read here, bounded, so that an oversized or malformed message gets the
    // JSON-RPC error the spec names (the SDK answers these with a plain-text 413/415).
    let limit = st.engine.limits().max_body_bytes;
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return rpc_error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                &format!("the message is larger than the server's limit of {limit} bytes"),
            )
        }
    };
    if !matches!(
        serde_json::from_slice::<Value>(&bytes),
        Ok(Value::Object(_))
    ) {
        return rpc_error_response(
            StatusCode::BAD_REQUEST,
            -32700,
            "parse error: the body must be one JSON-RPC message (a JSON object)",
        );
    }
    let mut resp = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await;
    // An `initialize` answered with a new session: it is this user's.
    if session.is_none() {
        if let Some(sid) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            g.owners.insert(sid.to_string(), name);
        }
    }
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse {
        // As the transport asks: proxies (nginx) must pass each event on at once.
        resp.headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    resp
}

/// A JSON-RPC error with no id (the request was not read), as the transport allows.
fn rpc_error_response(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        Json(json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// This server's base URL as the client reached it (Host, and X-Forwarded-Proto behind a
/// proxy that terminates TLS).
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

fn metadata_url(headers: &HeaderMap) -> String {
    format!("{}{METADATA_PATH}", base_url(headers))
}

/// `GET /.well-known/oauth-protected-resource` (RFC 9728): what `/mcp` is and how to present
/// a token. Airlock issues its own bearer tokens (`airlock admin token`); there is no OAuth
/// authorization server yet, so `authorization_servers` is empty and the documentation says so.
async fn resource_metadata(headers: HeaderMap) -> Json<Value> {
    let base = base_url(&headers);
    Json(json!({
        "resource": format!("{base}{PATH}"),
        "resource_name": "Airlock",
        "authorization_servers": [],
        "bearer_methods_supported": ["header"],
        "airlock_token_help": "Bearer tokens only (no OAuth yet): an admin creates one with `airlock admin token --user NAME` and puts its sha256 in the policy file. Send it as `Authorization: Bearer <token>`.",
    }))
}
