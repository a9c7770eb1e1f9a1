//! Airlock orchestrator. The pure core (`calls`, `events`, `limits`, `policy`) knows no Docker, Redis,
//! HTTP or LLM types; `sandbox` is the only code that talks to Docker and `store` the only code
//! that talks to Redis, and `engine` is the one door to both (checked by `tests/tidy.rs`).

pub mod agent;
pub mod api;
pub mod auth;
pub mod bench;
pub mod calls;
pub mod client;
pub mod config;
pub mod doctor;
pub mod egress;
pub mod embedded_redis;
pub mod engine;
pub mod events;
pub mod limits;
pub mod llm;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod quota;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod web;

pub use airlock_executor::protocol;
