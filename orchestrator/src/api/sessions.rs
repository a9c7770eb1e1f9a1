//! Session routes: create, list, read with its events, delete.

use super::*;

pub(super) async fn create_session(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Response, AppError> {
    let s = st.engine.create_session(&user).await?;
    Ok((StatusCode::CREATED, Json(Session::from(&s))).into_response())
}

pub(super) async fn list_sessions(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<SessionList>, AppError> {
    let list = st.engine.list_sessions(&user).await?;
    Ok(Json(SessionList {
        sessions: list.iter().map(Session::from).collect(),
    }))
}

pub(super) async fn get_session(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    q: Result<Query<AfterQuery>, QueryRejection>,
) -> Result<Json<SessionDetail>, AppError> {
    let Query(q) = q?;
    let s = st.engine.owned_session(&user, &id).await?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let events = st
        .engine
        .history(&user, &id, q.after.as_deref(), limit)
        .await?;
    Ok(Json(SessionDetail {
        session: Session::from(&s),
        events: events.iter().map(SessionEvent::from).collect(),
    }))
}

pub(super) async fn delete_session(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    st.engine.delete_session(&user, &id).await?;
    st.agent.cancel_local(&id);
    Ok(StatusCode::NO_CONTENT)
}
