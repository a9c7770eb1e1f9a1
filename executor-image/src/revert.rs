//! `revert`: put files back as they were before an applied call, only where they are still as
//! that call left it. Every file is checked before anything is written, so a conflict anywhere
//! reverts nothing.

use crate::error::{show, ToolError, ToolResultOr};
use crate::protocol::{ChangeKind, ErrorCode, FileChange, Mode, RevertArgs, RevertResult, ABSENT};
use crate::resolve::WriteTarget;
use crate::text::{as_text, binary_diff, sha256_hex, unified_diff};
use crate::write::{keep_previous, read_current, short, write_atomically, Current};
use crate::Ctx;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rustix::fs::{unlinkat, AtFlags};

/// Most files one revert touches (an undo record lists at most `MAX_UNDO_FILES`).
const MAX_FILES: usize = crate::protocol::MAX_UNDO_FILES;

struct Plan {
    target: WriteTarget,
    path: String,
    current: Option<Current>,
    /// `None`: remove the file.
    restore: Option<Vec<u8>>,
    mode: Option<u32>,
}

pub fn revert(ctx: &Ctx<'_>, args: &RevertArgs) -> ToolResultOr<RevertResult> {
    if args.files.is_empty() {
        return Err(ToolError::invalid("revert needs at least one file"));
    }
    if args.files.len() > MAX_FILES {
        return Err(ToolError::new(
            ErrorCode::TooLarge,
            format!(
                "revert lists {} files; at most {MAX_FILES}",
                args.files.len()
            ),
        ));
    }
    let mut plans = Vec::new();
    let mut conflicts = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in &args.files {
        let shown = f.path.as_str();
        let mut target = ctx.ws.resolve_write(shown, true)?;
        // A path protected now is refused, whatever it was when the call ran.
        ctx.prot.check_write(&target.rel, shown)?;
        let path = target.rel.display();
        if !seen.insert(path.clone()) {
            return Err(ToolError::invalid(format!(
                "revert lists {} twice",
                show(&path)
            )));
        }
        if let Err(e) = target.check_kind() {
            conflicts.push(format!("{} ({})", show(&path), e.message));
            continue;
        }
        let current = read_current(ctx, &mut target, shown)?;
        let now = current
            .as_ref()
            .map_or_else(|| ABSENT.to_string(), |c| sha256_hex(&c.data));
        let expected = f.expected_sha256.trim().to_ascii_lowercase();
        let restore_sha = f.restore_sha256.trim().to_ascii_lowercase();
        if now != expected && now == restore_sha {
            // Already as it will be (a retry after a partial revert): nothing to do here.
            continue;
        }
        if now != expected {
            conflicts.push(format!(
                "{} ({})",
                show(&path),
                match (expected == ABSENT, now == ABSENT) {
                    (true, _) => "created since".to_string(),
                    (false, true) => "deleted since".to_string(),
                    (false, false) => format!("changed since: sha256 {}", short(&now)),
                }
            ));
            continue;
        }
        let restore = if f.restore_sha256 == ABSENT {
            None
        } else {
            let Some(b64) = &f.content_base64 else {
                return Err(ToolError::invalid(format!(
                    "revert of {} has no content to put back",
                    show(&path)
                )));
            };
            let data = BASE64.decode(b64).map_err(|e| {
                ToolError::invalid(format!(
                    "the content for {} is not base64: {e}",
                    show(&path)
                ))
            })?;
            // The approval binds restore_sha256: never write other bytes under it.
            if sha256_hex(&data) != f.restore_sha256.trim().to_ascii_lowercase() {
                return Err(ToolError::invalid(format!(
                    "the content for {} does not have sha256 {}; nothing was reverted",
                    show(&path),
                    short(&f.restore_sha256)
                )));
            }
            Some(data)
        };
        plans.push(Plan {
            target,
            path,
            current,
            restore,
            // Permission bits only: never setuid, setgid or sticky from a record.
            mode: f.mode.map(|m| m & 0o777),
        });
    }
    if !conflicts.is_empty() {
        return Err(ToolError::new(
            ErrorCode::StaleFile,
            format!(
                "cannot revert call {}: {} changed since it ran: {}; nothing was reverted",
                args.reverts,
                if conflicts.len() == 1 {
                    "a file".to_string()
                } else {
                    format!("{} files", conflicts.len())
                },
                conflicts.join(", ")
            ),
        ));
    }
    let changes = plans.iter().filter_map(change_of).collect();
    let applied = ctx.mode == Mode::Apply;
    if applied {
        for mut plan in plans {
            let shown = plan.path.clone();
            match &plan.restore {
                Some(data) if plan.current.as_ref().is_some_and(|c| &c.data == data) => {
                    // Same content: only the permission bits may differ.
                    if let (Some(mode), Some(cur), Some(file)) =
                        (plan.mode, &plan.current, plan.target.existing.as_ref())
                    {
                        if cur.mode != mode {
                            rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(mode))
                                .map_err(|e| ToolError::from_errno(e, &shown))?;
                        }
                    }
                }
                Some(data) => {
                    let mode = plan.mode.or(plan.current.as_ref().map(|c| c.mode));
                    write_atomically(&mut plan.target, &shown, data, mode)?;
                }
                None if plan.current.is_none() => continue,
                None => unlinkat(plan.target.parent(), plan.target.name(), AtFlags::empty())
                    .map_err(|e| ToolError::from_errno(e, &shown))?,
            }
            // A revert can be reverted too (a redo).
            let after = plan
                .restore
                .as_deref()
                .map_or_else(|| ABSENT.to_string(), sha256_hex);
            keep_previous(ctx, &plan.path, plan.current.as_ref(), &after);
        }
    }
    Ok(RevertResult {
        reverts: args.reverts.clone(),
        changes,
        applied,
    })
}

