//! Admin policy files: users and their workspaces, a decision per tool, protected paths and
//! sandbox limits. Parsing and evaluation are pure (no Docker, Redis or HTTP).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use airlock_executor::protocol::{ProtectedPath, Protection, ToolCall};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::calls::Decision;
use crate::config::{parse_toml, ConfigError};
use crate::sandbox::Profile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Hex SHA-256 of the user's bearer token (`airlock admin token` prints it).
    pub token_sha256: String,
    #[serde(default = "default_role")]
    pub role: Role,
    /// Absolute host path of the user's workspace root.
    pub workspace: PathBuf,
    /// The uid:gid the user's tool containers run as (the workspace's owner); never 0.
    pub uid: u32,
    pub gid: u32,
}

fn default_role() -> Role {
    Role::User
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Decision per tool name; tools not listed are asked about.
    pub tools: BTreeMap<String, Decision>,
    /// Sandbox limits and runtime (uid/gid come from the user).
    pub sandbox: Profile,
    /// How long an approval stays valid, in seconds (the server's limit applies when unset).
    pub approval_ttl_secs: Option<u64>,
}

impl Default for Defaults {
    fn default() -> Self {
        let mut tools = BTreeMap::new();
        for t in ["read_file", "list_dir", "search"] {
            tools.insert(t.to_string(), Decision::Allow);
        }
        for t in ["write_file", "edit_file", "run_shell"] {
            tools.insert(t.to_string(), Decision::Ask);
        }
        Defaults {
            tools,
            sandbox: Profile::default(),
            approval_ttl_secs: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub defaults: Defaults,
    /// Paths no tool may read (`no_access`) or write (`read_only`), checked by the executor
    /// after path resolution.
    #[serde(default = "default_protected")]
    pub protected: Vec<ProtectedPath>,
    #[serde(default)]
    pub users: Vec<User>,
}

/// The protected paths in force when a policy names none.
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
    pub sha256: String,
    pub path: String,
}

/// The policy's answer for one call, and which rule gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub rule: String,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes.clone()).map_err(|_| ConfigError::Invalid {
            path: shown.clone(),
            message: "not UTF-8".into(),
        })?;
        Policy::parse(&shown, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Policy, ConfigError> {
        let file: PolicyFile = parse_toml(path, text)?;
        validate(path, text, &file)?;
        Ok(Policy {
            file,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            path: path.to_string(),
        })
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.file.users.iter().find(|u| u.name == name)
    }

    /// Finds the user whose token hashes to `token_sha256`, comparing every entry in constant
    /// time so the response time says nothing about which hash matched.
    pub fn user_by_token_hash(&self, token_sha256: &[u8; 32]) -> Option<&User> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for u in &self.file.users {
            let mut want = [0u8; 32];
            if hex::decode_to_slice(&u.token_sha256, &mut want).is_ok()
                && bool::from(want.ct_eq(token_sha256))
            {
                found = Some(u);
            }
        }
        found
    }

    pub fn evaluate(&self, _user: &User, call: &ToolCall) -> Verdict {
        match self.file.defaults.tools.get(call.name()) {
            Some(d) => Verdict {
                decision: *d,
                rule: format!("defaults.tools.{}", call.name()),
            },
            None => Verdict {
                decision: Decision::Ask,
                rule: "built-in: unlisted tools ask".into(),
            },
        }
    }

    /// The sandbox profile for `user`'s calls.
    pub fn profile_for(&self, user: &User) -> Profile {
        Profile {
            uid: user.uid,
            gid: user.gid,
            ..self.file.defaults.sandbox.clone()
        }
    }
}

