//! `airlock-executor`: the protocol shared with the orchestrator, and the tool implementations
//! that run inside a sandbox container (no tokio, no network, no Redis: one request, then exit).

pub mod protocol;
