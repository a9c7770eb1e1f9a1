//! Tool-call routes: propose, read, list, decide, cancel, session grants, and the audit page.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProposeBody {
    tool: String,
    #[serde(default = "empty_object")]
    args: Value,
}

pub(super) fn empty_object() -> Value {
    json!({})
}

pub(super) fn call_json(c: &CallRecord) -> Value {
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

pub(super) async fn propose(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Result<Json<ProposeBody>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(body) = body?;
    let rec = st.engine.propose(&user, &id, &body.tool, body.args).await?;
    Ok((StatusCode::CREATED, Json(call_json(&rec))).into_response())
}

pub(super) async fn get_call(
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
pub(super) struct CallsQuery {
    /// Only calls with this status (e.g. `awaiting_approval`).
    status: Option<String>,
}

/// `GET /v1/sessions/{id}/tool-calls[?status=S]`: the session's calls, oldest first (owner only).
pub(super) async fn list_session_calls(
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
pub(super) async fn audit_entries(
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
    let last = entries.last().map(|e| e.id.clone()).or(q.after);
    Ok(Json(json!({ "entries": entries, "last_id": last })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionBody {
    decision: String,
    args_sha256: String,
    reason: Option<String>,
}

pub(super) async fn decide(
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
pub(super) struct GrantBody {
    tool: String,
    pattern: String,
}

/// `POST /v1/sessions/{id}/grants`: approve a tool + pattern for the rest of the session.
pub(super) async fn add_grant(
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

pub(super) async fn list_grants(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(st.engine.list_grants(&user, &id).await?))
}

pub(super) async fn cancel(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let rec = st.engine.cancel(&user, &id).await?;
    Ok(Json(call_json(&rec)))
}
