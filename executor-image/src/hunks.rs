//! The hunks of a change, for approving some of them: the diff of old → new split into the
//! same hunks the unified diff shows (3 lines of context), each with a stable id (its index),
//! and the content made of the old text plus exactly the chosen hunks.
//!
//! Ids are stable because both sides are: the base is bound by its sha256 (`stale_file`
//! otherwise) and the proposed content by the call's arguments, so the same base and proposal
//! always give the same hunks, in the preview and at apply time.

use serde::{Deserialize, Serialize};
use similar::{DiffOp, TextDiff};

/// Lines of context around a change, as in the unified diff.
const CONTEXT: usize = 3;

/// One hunk as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hunk {
    /// Stable id: the hunk's index in the diff, from 0.
    pub id: u32,
    /// The `@@ -a,b +c,d @@` header of this hunk in the full diff.
    pub header: String,
    /// Lines this hunk removes and adds.
    pub removed: u32,
    pub added: u32,
}

/// The hunks of old → new (empty when they are equal).
pub fn hunks(old: &str, new: &str) -> Vec<Hunk> {
    let diff = TextDiff::from_lines(old, new);
    diff.grouped_ops(CONTEXT)
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let (mut removed, mut added) = (0u32, 0u32);
            for op in group {
                let (_, o, n) = op.as_tag_tuple();
                if !matches!(op, DiffOp::Equal { .. }) {
                    removed += o.len() as u32;
                    added += n.len() as u32;
                }
            }
            let first = group.first().expect("a group has ops");
            let last = group.last().expect("a group has ops");
            let o = first.old_range().start..last.old_range().end;
            let n = first.new_range().start..last.new_range().end;
            Hunk {
                id: i as u32,
                header: format!(
                    "@@ -{} +{} @@",
                    range(o.start, o.len()),
                    range(n.start, n.len())
                ),
                removed,
                added,
            }
        })
        .collect()
}

/// `start,len` as unified diffs write it (1-based; `start,0` names the line before).
fn range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        _ => format!("{},{len}", start + 1),
    }
}

/// Why a choice of hunks cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HunkError {
    /// An id the diff does not have.
    Unknown { id: u32, count: u32 },
    /// No hunk chosen: nothing would change.
    Empty,
}

/// The old text with exactly the chosen hunks of old → new applied.
pub fn apply(old: &str, new: &str, chosen: &[u32]) -> Result<String, HunkError> {
    let diff = TextDiff::from_lines(old, new);
    let groups = diff.grouped_ops(CONTEXT);
    let count = groups.len() as u32;
    if let Some(&id) = chosen.iter().find(|&&id| id >= count) {
        return Err(HunkError::Unknown { id, count });
    }
    if chosen.is_empty() && count > 0 {
        return Err(HunkError::Empty);
    }
    // Every change op belongs to exactly one group: mark those of the chosen groups by the
    // old range they replace (ranges of change ops never repeat within one diff).
    let mut take = std::collections::HashSet::new();
    for (i, group) in groups.iter().enumerate() {
        if chosen.contains(&(i as u32)) {
            for op in group {
                if !matches!(op, DiffOp::Equal { .. }) {
                    take.insert((op.old_range(), op.new_range()));
                }
            }
        }
    }
    let old_lines = diff.old_slices();
    let new_lines = diff.new_slices();
    let mut out = String::with_capacity(old.len().max(new.len()));
    for op in diff.ops() {
        let (o, n) = (op.old_range(), op.new_range());
        let from_new =
            !matches!(op, DiffOp::Equal { .. }) && take.contains(&(o.clone(), n.clone()));
        let lines = if from_new {
            &new_lines[n]
        } else {
            &old_lines[o]
        };
        for l in lines {
            out.push_str(l);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize, tag: &str) -> String {
        (1..=n).map(|i| format!("{tag}{i}\n")).collect()
    }

    /// Twenty lines, lines 2 and 17 changed: two hunks, far enough apart.
    fn two_hunks() -> (String, String) {
        let old = lines(20, "line ");
        let new = old
            .replace("line 2\n", "LINE TWO\n")
            .replace("line 17\n", "LINE SEVENTEEN\nand one more\n");
        (old, new)
    }

    #[test]
    fn hunks_match_the_unified_diff() {
        let (old, new) = two_hunks();
        let h = hunks(&old, &new);
        assert_eq!(h.len(), 2, "{h:?}");
        let diff = crate::text::unified_diff(&old, &new, "f");
        for x in &h {
            assert!(diff.contains(&x.header), "{} not in\n{diff}", x.header);
        }
        assert_eq!((h[0].removed, h[0].added), (1, 1));
        assert_eq!((h[1].removed, h[1].added), (1, 2));
        assert!(hunks(&old, &old).is_empty());
    }

    #[test]
    fn applying_a_subset_applies_exactly_those_hunks() {
        let (old, new) = two_hunks();
        let first = apply(&old, &new, &[0]).unwrap();
        assert!(
            first.contains("LINE TWO\n") && first.contains("line 17\n"),
            "{first}"
        );
        assert!(!first.contains("SEVENTEEN"));
        let second = apply(&old, &new, &[1]).unwrap();
        assert!(second.contains("line 2\n") && second.contains("LINE SEVENTEEN\nand one more\n"));
        assert_eq!(apply(&old, &new, &[0, 1]).unwrap(), new);
        assert_eq!(apply(&old, &new, &[1, 0, 1]).unwrap(), new);
        // The rest of the file is untouched, line for line.
        assert_eq!(first.lines().count(), 20);
    }

    #[test]
    fn unknown_or_no_hunks_are_refused() {
        let (old, new) = two_hunks();
        assert_eq!(
            apply(&old, &new, &[2]),
            Err(HunkError::Unknown { id: 2, count: 2 })
        );
        assert_eq!(apply(&old, &new, &[]), Err(HunkError::Empty));
    }

    #[test]
    fn new_files_deletions_and_missing_final_newlines() {
        assert_eq!(apply("", "a\nb\n", &[0]).unwrap(), "a\nb\n");
        assert_eq!(hunks("", "a\nb\n")[0].header, "@@ -0,0 +1,2 @@");
        let old = "keep\nx\n";
        assert_eq!(apply(old, "keep\n", &[0]).unwrap(), "keep\n");
        assert_eq!(apply("a\nb", "a\nc", &[0]).unwrap(), "a\nc");
    }
}
