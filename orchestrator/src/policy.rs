//! Admin policy files: users and their workspaces, groups, tool rules (deny → ask → allow,
//! strictest match wins) on tool, path and shell command, protected paths, container limits,
//! runtime, image, approval expiry, session grants, and inline test cases. Parsing,
//! validation and evaluation are pure (no Docker, Redis or HTTP); the format is documented in
//! docs/POLICY.md and its JSON Schema is generated from [`file`].
//!
//! Loading is all-or-nothing: a file with any error — including a failing `[[test]]` case —
//! is rejected with every problem reported as `FILE:LINE:COLUMN: message`.

pub mod eval;
pub mod file;
pub mod shell;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_executor::protocol::{ProtectedPath, Protection, ToolCall};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::calls::Decision;
use crate::config::line_col;
use crate::limits::{bounds, Profile, Runtime};

pub use eval::{evaluate, normalize, strictness, Effective, Grant, Verdict};
pub use file::{PolicyFile, Role, ToolName};

/// A user of the server, resolved from the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// Hex SHA-256 of the user's bearer token (`airlock admin token` prints it).
    pub token_sha256: String,
    pub role: Role,
    /// Absolute host path of the user's workspace root.
    pub workspace: PathBuf,
    /// The uid:gid the user's tool containers run as (the workspace's owner); never 0.
    pub uid: u32,
    pub gid: u32,
    /// The user's groups, in the order their settings apply.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", render(path, diagnostics))]
    Invalid {
        path: String,
        diagnostics: Vec<Diagnostic>,
    },
}