/// The file's change as the revert makes it (none when it is already as it will be).
fn change_of(plan: &Plan) -> Option<FileChange> {
    let old = plan.current.as_ref().map(|c| c.data.as_slice());
    let new = plan.restore.as_deref();
    let kind = match (old, new) {
        (None, None) => return None,
        (Some(a), Some(b)) if a == b => return None,
        (None, Some(_)) => ChangeKind::Created,
        (Some(_), None) => ChangeKind::Deleted,
        (Some(_), Some(_)) => ChangeKind::Modified,
    };
    fn text(d: Option<&[u8]>) -> Option<&str> {
        d.map_or(Some(""), as_text)
    }
    let diff = match (text(old), text(new)) {
        (Some(a), Some(b)) => unified_diff(a, b, &plan.path),
        _ => binary_diff(&plan.path),
    };
    Some(FileChange {
        path: plan.path.clone(),
        kind,
        diff: Some(diff),
    })
}

#[cfg(test)]
mod tests {
    use crate::protocol::*;
    use crate::testutil::*;

    fn revert_of(id: &str, undo: &UndoRecord) -> ToolCall {
        ToolCall::Revert(RevertArgs {
            reverts: id.into(),
            files: undo.files.clone(),
        })
    }

    fn reverted(t: &mut T, call: ToolCall) -> Result<RevertResult, crate::ToolError> {
        t.run(call).map(|r| match r {
            ToolResult::Revert(r) => r,
            other => panic!("unexpected {other:?}"),
        })
    }

    #[test]
    fn an_edit_and_a_new_file_are_reverted_and_the_revert_can_be_redone() {
        for mut t in both() {
            t.write("a.txt", "one\ntwo\n");
            let (undo, r) = t.run_undo(ToolCall::EditFile(EditFileArgs {
                path: "a.txt".into(),
                edits: vec![Edit {
                    old_string: "two".into(),
                    new_string: "TWO".into(),
                    replace_all: None,
                }],
            }));
            r.unwrap();
            let (created, r) = t.run_undo(ToolCall::WriteFile(WriteFileArgs {
                path: "new/b.txt".into(),
                content: "fresh\n".into(),
            }));
            r.unwrap();
            assert_eq!(undo.files.len(), 1);
            assert_eq!(created.files[0].restore_sha256, ABSENT);
            assert_eq!(created.files[0].content_base64, None);

            // Preview writes nothing and shows the reverse diff.
            t.mode = Mode::Preview;
            let p = reverted(&mut t, revert_of("c1", &undo)).unwrap();
            assert!(!p.applied);
            assert_eq!(p.changes[0].kind, ChangeKind::Modified);
            assert!(p.changes[0]
                .diff
                .as_deref()
                .unwrap()
                .contains("-TWO\n+two\n"));
            assert_eq!(t.read("a.txt"), "one\nTWO\n");

            let (redo, r) = t.run_undo(revert_of("c1", &undo));
            assert!(matches!(
                r.unwrap(),
                ToolResult::Revert(RevertResult { applied: true, .. })
            ));
            assert_eq!(t.read("a.txt"), "one\ntwo\n");
            let (_, r) = t.run_undo(revert_of("c2", &created));
            r.unwrap();
            assert!(!t.path("new/b.txt").exists(), "a created file is removed");
            // The revert's own record puts the edit back.
            let (_, r) = t.run_undo(revert_of("c3", &redo));
            r.unwrap();
            assert_eq!(t.read("a.txt"), "one\nTWO\n");
            assert_eq!(t.leftovers(), Vec::<String>::new());
        }
    }

