//! The policy file format: the TOML document as typed Rust structures. Every table rejects
//! unknown keys. The JSON Schema in `policies/policy.schema.json` is generated from these
//! types (`airlock policy schema`), so their doc comments are what editors show.
//!
//! Values that are checked beyond their type (globs, names, patterns) are `Spanned`, so an
//! error can point at the exact line and column.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use crate::calls::Decision;
use crate::limits::Runtime;

/// An Airlock admin policy: who may use the server, what their agents' tool calls may do
/// without asking, and the limits of the containers the calls run in. See docs/POLICY.md.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Airlock policy")]
pub struct PolicyFile {
    /// Settings for every user. Groups and users override them.
    #[serde(default)]
    pub defaults: Layer,
    /// Named groups of settings; a user in several groups gets them in the order listed.
    #[serde(default)]
    pub groups: BTreeMap<String, Layer>,
    /// The users of this server.
    #[serde(default)]
    pub users: Vec<UserEntry>,
    /// Inline test cases: run by `airlock policy check` and at every load (a failing case
    /// rejects the file).
    #[serde(default, rename = "test")]
    #[schemars(with = "Vec<TestCase>")]
    pub tests: Vec<Spanned<TestCase>>,
}

/// Settings of one layer (the defaults, a group, or a user). Unset values come from the layer
/// below: user → groups (later groups win) → defaults → built-in.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// Free text for the admins.
    #[serde(default)]
    pub description: Option<String>,
    /// The decision for each tool when no rule matches the call. Tools not listed anywhere are
    /// asked about.
    #[serde(default)]
    pub tools: BTreeMap<ToolName, Decision>,
    /// Rules matched on tool, path and (for run_shell) command. Rules of every layer apply
    /// together: among the rules that match a call, the strictest decision wins
    /// (deny, then ask, then allow).
    #[serde(default)]
    #[schemars(with = "Vec<Rule>")]
    pub rules: Vec<Spanned<Rule>>,
    /// Limits of the tool containers and of the user's calls.
    #[serde(default)]
    #[schemars(with = "Option<Limits>")]
    pub limits: Option<Spanned<Limits>>,
    /// OCI runtime of the tool containers: `runc`, or `runsc` (gVisor) for the strictest
    /// tenants.
    #[serde(default)]
    pub runtime: Option<Runtime>,
    /// Executor image (tag or ID) for the tool containers; the server's `docker.image` when
    /// unset. Resolved to an ID and pinned when the policy loads.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub image: Option<Spanned<String>>,
    /// How long an approval request stays valid, in seconds (the server's
    /// `limits.approval_ttl_secs` when unset).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 604800))]
    pub approval_ttl_secs: Option<Spanned<u64>>,
    /// Whether users may approve a tool + path (or command) pattern for the rest of a
    /// session. Built-in default: false.
    #[serde(default)]
    pub session_grants: Option<bool>,
    /// Whether approvals must be given in Airlock itself (web UI, `airlock calls approve`):
    /// MCP clients are then never asked, even when they could answer. Built-in default: false.
    #[serde(default)]
    pub approve_in_airlock: Option<bool>,
    /// Paths no tool may read (`no_access`) or write (`read_only`), checked by the executor on
    /// the resolved path whatever the rules say. In `[defaults]` this list replaces the
    /// built-in one (`.git/**` read-only; `**/.env`, `**/*.pem`, `**/id_*` no access); in
    /// groups and users it adds to it.
    #[serde(default)]
    #[schemars(with = "Option<Vec<Protected>>")]
    pub protected: Option<Vec<Spanned<Protected>>>,
}