impl PolicyError {
    /// The problems found (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Read { .. } => &[],
            PolicyError::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

fn render(path: &str, ds: &[Diagnostic]) -> String {
    ds.iter()
        .map(|d| format!("{path}:{}:{}: {}", d.line, d.column, d.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The protected paths in force when `[defaults]` names none.
pub fn default_protected() -> Vec<ProtectedPath> {
    let p = |glob: &str, protection| ProtectedPath {
        glob: glob.into(),
        protection,
    };
    vec![
        p(".git/**", Protection::ReadOnly),
        p("**/.env", Protection::NoAccess),
        p("**/*.pem", Protection::NoAccess),
        p("**/id_*", Protection::NoAccess),
    ]
}

/// A loaded, validated policy and the hash of the bytes it came from.
#[derive(Debug, Clone)]
pub struct Policy {
    pub file: PolicyFile,
    /// Hex SHA-256 of the file's bytes: recorded with every call it decides.
    pub sha256: String,
    pub path: String,
    users: Vec<User>,
    effective: HashMap<String, Effective>,
    /// The settings of a user with no groups and no overrides.
    defaults: Effective,
    /// How many inline test cases passed at load.
    pub tests_passed: usize,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
            path: shown.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| PolicyError::Invalid {
            path: shown.clone(),
            diagnostics: vec![Diagnostic {
                line: 1,
                column: 1,
                message: format!(
                    "the file is not UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            }],
        })?;
        Policy::parse(&shown, &text)
    }

    /// Parses and validates `text` (named `path` in messages) and runs its inline tests.
    pub fn parse(path: &str, text: &str) -> Result<Policy, PolicyError> {
        let invalid = |diagnostics| PolicyError::Invalid {
            path: path.to_string(),
            diagnostics,
        };
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            invalid(vec![Diagnostic {
                line,
                column,
                message: e.message().trim_end().to_string(),
            }])
        })?;
        let mut c = Compiler {
            text,
            diags: Vec::new(),
        };
        let (users, effective, defaults) = c.compile(&file);
        if !c.diags.is_empty() {
            return Err(invalid(c.diags));
        }
        let mut policy = Policy {
            file,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            path: path.to_string(),
            users,
            effective,
            defaults,
            tests_passed: 0,
        };
        let diags = policy.run_tests(text);
        if !diags.is_empty() {
            return Err(invalid(diags));
        }
        policy.tests_passed = policy.file.tests.len();
        Ok(policy)
    }

    /// Runs the `[[test]]` cases; one diagnostic per failing case.
    fn run_tests(&self, text: &str) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for (i, t) in self.file.tests.iter().enumerate() {
            let (line, column) = line_col(text, t.span().start);
            let case = t.get_ref();
            let label = case
                .name
                .as_ref()
                .map_or_else(|| format!("test[{i}]"), |n| format!("test `{n}`"));
            let mut fail = |message: String| {
                out.push(Diagnostic {
                    line,
                    column,
                    message: format!("{label} failed: {message}"),
                })
            };
            let eff = match &case.user {
                None => &self.defaults,
                Some(name) => match self.user(name).and_then(|u| self.effective(u)) {
                    Some(e) => e,
                    None => {
                        fail(format!(
                            "no user `{name}`; users: {}",
                            self.user_names().join(", ")
                        ));
                        continue;
                    }
                },
            };
            let call = match ToolCall::from_parts(&case.tool, case.args.clone()) {
                Ok(c) => c,
                Err(e) => {
                    fail(e);
                    continue;
                }
            };
            let v = eval::evaluate(eff, &call, &[]);
            let rule_ok = case.rule.as_ref().is_none_or(|r| *r == v.rule);
            if v.decision != case.expect || !rule_ok {
                let want_rule = case
                    .rule
                    .as_ref()
                    .map_or(String::new(), |r| format!(" by `{r}`"));
                fail(format!(
                    "{} {} expected {}{want_rule}, got {} by `{}`{}",
                    case.tool,
                    case.args,
                    case.expect.as_str(),
                    v.decision.as_str(),
                    v.rule,
                    if v.details.len() > 1 {
                        format!(" ({})", v.details.join("; "))
                    } else {
                        String::new()
                    }
                ));
            }
        }
        out
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }

    fn user_names(&self) -> Vec<&str> {
        self.users.iter().map(|u| u.name.as_str()).collect()
    }

    /// Finds the user whose token hashes to `token_sha256`, comparing every entry in constant
    /// time so the response time says nothing about which hash matched.
    pub fn user_by_token_hash(&self, token_sha256: &[u8; 32]) -> Option<&User> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for u in &self.users {
            let mut want = [0u8; 32];
            if hex::decode_to_slice(&u.token_sha256, &mut want).is_ok()
                && bool::from(want.ct_eq(token_sha256))
            {
                found = Some(u);
            }
        }
        found
    }

    /// The settings of a user with no groups and no overrides of their own.
    pub fn defaults(&self) -> &Effective {
        &self.defaults
    }

    /// The user's settings with defaults, groups and own overrides applied.
    pub fn effective(&self, user: &User) -> Option<&Effective> {
        self.effective.get(&user.name)
    }

    /// The decision for `call` by `user`, and the rule that gave it.
    pub fn evaluate(&self, user: &User, call: &ToolCall) -> Verdict {
        self.evaluate_with_grants(user, call, &[])
    }

    /// As [`Policy::evaluate`], with what the user approved for the rest of the session.
    pub fn evaluate_with_grants(&self, user: &User, call: &ToolCall, grants: &[Grant]) -> Verdict {
        match self.effective(user) {
            Some(eff) => eval::evaluate(eff, call, grants),
            None => Verdict {
                decision: Decision::Deny,
                rule: "built-in: the user is not in the policy in force".into(),
                reason: None,
                details: Vec::new(),
                write: false,
            },
        }
    }

    /// The sandbox profile for `user`'s calls: the merged limits, runtime and image, and the
    /// user's uid:gid.
    pub fn profile_for(&self, user: &User) -> Profile {
        let base = self
            .effective(user)
            .map_or_else(Profile::default, |e| e.profile.clone());
        Profile {
            uid: user.uid,
            gid: user.gid,
            ..base
        }
    }

    /// The protected paths the executor enforces for `user`.
    pub fn protected_for(&self, user: &User) -> Vec<ProtectedPath> {
        self.effective(user)
            .map_or_else(default_protected, |e| e.protected.clone())
    }

    /// How long `user`'s approvals stay valid (None: the server's setting).
    pub fn approval_ttl_secs(&self, user: &User) -> Option<u64> {
        self.effective(user).and_then(|e| e.approval_ttl_secs)
    }

    /// Whether `user` may approve patterns for the rest of a session.
    pub fn session_grants_allowed(&self, user: &User) -> bool {
        self.effective(user).is_some_and(|e| e.session_grants)
    }

    /// Whether `user`'s approvals must be given in Airlock itself (never in an MCP client).
    /// An unknown user gets `true`: the stricter answer.
    pub fn approve_in_airlock(&self, user: &User) -> bool {
        self.effective(user).is_none_or(|e| e.approve_in_airlock)
    }

    /// `(concurrent calls, calls per minute)` limits of `user`.
    pub fn call_limits(&self, user: &User) -> (Option<u32>, Option<u32>) {
        self.effective(user)
            .map_or((None, None), |e| (e.concurrent_calls, e.calls_per_minute))
    }

    /// Every executor image the policy names (to resolve and pin at load).
    pub fn images(&self) -> BTreeSet<String> {
        self.effective
            .values()
            .chain([&self.defaults])
            .filter_map(|e| e.profile.image.clone())
            .collect()
    }

    /// Which users' calls run in each image (`default_image` where the policy names none).
    pub fn image_users(&self, default_image: &str) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, e) in &self.effective {
            let image = e
                .profile
                .image
                .clone()
                .unwrap_or_else(|| default_image.to_string());
            out.entry(image).or_default().push(name.clone());
        }
        for users in out.values_mut() {
            users.sort();
        }
        out
    }

    /// Every runtime some user's calls use.
    pub fn runtimes(&self) -> BTreeSet<&'static str> {
        self.effective
            .values()
            .chain([&self.defaults])
            .map(|e| e.profile.runtime.as_str())
            .collect()
    }

    /// The line (in the policy file) and one-line summary of the rule with id `id`.
    pub fn rule_info(&self, id: &str) -> Option<(usize, String)> {
        self.effective
            .values()
            .chain([&self.defaults])
            .flat_map(|e| e.rules.iter())
            .find(|r| r.id == id)
            .map(|r| (r.line, r.summary.clone()))
    }

    /// One line for `airlock policy check`.
    pub fn summary(&self) -> String {
        let rules: usize = self.file.defaults.rules.len()
            + self
                .file
                .groups
                .values()
                .map(|g| g.rules.len())
                .sum::<usize>()
            + self.file.users.iter().map(|u| u.rules.len()).sum::<usize>();
        format!(
            "{} user(s), {} group(s), {rules} rule(s), {} inline test(s) passed; sha256 {}",
            self.users.len(),
            self.file.groups.len(),
            self.tests_passed,
            self.sha256
        )
    }
}