fn validate(path: &str, text: &str, f: &PolicyFile) -> Result<(), ConfigError> {
    // Point at the line where a named thing is defined, when we can find it.
    let at = |needle: &str, message: String| {
        let (line, column) = text
            .find(needle)
            .map_or((1, 1), |o| crate::config::line_col(text, o));
        ConfigError::Parse {
            path: path.into(),
            line,
            column,
            message,
        }
    };
    for tool in f.defaults.tools.keys() {
        if !ToolCall::NAMES.contains(&tool.as_str()) {
            return Err(at(
                tool,
                format!(
                    "unknown tool `{tool}` in defaults.tools; known tools: {}",
                    ToolCall::NAMES.join(", ")
                ),
            ));
        }
    }
    f.defaults
        .sandbox
        .validate()
        .or_else(|e| {
            // uid/gid come from users; validate the rest with a harmless placeholder.
            let mut p = f.defaults.sandbox.clone();
            p.uid = 65532;
            p.gid = 65532;
            p.validate().map_err(|_| e)
        })
        .map_err(|e| at("[defaults.sandbox]", e.to_string()))?;
    for p in &f.protected {
        globset::Glob::new(&p.glob)
            .map_err(|e| at(&p.glob, format!("invalid glob `{}`: {e}", p.glob)))?;
    }
    let mut seen = std::collections::HashSet::new();
    for u in &f.users {
        let here = format!("\"{}\"", u.name);
        if u.name.is_empty()
            || !u
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(at(
                &here,
                format!(
                    "user name `{}` must be letters, digits, `-`, `_` or `.`",
                    u.name
                ),
            ));
        }
        if !seen.insert(&u.name) {
            return Err(at(&here, format!("user `{}` is defined twice", u.name)));
        }
        if u.token_sha256.len() != 64 || hex::decode(&u.token_sha256).is_err() {
            return Err(at(
                &u.token_sha256,
                format!(
                    "user `{}`: token_sha256 must be 64 hex digits (make one with `airlock admin token --user {}`)",
                    u.name, u.name
                ),
            ));
        }
        if !u.workspace.is_absolute() {
            return Err(at(
                &here,
                format!("user `{}`: workspace must be an absolute path", u.name),
            ));
        }
        if u.uid == 0 || u.gid == 0 {
            return Err(at(
                &here,
                format!(
                    "user `{}`: uid and gid must not be 0 (tools never run as root)",
                    u.name
                ),
            ));
        }
    }
    Ok(())
}

/// Hex SHA-256 of a bearer token, as stored in policy files.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[defaults.tools]
read_file = "allow"
run_shell = "deny"

[[users]]
name = "alice"
token_sha256 = "0a041b9462caa4a31bac3567e0b6e6fd9100787db2ab433d96f6d178cabfce90"
workspace = "/srv/ws/alice"
uid = 1000
gid = 1000
"#;

    #[test]
    fn evaluates_per_tool_and_names_the_rule() {
        let p = Policy::parse("p.toml", GOOD).unwrap();
        let u = p.user("alice").unwrap();
        let read = ToolCall::from_parts("read_file", serde_json::json!({"path":"a"})).unwrap();
        let sh = ToolCall::from_parts("run_shell", serde_json::json!({"command":"ls"})).unwrap();
        let ed = ToolCall::from_parts("list_dir", serde_json::json!({})).unwrap();
        assert_eq!(p.evaluate(u, &read).decision, Decision::Allow);
        assert_eq!(p.evaluate(u, &sh).decision, Decision::Deny);
        assert_eq!(p.evaluate(u, &sh).rule, "defaults.tools.run_shell");
        // A [defaults.tools] table replaces the built-in one: unlisted tools ask.
        assert_eq!(p.evaluate(u, &ed).decision, Decision::Ask);
        assert_eq!(p.profile_for(u).uid, 1000);
        assert_eq!(p.file.protected, default_protected());
    }

    #[test]
    fn shipped_default_policy_is_valid() {
        let text = include_str!("../../policies/default.toml");
        let p = Policy::parse("policies/default.toml", text).unwrap();
        assert_eq!(p.file.protected, default_protected());
        assert_eq!(p.file.defaults.tools, Defaults::default().tools);
    }

    #[test]
    fn token_lookup_matches_only_the_right_hash() {
        let p = Policy::parse("p.toml", GOOD).unwrap();
        let mut h = [0u8; 32];
        hex::decode_to_slice(token_sha256("user1"), &mut h).unwrap();
        assert_eq!(
            p.user_by_token_hash(&h).map(|u| u.name.as_str()),
            Some("alice")
        );
        hex::decode_to_slice(token_sha256("user2"), &mut h).unwrap();
        assert!(p.user_by_token_hash(&h).is_none());
    }

    #[test]
    fn errors_name_file_line_and_what_is_wrong() {
        let bad = GOOD.replace("run_shell = \"deny\"", "rm_rf = \"allow\"");
        let e = Policy::parse("p.toml", &bad).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:4:"), "{e}");
        assert!(e.contains("unknown tool `rm_rf`"), "{e}");
        let bad = GOOD.replace("uid = 1000", "uid = 0");
        let e = Policy::parse("p.toml", &bad).unwrap_err().to_string();
        assert!(e.contains("must not be 0"), "{e}");
        let bad = GOOD.replace("gid = 1000", "gid = 1000\nshell = true");
        let e = Policy::parse("p.toml", &bad).unwrap_err().to_string();
        assert!(e.contains("shell"), "{e}");
        assert!(e.starts_with("p.toml:12:"), "{e}");
    }
}
