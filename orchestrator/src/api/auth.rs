//! Bearer-token authentication (header or WebSocket subprotocol) and the Origin check.

use super::*;

/// The authenticated user. Extracting it fails with 401 unless a known token is presented as
/// `Authorization: Bearer …` or, for browser WebSockets, as a `airlock.token.…` subprotocol.
pub struct AuthUser(pub User);

pub(crate) fn presented_token(headers: &HeaderMap) -> Option<String> {
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

/// Middleware on every authenticated route: a request that carries an `Origin` not in
/// `allowed_origins` (a page on another site) is refused before its token is looked at.
/// Bearer tokens already keep such pages out; this is the second lock (invariant 8).
pub(super) async fn refuse_cross_site(
    State(st): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    match check_origin(req.headers(), &st) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// A present Origin must be allowlisted.
pub(crate) fn check_origin(headers: &HeaderMap, state: &AppState) -> Result<(), AppError> {
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
