//! Airlock's integration tests: one test binary, real Docker engine, real redis-server.

mod agent;
mod api;
mod approvals;
mod audit;
mod clients;
mod contract;
mod deploy;
mod escapes;
mod exhaustion;
mod helpers;
mod http;
mod lifecycle;
mod mcp;
mod notify;
mod policy;
mod pool;
mod posture;
mod protected;
mod store;
mod toolchain;
mod tools;
mod undo;
