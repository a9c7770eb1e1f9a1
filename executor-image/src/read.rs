//! `read_file`: a line range of a text file (capped), or a summary of a binary one.

use crate::error::{show, ToolError, ToolResultOr};
use crate::protocol::{ErrorCode, ReadFileArgs, ReadFileResult};
use crate::text::{as_text, binary_summary, cut_at_char, sha256_hex};
use crate::Ctx;
use std::fs::File;
use std::io::Read;

pub fn read_file(ctx: &Ctx<'_>, args: &ReadFileArgs) -> ToolResultOr<ReadFileResult> {
    let shown = args.path.as_str();
    if shown.is_empty() {
        return Err(ToolError::invalid("read_file needs a path; it is empty"));
    }
    let resolved = ctx.ws.open_read(shown)?;
    ctx.prot.check_read(&resolved.rel, shown)?;
    let mut file = File::from(resolved.fd);
    let data = read_regular_file(&mut file, shown, ctx.limits.max_file_bytes, "read_file")?;
    let sha256 = sha256_hex(&data);
    let total_bytes = data.len() as u64;
    let first_line = args.offset.unwrap_or(1).max(1);

    let Some(text) = as_text(&data) else {
        return Ok(ReadFileResult {
            path: resolved.rel.display(),
            content: None,
            binary_summary: Some(binary_summary(&data, total_bytes)),
            total_bytes,
            total_lines: 0,
            first_line,
            lines_returned: 0,
            truncated: false,
            sha256,
        });
    };

    let total_lines = text.split_inclusive('\n').count() as u64;
    let limit = args.limit.unwrap_or(u64::MAX);
    let cap = usize::try_from(ctx.limits.max_read_bytes).unwrap_or(usize::MAX);
    let mut content = String::new();
    let mut lines_returned = 0u64;
    let mut cut = false;
    let skip = usize::try_from(first_line - 1).unwrap_or(usize::MAX);
    for line in text.split_inclusive('\n').skip(skip) {
        if lines_returned >= limit {
            break;
        }
        if content.len() + line.len() > cap {
            // Stop at a line boundary; a single line longer than the cap is cut at a char.
            if content.is_empty() {
                content.push_str(cut_at_char(line, cap));
                lines_returned += 1;
            }
            cut = true;
            break;
        }
        content.push_str(line);
        lines_returned += 1;
    }
    let end = (first_line - 1).saturating_add(lines_returned);
    Ok(ReadFileResult {
        path: resolved.rel.display(),
        content: Some(content),
        binary_summary: None,
        total_bytes,
        total_lines,
        first_line,
        lines_returned,
        truncated: cut || end < total_lines,
        sha256,
    })
}

