//! Airlock's integration tests: one test binary, real Docker engine, real redis-server.

mod posture;