/// One user: identity, workspace, groups, and optional per-user overrides of any layer
/// setting.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// Letters, digits, `-`, `_` or `.`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Hex SHA-256 of the user's bearer token (`airlock admin token --user NAME` prints it).
    #[schemars(with = "String", regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub token_sha256: Spanned<String>,
    /// `user` (default) or `admin` (may also read metrics).
    #[serde(default)]
    pub role: Role,
    /// Absolute host path of the user's workspace (mounted at /workspace in tool containers).
    #[schemars(with = "String")]
    pub workspace: Spanned<String>,
    /// The uid the user's tool containers run as (the workspace's owner); never 0.
    #[schemars(range(min = 1))]
    pub uid: u32,
    /// The gid the user's tool containers run as; never 0.
    #[schemars(range(min = 1))]
    pub gid: u32,
    /// Groups whose settings apply, in order (later groups override earlier ones).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub groups: Vec<Spanned<String>>,

    /// Free text for the admins.
    #[serde(default)]
    pub description: Option<String>,
    /// Per-user tool decisions when no rule matches (override groups and defaults).
    #[serde(default)]
    pub tools: BTreeMap<ToolName, Decision>,
    /// Per-user rules (added to those of the defaults and groups).
    #[serde(default)]
    #[schemars(with = "Vec<Rule>")]
    pub rules: Vec<Spanned<Rule>>,
    /// Per-user limits (override groups and defaults).
    #[serde(default)]
    #[schemars(with = "Option<Limits>")]
    pub limits: Option<Spanned<Limits>>,
    /// Per-user OCI runtime.
    #[serde(default)]
    pub runtime: Option<Runtime>,
    /// Per-user executor image.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub image: Option<Spanned<String>>,
    /// Per-user approval expiry, in seconds.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 604800))]
    pub approval_ttl_secs: Option<Spanned<u64>>,
    /// Per-user: may this user approve patterns for the rest of a session?
    #[serde(default)]
    pub session_grants: Option<bool>,
    /// Per-user: must approvals be given in Airlock itself, never in an MCP client?
    #[serde(default)]
    pub approve_in_airlock: Option<bool>,
    /// Protected paths added for this user.
    #[serde(default)]
    #[schemars(with = "Option<Vec<Protected>>")]
    pub protected: Option<Vec<Spanned<Protected>>>,
}

impl UserEntry {
    /// The user's own settings as a layer.
    pub fn layer(&self) -> Layer {
        Layer {
            description: self.description.clone(),
            tools: self.tools.clone(),
            rules: self.rules.clone(),
            limits: self.limits.clone(),
            runtime: self.runtime,
            image: self.image.clone(),
            approval_ttl_secs: self.approval_ttl_secs.clone(),
            session_grants: self.session_grants,
            approve_in_airlock: self.approve_in_airlock,
            protected: self.protected.clone(),
        }
    }
}

/// A user's role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    User,
    Admin,
}

/// A tool name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ToolName {
    ReadFile,
    ListDir,
    Search,
    WriteFile,
    EditFile,
    RunShell,
}

impl ToolName {
    pub const ALL: [ToolName; 6] = [
        ToolName::ReadFile,
        ToolName::ListDir,
        ToolName::Search,
        ToolName::WriteFile,
        ToolName::EditFile,
        ToolName::RunShell,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ToolName::ReadFile => "read_file",
            ToolName::ListDir => "list_dir",
            ToolName::Search => "search",
            ToolName::WriteFile => "write_file",
            ToolName::EditFile => "edit_file",
            ToolName::RunShell => "run_shell",
        }
    }

    pub fn parse(s: &str) -> Option<ToolName> {
        ToolName::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One rule. It matches a call when the tool is one of `tool` and every condition it has
/// (`path`, `command`) holds.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Tool name(s) the rule applies to, or `"*"` for every tool.
    #[schemars(with = "OneOrMany")]
    pub tool: Spanned<OneOrMany>,
    pub decision: Decision,
    /// Path glob(s) relative to the workspace (`**` crosses directories, `*` does not;
    /// `[abc]` classes; case-sensitive unless `ignore_case`). The rule matches when the
    /// call's path matches one of them. For run_shell they are matched against the
    /// command's path-like operands: a deny/ask rule matches when any operand matches, an
    /// allow rule only when every operand does.
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany>")]
    pub path: Option<Spanned<OneOrMany>>,
    /// run_shell only: command pattern(s) such as `"cargo test *"`, matched word by word
    /// against each segment of the command (a final `*` matches any remaining arguments).
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany>")]
    pub command: Option<Spanned<OneOrMany>>,
    /// Match `path` globs and command patterns without regard to case.
    #[serde(default)]
    pub ignore_case: bool,
    /// For an `ask` rule: false forbids approving what it matches "for the rest of the
    /// session" (each call must be approved on its own).
    #[serde(default)]
    pub session_grants: Option<bool>,
    /// Why the rule exists; shown to the user when it decides a call.
    #[serde(default)]
    pub reason: Option<String>,
    /// For an `allow` rule on run_shell: run what it allows with a writable workspace. Without
    /// it, a command nobody approved gets a read-only workspace, whatever its text looks like
    /// (e.g. `write = true` on an allow rule for `cargo fmt`).
    #[serde(default)]
    pub write: bool,
}