/// The whole content of an opened file, refusing directories, non-regular files and files over
/// `cap` bytes (checked on the size and again while reading, in case it grows).
pub fn read_regular_file(
    file: &mut File,
    shown: &str,
    cap: u64,
    tool: &str,
) -> ToolResultOr<Vec<u8>> {
    let meta = file.metadata().map_err(|e| ToolError::from_io(&e, shown))?;
    if meta.is_dir() {
        return Err(ToolError::new(
            ErrorCode::IsADirectory,
            format!("{} is a directory (use list_dir)", show(shown)),
        ));
    }
    if !meta.is_file() {
        return Err(ToolError::invalid(format!(
            "{} is not a regular file",
            show(shown)
        )));
    }
    let too_large = |size: u64| {
        ToolError::new(
            ErrorCode::TooLarge,
            format!(
                "{} is {size} bytes, over the {cap}-byte limit for {tool}",
                show(shown)
            ),
        )
    };
    if meta.len() > cap {
        return Err(too_large(meta.len()));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(cap.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| ToolError::from_io(&e, shown))?;
    if data.len() as u64 > cap {
        return Err(too_large(data.len() as u64));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use crate::protocol::*;
    use crate::testutil::*;

    fn read(
        t: &T,
        path: &str,
        offset: Option<u64>,
        limit: Option<u64>,
    ) -> Result<ReadFileResult, crate::ToolError> {
        t.run(ToolCall::ReadFile(ReadFileArgs {
            path: path.into(),
            offset,
            limit,
        }))
        .map(|r| match r {
            ToolResult::ReadFile(r) => r,
            other => panic!("unexpected {other:?}"),
        })
    }

    #[test]
    fn reads_whole_file_with_sha_and_line_counts() {
        for t in both() {
            t.write("a.txt", "one\ntwo\nthree\n");
            let r = read(&t, "a.txt", None, None).unwrap();
            assert_eq!(r.content.as_deref(), Some("one\ntwo\nthree\n"));
            assert_eq!(r.total_lines, 3);
            assert_eq!(r.lines_returned, 3);
            assert_eq!(r.first_line, 1);
            assert_eq!(r.total_bytes, 14);
            assert!(!r.truncated);
            assert_eq!(r.sha256, crate::text::sha256_hex(b"one\ntwo\nthree\n"));
            assert_eq!(r.path, "a.txt");
        }
    }

    #[test]
    fn offset_and_limit_select_lines() {
        for t in both() {
            t.write("a.txt", "1\n2\n3\n4\n5");
            let r = read(&t, "a.txt", Some(2), Some(2)).unwrap();
            assert_eq!(r.content.as_deref(), Some("2\n3\n"));
            assert_eq!((r.first_line, r.lines_returned, r.total_lines), (2, 2, 5));
            assert!(r.truncated);
            let r = read(&t, "a.txt", Some(4), None).unwrap();
            assert_eq!(r.content.as_deref(), Some("4\n5"));
            assert!(!r.truncated);
            let r = read(&t, "a.txt", Some(99), None).unwrap();
            assert_eq!(r.content.as_deref(), Some(""));
            assert_eq!(r.lines_returned, 0);
        }
    }

    #[test]
    fn byte_cap_cuts_at_line_then_char_boundary() {
        for mut t in both() {
            t.limits.max_read_bytes = 10;
            t.write("a.txt", "12345\n67890\nabc\n");
            let r = read(&t, "a.txt", None, None).unwrap();
            assert_eq!(r.content.as_deref(), Some("12345\n"));
            assert!(r.truncated);
            t.write("b.txt", "ééééééééééé\n");
            let r = read(&t, "b.txt", None, None).unwrap();
            assert_eq!(r.content.as_deref(), Some("ééééé"));
            assert_eq!(r.lines_returned, 1);
            assert!(r.truncated);
        }
    }

    #[test]
    fn binary_files_get_a_summary() {
        for t in both() {
            t.write_bytes("img.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
            let r = read(&t, "img.png", None, None).unwrap();
            assert_eq!(r.content, None);
            let s = r.binary_summary.unwrap();
            assert!(
                s.contains("16 bytes") && s.contains("89 50 4e 47") && s.contains("PNG"),
                "{s}"
            );
            t.write_bytes("latin1.txt", b"caf\xe9\n");
            assert!(read(&t, "latin1.txt", None, None)
                .unwrap()
                .content
                .is_none());
        }
    }

    #[test]
    fn errors() {
        for mut t in both() {
            t.write("big.txt", &"x".repeat(100));
            t.limits.max_file_bytes = 50;
            let e = read(&t, "big.txt", None, None).unwrap_err();
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(
                e.message.contains("100 bytes") && e.message.contains("50-byte"),
                "{}",
                e.message
            );
            t.mkdir("dir");
            assert_eq!(
                read(&t, "dir", None, None).unwrap_err().code,
                ErrorCode::IsADirectory
            );
            assert_eq!(
                read(&t, "", None, None).unwrap_err().code,
                ErrorCode::InvalidRequest
            );
            assert_eq!(
                read(&t, "nope", None, None).unwrap_err().code,
                ErrorCode::NotFound
            );
            assert_eq!(
                read(&t, "big.txt/x", None, None).unwrap_err().code,
                ErrorCode::NotADirectory
            );
            let e = read(&t, "../etc/passwd", None, None).unwrap_err();
            assert_eq!(e.code, ErrorCode::PathOutsideWorkspace);
            assert!(e.message.contains("`../etc/passwd`"), "{}", e.message);
        }
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        for t in both() {
            let p = t.path("fifo");
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            assert_eq!(
                read(&t, "fifo", None, None).unwrap_err().code,
                ErrorCode::InvalidRequest
            );
        }
    }

    #[test]
    fn escapes_and_protection() {
        for t in both() {
            t.escape_fixture();
            for p in [
                "/etc/passwd",
                "abs",
                "up/etc/passwd",
                "root/etc/passwd",
                "magic/etc/hostname",
                "etc/passwd",
                "a/../../x",
                "./../x",
                "loop1",
            ] {
                assert_eq!(
                    read(&t, p, None, None).unwrap_err().code,
                    ErrorCode::PathOutsideWorkspace,
                    "{p}"
                );
            }
            assert_eq!(
                read(&t, "nul\0", None, None).unwrap_err().code,
                ErrorCode::InvalidRequest
            );
            assert_eq!(
                read(&t, "back\\slash", None, None)
                    .unwrap()
                    .content
                    .as_deref(),
                Some("bs")
            );
            assert_eq!(
                read(&t, "%2e%2e", None, None).unwrap().content.as_deref(),
                Some("pct")
            );
            assert_eq!(
                read(&t, "inlink", None, None).unwrap().path,
                "dir/target.txt"
            );
            for p in [".env", "sub/.env", "innocent", "sub/innocent2"] {
                let e = read(&t, p, None, None).unwrap_err();
                assert_eq!(e.code, ErrorCode::ProtectedPath, "{p}");
            }
            // Read-only protection still allows reading.
            assert!(read(&t, ".git/config", None, None).is_ok());
        }
    }
}
