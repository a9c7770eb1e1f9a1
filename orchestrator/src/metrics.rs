//! Prometheus metrics, rendered by hand in the text exposition format (no registry crate).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the call-latency histogram.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<(String, String), u64>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    http_requests: AtomicU64,
    /// The agent: tokens by kind (`prompt`, `completion`), model requests by outcome, turns
    /// by how they ended.
    llm_tokens: Mutex<BTreeMap<&'static str, u64>>,
    llm_requests: Mutex<BTreeMap<String, u64>>,
    agent_turns: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn count_call(&self, tool: &str, outcome: &str) {
        *self
            .calls
            .lock()
            .expect("metrics lock")
            .entry((tool.to_string(), outcome.to_string()))
            .or_default() += 1;
    }

    pub fn observe_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count_request(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Tokens one model request used (as the provider reported them).
    pub fn count_tokens(&self, prompt: u64, completion: u64) {
        let mut m = self.llm_tokens.lock().expect("metrics lock");
        *m.entry("prompt").or_default() += prompt;
        *m.entry("completion").or_default() += completion;
    }

    /// One model request and how it ended (`ok` or an `llm_*` error code).
    pub fn count_llm_request(&self, outcome: &str) {
        *self
            .llm_requests
            .lock()
            .expect("metrics lock")
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    /// One agent turn and how it ended (`completed`, `cancelled`, `failed`, `max_steps`, …).
    pub fn count_turn(&self, status: &str) {
        *self
            .agent_turns
            .lock()
            .expect("metrics lock")
            .entry(status.to_string())
            .or_default() += 1;
    }

    /// The exposition text; gauges are passed in because they are read from elsewhere.
    pub fn render(&self, containers: usize, pending: Option<u64>) -> String {
        let mut out = String::new();
        out += "# HELP airlock_tool_calls_total Tool calls by tool and outcome.\n";
        out += "# TYPE airlock_tool_calls_total counter\n";
        for ((tool, outcome), n) in self.calls.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "airlock_tool_calls_total{{tool=\"{}\",outcome=\"{}\"}} {n}",
                escape(tool),
                escape(outcome)
            );
        }
        out += "# HELP airlock_tool_call_seconds From approval (or proposal, when allowed) to result.\n";
        out += "# TYPE airlock_tool_call_seconds histogram\n";
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "airlock_tool_call_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "airlock_tool_call_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "airlock_tool_call_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "airlock_tool_call_seconds_count {count}");
        out += "# HELP airlock_containers Sandbox containers alive (running, prepared or being removed).\n";
        out += "# TYPE airlock_containers gauge\n";
        let _ = writeln!(out, "airlock_containers {containers}");
        if let Some(p) = pending {
            out += "# HELP airlock_approvals_pending Calls waiting for the user's decision.\n";
            out += "# TYPE airlock_approvals_pending gauge\n";
            let _ = writeln!(out, "airlock_approvals_pending {p}");
        }
        out += "# HELP airlock_http_requests_total HTTP requests served.\n";
        out += "# TYPE airlock_http_requests_total counter\n";
        let _ = writeln!(
            out,
            "airlock_http_requests_total {}",
            self.http_requests.load(Ordering::Relaxed)
        );
        out += "# HELP airlock_llm_tokens_total Tokens used by the agent's model requests, as reported by the provider.\n";
        out += "# TYPE airlock_llm_tokens_total counter\n";
        let tokens = self.llm_tokens.lock().expect("metrics lock").clone();
        for kind in ["prompt", "completion"] {
            let n = tokens.get(kind).copied().unwrap_or(0);
            let _ = writeln!(out, "airlock_llm_tokens_total{{kind=\"{kind}\"}} {n}");
        }
        out += "# HELP airlock_llm_requests_total The agent's model requests by outcome.\n";
        out += "# TYPE airlock_llm_requests_total counter\n";
        for (outcome, n) in self.llm_requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "airlock_llm_requests_total{{outcome=\"{}\"}} {n}",
                escape(outcome)
            );
        }
        out += "# HELP airlock_agent_turns_total Agent turns by how they ended.\n";
        out += "# TYPE airlock_agent_turns_total counter\n";
        for (status, n) in self.agent_turns.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "airlock_agent_turns_total{{status=\"{}\"}} {n}",
                escape(status)
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The warm pool's counters (`sandbox::pool`).
pub fn render_pool(p: &crate::sandbox::PoolStats) -> String {
    let mut out = String::new();
    out += "# HELP airlock_pool_takes_total Calls that wanted a warm container, by result.\n";
    out += "# TYPE airlock_pool_takes_total counter\n";
    let _ = writeln!(out, "airlock_pool_takes_total{{result=\"hit\"}} {}", p.hits);
    let _ = writeln!(
        out,
        "airlock_pool_takes_total{{result=\"miss\"}} {}",
        p.misses
    );
    out += "# HELP airlock_pool_idle_containers Started, idle containers waiting for a call.\n";
    out += "# TYPE airlock_pool_idle_containers gauge\n";
    let _ = writeln!(out, "airlock_pool_idle_containers {}", p.idle);
    out += "# HELP airlock_pool_discards_total Idle containers removed unused, by reason.\n";
    out += "# TYPE airlock_pool_discards_total counter\n";
    for (reason, n) in &p.discards {
        let _ = writeln!(
            out,
            "airlock_pool_discards_total{{reason=\"{reason}\"}} {n}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.count_call("read_file", "succeeded");
        m.count_call("read_file", "succeeded");
        m.observe_latency(Duration::from_millis(20));
        let text = m.render(3, Some(1));
        assert!(
            text.contains("airlock_tool_calls_total{tool=\"read_file\",outcome=\"succeeded\"} 2")
        );
        assert!(text.contains("airlock_tool_call_seconds_bucket{le=\"0.01\"} 0"));
        assert!(text.contains("airlock_tool_call_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("airlock_tool_call_seconds_bucket{le=\"+Inf\"} 1"));
        assert!(text.contains("airlock_containers 3"));
        assert!(text.contains("airlock_approvals_pending 1"));
        m.count_tokens(10, 4);
        m.count_tokens(1, 1);
        m.count_turn("completed");
        m.count_llm_request("ok");
        let text = m.render(0, None);
        assert!(text.contains("airlock_llm_tokens_total{kind=\"prompt\"} 11"));
        assert!(text.contains("airlock_llm_tokens_total{kind=\"completion\"} 5"));
        assert!(text.contains("airlock_agent_turns_total{status=\"completed\"} 1"));
        assert!(text.contains("airlock_llm_requests_total{outcome=\"ok\"} 1"));
    }
}
