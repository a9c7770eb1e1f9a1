//! Evaluation: (a user's effective settings, a call, the session's grants) → a decision and
//! the rule that decided it. Pure: no I/O, no clock.

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_executor::protocol::{ProtectedPath, ToolCall};
use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

use super::file::ToolName;
use super::shell::{self, Segment, Word};
use crate::calls::Decision;
use crate::limits::Profile;

/// How strict a decision is: deny > ask > allow.
pub fn strictness(d: Decision) -> u8 {
    match d {
        Decision::Allow => 0,
        Decision::Ask => 1,
        Decision::Deny => 2,
    }
}

fn stricter(a: Decision, b: Decision) -> bool {
    strictness(a) > strictness(b)
}

/// The policy's answer for one call, and what gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// Id of the deciding rule: `defaults.rules[2]`, `groups.dev.tools.run_shell`,
    /// `session grant: run_shell cargo test *`, or `built-in: …`.
    pub rule: String,
    /// The rule's `reason`, when it has one.
    pub reason: Option<String>,
    /// How it was reached, one line per step (e.g. one per shell segment).
    pub details: Vec<String>,
    /// For a run_shell call the policy allows: whether it runs with a writable workspace
    /// (every allowing rule or grant says `write`). Otherwise false; an approved call is
    /// writable because a person approved exactly it.
    pub write: bool,
}

/// A compiled rule of some layer.
#[derive(Debug)]
pub struct CompiledRule {
    pub id: String,
    /// 1-based line of the rule in the policy file.
    pub line: usize,
    /// None = every tool.
    pub tools: Option<Vec<ToolName>>,
    pub decision: Decision,
    pub paths: Option<PathGlobs>,
    pub commands: Option<Vec<CommandPattern>>,
    pub session_grants: bool,
    pub reason: Option<String>,
    /// An allow rule that gives run_shell a writable workspace.
    pub write: bool,
    /// One line describing the rule (`deny run_shell command "curl *"`).
    pub summary: String,
}

impl CompiledRule {
    fn applies_to(&self, tool: ToolName) -> bool {
        self.tools.as_ref().is_none_or(|t| t.contains(&tool))
    }

    /// A rule with neither `path` nor `command`: it matches every call of its tools.
    fn is_tool_wide(&self) -> bool {
        self.paths.is_none() && self.commands.is_none()
    }
}

/// Compiled path globs (`*` stays within a path component, `**` crosses them; a glob ending
/// in `/**` also matches the directory itself).
#[derive(Debug, Clone)]
pub struct PathGlobs {
    set: GlobSet,
}

impl PathGlobs {
    pub fn new(globs: &[String], ignore_case: bool) -> Result<PathGlobs, String> {
        let mut b = GlobSetBuilder::new();
        for g in globs {
            if g.starts_with('/') {
                return Err(format!(
                    "path glob `{g}` is absolute: paths are relative to the workspace root (e.g. `src/**`)"
                ));
            }
            b.add(path_glob(g, ignore_case)?);
            if let Some(dir) = g.strip_suffix("/**") {
                if !dir.is_empty() {
                    b.add(path_glob(dir, ignore_case)?);
                }
            }
        }
        Ok(PathGlobs {
            set: b.build().map_err(|e| e.to_string())?,
        })
    }

    pub fn is_match(&self, rel: &str) -> bool {
        self.set.is_match(rel)
    }
}

fn path_glob(g: &str, ignore_case: bool) -> Result<globset::Glob, String> {
    GlobBuilder::new(g)
        .literal_separator(true)
        .backslash_escape(true)
        .case_insensitive(ignore_case)
        .empty_alternates(true)
        .build()
        .map_err(|e| format!("invalid glob `{g}`: {}", glob_error_kind(&e)))
}

fn glob_error_kind(e: &globset::Error) -> String {
    e.kind().to_string()
}

/// A command pattern: words matched one by one against a segment's words.
#[derive(Debug, Clone)]
pub struct CommandPattern {
    pub text: String,
    words: Vec<PatternWord>,
    /// The pattern ends with an unquoted `*`: any number of further words (also none).
    trailing_any: bool,
}

