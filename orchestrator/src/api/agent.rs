//! The agent's routes: a message starts a turn, the conversation, cancel; and the client
//! messages a session's WebSocket accepts.

use super::*;

/// `POST /v1/sessions/{id}/messages {content}`: starts a turn (202), or 409 while one runs.
pub(super) async fn send_message(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Result<Json<MessageBody>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(body) = body?;
    let turn_id = st.agent.start_turn(&user, &id, &body.content).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TurnStarted {
            session_id: id,
            turn_id,
            status: "running".into(),
        }),
    )
        .into_response())
}

/// `GET /v1/sessions/{id}/messages`: the stored conversation and the running turn, if any.
pub(super) async fn get_messages(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Messages>, AppError> {
    let entries = st.agent.history(&user, &id).await?;
    let turn = st.agent.current_turn(&id).await?;
    Ok(Json(Messages {
        session_id: id,
        turn_id: turn,
        entries,
    }))
}

/// `POST /v1/sessions/{id}/cancel`: cancels the running turn (idempotent).
pub(super) async fn cancel_turn(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<TurnCancelled>, AppError> {
    let turn = st.agent.cancel_turn(&user, &id).await?;
    Ok(Json(TurnCancelled {
        session_id: id,
        cancelled: turn.is_some(),
        turn_id: turn,
    }))
}

/// A client's WebSocket message: `{"type": "message", "content": "…"}` or `{"type": "cancel"}`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum ClientMessage {
    Message { content: String },
    Cancel {},
}

/// Handles one client WebSocket message; an error goes back as `{"type": "error", "data"}`.
pub(super) async fn ws_client_message(
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
