//! A scripted OpenAI-compatible chat-completions server on `127.0.0.1:0` — the only fake in
//! the agent tests. Each `POST /v1/chat/completions` takes the next [`Reply`] of its script and
//! plays it over real HTTP: Server-Sent Events with text deltas, tool-call deltas split across
//! chunks (or whole, without `index`, …), usage, `[DONE]`; or a cut stream, a stall, an HTTP
//! error with `Retry-After`, a non-streamed JSON answer. It records every request it received
//! (body and `Authorization`) so tests can assert what the model was sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One piece of a streamed answer.
#[derive(Debug, Clone)]
pub enum Piece {
    /// `data: <json>\n\n`.
    Data(Value),
    /// Bytes written verbatim (malformed events, comments, odd line endings).
    Raw(String),
    /// A pause before the next piece.
    Pause(Duration),
}

/// How a streamed answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `data: [DONE]` and a clean end of the body.
    Done,
    /// The connection drops mid-body (no terminating chunk).
    Cut,
    /// The body stays open and nothing more comes.
    Hang,
}

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200 text/event-stream`: the pieces, then the end.
    Stream { pieces: Vec<Piece>, end: End },
    /// Any status, with headers and a body (e.g. 429 with `Retry-After`, 503, 400).
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Takes the request and never answers (a provider timeout).
    Stall,
    /// `200 application/json`: a server that ignores `stream: true`.
    Json(Value),
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub body: Value,
    pub authorization: Option<String>,
    pub at: Instant,
}

impl Recorded {
    /// The request's messages.
    pub fn messages(&self) -> &[Value] {
        self.body["messages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The `tool` messages, in order.
    pub fn tool_messages(&self) -> Vec<&Value> {
        self.messages()
            .iter()
            .filter(|m| m["role"] == "tool")
            .collect()
    }

    /// The content of the last `tool` message answering `tool_call_id`.
    pub fn tool_result(&self, tool_call_id: &str) -> String {
        self.messages()
            .iter()
            .rev()
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == tool_call_id)
            .and_then(|m| m["content"].as_str())
            .unwrap_or_else(|| {
                panic!(
                    "no tool result for {tool_call_id} in {:#}",
                    self.body["messages"]
                )
            })
            .to_string()
    }
}

struct MockState {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    arrived: Notify,
}

/// The running mock server; stops when dropped.
pub struct MockLlm {
    /// `http://127.0.0.1:PORT/v1` — the `llm.base_url` to configure.
    pub base_url: String,
    state: Arc<MockState>,
    task: JoinHandle<()>,
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockLlm {
    /// Starts the server with a script (more replies can be pushed later).
    pub async fn start(script: Vec<Reply>) -> MockLlm {
        let state = Arc::new(MockState {
            script: Mutex::new(script.into()),
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mock LLM");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockLlm {
            base_url: format!("http://{addr}/v1"),
            state,
            task,
        }
    }

    /// Appends replies to the script.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Replies not played yet.
    pub fn remaining(&self) -> usize {
        self.state.script.lock().unwrap().len()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (panics after `within`).
    pub async fn wait_requests(&self, n: usize, within: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.state.arrived.notified();
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "the mock LLM got {} requests within {within:?}, expected {n}",
                    self.requests().len()
                );
            }
        }
    }
}