#[derive(Debug, Clone)]
struct PatternWord {
    /// An unquoted `*` alone: any one word, even one only known at run time.
    any: bool,
    glob: GlobMatcher,
}

impl CommandPattern {
    pub fn new(text: &str, ignore_case: bool) -> Result<CommandPattern, String> {
        let words = shell::pattern_words(text).map_err(|e| e.message)?;
        let mut out = Vec::new();
        for w in &words {
            let any = w.glob && w.text == "*";
            let src = if w.glob {
                w.text.clone()
            } else {
                // globset::escape leaves `\` alone, which backslash_escape(true) would then
                // read as an escape: a literal backslash must match itself.
                globset::escape(&w.text).replace('\\', "\\\\")
            };
            let glob = GlobBuilder::new(&src)
                .literal_separator(false)
                .backslash_escape(true)
                .case_insensitive(ignore_case)
                .build()
                .map_err(|e| format!("invalid pattern word `{}`: {}", w.text, glob_error_kind(&e)))?
                .compile_matcher();
            out.push(PatternWord { any, glob });
        }
        let trailing_any = out.last().is_some_and(|w| w.any);
        if trailing_any {
            out.pop();
        }
        Ok(CommandPattern {
            text: text.to_string(),
            words: out,
            trailing_any,
        })
    }

    /// Whether the segment's words match. A word only known at run time (`$X`, `$(…)`)
    /// matches only an unquoted `*`. The command name also matches by its base name
    /// (`/usr/bin/curl` matches `curl`).
    pub fn matches(&self, words: &[Word]) -> bool {
        let n = self.words.len();
        if words.len() < n || (!self.trailing_any && words.len() != n) {
            return false;
        }
        self.words.iter().zip(words).enumerate().all(|(i, (p, w))| {
            if p.any {
                return true;
            }
            if w.dynamic {
                return false;
            }
            p.glob.is_match(&w.text)
                || (i == 0 && w.text.contains('/') && p.glob.is_match(shell::base_name(&w.text)))
        })
    }
}

/// Something a user approved for the rest of a session: a tool and a path glob (file tools)
/// or a command pattern (run_shell).
#[derive(Debug, Clone)]
pub struct Grant {
    pub tool: ToolName,
    pub pattern: String,
    /// run_shell: what it allows runs with a writable workspace, as the approval it was made
    /// from did.
    pub write: bool,
    matcher: GrantMatcher,
}

#[derive(Debug, Clone)]
enum GrantMatcher {
    Path(PathGlobs),
    Command(CommandPattern),
}

impl Grant {
    pub fn new(tool: &str, pattern: &str) -> Result<Grant, String> {
        let t = ToolName::parse(tool).ok_or_else(|| {
            format!(
                "unknown tool `{tool}`; known tools: {}",
                ToolName::ALL.map(|t| t.as_str()).join(", ")
            )
        })?;
        if pattern.trim().is_empty() {
            return Err("the pattern is empty".into());
        }
        let matcher = if t == ToolName::RunShell {
            GrantMatcher::Command(CommandPattern::new(pattern, false)?)
        } else {
            GrantMatcher::Path(PathGlobs::new(&[pattern.to_string()], false)?)
        };
        Ok(Grant {
            tool: t,
            pattern: pattern.to_string(),
            write: t == ToolName::RunShell,
            matcher,
        })
    }

    fn label(&self) -> String {
        format!("session grant: {} {}", self.tool.as_str(), self.pattern)
    }
}

/// A user's settings with every layer applied.
#[derive(Debug, Clone)]
pub struct Effective {
    /// Rules of the defaults, the user's groups (in order) and the user.
    pub rules: Vec<Arc<CompiledRule>>,
    /// Decision per tool when no rule matches, and the setting that gave it.
    pub fallback: BTreeMap<ToolName, (Decision, String)>,
    pub profile: Profile,
    pub protected: Vec<ProtectedPath>,
    pub approval_ttl_secs: Option<u64>,
    pub session_grants: bool,
    /// Approvals only in Airlock itself, never asked of an MCP client.
    pub approve_in_airlock: bool,
    pub concurrent_calls: Option<u32>,
    pub calls_per_minute: Option<u32>,
}