/// A protected path.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Protected {
    /// Glob over the workspace-relative path after symlinks are resolved; it also covers
    /// everything beneath a matching directory.
    #[schemars(with = "String")]
    pub glob: Spanned<String>,
    pub protection: ProtectionKind,
}

/// What a protected path forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProtectionKind {
    /// Neither read nor written.
    NoAccess,
    /// Readable, never written.
    ReadOnly,
}

/// Limits of a user's tool containers and calls. Sizes are bytes (an integer) or a string
/// with a unit: `"256MiB"`, `"1 GiB"`, `"512k"`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory limit (swap is disabled). At least 8 MiB.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// CPU quota in CPUs (0.5 = half a core).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Most processes and threads (runsc needs at least 128).
    #[serde(default)]
    pub pids: Option<u32>,
    /// Wall-clock limit of one call, in seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Most output (stdout + stderr) one call may produce; more kills it.
    #[serde(default)]
    pub output: Option<ByteSize>,
    /// Size of the tmpfs at /tmp.
    #[serde(default)]
    pub tmpfs: Option<ByteSize>,
    /// Largest file a tool may write (RLIMIT_FSIZE).
    #[serde(default)]
    pub file_size: Option<ByteSize>,
    /// Most open files (RLIMIT_NOFILE).
    #[serde(default)]
    pub open_files: Option<u64>,
    /// Calls of the user running at once; more are refused with 429.
    #[serde(default)]
    pub concurrent_calls: Option<u32>,
    /// Calls the user may propose per minute; more are refused with 429.
    #[serde(default)]
    pub calls_per_minute: Option<u32>,
}

/// One or several strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                if out.is_empty() {
                    return Err(serde::de::Error::invalid_length(0, &"at least one string"));
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for OneOrMany {
    fn schema_name() -> Cow<'static, str> {
        "OneOrMany".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A string or a non-empty array of strings.",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1}
            ]
        })
    }
}

/// A size in bytes: an integer, or a string with a unit (`B`, `k`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`; binary multiples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '_'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: u64 = num.replace('_', "").parse().map_err(|_| {
            format!("`{s}` is not a size: expected e.g. 268435456, \"256MiB\" or \"1 GiB\"")
        })?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`: use B, KiB, MiB or GiB"
                ))
            }
        };
        num.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size: bytes as an integer, or a string such as \"256MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: bytes as an integer, or a string with a binary unit such as \"256MiB\", \"1 GiB\", \"512k\".",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^\\s*[0-9][0-9_]*\\s*([bB]|[kKmMgG]([iI]?[bB])?)?\\s*$"}
            ]
        })
    }
}

/// An inline test case: a call and the decision the policy must reach.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Shown when the case fails.
    #[serde(default)]
    pub name: Option<String>,
    /// The user making the call; without it, a user with no groups and no overrides.
    #[serde(default)]
    pub user: Option<String>,
    /// The tool.
    pub tool: String,
    /// The tool's arguments, e.g. `{ path = ".env" }` or `{ command = "ls; curl x" }`.
    #[serde(default = "empty_args")]
    pub args: serde_json::Value,
    /// The decision the policy must reach.
    pub expect: Decision,
    /// The rule that must decide it (its id, e.g. `defaults.rules[0]` or
    /// `groups.dev.tools.run_shell`), if given.
    #[serde(default)]
    pub rule: Option<String>,
}

fn empty_args() -> serde_json::Value {
    serde_json::json!({})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_integers_and_units() {
        assert_eq!(ByteSize::parse("256MiB").unwrap().0, 256 << 20);
        assert_eq!(ByteSize::parse("1 GiB").unwrap().0, 1 << 30);
        assert_eq!(ByteSize::parse("512k").unwrap().0, 512 << 10);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert_eq!(ByteSize::parse("1_000").unwrap().0, 1000);
        assert!(ByteSize::parse("12 parsecs").unwrap_err().contains("unit"));
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("99999999999999 GiB").is_err());
    }
}