async fn handle(State(st): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let reply = st.script.lock().unwrap().pop_front();
    st.requests.lock().unwrap().push(Recorded {
        body,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        at: Instant::now(),
    });
    st.arrived.notify_waiters();
    let Some(reply) = reply else {
        return Response::builder()
            .status(500)
            .body(Body::from(
                r#"{"error":{"message":"the mock LLM's script is exhausted"}}"#,
            ))
            .unwrap();
    };
    match reply {
        Reply::Status {
            status,
            headers,
            body,
        } => {
            let mut b = Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(Body::from(body)).unwrap()
        }
        Reply::Stall => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Json(v) => Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        Reply::Stream { pieces, end } => {
            let stream = futures_util::stream::unfold(
                (pieces.into_iter(), false),
                move |(mut it, ended)| async move {
                    if ended {
                        return None;
                    }
                    loop {
                        match it.next() {
                            Some(Piece::Pause(d)) => tokio::time::sleep(d).await,
                            Some(Piece::Data(v)) => {
                                let b = Bytes::from(format!("data: {v}\n\n"));
                                return Some((Ok::<_, std::io::Error>(b), (it, false)));
                            }
                            Some(Piece::Raw(s)) => return Some((Ok(Bytes::from(s)), (it, false))),
                            None => match end {
                                End::Done => {
                                    return Some((Ok(Bytes::from("data: [DONE]\n\n")), (it, true)))
                                }
                                End::Cut => {
                                    // Let what was written reach the client first.
                                    tokio::time::sleep(Duration::from_millis(150)).await;
                                    return Some((
                                        Err(std::io::Error::other("the mock cuts the stream")),
                                        (it, true),
                                    ));
                                }
                                End::Hang => {
                                    std::future::pending::<()>().await;
                                }
                            },
                        }
                    }
                },
            );
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

// ---- building scripts -----------------------------------------------------------------------

/// A streamed answer, built chunk by chunk the way OpenAI streams.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    pieces: Vec<Piece>,
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "mock",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

fn pieces_of(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

impl Stream {
    pub fn new() -> Stream {
        Stream::default().data(chunk(json!({"role": "assistant", "content": ""}), None))
    }

    /// Any chunk.
    pub fn data(mut self, v: Value) -> Stream {
        self.pieces.push(Piece::Data(v));
        self
    }

    /// Bytes verbatim.
    pub fn raw(mut self, s: &str) -> Stream {
        self.pieces.push(Piece::Raw(s.into()));
        self
    }

    pub fn pause(mut self, d: Duration) -> Stream {
        self.pieces.push(Piece::Pause(d));
        self
    }

    /// Text in deltas of a few characters.
    pub fn text(mut self, text: &str) -> Stream {
        for p in pieces_of(text, 7) {
            self = self.data(chunk(json!({"content": p}), None));
        }
        self
    }

    /// A tool call the OpenAI way: `index`, then `id` and `name` in the first chunk only, and
    /// the arguments split into pieces of `piece` characters in the following chunks.
    pub fn tool_call(
        mut self,
        index: u64,
        id: &str,
        name: &str,
        args: &str,
        piece: usize,
    ) -> Stream {
        self = self.data(chunk(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
        for p in pieces_of(args, piece) {
            self = self.data(chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": p}}]}),
                None,
            ));
        }
        self
    }

    /// A whole tool call in one chunk; `index` may be omitted (some servers do).
    pub fn tool_call_whole(self, index: Option<u64>, id: &str, name: &str, args: &str) -> Stream {
        let mut c =
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}});
        if let Some(i) = index {
            c["index"] = json!(i);
        }
        self.data(chunk(json!({"tool_calls": [c]}), None))
    }

    /// The chunk with `finish_reason`.
    pub fn finish(self, reason: &str) -> Stream {
        self.data(chunk(json!({}), Some(reason)))
    }

    /// The usage chunk (`choices: []`), as with `stream_options.include_usage`.
    pub fn usage(self, prompt: u64, completion: u64) -> Stream {
        self.data(json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "mock",
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }))
    }

    pub fn done(self) -> Reply {
        Reply::Stream {
            pieces: self.pieces,
            end: End::Done,
        }
    }

    pub fn cut(self) -> Reply {
        Reply::Stream {
            pieces: self.pieces,
            end: End::Cut,
        }
    }

    pub fn hang(self) -> Reply {
        Reply::Stream {
            pieces: self.pieces,
            end: End::Hang,
        }
    }
}

/// A final text answer: deltas, `finish_reason: stop`, usage, `[DONE]`.
pub fn answer(text: &str) -> Reply {
    Stream::new()
        .text(text)
        .finish("stop")
        .usage(100, 20)
        .done()
}

/// One assistant message with these tool calls (`(id, name, arguments JSON)`), streamed the
/// OpenAI way with the arguments split into 5-character pieces; usage in the last chunk.
pub fn tool_calls(calls: &[(&str, &str, Value)]) -> Reply {
    let mut s = Stream::new();
    for (i, (id, name, args)) in calls.iter().enumerate() {
        s = s.tool_call(i as u64, id, name, &args.to_string(), 5);
    }
    s.finish("tool_calls").usage(50, 10).done()
}

/// An HTTP error answer, optionally with `Retry-After`.
pub fn status(code: u16, retry_after: Option<&str>, message: &str) -> Reply {
    Reply::Status {
        status: code,
        headers: retry_after
            .map(|r| vec![("retry-after".to_string(), r.to_string())])
            .unwrap_or_default(),
        body: json!({"error": {"message": message, "type": "mock_error"}}).to_string(),
    }
}