impl Effective {
    fn fallback(&self, tool: ToolName) -> (Decision, String) {
        self.fallback.get(&tool).cloned().unwrap_or_else(|| {
            (
                Decision::Ask,
                format!(
                    "built-in: no rule or [tools] entry for {}; ask",
                    tool.as_str()
                ),
            )
        })
    }
}

/// One judgement (of the whole call, or of one shell segment).
#[derive(Debug, Clone)]
struct Judged {
    decision: Decision,
    rule: String,
    reason: Option<String>,
    /// An `ask` that a session grant may lift.
    grantable: bool,
    /// Came from a `[tools]` fallback (no rule matched).
    fallback: bool,
    /// An allow that gives a writable workspace.
    write: bool,
}

impl Judged {
    fn from_rule(r: &CompiledRule, session_grants: bool) -> Judged {
        Judged {
            decision: r.decision,
            rule: r.id.clone(),
            reason: r.reason.clone(),
            grantable: session_grants && r.session_grants,
            fallback: false,
            write: r.write,
        }
    }

    fn built_in(decision: Decision, why: &str) -> Judged {
        Judged {
            decision,
            rule: format!("built-in: {why}"),
            reason: None,
            grantable: false,
            fallback: false,
            write: false,
        }
    }
}

/// The strictest of the matching rules (the first of equals), or the fallback.
fn strictest<'a>(
    matching: impl Iterator<Item = &'a Arc<CompiledRule>>,
    eff: &Effective,
    tool: ToolName,
) -> Judged {
    let mut best: Option<&CompiledRule> = None;
    for r in matching {
        // Among allow rules, one that says `write` wins: the admin allowed this command to
        // write explicitly, and another rule allowing it read-only does not take that back.
        if best.is_none_or(|b| {
            stricter(r.decision, b.decision)
                || (r.decision == b.decision
                    && r.decision == Decision::Allow
                    && r.write
                    && !b.write)
        }) {
            best = Some(r);
        }
    }
    match best {
        Some(r) => Judged::from_rule(r, eff.session_grants),
        None => {
            let (decision, rule) = eff.fallback(tool);
            Judged {
                decision,
                rule,
                reason: None,
                grantable: eff.session_grants,
                fallback: true,
                write: false,
            }
        }
    }
}

