//! Notifications when a call waits for approval, so a user away from the desk can answer:
//! webhooks (Airlock's JSON body, or a Slack-compatible one) with who, which session and call,
//! the tool, a one-line summary, the expiry and a link to the web UI that opens the call. No
//! file contents unless the admin turns diffs on for a hook. Deliveries run on a background
//! task with retries and backoff; a slow or dead endpoint never delays a call, and a full
//! queue drops the notification (logged), never the call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::client::render;
use crate::config::{NotifyConfig, WebhookConfig, WebhookFormat};
use crate::store::CallRecord;

/// Notifications waiting to be sent, at most.
const QUEUE: usize = 1024;
/// Attempts per delivery, and the first pause between them (doubling).
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// One attempt's time limit.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a command shown in a summary.
const SUMMARY_CHARS: usize = 120;

/// Sends approval notifications; cheap to clone, one background sender per server.
#[derive(Clone)]
pub struct Notifier {
    queue: mpsc::Sender<Value>,
    counts: Arc<Counts>,
}

/// Deliveries that succeeded, and that failed after every attempt.
#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
}

/// One delivery: the hook, its body.
struct Delivery {
    hook: WebhookConfig,
    body: Value,
}

impl Notifier {
    /// Starts the sender; `None` when no webhook is configured.
    pub fn start(cfg: &NotifyConfig) -> Option<Notifier> {
        if cfg.webhooks.is_empty() {
            return None;
        }
        let (tx, mut rx) = mpsc::channel::<Value>(QUEUE);
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let hooks = cfg.webhooks.clone();
        let ui_url = cfg.ui_url.clone();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                for hook in &hooks {
                    let body = body_for(hook, &event, ui_url.as_deref());
                    let d = Delivery {
                        hook: hook.clone(),
                        body,
                    };
                    // Each delivery on its own: one dead endpoint does not hold up the others.
                    tokio::spawn(deliver(http.clone(), d, c.clone()));
                }
            }
        });
        Some(Notifier { queue: tx, counts })
    }

    /// Prometheus lines: deliveries by result.
    pub fn metrics_text(&self) -> String {
        format!(
            "# HELP airlock_webhook_deliveries_total Approval notifications by result (failed: after every retry).\n\
             # TYPE airlock_webhook_deliveries_total counter\n\
             airlock_webhook_deliveries_total{{result=\"delivered\"}} {}\n\
             airlock_webhook_deliveries_total{{result=\"failed\"}} {}\n",
            self.counts.delivered.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed)
        )
    }

    /// A call now waits for approval: notify, without waiting for anything.
    pub fn approval_required(&self, rec: &CallRecord) {
        if self.queue.try_send(event(rec)).is_err() {
            tracing::warn!(call_id = %rec.id, "approval notification dropped: the queue is full");
        }
    }
}

/// The facts of a waiting call that a notification may carry (`diff` is removed again for a
/// hook that does not include diffs).
fn event(rec: &CallRecord) -> Value {
    let diff = rec
        .preview
        .as_ref()
        .and_then(|p| p.get("diff"))
        .cloned()
        .unwrap_or(Value::Null);
    json!({
        "event": "approval_required",
        "user": rec.owner,
        "session_id": rec.session_id,
        "call_id": rec.id,
        "tool": rec.tool,
        "summary": summary(rec),
        "rule": rec.rule,
        "expires_at_ms": rec.expires_at_ms,
        "diff": diff,
    })
}

/// One line: the command (capped), or the path and the size of the change.
pub fn summary(rec: &CallRecord) -> String {
    let arg = |k: &str| rec.args.get(k).and_then(Value::as_str).unwrap_or("");
    // Control characters shown as `^X` (the terminal client's rule), then capped.
    let one_line = |s: &str| render::truncate(&render::one_line(s), SUMMARY_CHARS);
    match rec.tool.as_str() {
        "run_shell" => format!("run_shell: {}", one_line(arg("command"))),
        "write_file" | "edit_file" => {
            let diff = rec.preview_diff();
            let added = diff
                .lines()
                .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
                .count();
            let removed = diff
                .lines()
                .filter(|l| l.starts_with('-') && !l.starts_with("---"))
                .count();
            format!(
                "{} {} (+{added} −{removed} lines)",
                rec.tool,
                one_line(arg("path"))
            )
        }
        "revert" => format!(
            "revert of {}",
            one_line(&render::target(&rec.tool, &rec.args))
        ),
        other => format!("{other} {}", one_line(arg("path"))),
    }
}

