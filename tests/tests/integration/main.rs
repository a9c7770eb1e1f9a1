//! Airlock's integration tests: one test binary, real Docker engine, real redis-server.

mod api;
mod escapes;
mod exhaustion;
mod helpers;
mod posture;
mod store;
mod tools;
