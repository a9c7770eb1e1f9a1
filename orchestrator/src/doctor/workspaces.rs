//! The policy file and each user's workspace directory (exists, owned, not world-writable).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;
use crate::config::Config;
use crate::policy::Policy;

pub(super) fn check_policy(report: &mut Report, config: &Config) -> Option<Policy> {
    let path = &config.policy;
    match Policy::load(path) {
        Ok(p) => {
            report.ok(POLICY, format!("{}: {}", path.display(), p.summary()));
            if p.users().is_empty() {
                report.warn(
                    POLICY,
                    "the policy has no [[users]]: nobody can use the API",
                    format!(
                        "make a token with `airlock admin token --user NAME` and add a [[users]] entry to {}",
                        path.display()
                    ),
                );
            }
            Some(p)
        }
        Err(e) => {
            report.fail(
                POLICY,
                format!(
                    "{} is rejected:\n{}",
                    path.display(),
                    indent(&e.to_string(), 8)
                ),
                format!(
                    "`airlock policy check {}` shows every problem with its line (docs/POLICY.md)",
                    path.display()
                ),
            );
            None
        }
    }
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks one workspace directory: exists, absolute, a directory, owned by the user's uid
/// (so never by root), not world-writable. `Err` carries the message and the fix.
pub fn check_workspace(dir: &Path, uid: u32, gid: u32) -> Result<String, (String, String)> {
    check_workspace_with(dir, uid, gid, false)
}

/// [`check_workspace`]; under rootless Docker the container's uid maps to a subordinate uid on
/// the host, so the owner is not compared with the policy's uid (root and world-writable still
/// are refused).
pub fn check_workspace_with(
    dir: &Path,
    uid: u32,
    gid: u32,
    rootless: bool,
) -> Result<String, (String, String)> {
    let shown = dir.display();
    let create = format!("mkdir -p {shown} && chown {uid}:{gid} {shown} && chmod 750 {shown}");
    if !dir.is_absolute() {
        return Err((
            format!("{shown} is not an absolute path"),
            "give the workspace as an absolute host path in the policy".into(),
        ));
    }
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err((format!("{shown} does not exist"), create));
        }
        Err(e) => {
            return Err((
                format!("{shown} cannot be inspected: {e}"),
                "run doctor as the user that runs airlock serve".into(),
            ))
        }
    };
    if !meta.is_dir() {
        return Err((format!("{shown} is not a directory"), create));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() == 0 {
        return Err((
            format!("{shown} is owned by root; the tools run as uid {uid} and could not write it"),
            format!("chown -R {uid}:{gid} {shown}"),
        ));
    }
    if !rootless && meta.uid() != uid {
        return Err((
            format!(
                "{shown} is owned by uid {}, but the policy runs this user's tools as uid {uid}",
                meta.uid()
            ),
            format!("chown -R {uid}:{gid} {shown} (or set uid/gid in the policy to the owner's)"),
        ));
    }
    if mode & 0o002 != 0 {
        return Err((
            format!(
                "{shown} is world-writable (mode {mode:04o}): any local user can plant files in it"
            ),
            format!("chmod o-w {shown}"),
        ));
    }
    if meta.uid() != uid {
        return Ok(format!(
            "{shown} (owner uid {}; rootless Docker maps the tools' uid {uid} to a subordinate uid, so the owner is not compared)",
            meta.uid()
        ));
    }
    Ok(format!(
        "{shown} (owner {uid}:{}, mode {mode:04o})",
        meta.gid()
    ))
}

pub(super) fn check_workspaces(report: &mut Report, policy: &Policy, rootless: bool) {
    if policy.users().is_empty() {
        report.skip(WORKSPACES, "no users, no workspaces");
        return;
    }
    for u in policy.users() {
        match check_workspace_with(&u.workspace, u.uid, u.gid, rootless) {
            Ok(m) => report.ok(WORKSPACES, format!("{}: {m}", u.name)),
            Err((m, fix)) => report.fail(WORKSPACES, format!("{}: {m}", u.name), fix),
        }
    }
}
