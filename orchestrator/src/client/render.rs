//! Text for the terminal: control characters neutralised, colours (when stdout is a terminal
//! and `NO_COLOR` is unset), unified diffs, calls and their results. Pure functions.
//!
//! Everything that comes from the model or from tool output goes through [`neutralize`] (or
//! [`one_line`]) before it reaches the terminal, so no escape sequence of theirs is ever
//! interpreted: ESC shows as `^[`, other C0 controls in caret notation, C1 controls and
//! bidirectional overrides as `<U+XXXX>`.

use serde_json::Value;

/// Makes control characters visible; keeps newlines and tabs.
pub fn neutralize(s: &str) -> String {
    escape(s, false)
}

/// Like [`neutralize`], for text that must stay on one line (paths, commands in a table):
/// newlines and tabs become `^J` / `^I` too.
pub fn one_line(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, single_line: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        let c = ch as u32;
        match ch {
            '\n' | '\t' if !single_line => out.push(ch),
            _ if c < 0x20 => {
                out.push('^');
                out.push(char::from_u32(c + 0x40).unwrap_or('?'));
            }
            '\u{7f}' => out.push_str("^?"),
            '\u{80}'..='\u{9f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{061c}'
            | '\u{feff}' => out.push_str(&format!("<U+{c:04X}>")),
            _ => out.push(ch),
        }
    }
    out
}

