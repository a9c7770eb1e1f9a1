//! The tool-call state machine (pure, sans-IO) and the records the store keeps for each call.
//!
//! ```text
//! proposed ──► denied | failed (the preview failed)
//!    │  └────► awaiting_approval ──► denied | expired | cancelled
//!    │                 │
//!    └────────────────►approved ──► running ──► succeeded | failed | timed_out | cancelled
//!                          └──────► failed | cancelled
//! ```

use serde::{Deserialize, Serialize};

/// Where a call is in its life. Stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Proposed,
    Denied,
    AwaitingApproval,
    Approved,
    Expired,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

/// An illegal transition, e.g. approving a call that already ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a call cannot go from `{from}` to `{to}`")]
pub struct TransitionError {
    pub from: CallStatus,
    pub to: CallStatus,
}

impl CallStatus {
    pub const ALL: [CallStatus; 10] = [
        CallStatus::Proposed,
        CallStatus::Denied,
        CallStatus::AwaitingApproval,
        CallStatus::Approved,
        CallStatus::Expired,
        CallStatus::Running,
        CallStatus::Succeeded,
        CallStatus::Failed,
        CallStatus::TimedOut,
        CallStatus::Cancelled,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            CallStatus::Proposed => "proposed",
            CallStatus::Denied => "denied",
            CallStatus::AwaitingApproval => "awaiting_approval",
            CallStatus::Approved => "approved",
            CallStatus::Expired => "expired",
            CallStatus::Running => "running",
            CallStatus::Succeeded => "succeeded",
            CallStatus::Failed => "failed",
            CallStatus::TimedOut => "timed_out",
            CallStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<CallStatus> {
        CallStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// No transition leaves a terminal state.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            CallStatus::Denied
                | CallStatus::Expired
                | CallStatus::Succeeded
                | CallStatus::Failed
                | CallStatus::TimedOut
                | CallStatus::Cancelled
        )
    }

    /// The states a call may move to from `self`.
    pub fn successors(&self) -> &'static [CallStatus] {
        use CallStatus::*;
        match self {
            // `failed`: the preview of a change could not be computed (e.g. `not_found`).
            Proposed => &[Denied, AwaitingApproval, Approved, Failed],
            AwaitingApproval => &[Approved, Denied, Expired, Cancelled],
            Approved => &[Running, Failed, Cancelled],
            Running => &[Succeeded, Failed, TimedOut, Cancelled],
            Denied | Expired | Succeeded | Failed | TimedOut | Cancelled => &[],
        }
    }

    /// The states from which `to` can be reached (what an atomic store transition checks).
    pub fn predecessors(to: CallStatus) -> Vec<CallStatus> {
        CallStatus::ALL
            .into_iter()
            .filter(|f| f.successors().contains(&to))
            .collect()
    }

    pub fn check(&self, to: CallStatus) -> Result<(), TransitionError> {
        if self.successors().contains(&to) {
            Ok(())
        } else {
            Err(TransitionError { from: *self, to })
        }
    }
}

impl std::fmt::Display for CallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the policy said about a proposed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Deny,
    Ask,
    Allow,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::Deny, Decision::Ask, Decision::Allow];

    /// Its name, as in policy files, records and events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Deny => "deny",
            Decision::Ask => "ask",
            Decision::Allow => "allow",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        Decision::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// The state a proposed call moves to under this decision.
    pub fn next_status(&self) -> CallStatus {
        match self {
            Decision::Deny => CallStatus::Denied,
            Decision::Ask => CallStatus::AwaitingApproval,
            Decision::Allow => CallStatus::Approved,
        }
    }
}

/// The status a finished sandbox run maps to.
pub fn finished_status(tool_failed: bool, timed_out: bool, cancelled: bool) -> CallStatus {
    if cancelled {
        CallStatus::Cancelled
    } else if timed_out {
        CallStatus::TimedOut
    } else if tool_failed {
        CallStatus::Failed
    } else {
        CallStatus::Succeeded
    }
}

#[cfg(test)]
mod tests {
    use super::CallStatus::*;
    use super::*;

    /// Every (from, to) pair, data-driven: exactly the edges of the diagram are legal.
    #[test]
    fn transition_table() {
        let legal = [
            (Proposed, Denied),
            (Proposed, AwaitingApproval),
            (Proposed, Approved),
            (Proposed, Failed),
            (AwaitingApproval, Approved),
            (AwaitingApproval, Denied),
            (AwaitingApproval, Expired),
            (AwaitingApproval, Cancelled),
            (Approved, Running),
            (Approved, Failed),
            (Approved, Cancelled),
            (Running, Succeeded),
            (Running, Failed),
            (Running, TimedOut),
            (Running, Cancelled),
        ];
        for from in CallStatus::ALL {
            for to in CallStatus::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.check(to).is_ok(), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn terminal_states_have_no_successors_and_names_round_trip() {
        for s in CallStatus::ALL {
            assert_eq!(s.is_terminal(), s.successors().is_empty(), "{s}");
            assert_eq!(CallStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().into())
            );
        }
        assert_eq!(CallStatus::parse("approve"), None);
    }

    #[test]
    fn an_approval_can_only_come_from_awaiting_or_proposed() {
        assert_eq!(
            CallStatus::predecessors(Approved),
            vec![Proposed, AwaitingApproval]
        );
        assert_eq!(Decision::Ask.next_status(), AwaitingApproval);
        assert_eq!(finished_status(false, true, false), TimedOut);
        assert_eq!(finished_status(true, false, true), Cancelled);
    }
}
