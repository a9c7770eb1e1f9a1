//! `list_dir` and `search`: bounded, sorted walks over directory fds that never follow symlinks.

use crate::error::{show, ToolError, ToolResultOr};
use crate::protocol::{
    DirEntry, EntryKind, ErrorCode, ListDirArgs, ListDirResult, SearchArgs, SearchMatch,
    SearchResult,
};
use crate::read::read_regular_file;
use crate::resolve::{openat_nofollow, RelPath};
use crate::text::as_text;
use crate::Ctx;
use rustix::fs::{openat, statat, AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Longest line `search` returns, in characters.
pub const MAX_MATCH_LINE_CHARS: usize = 500;

/// What `lstat` says about one directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub mode: u32,
}

impl Meta {
    // Field types differ between architectures; the casts are no-ops on some of them.
    #[allow(clippy::unnecessary_cast)]
    pub fn from_stat(st: &Stat) -> Meta {
        let kind = match FileType::from_raw_mode(st.st_mode as _) {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            _ => EntryKind::Other,
        };
        Meta {
            kind,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
            nlink: st.st_nlink as u64,
            mode: st.st_mode as u32 & 0o7777,
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug)]
pub struct Entry {
    pub name: Vec<u8>,
    pub meta: Meta,
}

/// The entries of a directory (no `.`/`..`), sorted by name, each `lstat`ed. Entries that
/// vanish while we look are skipped.
pub fn read_entries(dir: BorrowedFd<'_>) -> Result<Vec<Entry>, Errno> {
    // Reopen "." for reading: `dir` may be an O_PATH fd, which cannot be listed.
    let fd = openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    let mut stream = Dir::new(fd)?;
    while let Some(ent) = stream.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => out.push(Entry {
                name: name.to_vec(),
                meta: Meta::from_stat(&st),
            }),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Opens a subdirectory for descending, never through a symlink (not even under gVisor, whose
/// `O_DIRECTORY | O_NOFOLLOW` follows one: see `resolve::openat_nofollow`).
pub fn open_subdir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    openat_nofollow(dir, name, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Opens a regular file in `dir` for reading, never through a symlink, never blocking.
pub fn open_file_in(dir: BorrowedFd<'_>, name: &[u8]) -> Result<File, Errno> {
    let fd = openat_nofollow(dir, name, OFlags::RDONLY | OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

pub fn list_dir(ctx: &Ctx<'_>, args: &ListDirArgs) -> ToolResultOr<ListDirResult> {
    let shown = args.path.as_deref().unwrap_or("");
    let resolved = ctx.ws.open_dir(shown)?;
    let depth = args
        .depth
        .unwrap_or(1)
        .clamp(1, ctx.limits.max_depth.max(1));
    let mut out = Listing {
        entries: Vec::new(),
        max: ctx.limits.max_entries as usize,
        truncated: false,
    };
    list_into(resolved.fd.as_fd(), &RelPath::root(), 1, depth, &mut out)
        .map_err(|e| ToolError::from_errno(e, shown))?;
    Ok(ListDirResult {
        path: resolved.rel.display(),
        entries: out.entries,
        truncated: out.truncated,
    })
}

struct Listing {
    entries: Vec<DirEntry>,
    max: usize,
    truncated: bool,
}

fn list_into(
    dir: BorrowedFd<'_>,
    prefix: &RelPath,
    level: u32,
    depth: u32,
    out: &mut Listing,
) -> Result<(), Errno> {
    for entry in read_entries(dir)? {
        if out.entries.len() >= out.max {
            out.truncated = true;
            return Ok(());
        }
        let rel = prefix.join(&entry.name);
        out.entries.push(DirEntry {
            name: String::from_utf8_lossy(rel.as_bytes()).into_owned(),
            kind: entry.meta.kind,
            size: if entry.meta.kind == EntryKind::Dir {
                0
            } else {
                entry.meta.size
            },
        });
        if entry.meta.kind == EntryKind::Dir && level < depth {
            // A subdirectory that vanished or that we may not open is listed but not entered.
            if let Ok(sub) = open_subdir(dir, &entry.name) {
                list_into(sub.as_fd(), &rel, level + 1, depth, out)?;
            }
        }
    }
    Ok(())
}

pub fn search(ctx: &Ctx<'_>, args: &SearchArgs) -> ToolResultOr<SearchResult> {
    let regex = regex::RegexBuilder::new(&args.pattern)
        .size_limit(16 * 1024 * 1024)
        .build()
        .map_err(|e| ToolError::invalid(format!("invalid regex `{}`: {e}", args.pattern)))?;
    let glob = match &args.glob {
        Some(g) => Some(
            globset::Glob::new(g)
                .map_err(|e| ToolError::invalid(format!("invalid glob `{g}`: {e}")))?
                .compile_matcher(),
        ),
        None => None,
    };
    let shown = args.path.as_deref().unwrap_or("");
    let resolved = ctx.ws.open_read(shown)?;
    let st = rustix::fs::fstat(&resolved.fd).map_err(|e| ToolError::from_errno(e, shown))?;
    let mut s = Searcher {
        ctx,
        regex,
        glob,
        result: SearchResult {
            matches: Vec::new(),
            files_searched: 0,
            truncated: false,
        },
        visited: 0,
    };
    let meta = Meta::from_stat(&st);
    match meta.kind {
        EntryKind::Dir => s
            .walk(resolved.fd.as_fd(), &resolved.rel, 0)
            .map_err(|e| ToolError::from_errno(e, shown))?,
        EntryKind::File => {
            // An explicitly named file: protection is an error, not a silent skip.
            ctx.prot.check_read(&resolved.rel, shown)?;
            let mut file = File::from(resolved.fd);
            let data = read_regular_file(&mut file, shown, ctx.limits.max_file_bytes, "search")?;
            let Some(text) = as_text(&data) else {
                return Err(ToolError::new(
                    ErrorCode::BinaryFile,
                    format!("{} is a binary file", show(shown)),
                ));
            };
            s.result.files_searched = 1;
            s.search_text(&resolved.rel, text);
        }
        _ => {
            return Err(ToolError::invalid(format!(
                "{} is neither a file nor a directory",
                show(shown)
            )))
        }
    }
    Ok(s.result)
}

struct Searcher<'c, 'a> {
    ctx: &'c Ctx<'a>,
    regex: regex::Regex,
    glob: Option<globset::GlobMatcher>,
    result: SearchResult,
    visited: usize,
}

impl Searcher<'_, '_> {
    fn full(&self) -> bool {
        self.result.truncated
    }

    fn walk(&mut self, dir: BorrowedFd<'_>, rel: &RelPath, level: u32) -> Result<(), Errno> {
        for entry in read_entries(dir)? {
            if self.full() {
                return Ok(());
            }
            self.visited += 1;
            if self.visited > self.ctx.limits.max_entries as usize {
                self.result.truncated = true;
                return Ok(());
            }
            let child = rel.join(&entry.name);
            match entry.meta.kind {
                EntryKind::Dir if level < self.ctx.limits.max_depth => {
                    if let Ok(sub) = open_subdir(dir, &entry.name) {
                        self.walk(sub.as_fd(), &child, level + 1)?;
                    }
                }
                EntryKind::File => self.search_file(dir, &entry, &child),
                // Symlinks are not followed; other kinds have no text.
                _ => {}
            }
        }
        Ok(())
    }

    fn search_file(&mut self, dir: BorrowedFd<'_>, entry: &Entry, rel: &RelPath) {
        if entry.meta.size > self.ctx.limits.max_file_bytes || self.ctx.prot.is_no_access(rel) {
            return;
        }
        if let Some(glob) = &self.glob {
            if !glob.is_match(rel.display()) {
                return;
            }
        }
        let Ok(mut file) = open_file_in(dir, &entry.name) else {
            return;
        };
        let cap = self.ctx.limits.max_file_bytes;
        // Unreadable, grown past the cap, or replaced by a non-file: skipped like binaries.
        let Ok(data) = read_regular_file(&mut file, "", cap, "search") else {
            return;
        };
        if let Some(text) = as_text(&data) {
            self.result.files_searched += 1;
            self.search_text(rel, text);
        }
    }

    fn search_text(&mut self, rel: &RelPath, text: &str) {
        let max = self.ctx.limits.max_search_results as usize;
        for (i, line) in text.lines().enumerate() {
            if !self.regex.is_match(line) {
                continue;
            }
            if self.result.matches.len() >= max {
                self.result.truncated = true;
                return;
            }
            let mut shown: String = line.chars().take(MAX_MATCH_LINE_CHARS).collect();
            if shown.len() < line.len() {
                shown.push('…');
            }
            self.result.matches.push(SearchMatch {
                path: rel.display(),
                line_number: i as u64 + 1,
                line: shown,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::*;
    use crate::testutil::*;

    fn list(
        t: &T,
        path: Option<&str>,
        depth: Option<u32>,
    ) -> Result<ListDirResult, crate::ToolError> {
        t.run(ToolCall::ListDir(ListDirArgs {
            path: path.map(Into::into),
            depth,
        }))
        .map(|r| match r {
            ToolResult::ListDir(r) => r,
            other => panic!("unexpected {other:?}"),
        })
    }

    fn search(
        t: &T,
        pattern: &str,
        path: Option<&str>,
        glob: Option<&str>,
    ) -> Result<SearchResult, crate::ToolError> {
        t.run(ToolCall::Search(SearchArgs {
            pattern: pattern.into(),
            path: path.map(Into::into),
            glob: glob.map(Into::into),
        }))
        .map(|r| match r {
            ToolResult::Search(r) => r,
            other => panic!("unexpected {other:?}"),
        })
    }

    fn names(r: &ListDirResult) -> Vec<(String, EntryKind)> {
        r.entries.iter().map(|e| (e.name.clone(), e.kind)).collect()
    }

    #[test]
    fn lists_sorted_with_kinds_and_depth() {
        for t in both() {
            t.write("b.txt", "12345");
            t.write("a/x.txt", "x");
            t.write("a/deep/y.txt", "y");
            t.write("a-b", "");
            t.symlink("a", "link");
            let r = list(&t, None, None).unwrap();
            assert_eq!(r.path, ".");
            assert_eq!(
                names(&r),
                vec![
                    ("a".into(), EntryKind::Dir),
                    ("a-b".into(), EntryKind::File),
                    ("b.txt".into(), EntryKind::File),
                    ("link".into(), EntryKind::Symlink),
                ]
            );
            assert_eq!(r.entries[2].size, 5);
            assert!(!r.truncated);

            let r = list(&t, None, Some(3)).unwrap();
            let got: Vec<String> = r.entries.iter().map(|e| e.name.clone()).collect();
            assert_eq!(
                got,
                [
                    "a",
                    "a/deep",
                    "a/deep/y.txt",
                    "a/x.txt",
                    "a-b",
                    "b.txt",
                    "link"
                ]
            );

            // Names are relative to the listed directory; symlinks are not descended.
            let r = list(&t, Some("link"), Some(2)).unwrap();
            assert_eq!(r.path, "a");
            let got: Vec<String> = r.entries.iter().map(|e| e.name.clone()).collect();
            assert_eq!(got, ["deep", "deep/y.txt", "x.txt"]);
        }
    }

    #[test]
    fn list_caps_entries_and_depth() {
        for mut t in both() {
            for i in 0..10 {
                t.write(&format!("f{i}"), "");
            }
            t.limits.max_entries = 4;
            let r = list(&t, None, None).unwrap();
            assert_eq!(r.entries.len(), 4);
            assert!(r.truncated);
            t.limits.max_entries = 100;
            t.limits.max_depth = 1;
            t.write("d/e/f", "");
            let r = list(&t, Some("d"), Some(5)).unwrap();
            assert_eq!(names(&r), vec![("e".into(), EntryKind::Dir)]);
        }
    }

    #[test]
    fn list_errors_and_protected_names() {
        for t in both() {
            t.escape_fixture();
            assert_eq!(
                list(&t, Some("dir/target.txt"), None).unwrap_err().code,
                ErrorCode::NotADirectory
            );
            assert_eq!(
                list(&t, Some("nope"), None).unwrap_err().code,
                ErrorCode::NotFound
            );
            for p in [
                "/",
                "..",
                "etc",
                "up",
                "root",
                "magic",
                "outdir",
                "a/../../x",
            ] {
                assert_eq!(
                    list(&t, Some(p), None).unwrap_err().code,
                    ErrorCode::PathOutsideWorkspace,
                    "{p}"
                );
            }
            // Protected files may be listed (names only).
            let r = list(&t, None, None).unwrap();
            assert!(r.entries.iter().any(|e| e.name == ".env"));
        }
    }

    #[test]
    fn search_finds_lines_with_filters() {
        for t in both() {
            t.write("src/main.rs", "fn main() {\n    println!(\"hello\");\n}\n");
            t.write("src/lib.rs", "pub fn hello() {}\n");
            t.write("README.md", "say hello\n");
            t.write_bytes("bin.dat", b"hello\0world");
            t.symlink("src/main.rs", "link.rs");
            let r = search(&t, "hello", None, None).unwrap();
            let got: Vec<(String, u64)> = r
                .matches
                .iter()
                .map(|m| (m.path.clone(), m.line_number))
                .collect();
            assert_eq!(
                got,
                vec![
                    ("README.md".into(), 1),
                    ("src/lib.rs".into(), 1),
                    ("src/main.rs".into(), 2)
                ]
            );
            assert_eq!(r.files_searched, 3);
            assert!(!r.truncated);

            let r = search(&t, "hello", None, Some("*.rs")).unwrap();
            assert_eq!(r.matches.len(), 2);
            let r = search(&t, "hello", Some("src"), Some("src/l*.rs")).unwrap();
            assert_eq!(r.matches.len(), 1);
            let r = search(&t, r"^\s+println", Some("src/main.rs"), None).unwrap();
            assert_eq!(r.matches[0].line, "    println!(\"hello\");");
        }
    }

    #[test]
    fn search_caps_results_and_long_lines() {
        for mut t in both() {
            t.write("many.txt", &"match\n".repeat(20));
            t.write("long.txt", &format!("match{}\n", "é".repeat(1000)));
            t.limits.max_search_results = 5;
            let r = search(&t, "match", Some("many.txt"), None).unwrap();
            assert_eq!(r.matches.len(), 5);
            assert!(r.truncated);
            t.limits.max_search_results = 50;
            let r = search(&t, "match", Some("long.txt"), None).unwrap();
            assert_eq!(r.matches[0].line.chars().count(), 501);
            t.limits.max_entries = 1;
            let r = search(&t, "match", None, None).unwrap();
            assert!(r.truncated);
            assert_eq!(r.files_searched, 1);
        }
    }

    #[test]
    fn search_errors_and_protection() {
        for t in both() {
            t.escape_fixture();
            assert_eq!(
                search(&t, "(", None, None).unwrap_err().code,
                ErrorCode::InvalidRequest
            );
            assert_eq!(
                search(&t, "x", None, Some("a[")).unwrap_err().code,
                ErrorCode::InvalidRequest
            );
            assert_eq!(
                search(&t, "x", Some("nope"), None).unwrap_err().code,
                ErrorCode::NotFound
            );
            for p in ["/etc", "../outside", "etc", "up", "outdir", "abs"] {
                assert_eq!(
                    search(&t, "x", Some(p), None).unwrap_err().code,
                    ErrorCode::PathOutsideWorkspace,
                    "{p}"
                );
            }
            // Walking skips protected files silently; naming one is an error.
            let r = search(&t, "SECRET", None, None).unwrap();
            assert!(r.matches.is_empty(), "{:?}", r.matches);
            for p in [".env", "innocent", "sub/.env"] {
                assert_eq!(
                    search(&t, "SECRET", Some(p), None).unwrap_err().code,
                    ErrorCode::ProtectedPath,
                    "{p}"
                );
            }
            // The target of an in-workspace symlink is found once, at its real path.
            let r = search(&t, "target", None, None).unwrap();
            let paths: Vec<&str> = r.matches.iter().map(|m| m.path.as_str()).collect();
            assert_eq!(paths, ["dir/target.txt"]);
        }
    }
}