/// Cuts `s` to at most `max` characters, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// Colours, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    /// Colours when stdout is a terminal and `NO_COLOR` is not set.
    pub fn detect() -> Style {
        use std::io::IsTerminal;
        Style {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    pub fn plain() -> Style {
        Style { color: false }
    }

    /// `text` (already neutralised) wrapped in an SGR sequence.
    pub fn paint(&self, sgr: &str, text: &str) -> String {
        if self.color && !text.is_empty() {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    pub fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }
    pub fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
    pub fn red(&self, t: &str) -> String {
        self.paint("31", t)
    }
    pub fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    pub fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
    pub fn blue(&self, t: &str) -> String {
        self.paint("34", t)
    }
    pub fn magenta(&self, t: &str) -> String {
        self.paint("35", t)
    }
    pub fn cyan(&self, t: &str) -> String {
        self.paint("36", t)
    }
}

/// A unified diff, one line each, `indent` in front, added lines green and removed lines red.
pub fn diff(style: Style, diff: &str, indent: &str) -> String {
    let mut out = String::new();
    for line in neutralize(diff).lines() {
        let painted = if line.starts_with("+++ ") || line.starts_with("--- ") {
            style.bold(line)
        } else if line.starts_with("@@") {
            style.cyan(line)
        } else if line.starts_with('+') {
            style.green(line)
        } else if line.starts_with('-') {
            style.red(line)
        } else if line.starts_with('\\') {
            style.dim(line)
        } else {
            line.to_string()
        };
        out.push_str(indent);
        out.push_str(&painted);
        out.push('\n');
    }
    out
}

/// The short "what" of a call: the path, the search pattern, or the command (one line).
pub fn target(tool: &str, args: &Value) -> String {
    let s = |k: &str| args.get(k).and_then(Value::as_str).map(one_line);
    match tool {
        "run_shell" => s("command").unwrap_or_default(),
        "search" => match (s("pattern"), s("path")) {
            (Some(p), Some(d)) => format!("{p} in {d}"),
            (Some(p), None) => p,
            _ => String::new(),
        },
        "list_dir" => s("path").unwrap_or_else(|| ".".into()),
        "revert" => revert_target(args),
        _ => s("path").unwrap_or_default(),
    }
}

/// `call ID: a.txt, b.txt` (at most three names, then how many more).
fn revert_target(args: &Value) -> String {
    let files: Vec<String> = args["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["path"].as_str().map(one_line))
                .collect()
        })
        .unwrap_or_default();
    let mut names = files.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if files.len() > 3 {
        names += &format!(" and {} more", files.len() - 3);
    }
    format!(
        "call {}: {names}",
        one_line(args["reverts"].as_str().unwrap_or("?"))
    )
}

/// A proposed call: a header line, then the diff, the full command, or the arguments.
/// `call` is a call record (`GET /v1/tool-calls/{id}`) or a `call_proposed` event's data.
pub fn call(style: Style, call: &Value) -> String {
    let tool = call["tool"].as_str().unwrap_or("?");
    let args = &call["args"];
    let mut out = format!(
        "{} {} {}\n",
        style.magenta("⚙"),
        style.bold(&one_line(tool)),
        if tool == "run_shell" {
            String::new()
        } else {
            target(tool, args)
        }
    );
    let rule = call["rule"].as_str().map(one_line).unwrap_or_default();
    let decision = call["decision"].as_str().unwrap_or_default();
    if !decision.is_empty() || !rule.is_empty() {
        out += &format!("  {}\n", style.dim(&format!("policy: {decision} · {rule}")));
    }
    if let Some(d) = call["preview"]["diff"].as_str() {
        if call["preview"]["created"] == true {
            out += &format!("  {}\n", style.dim("(creates a new file)"));
        }
        if d.is_empty() {
            out += &format!("  {}\n", style.dim("(no change to the file)"));
        } else {
            out += &diff(style, d, "  ");
        }
    } else if let Some(changes) = call["preview"]["changes"].as_array() {
        // A revert: the reverse change of each file.
        for c in changes {
            let path = one_line(c["path"].as_str().unwrap_or("?"));
            match c["kind"].as_str() {
                Some("created") => {
                    out += &format!(
                        "  {}
",
                        style.dim(&format!("(puts back {path})"))
                    )
                }
                Some("deleted") => {
                    out += &format!(
                        "  {}
",
                        style.dim(&format!("(removes {path})"))
                    )
                }
                _ => {}
            }
            if let Some(d) = c["diff"].as_str() {
                out += &diff(style, d, "  ");
            }
        }
    } else if tool == "run_shell" {
        let cmd = args["command"].as_str().unwrap_or_default();
        if let Some(cwd) = args["cwd"].as_str() {
            out += &format!("  {}\n", style.dim(&format!("in {}", one_line(cwd))));
        }
        for (i, l) in neutralize(cmd).lines().enumerate() {
            let lead = if i == 0 { "$ " } else { "  " };
            out += &format!("  {}\n", style.yellow(&format!("{lead}{l}")));
        }
        if let Some(t) = args["timeout_secs"].as_u64() {
            out += &format!("  {}\n", style.dim(&format!("timeout {t} s")));
        }
    } else if tool != "read_file" && tool != "list_dir" {
        out += &format!("  {}\n", style.dim(&one_line(&args.to_string())));
    }
    out
}

/// One line about how a call ended (status, error, outcome) and, for results worth showing,
/// a few more lines (what was read, listed or found).
pub fn finished(style: Style, data: &Value) -> String {
    let status = data["status"].as_str().unwrap_or("?");
    let mut bits: Vec<String> = Vec::new();
    let res = &data["result"];
    let mut extra = String::new();
    match res["tool"].as_str() {
        Some("read_file") => {
            let first = res["first_line"].as_u64().unwrap_or(1);
            let n = res["lines_returned"].as_u64().unwrap_or(0);
            bits.push(format!(
                "read {} lines {}–{} of {}{}",
                one_line(res["path"].as_str().unwrap_or_default()),
                first,
                (first + n).saturating_sub(1),
                res["total_lines"].as_u64().unwrap_or(0),
                if res["truncated"] == true {
                    " (truncated)"
                } else {
                    ""
                }
            ));
            if let Some(c) = res["content"].as_str() {
                extra += &preview_lines(style, c, 8);
            }
        }
        Some("list_dir") => {
            let entries = res["entries"].as_array().cloned().unwrap_or_default();
            bits.push(format!(
                "listed {} entries in {}",
                entries.len(),
                one_line(res["path"].as_str().unwrap_or("."))
            ));
            let names: Vec<String> = entries
                .iter()
                .map(|e| {
                    let p = one_line(e["path"].as_str().unwrap_or_default());
                    if e["kind"] == "dir" {
                        format!("{p}/")
                    } else {
                        p
                    }
                })
                .collect();
            extra += &preview_lines(style, &names.join("\n"), 8);
        }
        Some("search") => {
            let m = res["matches"].as_array().cloned().unwrap_or_default();
            bits.push(format!(
                "{} matches in {} files",
                m.len(),
                res["files_searched"].as_u64().unwrap_or(0)
            ));
            let lines: Vec<String> = m
                .iter()
                .map(|x| {
                    format!(
                        "{}:{}: {}",
                        x["path"].as_str().unwrap_or_default(),
                        x["line_number"].as_u64().unwrap_or(0),
                        x["line"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            extra += &preview_lines(style, &lines.join("\n"), 8);
        }
        Some("write_file") | Some("edit_file") => {
            let path = one_line(res["path"].as_str().unwrap_or_default());
            bits.push(if res["applied"] == true {
                if res["created"] == true {
                    format!("created {path}")
                } else {
                    format!("changed {path}")
                }
            } else {
                format!("{path} not changed")
            });
        }
        Some("run_shell") => {
            if let Some(sig) = res["signal"].as_i64() {
                bits.push(format!("killed by signal {sig}"));
            } else {
                bits.push(format!("exit code {}", res["exit_code"]));
            }
            if let Some(ch) = res["changes"].as_array().filter(|c| !c.is_empty()) {
                let names: Vec<String> = ch
                    .iter()
                    .take(10)
                    .map(|c| one_line(c["path"].as_str().unwrap_or_default()))
                    .collect();
                bits.push(format!(
                    "{} file(s) changed: {}",
                    ch.len(),
                    names.join(", ")
                ));
            }
        }
        _ => {}
    }
    if res["tool"] == "revert" && res["applied"] == true {
        let n = res["changes"].as_array().map_or(0, Vec::len);
        bits.push(format!(
            "reverted {n} file(s) of call {}",
            one_line(res["reverts"].as_str().unwrap_or("?"))
        ));
    }
    if data["undo"]["files"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
        && !data["undo"]["expires_at_ms"].is_null()
    {
        bits.push(format!(
            "undo: airlock calls revert {}",
            one_line(data["call_id"].as_str().unwrap_or("?"))
        ));
    }
    if let Some(e) = data["error"].as_object() {
        bits.push(format!(
            "{}: {}",
            one_line(e.get("code").and_then(Value::as_str).unwrap_or("error")),
            one_line(e.get("message").and_then(Value::as_str).unwrap_or_default())
        ));
    }
    let o = &data["outcome"];
    if o["timed_out"] == true {
        bits.push("hit its time limit and was stopped".into());
    }
    if o["oom_killed"] == true {
        bits.push("ran out of memory".into());
    }
    if o["output_truncated"] == true {
        bits.push("output limit reached, stopped".into());
    }
    if let Some(ms) = o["duration_ms"].as_u64() {
        bits.push(format!("{ms} ms"));
    }
    let (mark, word) = status_mark(style, status);
    let mut out = format!("  {mark} {word}");
    if !bits.is_empty() {
        out += &format!(" {}", style.dim(&format!("· {}", bits.join(" · "))));
    }
    out.push('\n');
    out + &extra
}

/// `✓ succeeded`, `✗ failed`, `⏱ timed out`, … coloured.
pub fn status_mark(style: Style, status: &str) -> (String, String) {
    match status {
        "succeeded" => (style.green("✓"), style.green("succeeded")),
        "approved" => (style.green("✓"), style.green("approved")),
        "timed_out" => (style.red("⏱"), style.red("timed out")),
        "failed" => (style.red("✗"), style.red("failed")),
        "denied" => (style.red("✗"), style.red("denied")),
        "expired" => (style.yellow("⌛"), style.yellow("approval expired")),
        "cancelled" => (style.yellow("■"), style.yellow("cancelled")),
        "running" => (style.yellow("▶"), style.yellow("running")),
        "awaiting_approval" => (style.blue("?"), style.blue("waiting for approval")),
        other => ("·".into(), one_line(other)),
    }
}

fn preview_lines(style: Style, text: &str, max: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for l in all.iter().take(max) {
        out += &format!("    {}\n", style.dim(&truncate(&one_line(l), 160)));
    }
    if all.len() > max {
        out += &format!(
            "    {}\n",
            style.dim(&format!("… {} more lines", all.len() - max))
        );
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for milliseconds since the epoch.
/// `ms` as ISO 8601 / RFC 3339 UTC (`2026-12-03T08:00:00Z`), for machine-read fields.
pub fn iso8601(ms: u64) -> String {
    format!("{}Z", utc(ms).replacen(' ', "T", 1))
}

pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_characters_are_made_visible() {
        assert_eq!(neutralize("a\x1b[31mred\x1b[0m"), "a^[[31mred^[[0m");
        assert_eq!(neutralize("x\r\ny\tz\x07\x7f"), "x^M\ny\tz^G^?");
        assert_eq!(one_line("a\nb\tc"), "a^Jb^Ic");
        assert_eq!(neutralize("\u{9b}31m"), "<U+009B>31m");
        assert_eq!(neutralize("abc\u{202e}txt.exe"), "abc<U+202E>txt.exe");
        assert_eq!(neutralize("\0"), "^@");
        assert_eq!(neutralize("héllo ✓"), "héllo ✓");
        // Nothing of the input survives as a raw control character.
        let all: String = (0u32..0x250).filter_map(char::from_u32).collect();
        let out = one_line(&all);
        assert!(!out.chars().any(|c| c.is_control()), "{out:?}");
    }

    #[test]
    fn diffs_are_coloured_and_neutralised() {
        let d = "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\x1b[2J\n+new\n ctx\n";
        let plain = diff(Style::plain(), d, "  ");
        assert_eq!(
            plain,
            "  --- a/x\n  +++ b/x\n  @@ -1 +1 @@\n  -old^[[2J\n  +new\n   ctx\n"
        );
        let col = diff(Style { color: true }, d, "");
        assert!(col.contains("\x1b[32m+new\x1b[0m"), "{col:?}");
        assert!(col.contains("\x1b[31m-old^[[2J\x1b[0m"), "{col:?}");
        // The only escapes are ours: each one starts an SGR we wrote.
        assert_eq!(col.matches('\x1b').count(), 2 * 6 - 2);
    }

    #[test]
    fn calls_show_the_diff_or_the_whole_command() {
        let s = Style::plain();
        let edit = json!({"tool": "edit_file", "args": {"path": "a\x1b]0;t\x07.txt"},
            "decision": "ask", "rule": "defaults.tools.edit_file",
            "preview": {"diff": "--- a/a\n+++ b/a\n@@ -1 +1 @@\n-x\n+y\n", "created": false}});
        let out = call(s, &edit);
        assert!(out.starts_with("⚙ edit_file a^[]0;t^G.txt\n"), "{out}");
        assert!(out.contains("  -x\n  +y\n"), "{out}");
        let run = json!({"tool": "run_shell", "args": {"command": "make test &&\necho ok", "cwd": "src"},
            "decision": "ask", "rule": "r"});
        let out = call(s, &run);
        assert!(out.contains("  $ make test &&\n    echo ok\n"), "{out}");
        assert!(out.contains("in src"), "{out}");
    }

    #[test]
    fn results_are_summarised() {
        let s = Style::plain();
        let d = json!({"status": "succeeded", "result": {"tool": "run_shell", "exit_code": 0, "changes": []},
            "outcome": {"duration_ms": 12}});
        assert_eq!(finished(s, &d), "  ✓ succeeded · exit code 0 · 12 ms\n");
        let d = json!({"status": "timed_out", "error": {"code": "sandbox_failed", "message": "x"},
            "outcome": {"timed_out": true}});
        assert_eq!(
            finished(s, &d),
            "  ⏱ timed out · sandbox_failed: x · hit its time limit and was stopped\n"
        );
        let d = json!({"status": "succeeded", "result": {"tool": "read_file", "path": "n",
            "content": "a\x1b[1m\nb\n", "first_line": 1, "lines_returned": 2, "total_lines": 2}});
        assert_eq!(
            finished(s, &d),
            "  ✓ succeeded · read n lines 1–2 of 2\n    a^[[1m\n    b\n"
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_732_420_000_000), "2024-11-24 03:46:40");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