/// Normalises a workspace-relative path lexically: `./a/../b` → `b`, `` → `.`. `None` when it
/// is absolute or climbs out of the workspace.
pub fn normalize(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

/// The workspace path a file tool works on.
fn call_path(call: &ToolCall) -> Option<&str> {
    match call {
        ToolCall::ReadFile(a) => Some(&a.path),
        ToolCall::WriteFile(a) => Some(&a.path),
        ToolCall::EditFile(a) => Some(&a.path),
        ToolCall::ListDir(a) => Some(a.path.as_deref().unwrap_or(".")),
        ToolCall::Search(a) => Some(a.path.as_deref().unwrap_or(".")),
        ToolCall::RunShell(_) | ToolCall::Revert(_) => None,
    }
}

/// A revert writes (or removes) each of its files: it is judged as a `write_file` of every
/// one, strictest wins, without session grants; and it always shows its reverse diff first
/// (an `allow` asks), so nobody's undo applies unseen.
fn evaluate_revert(eff: &Effective, files: &[String]) -> Verdict {
    let mut worst: Option<Verdict> = None;
    let mut details = Vec::new();
    for path in files {
        let call = ToolCall::WriteFile(airlock_executor::protocol::WriteFileArgs {
            path: path.clone(),
            content: String::new(),
        });
        let v = evaluate(eff, &call, &[]);
        details.extend(v.details.iter().cloned());
        let rank = |d: Decision| match d {
            Decision::Deny => 2,
            Decision::Ask => 1,
            Decision::Allow => 0,
        };
        if worst
            .as_ref()
            .is_none_or(|w| rank(v.decision) > rank(w.decision))
        {
            worst = Some(v);
        }
    }
    let mut v = worst.unwrap_or_else(|| {
        verdict(
            Judged::built_in(Decision::Deny, "a revert with no files"),
            vec![],
        )
    });
    if v.decision == Decision::Allow {
        v.decision = Decision::Ask;
        v.rule = format!(
            "built-in: a revert is always shown first ({} allows the writes)",
            v.rule
        );
    }
    v.write = false;
    v.details = details;
    v
}

/// Evaluates `call` for a user whose settings are `eff`, with the session's `grants`.
pub fn evaluate(eff: &Effective, call: &ToolCall, grants: &[Grant]) -> Verdict {
    if let ToolCall::Revert(a) = call {
        let paths: Vec<String> = a.files.iter().map(|f| f.path.clone()).collect();
        return evaluate_revert(eff, &paths);
    }
    let tool = ToolName::parse(call.name()).expect("every proposable tool has a name");
    let j = match call {
        ToolCall::RunShell(a) => {
            return evaluate_shell(eff, &a.command, a.cwd.as_deref(), grants);
        }
        ToolCall::Revert(_) => unreachable!("judged above"),
        _ => {
            let raw = call_path(call).unwrap_or(".");
            let Some(path) = normalize(raw) else {
                let j = Judged::built_in(
                    Decision::Deny,
                    "the path is absolute or leaves the workspace",
                );
                return verdict(j, vec![format!("path `{raw}` leaves the workspace")]);
            };
            let matching = eff.rules.iter().filter(|r| {
                r.applies_to(tool)
                    && r.commands.is_none()
                    && r.paths.as_ref().is_none_or(|p| p.is_match(&path))
            });
            let mut j = strictest(matching, eff, tool);
            if j.decision == Decision::Ask && j.grantable {
                if let Some(g) = grants.iter().find(|g| {
                    g.tool == tool
                        && matches!(&g.matcher, GrantMatcher::Path(p) if p.is_match(&path))
                }) {
                    j = Judged {
                        decision: Decision::Allow,
                        rule: g.label(),
                        reason: None,
                        grantable: false,
                        fallback: false,
                        write: g.write,
                    };
                }
            }
            let detail = format!(
                "{} `{path}` → {} by {}",
                tool.as_str(),
                j.decision.as_str(),
                j.rule
            );
            (j, detail)
        }
    };
    verdict(j.0, vec![j.1])
}

fn verdict(j: Judged, details: Vec<String>) -> Verdict {
    Verdict {
        decision: j.decision,
        write: false,
        rule: j.rule,
        reason: j.reason,
        details,
    }
}

/// A path-like operand of a shell segment, normalised against `cwd`.
enum Operand {
    /// Workspace-relative (or absolute inside the container, e.g. `/etc/passwd`).
    Known(String),
    /// Contains an expansion or an unquoted glob: only known at run time.
    Unknown,
}

fn operands(seg: &Segment, cwd: &str) -> Vec<Operand> {
    let args = seg
        .words
        .iter()
        .skip(1)
        .filter(|w| !w.text.starts_with('-') || w.dynamic);
    let targets = seg
        .redirects
        .iter()
        .filter(|r| r.names_file() && r.target.text != "/dev/null")
        .map(|r| &r.target);
    args.chain(targets)
        .map(|w| {
            if w.dynamic || w.glob {
                return Operand::Unknown;
            }
            let t = w.text.as_str();
            if let Some(rest) = t.strip_prefix("/workspace/") {
                return normalize(rest).map_or(Operand::Known(t.into()), Operand::Known);
            }
            if t == "/workspace" {
                return Operand::Known(".".into());
            }
            if t.starts_with('/') {
                return Operand::Known(t.into());
            }
            let joined = if cwd == "." {
                t.to_string()
            } else {
                format!("{cwd}/{t}")
            };
            normalize(&joined).map_or(Operand::Known(t.into()), Operand::Known)
        })
        .collect()
}

/// Whether rule `r` matches shell segment `seg` (whose operands are `ops`).
fn rule_matches_segment(r: &CompiledRule, seg: &Segment, ops: &[Operand]) -> bool {
    if !r.applies_to(ToolName::RunShell) {
        return false;
    }
    if let Some(cmds) = &r.commands {
        if !cmds.iter().any(|c| c.matches(&seg.words)) {
            return false;
        }
    }
    if let Some(globs) = &r.paths {
        let known = |o: &Operand| match o {
            Operand::Known(p) => Some(globs.is_match(p)),
            Operand::Unknown => None,
        };
        let ok = if r.decision == Decision::Allow {
            // Every operand must be known and match.
            !ops.is_empty() && ops.iter().all(|o| known(o) == Some(true))
        } else {
            ops.iter().any(|o| known(o) == Some(true))
        };
        if !ok {
            return false;
        }
    } else if r.decision == Decision::Allow && seg.writes_file() {
        // An allow rule without paths never covers a redirection into a file.
        return false;
    }
    true
}

fn evaluate_shell(eff: &Effective, command: &str, cwd: Option<&str>, grants: &[Grant]) -> Verdict {
    let tool = ToolName::RunShell;
    let segments = match shell::parse(command) {
        Ok(s) => s,
        Err(e) => {
            // Never allowed without asking; a tool-wide deny still denies.
            let wide = eff
                .rules
                .iter()
                .filter(|r| r.applies_to(tool) && r.is_tool_wide() && r.decision == Decision::Deny);
            let mut j = strictest(wide, eff, tool);
            if j.decision != Decision::Deny {
                j = Judged::built_in(
                    Decision::Ask,
                    "a command that cannot be analysed is never allowed without asking",
                );
            }
            return verdict(j, vec![format!("the command could not be analysed: {e}")]);
        }
    };
    let Some(cwd) = normalize(cwd.unwrap_or(".")) else {
        let j = Judged::built_in(Decision::Deny, "the working directory leaves the workspace");
        return verdict(
            j,
            vec![format!("cwd `{}` leaves the workspace", cwd.unwrap_or(""))],
        );
    };
    let mut details = Vec::new();
    let mut worst: Option<Judged> = None;
    let mut write = true;
    for seg in &segments {
        if seg.words.is_empty() && !seg.writes_file() {
            continue; // assignments or descriptor juggling only
        }
        let ops = operands(seg, &cwd);
        let matching = eff
            .rules
            .iter()
            .filter(|r| rule_matches_segment(r, seg, &ops));
        let mut j = strictest(matching, eff, tool);
        // Floors that no rule lowers and no session grant lifts.
        if strictness(j.decision) < strictness(Decision::Ask)
            || (j.decision == Decision::Ask && j.grantable)
        {
            if seg.words.is_empty() {
                j = Judged::built_in(
                    Decision::Ask,
                    "a redirection without a command writes a file",
                );
            } else if seg.words[0].dynamic {
                j = Judged::built_in(
                    Decision::Ask,
                    "a command whose name is only known at run time is never allowed without asking",
                );
            }
        }
        if j.decision == Decision::Ask && j.grantable && !seg.words.is_empty() && !seg.writes_file()
        {
            if let Some(g) = grants.iter().find(|g| {
                g.tool == tool
                    && matches!(&g.matcher, GrantMatcher::Command(c) if c.matches(&seg.words))
            }) {
                j = Judged {
                    decision: Decision::Allow,
                    rule: g.label(),
                    reason: None,
                    grantable: false,
                    fallback: false,
                    write: g.write,
                };
            }
        }
        write &= j.decision != Decision::Allow || j.write;
        details.push(format!(
            "segment `{}` → {} by {}{}",
            seg.source,
            j.decision.as_str(),
            j.rule,
            if j.decision == Decision::Allow && j.write {
                " (writable workspace)"
            } else {
                ""
            }
        ));
        // The strictest segment decides; among equals, a rule says more than a fallback.
        if worst.as_ref().is_none_or(|w| {
            stricter(j.decision, w.decision)
                || (j.decision == w.decision && w.fallback && !j.fallback)
        }) {
            worst = Some(j);
        }
    }
    let j = worst.unwrap_or_else(|| {
        // Nothing runs (empty command or comments): the tool-wide rules or the fallback.
        let wide = eff
            .rules
            .iter()
            .filter(|r| r.applies_to(tool) && r.is_tool_wide());
        strictest(wide, eff, tool)
    });
    let allowed = j.decision == Decision::Allow;
    let mut v = verdict(j, details);
    v.write = allowed && write && !v.details.is_empty();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical_and_refuses_escapes() {
        assert_eq!(normalize("a/./b//c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("").as_deref(), Some("."));
        assert_eq!(normalize("./").as_deref(), Some("."));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("a/../../x"), None);
        assert_eq!(normalize("/etc/passwd"), None);
    }

    #[test]
    fn path_globs_double_star_classes_and_case() {
        let g = |globs: &[&str], ci: bool| {
            PathGlobs::new(&globs.iter().map(|s| s.to_string()).collect::<Vec<_>>(), ci).unwrap()
        };
        let env = g(&["**/.env"], false);
        assert!(env.is_match(".env"));
        assert!(env.is_match("a/b/.env"));
        assert!(!env.is_match("a/.env.example"));
        assert!(!env.is_match("a/.ENV"));
        let src = g(&["src/*"], false);
        assert!(src.is_match("src/main.rs"));
        assert!(!src.is_match("src/a/b.rs"), "`*` does not cross `/`");
        let deep = g(&["src/**"], false);
        assert!(deep.is_match("src/a/b.rs"));
        assert!(
            deep.is_match("src"),
            "`dir/**` also matches the directory itself"
        );
        let class = g(&["log[0-9].txt", "[!.]*.md"], false);
        assert!(class.is_match("log7.txt"));
        assert!(!class.is_match("logx.txt"));
        assert!(class.is_match("README.md"));
        assert!(!class.is_match(".hidden.md"));
        let ci = g(&["**/*.pem"], true);
        assert!(ci.is_match("keys/SERVER.PEM"));
        assert!(!g(&["**/*.pem"], false).is_match("keys/SERVER.PEM"));
        assert!(PathGlobs::new(&["a[".into()], false).is_err());
        assert!(PathGlobs::new(&["/etc/**".into()], false)
            .unwrap_err()
            .contains("absolute"));
    }

    #[test]
    fn command_patterns_match_word_by_word() {
        let words = |s: &str| shell::parse(s).unwrap().remove(0).words;
        let p = |s: &str| CommandPattern::new(s, false).unwrap();
        assert!(p("ls *").matches(&words("ls")));
        assert!(p("ls *").matches(&words("ls -la src")));
        assert!(p("ls").matches(&words("ls")));
        assert!(!p("ls").matches(&words("ls -la")));
        assert!(p("git status *").matches(&words("git status --short")));
        assert!(!p("git status *").matches(&words("git push")));
        assert!(p("cargo * --release").matches(&words("cargo build --release")));
        assert!(!p("cargo * --release").matches(&words("cargo build")));
        assert!(p("curl *").matches(&words("/usr/bin/curl x")), "base name");
        assert!(p("rm -r* *").matches(&words("rm -rf /")));
        assert!(
            !p("rm -r*").matches(&words("rm -rf /")),
            "exact length without a final `*`"
        );
        assert!(
            p("echo *").matches(&words("echo $HOME")),
            "`*` takes dynamic words"
        );
        assert!(!p("echo hi").matches(&words("echo $HI")), "literals do not");
        assert!(!p("ls").matches(&words("$CMD")));
        assert!(!p("'*'").matches(&words("ls")), "a quoted star is literal");
        assert!(CommandPattern::new("GIT *", true)
            .unwrap()
            .matches(&words("git log")));
        assert!(!p("GIT *").matches(&words("git log")));
    }

    /// Fuzz finding 1 (fuzz/ shell target): a literal (quoted) pattern word was escaped with
    /// `globset::escape`, which leaves a backslash alone, and compiled with
    /// `backslash_escape(true)`: the pattern `printf 'a\nb'` matched `printf anb` and not
    /// itself, and a word ending in a backslash did not compile.
    #[test]
    fn a_literal_backslash_in_a_pattern_matches_itself() {
        let words = |s: &str| shell::parse(s).unwrap().remove(0).words;
        for ignore_case in [false, true] {
            let p = CommandPattern::new("printf 'a\\nb'", ignore_case).unwrap();
            assert!(p.matches(&words("printf 'a\\nb'")));
            assert!(!p.matches(&words("printf anb")));
            let p = CommandPattern::new("dir 'C:\\'", ignore_case).unwrap();
            assert!(p.matches(&words("dir 'C:\\'")));
        }
    }
}
