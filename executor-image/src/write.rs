//! `write_file` and `edit_file`: compute the new content and its diff, and (in apply mode, when
//! the file still has the sha256 the preview saw) replace the file atomically.

use crate::error::{show, ToolError, ToolResultOr};
use crate::protocol::{
    ChangeResult, Edit, EditFileArgs, ErrorCode, Mode, NotKept, RevertFile, WriteFileArgs, ABSENT,
};
use crate::read::read_regular_file;
use crate::resolve::WriteTarget;
use crate::text::{as_text, binary_diff, sha256_hex, unified_diff};
use crate::{hunks, Ctx};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rustix::fs::{fchmod, openat, renameat, unlinkat, AtFlags, Mode as FileMode, OFlags};
use rustix::io::Errno;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

/// The file as it is before the change.
pub(crate) struct Current {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Writes `content` to `path`, creating the file and any missing parent directories.
pub fn write_file(ctx: &Ctx<'_>, args: &WriteFileArgs) -> ToolResultOr<ChangeResult> {
    let shown = args.path.as_str();
    if shown.is_empty() {
        return Err(ToolError::invalid("write_file needs a path; it is empty"));
    }
    check_size(ctx, shown, args.content.len())?;
    let mut target = ctx.ws.resolve_write(shown, true)?;
    ctx.prot.check_write(&target.rel, shown)?;
    target.check_kind()?;
    let current = read_current(ctx, &mut target, shown)?;
    check_expected(ctx, shown, current.as_ref())?;
    finish(ctx, target, shown, current, args.content.as_bytes())
}

/// Applies `edits` in order to an existing text file.
pub fn edit_file(ctx: &Ctx<'_>, args: &EditFileArgs) -> ToolResultOr<ChangeResult> {
    let shown = args.path.as_str();
    if shown.is_empty() {
        return Err(ToolError::invalid("edit_file needs a path; it is empty"));
    }
    if args.edits.is_empty() {
        return Err(ToolError::invalid("edit_file needs at least one edit"));
    }
    let mut target = ctx.ws.resolve_write(shown, false)?;
    ctx.prot.check_write(&target.rel, shown)?;
    target.check_kind()?;
    let Some(current) = read_current(ctx, &mut target, shown)? else {
        return Err(ToolError::new(
            ErrorCode::NotFound,
            format!(
                "{} does not exist (use write_file to create a file)",
                show(shown)
            ),
        ));
    };
    // A stale file is reported as such, even when the edits would no longer apply.
    check_expected(ctx, shown, Some(&current))?;
    let Some(text) = as_text(&current.data) else {
        return Err(ToolError::new(
            ErrorCode::BinaryFile,
            format!(
                "{} is a binary file; edit_file only edits text",
                show(shown)
            ),
        ));
    };
    let new = apply_edits(text, &args.edits, shown)?;
    check_size(ctx, shown, new.len())?;
    finish(ctx, target, shown, Some(current), new.as_bytes())
}

fn check_size(ctx: &Ctx<'_>, shown: &str, len: usize) -> ToolResultOr<()> {
    let cap = ctx.limits.max_file_bytes;
    if len as u64 > cap {
        return Err(ToolError::new(
            ErrorCode::TooLarge,
            format!(
                "the new content of {} is {len} bytes, over the {cap}-byte limit",
                show(shown)
            ),
        ));
    }
    Ok(())
}

pub(crate) fn read_current(
    ctx: &Ctx<'_>,
    target: &mut WriteTarget,
    shown: &str,
) -> ToolResultOr<Option<Current>> {
    let Some(file) = target.existing.as_mut() else {
        return Ok(None);
    };
    let mode = file
        .metadata()
        .map_err(|e| ToolError::from_io(&e, shown))?
        .permissions()
        .mode()
        & 0o777;
    // Replacing the file would bypass its permission bits; honour them like an in-place write.
    if mode & 0o222 == 0 {
        return Err(ToolError::new(
            ErrorCode::PermissionDenied,
            format!("{} is read-only (mode {mode:04o})", show(shown)),
        ));
    }
    let data = read_regular_file(file, shown, ctx.limits.max_file_bytes, "editing")?;
    Ok(Some(Current { data, mode }))
}

/// In apply mode — and for a choice of hunks, whose ids belong to one base, in preview mode
/// too — refuses when the file is not the one the preview was computed against.
fn check_expected(ctx: &Ctx<'_>, shown: &str, current: Option<&Current>) -> ToolResultOr<()> {
    let checked = ctx.mode == Mode::Apply || ctx.hunks.is_some();
    let (true, Some(expected)) = (checked, ctx.expected_sha256) else {
        return Ok(());
    };
    let expected = expected.trim().to_ascii_lowercase();
    let now = current.map(|c| sha256_hex(&c.data));
    let problem = match (expected == ABSENT, now) {
        (true, None) => return Ok(()),
        (true, Some(_)) => "was created since the preview".to_string(),
        (false, None) => "was deleted since the preview".to_string(),
        (false, Some(now)) if now == expected => return Ok(()),
        (false, Some(now)) => format!(
            "changed since the preview (sha256 was {}, is now {})",
            short(&expected),
            short(&now)
        ),
    };
    Err(ToolError::new(
        ErrorCode::StaleFile,
        format!("{} {problem}; preview the change again", show(shown)),
    ))
}

/// The first 12 characters (a caller's `expected_sha256` may be anything: never cut inside one).
pub(crate) fn short(sha: &str) -> &str {
    let end = sha.char_indices().nth(12).map_or(sha.len(), |(i, _)| i);
    &sha[..end]
}

fn finish(
    ctx: &Ctx<'_>,
    mut target: WriteTarget,
    shown: &str,
    current: Option<Current>,
    new: &[u8],
) -> ToolResultOr<ChangeResult> {
    let path = target.rel.display();
    let proposed = std::str::from_utf8(new).expect("new content is a String");
    let old_text = match &current {
        None => Some(""),
        Some(cur) => as_text(&cur.data),
    };
    // The hunks of the whole proposal; with a choice, the content is the base plus those.
    let hunks = old_text
        .map(|o| hunks::hunks(o, proposed))
        .unwrap_or_default();
    let chosen: String;
    let new_text = match (ctx.hunks, old_text) {
        (None, _) => proposed,
        (Some(_), None) => {
            return Err(ToolError::invalid(format!(
                "{} is a binary file: its change cannot be split into hunks",
                show(shown)
            )))
        }
        (Some(ids), Some(old)) => {
            chosen = hunks::apply(old, proposed, ids).map_err(|e| match e {
                hunks::HunkError::Unknown { id, count } => ToolError::invalid(format!(
                    "the change to {} has {count} hunks (ids 0 to {}); there is no hunk {id}",
                    show(shown),
                    count.saturating_sub(1)
                )),
                hunks::HunkError::Empty => ToolError::invalid(
                    "no hunk chosen: approve at least one, or deny the call".to_string(),
                ),
            })?;
            &chosen
        }
    };
    let new = new_text.as_bytes();
    let new_sha256 = sha256_hex(new);
    if let (Mode::Apply, Some(want)) = (ctx.mode, ctx.expected_new_sha256) {
        if want.trim().to_ascii_lowercase() != new_sha256 {
            return Err(ToolError::new(
                ErrorCode::StaleFile,
                format!(
                    "the change to {} no longer gives the content that was approved (sha256 {}, would be {}); nothing was written",
                    show(shown),
                    short(want),
                    short(&new_sha256)
                ),
            ));
        }
    }
    let diff = match &current {
        None => unified_diff("", new_text, &path),
        Some(cur) => match as_text(&cur.data) {
            Some(old) => unified_diff(old, new_text, &path),
            None => binary_diff(&path),
        },
    };
    let old_sha256 = current
        .as_ref()
        .map(|c| sha256_hex(&c.data))
        .unwrap_or_else(|| ABSENT.to_string());
    let applied = ctx.mode == Mode::Apply;
    if applied {
        match &current {
            // Unchanged content: nothing to write (and no needless permission error).
            Some(cur) if cur.data == new => {}
            cur => {
                write_atomically(&mut target, shown, new, cur.as_ref().map(|c| c.mode))?;
                keep_previous(ctx, &path, cur.as_ref(), &new_sha256);
            }
        }
    }
    Ok(ChangeResult {
        path,
        diff,
        old_sha256,
        new_sha256,
        created: current.is_none(),
        applied,
        hunks,
        applied_hunks: ctx.hunks.map(|ids| {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids.dedup();
            ids
        }),
    })
}

/// Records what an applied write replaced in the call's undo record (within its budget).
pub(crate) fn keep_previous(
    ctx: &Ctx<'_>,
    path: &str,
    before: Option<&Current>,
    after_sha256: &str,
) {
    let Some(budget) = ctx.keep_previous else {
        return;
    };
    let mut undo = ctx.undo.borrow_mut();
    let used: u64 = undo
        .files
        .iter()
        .filter_map(|f| f.content_base64.as_ref())
        .map(|c| c.len() as u64 * 3 / 4)
        .sum();
    match before {
        Some(cur) if cur.data.len() as u64 > budget.saturating_sub(used) => {
            undo.not_kept.push(NotKept {
                path: path.to_string(),
                reason: format!(
                "its previous content ({} bytes) is over the {budget}-byte undo limit of a call",
                cur.data.len()
            ),
            })
        }
        _ => undo.files.push(RevertFile {
            path: path.to_string(),
            expected_sha256: after_sha256.to_string(),
            restore_sha256: before.map_or_else(|| ABSENT.to_string(), |c| sha256_hex(&c.data)),
            content_base64: before.map(|c| BASE64.encode(&c.data)),
            mode: before.map(|c| c.mode & 0o777),
        }),
    }
}

/// Applies the edits in order; every `old_string` must occur exactly once unless `replace_all`.
pub fn apply_edits(text: &str, edits: &[Edit], shown: &str) -> ToolResultOr<String> {
    let mut cur = text.to_string();
    let total = edits.len();
    for (i, edit) in edits.iter().enumerate() {
        let which = format!("edits[{i}] (edit {} of {total})", i + 1);
        if edit.old_string.is_empty() {
            return Err(ToolError::invalid(format!("{which}: old_string is empty")));
        }
        let count = count_overlapping(&cur, &edit.old_string);
        match count {
            0 => {
                return Err(ToolError::new(
                    ErrorCode::NotFound,
                    format!(
                        "{which}: old_string not found in {}: {}",
                        show(shown),
                        excerpt(&edit.old_string)
                    ),
                ))
            }
            1 => cur = cur.replacen(&edit.old_string, &edit.new_string, 1),
            _ if edit.replace_all == Some(true) => {
                cur = cur.replace(&edit.old_string, &edit.new_string)
            }
            n => {
                return Err(ToolError::new(
                    ErrorCode::NotUnique,
                    format!(
                        "{which}: old_string occurs {n} times in {}: {}; add surrounding \
                         context to make it unique, or set replace_all",
                        show(shown),
                        excerpt(&edit.old_string)
                    ),
                ))
            }
        }
    }
    Ok(cur)
}

/// Occurrences, overlapping ones included (`aa` occurs twice in `aaa`: ambiguous).
fn count_overlapping(haystack: &str, needle: &str) -> usize {
    let mut count = 0;
    let mut start = 0;
    while let Some(pos) = haystack[start..].find(needle) {
        count += 1;
        let at = start + pos;
        start = at + haystack[at..].chars().next().map_or(1, char::len_utf8);
    }
    count
}

fn excerpt(s: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = s.chars().take(MAX).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

/// Writes `content` to a temporary file next to the target and renames it over the target, so a
/// reader never sees a half-written file. The target's permission bits are kept (a new file gets
/// 0644 minus the umask). No fsync: the container is gone right after, and a host crash is out
/// of scope for a tool call. Hard links to the old file keep the old content.
pub(crate) fn write_atomically(
    target: &mut WriteTarget,
    shown: &str,
    content: &[u8],
    mode: Option<u32>,
) -> ToolResultOr<()> {
    let err = |e: Errno| ToolError::from_errno(e, shown);
    target.create_parents().map_err(err)?;
    let name = target.name().to_vec();
    let base = &name[..name.len().min(160)];
    let pid = std::process::id();
    for attempt in 0..32u32 {
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(base);
        tmp.extend_from_slice(format!(".airlock-{pid}-{attempt}.tmp").as_bytes());
        let fd = match openat(
            target.parent(),
            tmp.as_slice(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            FileMode::from_raw_mode(0o644),
        ) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(err(e)),
        };
        let result = (|| {
            if let Some(mode) = mode {
                fchmod(&fd, FileMode::from_raw_mode(mode)).map_err(err)?;
            }
            let mut file = std::fs::File::from(fd);
            file.write_all(content)
                .map_err(|e| ToolError::from_io(&e, shown))?;
            drop(file);
            renameat(
                target.parent(),
                tmp.as_slice(),
                target.parent(),
                name.as_slice(),
            )
            .map_err(err)
        })();
        if result.is_err() {
            let _ = unlinkat(target.parent(), tmp.as_slice(), AtFlags::empty());
        }
        return result;
    }
    Err(ToolError::new(
        ErrorCode::Io,
        format!(
            "{}: could not create a temporary file next to it",
            show(shown)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use crate::protocol::*;
    use crate::testutil::*;

    fn change(t: &T, call: ToolCall) -> Result<ChangeResult, crate::ToolError> {
        t.run(call).map(|r| match r {
            ToolResult::WriteFile(r) | ToolResult::EditFile(r) => r,
            other => panic!("unexpected {other:?}"),
        })
    }

    fn write(path: &str, content: &str) -> ToolCall {
        ToolCall::WriteFile(WriteFileArgs {
            path: path.into(),
            content: content.into(),
        })
    }

    fn edit(path: &str, edits: &[(&str, &str, Option<bool>)]) -> ToolCall {
        ToolCall::EditFile(EditFileArgs {
            path: path.into(),
            edits: edits
                .iter()
                .map(|(o, n, r)| Edit {
                    old_string: o.to_string(),
                    new_string: n.to_string(),
                    replace_all: *r,
                })
                .collect(),
        })
    }

    #[test]
    fn write_preview_writes_nothing_then_apply_writes() {
        for mut t in both() {
            t.write("a.txt", "one\ntwo\n");
            let p = change(&t, write("a.txt", "one\nTWO\n")).unwrap();
            assert!(!p.applied && !p.created);
            assert_eq!(p.old_sha256, crate::text::sha256_hex(b"one\ntwo\n"));
            assert_eq!(p.new_sha256, crate::text::sha256_hex(b"one\nTWO\n"));
            assert!(
                p.diff.starts_with("--- a/a.txt\n+++ b/a.txt\n"),
                "{}",
                p.diff
            );
            assert!(p.diff.contains("-two\n+TWO\n"));
            assert_eq!(t.read("a.txt"), "one\ntwo\n");

            t.apply(Some(&p.old_sha256));
            let a = change(&t, write("a.txt", "one\nTWO\n")).unwrap();
            assert!(a.applied);
            assert_eq!(a.diff, p.diff);
            assert_eq!(t.read("a.txt"), "one\nTWO\n");
            assert_eq!(t.leftovers(), Vec::<String>::new());
        }
    }

    #[test]
    fn chosen_hunks_are_previewed_then_applied_bound_to_the_resulting_content() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let new = old
            .replace("line 2\n", "LINE TWO\n")
            .replace("line 17\n", "LINE SEVENTEEN\n");
        for mut t in both() {
            t.write("a.txt", &old);
            let whole = change(&t, write("a.txt", &new)).unwrap();
            assert_eq!(whole.hunks.len(), 2, "{whole:?}");
            assert_eq!(whole.applied_hunks, None);
            // Preview of hunk 1 only: its diff and hash, the file untouched.
            t.hunks = Some(vec![1]);
            let part = change(&t, write("a.txt", &new)).unwrap();
            assert_eq!(part.applied_hunks, Some(vec![1]));
            assert!(
                part.diff.contains("+LINE SEVENTEEN") && !part.diff.contains("LINE TWO"),
                "{}",
                part.diff
            );
            assert_eq!(
                part.hunks, whole.hunks,
                "ids stay those of the whole change"
            );
            let want = old.replace("line 17\n", "LINE SEVENTEEN\n");
            assert_eq!(part.new_sha256, crate::text::sha256_hex(want.as_bytes()));
            assert_eq!(t.read("a.txt"), old);
            // Applied with a result hash that is not this one: nothing is written.
            t.apply(Some(&whole.old_sha256));
            t.expected_new = Some(whole.new_sha256.clone());
            let e = change(&t, write("a.txt", &new)).unwrap_err();
            assert_eq!(e.code, ErrorCode::StaleFile, "{e:?}");
            assert_eq!(t.read("a.txt"), old);
            // With the approved result's hash: exactly that content.
            t.expected_new = Some(part.new_sha256.clone());
            let done = change(&t, write("a.txt", &new)).unwrap();
            assert!(done.applied);
            assert_eq!(t.read("a.txt"), want);
            // Hunks belong to one base: a preview of some against another is stale.
            t.mode = Mode::Preview;
            t.expected = Some(whole.old_sha256.clone());
            t.hunks = Some(vec![0]);
            let e = change(&t, write("a.txt", &new)).unwrap_err();
            assert_eq!(e.code, ErrorCode::StaleFile, "{e:?}");
            t.expected = None;
            // An id the change does not have, or none at all, is refused.
            t.hunks = Some(vec![5]);
            let e = change(&t, write("a.txt", &new)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
            t.hunks = Some(vec![]);
            assert!(change(&t, write("a.txt", &new)).is_err());
        }
    }

    #[test]
    fn write_creates_files_and_parents_and_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        for mut t in both() {
            let p = change(&t, write("new/dir/f.txt", "hi\n")).unwrap();
            assert!(p.created);
            assert_eq!(p.old_sha256, ABSENT);
            assert!(p.diff.contains("+hi"), "{}", p.diff);
            assert!(!t.path("new").exists(), "preview created a directory");

            t.apply(Some(ABSENT));
            let a = change(&t, write("new/dir/f.txt", "hi\n")).unwrap();
            assert!(a.applied && a.created);
            assert_eq!(t.read("new/dir/f.txt"), "hi\n");

            t.write("script.sh", "echo 1\n");
            std::fs::set_permissions(t.path("script.sh"), std::fs::Permissions::from_mode(0o750))
                .unwrap();
            t.apply(None);
            change(&t, write("script.sh", "echo 2\n")).unwrap();
            let mode = std::fs::metadata(t.path("script.sh"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o750);
            assert_eq!(t.read("script.sh"), "echo 2\n");
        }
    }

    #[test]
    fn stale_apply_writes_nothing() {
        for mut t in both() {
            t.write("a.txt", "v1\n");
            let p = change(&t, edit("a.txt", &[("v1", "v2", None)])).unwrap();
            t.write("a.txt", "v1 changed by someone\n");
            t.apply(Some(&p.old_sha256));
            let e = change(&t, edit("a.txt", &[("v1", "v2", None)])).unwrap_err();
            assert_eq!(e.code, ErrorCode::StaleFile);
            assert_eq!(t.read("a.txt"), "v1 changed by someone\n");

            // Expected absent, but the file exists now.
            t.apply(Some(ABSENT));
            let e = change(&t, write("a.txt", "x")).unwrap_err();
            assert_eq!(e.code, ErrorCode::StaleFile);
            // Expected a file, but it is gone.
            t.apply(Some(&p.old_sha256));
            let e = change(&t, write("gone.txt", "x")).unwrap_err();
            assert_eq!(e.code, ErrorCode::StaleFile);
            assert!(!t.path("gone.txt").exists());
            assert_eq!(t.leftovers(), Vec::<String>::new());
        }
    }

    #[test]
    fn edits_apply_in_order_with_uniqueness() {
        for mut t in both() {
            t.write("f.rs", "let a = 1;\nlet b = 1;\nlet c = 2;\n");
            let e = change(&t, edit("f.rs", &[("= 1", "= 3", None)])).unwrap_err();
            assert_eq!(e.code, ErrorCode::NotUnique);
            assert!(
                e.message.contains("2 times") && e.message.contains("edits[0]"),
                "{}",
                e.message
            );

            let e = change(
                &t,
                edit("f.rs", &[("let c", "let d", None), ("nowhere", "x", None)]),
            )
            .unwrap_err();
            assert_eq!(e.code, ErrorCode::NotFound);
            assert!(
                e.message.contains("edits[1]") && e.message.contains("nowhere"),
                "{}",
                e.message
            );

            let e = change(&t, edit("f.rs", &[("", "x", None)])).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            let e = change(&t, edit("f.rs", &[])).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest);

            t.apply(None);
            let a = change(
                &t,
                edit(
                    "f.rs",
                    &[
                        ("= 1", "= 9", Some(true)),
                        ("let c = 2", "let c = 9", None),
                        ("c = 9", "c = 10", None),
                    ],
                ),
            )
            .unwrap();
            assert!(a.applied);
            assert_eq!(t.read("f.rs"), "let a = 9;\nlet b = 9;\nlet c = 10;\n");
            // Overlapping occurrences are ambiguous too.
            t.write("o.txt", "aaa");
            let e = change(&t, edit("o.txt", &[("aa", "b", None)])).unwrap_err();
            assert_eq!(e.code, ErrorCode::NotUnique);
        }
    }

    #[test]
    fn edit_errors() {
        for mut t in both() {
            assert_eq!(
                change(&t, edit("missing.txt", &[("a", "b", None)]))
                    .unwrap_err()
                    .code,
                ErrorCode::NotFound
            );
            assert_eq!(
                change(&t, edit("no/dir.txt", &[("a", "b", None)]))
                    .unwrap_err()
                    .code,
                ErrorCode::NotFound
            );
            t.write_bytes("bin", b"a\0b");
            assert_eq!(
                change(&t, edit("bin", &[("a", "b", None)]))
                    .unwrap_err()
                    .code,
                ErrorCode::BinaryFile
            );
            t.mkdir("d");
            assert_eq!(
                change(&t, edit("d", &[("a", "b", None)])).unwrap_err().code,
                ErrorCode::IsADirectory
            );
            assert_eq!(
                change(&t, write("d", "x")).unwrap_err().code,
                ErrorCode::IsADirectory
            );
            assert_eq!(
                change(&t, write("", "x")).unwrap_err().code,
                ErrorCode::InvalidRequest
            );
            t.write("big.txt", "small");
            t.limits.max_file_bytes = 10;
            assert_eq!(
                change(&t, write("x.txt", &"y".repeat(11)))
                    .unwrap_err()
                    .code,
                ErrorCode::TooLarge
            );
            assert_eq!(
                change(&t, edit("big.txt", &[("small", "much larger", None)]))
                    .unwrap_err()
                    .code,
                ErrorCode::TooLarge
            );
            // A file without write permission bits.
            use std::os::unix::fs::PermissionsExt;
            t.write("ro.txt", "ro");
            std::fs::set_permissions(t.path("ro.txt"), std::fs::Permissions::from_mode(0o444))
                .unwrap();
            assert_eq!(
                change(&t, write("ro.txt", "rw")).unwrap_err().code,
                ErrorCode::PermissionDenied
            );
        }
    }

    #[test]
    fn writing_through_symlinks() {
        for mut t in both() {
            t.escape_fixture();
            t.apply(None);
            // An in-workspace link writes its target and keeps the link.
            let a = change(&t, write("inlink", "new target\n")).unwrap();
            assert_eq!(a.path, "dir/target.txt");
            assert_eq!(t.read("dir/target.txt"), "new target\n");
            assert!(t
                .path("inlink")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink());
            let a = change(&t, edit("dirlink/target.txt", &[("new", "old", None)])).unwrap();
            assert_eq!(a.path, "dir/target.txt");
            assert_eq!(t.read("dir/target.txt"), "old target\n");

            for p in [
                "dangling",
                "abs",
                "etc/passwd",
                "up/x",
                "root/tmp/x",
                "magic/x",
                "outdir/x",
                "loop1",
                "/tmp/x",
                "../x",
                "a/../../x",
            ] {
                let e = change(&t, write(p, "pwned")).unwrap_err();
                assert_eq!(
                    e.code,
                    ErrorCode::PathOutsideWorkspace,
                    "{p}: {}",
                    e.message
                );
                let e = change(&t, edit(p, &[("a", "b", None)])).unwrap_err();
                assert_eq!(
                    e.code,
                    ErrorCode::PathOutsideWorkspace,
                    "{p}: {}",
                    e.message
                );
            }
            assert!(!t.outside("newfile").exists());
            assert!(!t.outside("x").exists());
            assert_eq!(t.read_outside("secret"), "top secret\n");
        }
    }

    #[test]
    fn protected_paths_refuse_writes_before_creating_anything() {
        for mut t in both() {
            t.escape_fixture();
            for mode in [None, Some(())] {
                if mode.is_some() {
                    t.apply(None);
                }
                for p in [
                    ".env",
                    "sub/.env",
                    "innocent",
                    "sub/innocent2",
                    ".git/config",
                    ".git/hooks/new/pre-commit",
                    "new/.env",
                ] {
                    let e = change(&t, write(p, "x")).unwrap_err();
                    assert_eq!(e.code, ErrorCode::ProtectedPath, "{p}");
                }
                for p in [".env", "innocent", ".git/config"] {
                    let e = change(&t, edit(p, &[("S", "x", None)])).unwrap_err();
                    assert_eq!(e.code, ErrorCode::ProtectedPath, "{p}");
                }
            }
            assert!(!t.path(".git/hooks").exists());
            assert!(!t.path("new").exists());
            assert_eq!(t.read(".env"), "SECRET=1\n");
        }
    }

    /// Fuzz finding 3 (fuzz/ execute target): `short` sliced the caller's `expected_sha256`
    /// at byte 12, which panics inside a multi-byte character (apply mode, changed file).
    #[test]
    fn short_never_cuts_inside_a_character() {
        assert_eq!(super::short("0123456789abcdef"), "0123456789ab");
        let odd = "0123456789a\u{e9}x"; // `é` is bytes 11..13
        let s = super::short(odd);
        assert!(odd.starts_with(s) && s.chars().count() <= 12, "{s:?}");
        assert_eq!(super::short("\u{e9}"), "\u{e9}");
    }
}
