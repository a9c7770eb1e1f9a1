//! Tool-call routes: propose, read, list, decide, cancel, session grants, and the audit page.

use super::*;

pub(super) fn call_json(c: &CallRecord) -> Call {
    Call::from(c)
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
) -> Result<Json<CallDetail>, AppError> {
    let rec = st.engine.owned_call(&user, &id).await?;
    let output = st.engine.call_output(&rec).await?;
    Ok(Json(CallDetail {
        call: call_json(&rec),
        output,
    }))
}

/// `GET /v1/sessions/{id}/tool-calls[?status=S]`: the session's calls, oldest first (owner only).
pub(super) async fn list_session_calls(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    q: Result<Query<CallsQuery>, QueryRejection>,
) -> Result<Json<CallList>, AppError> {
    let Query(q) = q?;
    let calls = st.engine.list_calls(&user, &id).await?;
    let calls = calls
        .iter()
        .filter(|c| q.status.as_deref().is_none_or(|s| c.status.as_str() == s))
        .map(call_json)
        .collect();
    Ok(Json(CallList {
        session_id: id,
        calls,
    }))
}

/// `GET /v1/audit[?after=ID&limit=N]` (admin): audit entries after `after`, oldest first.
pub(super) async fn audit_entries(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    q: Result<Query<AfterQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, AppError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = st
        .engine
        .audit_page(&user, q.after.as_deref(), limit)
        .await?;
    let last = entries.last().map(|e| e.id.clone()).or(q.after);
    Ok(Json(AuditPage {
        entries,
        last_id: last,
    }))
}

pub(super) async fn decide(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Call>, AppError> {
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
        if r.chars().count() > 2000 {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "reason is longer than 2000 characters",
            ));
        }
    }
    if let Some(h) = &body.hunks {
        if !approve || h.is_empty() || h.len() > 1000 {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "hunks go with \"approve\": between 1 and 1000 hunk ids (to approve none, deny)",
            ));
        }
    }
    let rec = st
        .engine
        .decide_hunks(
            &user,
            &id,
            approve,
            &body.args_sha256,
            body.reason.as_deref(),
            body.hunks.as_deref(),
        )
        .await?;
    Ok(Json(call_json(&rec)))
}

/// `POST /v1/tool-calls/{id}/edit`: the owner's version of a waiting change, previewed; the
/// call keeps waiting, bound to the new `args_sha256`.
pub(super) async fn edit_call(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Result<Json<EditBody>, JsonRejection>,
) -> Result<Json<Call>, AppError> {
    let Json(body) = body?;
    let replacement = match (body.content, body.new_strings) {
        (Some(c), None) => Replacement::Content(c),
        (None, Some(t)) if !t.is_empty() && t.len() <= 1000 => Replacement::NewTexts(t),
        _ => {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "give exactly one of `content` (a write_file) and `new_strings` (an edit_file: 1 to 1000, one per edit)",
            ))
        }
    };
    let rec = st
        .engine
        .edit_call(&user, &id, &body.args_sha256, replacement)
        .await?;
    Ok(Json(call_json(&rec)))
}

/// `POST /v1/tool-calls/{id}/revert`: proposes putting back what an applied call replaced, as
/// a new call in its session that waits for approval (201); 409 naming the files that changed
/// since, 410 when what it replaced is no longer kept.
pub(super) async fn revert_call(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let rec = st.engine.revert(&user, &id).await?;
    Ok((StatusCode::CREATED, Json(call_json(&rec))).into_response())
}

/// `POST /v1/sessions/{id}/grants`: approve a tool + pattern for the rest of the session.
pub(super) async fn add_grant(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Result<Json<GrantBody>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(body) = body?;
    if body.pattern.chars().count() > 1000 {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "pattern is longer than 1000 characters",
        ));
    }
    let g = st
        .engine
        .add_grant(&user, &id, &body.tool, &body.pattern)
        .await?;
    let g = GrantAdded {
        tool: g.tool,
        pattern: g.pattern,
        writable: g.writable,
    };
    Ok((StatusCode::CREATED, Json(g)).into_response())
}

pub(super) async fn list_grants(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<GrantList>, AppError> {
    let (grants, allowed) = st.engine.list_grants(&user, &id).await?;
    Ok(Json(GrantList {
        grants: grants
            .into_iter()
            .map(|(tool, pattern)| Grant { tool, pattern })
            .collect(),
        allowed,
    }))
}

pub(super) async fn cancel(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Call>, AppError> {
    let rec = st.engine.cancel(&user, &id).await?;
    Ok(Json(call_json(&rec)))
}