/// The body for one hook: Airlock's JSON, or Slack's `text` (+ the same fields as context).
fn body_for(hook: &WebhookConfig, event: &Value, ui_url: Option<&str>) -> Value {
    let mut e = event.clone();
    if !hook.include_diff || e["diff"].is_null() {
        if let Some(m) = e.as_object_mut() {
            m.remove("diff");
        }
    }
    let link = ui_url.map(|u| format!("{u}/#call={}", e["call_id"].as_str().unwrap_or("")));
    e["url"] = link.clone().map(Value::String).unwrap_or(Value::Null);
    e["expires_at"] = e["expires_at_ms"]
        .as_u64()
        .map(|ms| Value::String(render::iso8601(ms)))
        .unwrap_or(Value::Null);
    match hook.format {
        WebhookFormat::Json => e,
        WebhookFormat::Slack => {
            // Slack's markup: `<…>` are links and mentions, so text from the agent is escaped.
            let esc = |s: &str| {
                s.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
            };
            let mut text = format!(
                "Airlock: {}'s agent waits for approval — {}",
                esc(e["user"].as_str().unwrap_or("?")),
                esc(e["summary"].as_str().unwrap_or(""))
            );
            if let Some(l) = &link {
                text.push_str(&format!(
                    " — <{l}|open call {}>",
                    e["call_id"].as_str().unwrap_or("")
                ));
            }
            if let Some(at) = e["expires_at"].as_str() {
                text.push_str(&format!(" (expires {at})"));
            }
            if let Some(d) = e.get("diff").and_then(Value::as_str) {
                text.push_str(&format!("\n```{}```", esc(d).replace("```", "ˋˋˋ")));
            }
            json!({"text": text})
        }
    }
}

/// Sends one body, retrying with backoff on errors and non-2xx answers.
async fn deliver(http: reqwest::Client, d: Delivery, counts: Arc<Counts>) {
    // The URL is a secret (Slack's carry the credential in the path): log its host only.
    let host = reqwest::Url::parse(&d.hook.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let mut pause = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let sent = http.post(&d.hook.url).json(&d.body).send().await;
        let why = match sent {
            Ok(r) if r.status().is_success() => {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(r) => format!("HTTP {}", r.status().as_u16()),
            Err(e) if e.is_timeout() => "timed out".to_string(),
            Err(e) if e.is_connect() => "connection failed".to_string(),
            Err(_) => "request failed".to_string(),
        };
        tracing::warn!(%host, attempt, reason = %why, "approval webhook delivery failed");
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    counts.failed.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> CallRecord {
        let mut r = CallRecord::new(
            "c1",
            "s1",
            "alice",
            "write_file",
            json!({"path": "src/a.rs", "content": "SECRET-CONTENT\nline\n"}),
            0,
        );
        r.preview = Some(
            json!({"diff": "--- a/src/a.rs\n+++ b/src/a.rs\n@@ -1 +1,2 @@\n-old\n+SECRET-CONTENT\n+line\n"}),
        );
        r.expires_at_ms = Some(1_796_280_000_000);
        r.rule = "defaults.tools.write_file".into();
        r
    }

    fn hook(format: WebhookFormat, include_diff: bool) -> WebhookConfig {
        WebhookConfig {
            url: "https://hooks.example/x".into(),
            format,
            include_diff,
        }
    }

    #[test]
    fn json_body_has_the_fields_and_no_contents_unless_diffs_are_on() {
        let e = event(&rec());
        let b = body_for(
            &hook(WebhookFormat::Json, false),
            &e,
            Some("https://airlock.example"),
        );
        assert_eq!(b["user"], "alice");
        assert_eq!(b["call_id"], "c1");
        assert_eq!(b["session_id"], "s1");
        assert_eq!(b["tool"], "write_file");
        assert_eq!(b["summary"], "write_file src/a.rs (+2 −1 lines)");
        assert_eq!(b["url"], "https://airlock.example/#call=c1");
        assert!(b["expires_at"].as_str().unwrap().ends_with('Z'));
        assert!(!b.to_string().contains("SECRET-CONTENT"), "{b}");
        let with = body_for(&hook(WebhookFormat::Json, true), &e, None);
        assert!(with["diff"].as_str().unwrap().contains("SECRET-CONTENT"));
        assert!(with["url"].is_null());
    }

    #[test]
    fn slack_body_is_one_text_with_the_link() {
        let b = body_for(
            &hook(WebhookFormat::Slack, false),
            &event(&rec()),
            Some("https://a.example"),
        );
        let t = b["text"].as_str().unwrap();
        assert!(
            t.contains("alice") && t.contains("<https://a.example/#call=c1|open call c1>"),
            "{t}"
        );
        assert!(!t.contains("SECRET-CONTENT"), "{t}");
        assert_eq!(b.as_object().unwrap().len(), 1);
    }

    #[test]
    fn slack_markup_from_the_agent_is_escaped() {
        let mut r = rec();
        r.tool = "run_shell".into();
        r.args = json!({"command": "echo <https://evil.example|Approve call c1> <!channel> && x"});
        let b = body_for(
            &hook(WebhookFormat::Slack, false),
            &event(&r),
            Some("https://a.example"),
        );
        let t = b["text"].as_str().unwrap();
        assert!(
            !t.contains("<https://evil") && !t.contains("<!channel>"),
            "{t}"
        );
        assert!(t.contains("&lt;!channel&gt; &amp;&amp; x"), "{t}");
        assert!(
            t.contains("<https://a.example/#call=c1|open call c1>"),
            "our own link stays: {t}"
        );
    }

    #[test]
    fn a_command_summary_is_one_capped_line() {
        let mut r = rec();
        r.tool = "run_shell".into();
        r.args = json!({"command": format!("echo a\nrm -rf x {}", "y".repeat(300))});
        let s = summary(&r);
        assert!(s.starts_with("run_shell: echo a^Jrm -rf x"), "{s}");
        assert!(!s.contains('\n'));
        assert!(
            s.chars().count() <= "run_shell: ".len() + SUMMARY_CHARS,
            "{s}"
        );
        assert!(s.ends_with('…'), "{s}");
    }
}
