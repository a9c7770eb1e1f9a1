//! Airlock orchestrator: the sandbox (the only code that talks to Docker), and — as the
//! server grows — policy, tool-call state, Redis store, agent loop and HTTP API.

pub mod bench;
pub mod sandbox;

pub use airlock_executor::protocol;
