//! Egress for calls the policy grants network to (issue 15): the decision rules and the
//! per-call proxy. Not wired to the sandbox yet — every container still has no network — so
//! nothing here is reachable from a call; the modules are built and tested on their own first.

pub mod proxy;
pub mod rules;
