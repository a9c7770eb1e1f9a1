//! Airlock orchestrator library.