    #[test]
    fn a_file_changed_since_is_a_conflict_naming_it_and_nothing_is_reverted() {
        let mut t = T::new(crate::Strategy::Auto);
        t.write("a.txt", "a\n");
        t.write("b.txt", "b\n");
        let (undo, r) = t.run_undo(ToolCall::RunShell(RunShellArgs {
            command: "echo A > a.txt; echo B > b.txt".into(),
            cwd: None,
            timeout_secs: None,
        }));
        r.unwrap();
        assert_eq!(undo.files.len(), 2, "{undo:?}");
        t.write("b.txt", "later\n");
        let e = reverted(&mut t, revert_of("c9", &undo)).unwrap_err();
        assert_eq!(e.code, ErrorCode::StaleFile);
        assert!(
            e.message.contains("b.txt") && !e.message.contains("a.txt"),
            "{}",
            e.message
        );
        assert!(e.message.contains("c9"), "{}", e.message);
        assert_eq!(t.read("a.txt"), "A\n", "nothing is reverted on a conflict");
    }

    #[test]
    fn content_that_does_not_match_its_bound_hash_is_refused() {
        let mut t = T::new(crate::Strategy::Auto);
        t.write("a.txt", "old\n");
        let (mut undo, r) = t.run_undo(ToolCall::WriteFile(WriteFileArgs {
            path: "a.txt".into(),
            content: "new\n".into(),
        }));
        r.unwrap();
        use base64::Engine as _;
        undo.files[0].content_base64 =
            Some(base64::engine::general_purpose::STANDARD.encode(b"evil\n"));
        let e = reverted(&mut t, revert_of("c", &undo)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(t.read("a.txt"), "new\n");
    }

    #[test]
    fn a_shell_change_keeps_binary_and_deleted_files_but_never_protected_content() {
        let mut t = T::new(crate::Strategy::Auto);
        t.write_bytes("bin", b"\0\x01\x02");
        t.write("gone.txt", "keep me\n");
        t.write(".env", "SECRET=1\n");
        t.write("big", &"x".repeat(2000));
        t.keep = Some(1000);
        let (undo, r) = t.run_undo(ToolCall::RunShell(RunShellArgs {
            command:
                "printf '\\003' > bin; rm gone.txt; echo LEAK > .env; echo y > big; echo n > made"
                    .into(),
            cwd: None,
            timeout_secs: None,
        }));
        r.unwrap();
        let kept: Vec<&str> = undo.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(kept, vec!["bin", "gone.txt", "made"], "{undo:?}");
        let not: Vec<&str> = undo.not_kept.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(not, vec![".env", "big"], "{undo:?}");
        assert!(undo.not_kept[0].reason.contains("protected"));
        assert!(undo.not_kept[1].reason.contains("undo limit"));
        let json = serde_json::to_string(&undo).unwrap();
        assert!(
            !json.contains("SECRET") && !json.contains("U0VDUkVU"),
            "{json}"
        );
        let (_, r) = t.run_undo(revert_of("c", &undo));
        r.unwrap();
        assert_eq!(std::fs::read(t.path("bin")).unwrap(), b"\0\x01\x02");
        assert_eq!(t.read("gone.txt"), "keep me\n");
        assert!(!t.path("made").exists());
    }

    #[test]
    fn a_file_already_put_back_is_done_and_a_path_listed_twice_is_refused() {
        let mut t = T::new(crate::Strategy::Auto);
        t.write("a.txt", "a\n");
        t.write("b.txt", "b\n");
        let (undo, r) = t.run_undo(ToolCall::RunShell(RunShellArgs {
            command: "echo A > a.txt; echo B > b.txt; chmod 600 b.txt".into(),
            cwd: None,
            timeout_secs: None,
        }));
        r.unwrap();
        // a.txt was put back by hand (or by a revert that failed half-way): not a conflict.
        t.write("a.txt", "a\n");
        let (_, r) = t.run_undo(revert_of("c", &undo));
        r.unwrap();
        assert_eq!(t.read("b.txt"), "b\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path("b.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_ne!(mode, 0o600, "the permission bits are put back too");
        let mut twice = undo.clone();
        twice.files.push(undo.files[0].clone());
        let e = reverted(&mut t, revert_of("c", &twice)).unwrap_err();
        assert!(e.message.contains("twice"), "{}", e.message);
    }

    #[test]
    fn a_protected_path_is_never_reverted() {
        let mut t = T::new(crate::Strategy::Auto);
        let call = ToolCall::Revert(RevertArgs {
            reverts: "c".into(),
            files: vec![RevertFile {
                path: ".git/config".into(),
                expected_sha256: ABSENT.into(),
                restore_sha256: ABSENT.into(),
                content_base64: None,
                mode: None,
            }],
        });
        let e = reverted(&mut t, call).unwrap_err();
        assert_eq!(e.code, ErrorCode::ProtectedPath);
    }
}
