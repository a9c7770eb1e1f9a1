//! `airlock policy`: check, explain, test and print the schema of admin policy files.

use std::process::ExitCode;

use airlock::protocol::ToolCall;
use anyhow::Context;

use crate::PolicyCmd;

pub fn policy_cmd(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    use airlock::policy::Policy;
    match cmd {
        PolicyCmd::Schema => {
            print!("{}", airlock::policy::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Check { file } => match Policy::load(&file) {
            Ok(p) => {
                println!("{}: ok — {}", file.display(), p.summary());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                let n = e.diagnostics().len().max(1);
                eprintln!("{}: rejected ({n} problem(s))", file.display());
                Ok(ExitCode::from(1))
            }
        },
        PolicyCmd::Explain {
            policy,
            user,
            tool,
            args,
            json,
        } => {
            let p = Policy::load(&policy).map_err(|e| anyhow::anyhow!("{e}"))?;
            let args: serde_json::Value = serde_json::from_str(&args)
                .with_context(|| format!("the arguments are not valid JSON: {args}"))?;
            let call = ToolCall::from_parts(&tool, args).map_err(anyhow::Error::msg)?;
            let v = match &user {
                Some(name) => {
                    let u = p.user(name).with_context(|| {
                        let names: Vec<&str> = p.users().iter().map(|u| u.name.as_str()).collect();
                        format!(
                            "no user `{name}` in {}; users: {}",
                            policy.display(),
                            names.join(", ")
                        )
                    })?;
                    p.evaluate(u, &call)
                }
                None => airlock::policy::evaluate(p.defaults(), &call, &[]),
            };
            let rule = p.rule_info(&v.rule);
            let protected = match &user {
                Some(name) => p.user(name).map(|u| p.protected_for(u)).unwrap_or_default(),
                None => p.defaults().protected.clone(),
            };
            // The mount a call gets: what nobody approved cannot write.
            let workspace = match (&call, v.decision) {
                (_, airlock::calls::Decision::Deny) => "none (denied)",
                (ToolCall::RunShell(_), airlock::calls::Decision::Allow) if !v.write => {
                    "read-only (allowed without asking; an allow rule with `write = true` makes it writable)"
                }
                (ToolCall::RunShell(_), airlock::calls::Decision::Allow) => {
                    "writable (the allowing rule says `write = true`)"
                }
                (c, airlock::calls::Decision::Ask) if c.mutates() => "writable once approved",
                (c, _) if c.mutates() => "writable",
                _ => "read-only",
            };
            if json {
                let out = serde_json::json!({
                    "workspace": workspace,
                    "protected": protected,
                    "decision": v.decision,
                    "rule": v.rule,
                    "rule_line": rule.as_ref().map(|r| r.0),
                    "rule_summary": rule.as_ref().map(|r| &r.1),
                    "reason": v.reason,
                    "details": v.details,
                    "policy_sha256": p.sha256,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("decision: {}", v.decision.as_str());
            match rule {
                Some((line, summary)) => println!(
                    "rule:     {} ({}:{line}): {summary}",
                    v.rule,
                    policy.display()
                ),
                None => println!("rule:     {}", v.rule),
            }
            if let Some(r) = &v.reason {
                println!("reason:   {r}");
            }
            if !v.details.is_empty() {
                println!("how:");
                for d in &v.details {
                    println!("  {d}");
                }
            }
            println!("workspace: {workspace}");
            if !protected.is_empty() {
                println!("protected paths (the same for every tool, shell commands included):");
                for pp in &protected {
                    let how = match pp.protection {
                        airlock_executor::protocol::Protection::NoAccess => {
                            "no_access: refused by the file tools, and masked (empty, read-only) in every container"
                        }
                        airlock_executor::protocol::Protection::ReadOnly => {
                            "read_only: readable, never written (a read-only view in every writable container)"
                        }
                    };
                    println!("  {:<16} {how}", pp.glob);
                }
            }
            println!(
                "user:     {}",
                user.as_deref()
                    .unwrap_or("(none: a user with no groups or overrides)")
            );
            println!("policy:   {} (sha256 {})", policy.display(), p.sha256);
            Ok(ExitCode::SUCCESS)
        }
    }
}
