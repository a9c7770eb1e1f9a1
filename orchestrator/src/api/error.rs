//! Error responses: every failure is `{"error": {"code", "message"}}` with a stable code.

use super::*;

/// Every error the API returns: `{"error": {"code", "message"}}`. 5xx bodies are opaque.
#[derive(Debug)]
pub struct AppError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AppError {
        AppError {
            status,
            code,
            message: message.into(),
        }
    }
    /// The stable error code (`not_found`, `busy`, `store_unavailable`, …).
    pub fn code(&self) -> &'static str {
        self.code
    }
    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }
    pub(super) fn unauthorized() -> AppError {
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
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code.into(),
                    message: self.message,
                },
            }),
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
            // The store's own message: this is the client's input, not a store failure.
            Store(s @ (StoreError::InvalidEventId(_) | StoreError::Invalid(_))) => {
                AppError::new(StatusCode::BAD_REQUEST, "invalid_request", s.to_string())
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

pub(super) async fn not_found() -> AppError {
    AppError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub(super) async fn method_not_allowed() -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