/// The JSON Schema of policy files, generated from [`file::PolicyFile`].
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(file::PolicyFile);
    serde_json::to_string_pretty(&schema).expect("schemas serialize") + "\n"
}

/// Hex SHA-256 of a bearer token, as stored in policy files.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

// ---- validation and compilation ---------------------------------------------------------------

/// A layer after validation.
#[derive(Default)]
struct Compiled {
    rules: Vec<Arc<eval::CompiledRule>>,
    tools: BTreeMap<ToolName, (Decision, String)>,
    limits: file::Limits,
    runtime: Option<Runtime>,
    image: Option<String>,
    approval_ttl_secs: Option<u64>,
    session_grants: Option<bool>,
    approve_in_airlock: Option<bool>,
    protected: Option<Vec<ProtectedPath>>,
}

struct Compiler<'a> {
    text: &'a str,
    diags: Vec<Diagnostic>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Compiler<'_> {
    fn error_at(&mut self, offset: usize, message: String) {
        let (line, column) = line_col(self.text, offset);
        self.diags.push(Diagnostic {
            line,
            column,
            message,
        });
    }

    fn error<T>(&mut self, s: &Spanned<T>, message: String) {
        self.error_at(s.span().start, message);
    }

    /// Offset of `key =` at or after `from` (to point at one key of a table).
    fn key_offset(&self, from: usize, key: &str) -> usize {
        let rest = &self.text[from.min(self.text.len())..];
        let mut at = 0;
        while let Some(i) = rest[at..].find(key) {
            let o = at + i;
            let before_ok = o == 0
                || !rest.as_bytes()[o - 1].is_ascii_alphanumeric()
                    && rest.as_bytes()[o - 1] != b'_';
            let after = rest[o + key.len()..].trim_start();
            if before_ok && after.starts_with('=') {
                return from + o;
            }
            at = o + key.len();
        }
        from
    }

    fn compile(&mut self, f: &PolicyFile) -> (Vec<User>, HashMap<String, Effective>, Effective) {
        let defaults = self.layer("defaults", &f.defaults);
        let default_eff = merge(&[&defaults]);
        if let Err(e) = default_eff.profile.check() {
            let at = self.text.find("[defaults").unwrap_or(0);
            self.error_at(at, format!("[defaults]: the limits are invalid: {e}"));
        }
        let mut groups = BTreeMap::new();
        for (name, g) in &f.groups {
            if !valid_name(name) {
                let at = self.text.find(&format!("groups.{name}")).unwrap_or(0);
                self.error_at(
                    at,
                    format!("group name `{name}` must be 1–64 letters, digits, `-`, `_` or `.`"),
                );
            }
            groups.insert(name.clone(), self.layer(&format!("groups.{name}"), g));
        }
        let mut users = Vec::new();
        let mut effective = HashMap::new();
        let mut names = HashSet::new();
        let mut tokens = HashMap::new();
        for u in &f.users {
            let name = u.name.get_ref().clone();
            if !valid_name(&name) {
                self.error(
                    &u.name,
                    format!("user name `{name}` must be 1–64 letters, digits, `-`, `_` or `.`"),
                );
            }
            if !names.insert(name.clone()) {
                self.error(&u.name, format!("user `{name}` is defined twice"));
            }
            let token = u.token_sha256.get_ref().to_ascii_lowercase();
            if token.len() != 64 || hex::decode(&token).is_err() {
                self.error(
                    &u.token_sha256,
                    format!(
                        "user `{name}`: token_sha256 must be 64 hex digits (make one with `airlock admin token --user {name}`)"
                    ),
                );
            } else if let Some(other) = tokens.insert(token.clone(), name.clone()) {
                self.error(
                    &u.token_sha256,
                    format!("user `{name}` has the same token as user `{other}`: every user needs their own token"),
                );
            }
            let workspace = PathBuf::from(u.workspace.get_ref());
            if !workspace.is_absolute() {
                self.error(
                    &u.workspace,
                    format!(
                        "user `{name}`: workspace `{}` must be an absolute path, e.g. /srv/airlock/workspaces/{name}",
                        workspace.display()
                    ),
                );
            }
            if u.uid == 0 || u.gid == 0 {
                self.error(
                    &u.name,
                    format!("user `{name}`: uid and gid must not be 0 (tools never run as root); use the owner of the workspace"),
                );
            }
            let mut layers: Vec<&Compiled> = vec![&defaults];
            let mut group_names = Vec::new();
            for g in &u.groups {
                match groups.get(g.get_ref()) {
                    Some(c) => {
                        layers.push(c);
                        group_names.push(g.get_ref().clone());
                    }
                    None => {
                        let known: Vec<&str> = groups.keys().map(String::as_str).collect();
                        self.error(
                            g,
                            format!(
                                "user `{name}`: no group `{}`; defined groups: {}",
                                g.get_ref(),
                                if known.is_empty() {
                                    "none (add a [groups.NAME] table)".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                    }
                }
            }
            let own = self.layer(&format!("users.{name}"), &u.layer());
            layers.push(&own);
            let eff = merge(&layers);
            let mut check = eff.profile.clone();
            check.uid = u.uid.max(1);
            check.gid = u.gid.max(1);
            if let Err(e) = check.check() {
                self.error(
                    &u.name,
                    format!(
                        "user `{name}`: the limits after applying defaults, groups and the user's own settings are invalid: {e}"
                    ),
                );
            }
            users.push(User {
                name: name.clone(),
                token_sha256: token,
                role: u.role,
                workspace,
                uid: u.uid,
                gid: u.gid,
                groups: group_names,
            });
            effective.insert(name, eff);
        }
        (users, effective, default_eff)
    }

    /// Validates and compiles one layer; `prefix` names it in rule ids.
    fn layer(&mut self, prefix: &str, l: &file::Layer) -> Compiled {
        let mut c = Compiled::default();
        for (tool, d) in &l.tools {
            c.tools
                .insert(*tool, (*d, format!("{prefix}.tools.{}", tool.as_str())));
        }
        for (i, r) in l.rules.iter().enumerate() {
            if let Some(rule) = self.rule(&format!("{prefix}.rules[{i}]"), r) {
                c.rules.push(Arc::new(rule));
            }
        }
        if let Some(lim) = &l.limits {
            self.check_limits(lim);
            c.limits = lim.get_ref().clone();
        }
        c.runtime = l.runtime;
        if let Some(img) = &l.image {
            let s = img.get_ref();
            if s.trim().is_empty() || s.chars().any(char::is_whitespace) {
                self.error(img, format!("image `{s}` must be an image reference such as `airlock-executor:latest` or an image ID"));
            }
            c.image = Some(s.clone());
        }
        if let Some(ttl) = &l.approval_ttl_secs {
            let v = *ttl.get_ref();
            if !(1..=604_800).contains(&v) {
                self.error(
                    ttl,
                    format!("approval_ttl_secs = {v} must be between 1 and 604800 (a week)"),
                );
            }
            c.approval_ttl_secs = Some(v);
        }
        c.session_grants = l.session_grants;
        c.approve_in_airlock = l.approve_in_airlock;
        if let Some(list) = &l.protected {
            let mut out = Vec::new();
            for p in list {
                let g = p.get_ref().glob.get_ref();
                if let Err(e) = globset::Glob::new(g) {
                    self.error(
                        &p.get_ref().glob,
                        format!("invalid protected-path glob `{g}`: {}", e.kind()),
                    );
                }
                out.push(ProtectedPath {
                    glob: g.clone(),
                    protection: match p.get_ref().protection {
                        file::ProtectionKind::NoAccess => Protection::NoAccess,
                        file::ProtectionKind::ReadOnly => Protection::ReadOnly,
                    },
                });
            }
            c.protected = Some(out);
        }
        c
    }

    fn rule(&mut self, id: &str, r: &Spanned<file::Rule>) -> Option<eval::CompiledRule> {
        let (line, _) = line_col(self.text, r.span().start);
        let rule = r.get_ref();
        let before = self.diags.len();
        let mut tools = Some(Vec::new());
        for t in &rule.tool.get_ref().0 {
            if t == "*" {
                tools = None;
            } else if let Some(name) = ToolName::parse(t) {
                if let Some(v) = tools.as_mut() {
                    v.push(name);
                }
            } else {
                self.error(
                    &rule.tool,
                    format!(
                        "{id}: unknown tool `{t}`; expected one of {} or \"*\"",
                        ToolName::ALL.map(|t| t.as_str()).join(", ")
                    ),
                );
            }
        }
        let commands = rule.command.as_ref().map(|cmds| {
            let only_shell = tools.as_deref() == Some(&[ToolName::RunShell][..]);
            if !only_shell {
                self.error(
                    cmds,
                    format!("{id}: `command` only applies to run_shell: set tool = \"run_shell\" (and put other tools in a rule of their own)"),
                );
            }
            let mut out = Vec::new();
            for p in &cmds.get_ref().0 {
                match eval::CommandPattern::new(p, rule.ignore_case) {
                    Ok(c) => out.push(c),
                    Err(e) => self.error(cmds, format!("{id}: command pattern `{p}`: {e}")),
                }
            }
            out
        });
        let paths = rule.path.as_ref().and_then(|p| {
            match eval::PathGlobs::new(&p.get_ref().0, rule.ignore_case) {
                Ok(g) => Some(g),
                Err(e) => {
                    self.error(p, format!("{id}: {e}"));
                    None
                }
            }
        });
        if rule.session_grants.is_some() && rule.decision != Decision::Ask {
            self.error(
                r,
                format!("{id}: `session_grants` only applies to rules whose decision is \"ask\""),
            );
        }
        if self.diags.len() > before {
            return None;
        }
        let mut summary = format!(
            "{} {}",
            rule.decision.as_str(),
            rule.tool.get_ref().0.join(", ")
        );
        if let Some(p) = &rule.path {
            summary += &format!(" path {:?}", p.get_ref().0);
        }
        if let Some(c) = &rule.command {
            summary += &format!(" command {:?}", c.get_ref().0);
        }
        if rule.write {
            summary += " (writable workspace)";
        }
        Some(eval::CompiledRule {
            id: id.to_string(),
            line,
            tools,
            decision: rule.decision,
            paths,
            commands,
            session_grants: rule.session_grants != Some(false),
            reason: rule.reason.clone(),
            write: rule.write,
            summary,
        })
    }

    fn check_limits(&mut self, lim: &Spanned<file::Limits>) {
        let start = lim.span().start;
        let l = lim.get_ref();
        let bad = |c: &mut Self, key: &str, msg: String| {
            let at = c.key_offset(start, key);
            c.error_at(at, format!("limits.{key}: {msg}"));
        };
        // The bounds are the sandbox's own (crate::limits), so the two can never disagree.
        let mut check = |key: &str, r: Result<(), String>| {
            if let Err(msg) = r {
                bad(self, key, msg);
            }
        };
        if let Some(v) = l.memory {
            check("memory", bounds::memory(v.0));
        }
        if let Some(v) = l.cpus {
            check("cpus", bounds::cpus(v));
        }
        if let Some(v) = l.pids {
            check("pids", bounds::pids(v));
        }
        if let Some(v) = l.timeout_secs {
            check("timeout_secs", bounds::timeout_secs(v));
        }
        if let Some(v) = l.output {
            check("output", bounds::output(v.0));
        }
        if let Some(v) = l.tmpfs {
            check("tmpfs", bounds::tmpfs(v.0));
        }
        if let Some(v) = l.file_size {
            check("file_size", bounds::file_size(v.0));
        }
        if let Some(v) = l.open_files {
            check("open_files", bounds::open_files(v));
        }
        if let Some(v) = l.concurrent_calls {
            check("concurrent_calls", bounds::per_user(v));
        }
        if let Some(v) = l.calls_per_minute {
            check("calls_per_minute", bounds::per_user(v));
        }
    }
}

/// Applies layers in order (later layers override earlier ones; rules and protected paths
/// accumulate).
fn merge(layers: &[&Compiled]) -> Effective {
    let mut profile = Profile::default();
    let mut eff = Effective {
        rules: Vec::new(),
        fallback: BTreeMap::new(),
        profile: Profile::default(),
        protected: default_protected(),
        approval_ttl_secs: None,
        session_grants: false,
        approve_in_airlock: false,
        concurrent_calls: None,
        calls_per_minute: None,
    };
    for (i, l) in layers.iter().enumerate() {
        eff.rules.extend(l.rules.iter().cloned());
        for (t, d) in &l.tools {
            eff.fallback.insert(*t, d.clone());
        }
        let lim = &l.limits;
        if let Some(v) = lim.memory {
            profile.memory_bytes = v.0;
        }
        if let Some(v) = lim.cpus {
            profile.cpus = v;
        }
        if let Some(v) = lim.pids {
            profile.pids = v;
        }
        if let Some(v) = lim.timeout_secs {
            profile.timeout_secs = v;
        }
        if let Some(v) = lim.output {
            profile.output_bytes = v.0;
        }
        if let Some(v) = lim.tmpfs {
            profile.tmpfs_bytes = v.0;
        }
        if let Some(v) = lim.file_size {
            profile.fsize_bytes = v.0;
        }
        if let Some(v) = lim.open_files {
            profile.nofile = v;
        }
        if lim.concurrent_calls.is_some() {
            eff.concurrent_calls = lim.concurrent_calls;
        }
        if lim.calls_per_minute.is_some() {
            eff.calls_per_minute = lim.calls_per_minute;
        }
        if let Some(r) = l.runtime {
            profile.runtime = r;
        }
        if l.image.is_some() {
            profile.image = l.image.clone();
        }
        if l.approval_ttl_secs.is_some() {
            eff.approval_ttl_secs = l.approval_ttl_secs;
        }
        if let Some(g) = l.session_grants {
            eff.session_grants = g;
        }
        if let Some(a) = l.approve_in_airlock {
            eff.approve_in_airlock = a;
        }
        if let Some(p) = &l.protected {
            if i == 0 {
                eff.protected = p.clone(); // [defaults] replaces the built-in list
            } else {
                eff.protected.extend(p.iter().cloned());
            }
        }
    }
    eff.profile = profile;
    eff
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by {}", self.decision.as_str(), self.rule)
    }
}

#[cfg(test)]
mod tests;
