//! Airlock orchestrator: the sandbox (the only code that talks to Docker), and — as the
//! server grows — policy, tool-call state, Redis store, agent loop and HTTP API.

pub mod agent;
pub mod api;
pub mod auth;
pub mod bench;
pub mod calls;
pub mod client;
pub mod config;
pub mod doctor;
pub mod embedded_redis;
pub mod engine;
pub mod llm;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod quota;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod web;

pub use airlock_executor::protocol;
