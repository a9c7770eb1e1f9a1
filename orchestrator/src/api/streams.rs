//! A session's events as a WebSocket or Server-Sent Events, resumable by event id.

use super::*;

pub(super) fn event_json(e: &StoredEvent) -> Value {
    json!({"id": e.id, "type": e.kind, "data": e.data})
}

/// `GET /v1/sessions/{id}/events`: a WebSocket when the request upgrades, SSE otherwise.
/// `?after=ID` (or SSE's `Last-Event-ID`) resumes after the last event the client saw.
pub(super) async fn events(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<AfterQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, AppError> {
    let (mut parts, _) = req.into_parts();
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
pub(super) const STREAM_BLOCK: Duration = Duration::from_secs(10);

pub(super) async fn ws_events(
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
