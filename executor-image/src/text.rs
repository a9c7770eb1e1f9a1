//! Text helpers shared by the tools: hashing, binary detection, diffs, streaming UTF-8.

use sha2::{Digest, Sha256};

/// Bytes inspected for a NUL to call a file binary.
pub const BINARY_SNIFF_BYTES: usize = 8 * 1024;

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The content as text, or `None` for a binary file (a NUL early on, or not UTF-8).
pub fn as_text(data: &[u8]) -> Option<&str> {
    if data[..data.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
        return None;
    }
    std::str::from_utf8(data).ok()
}

const MAGIC: &[(&[u8], &str)] = &[
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"%PDF-", "PDF document"),
    (b"PK\x03\x04", "zip archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"BZh", "bzip2 data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"\x28\xb5\x2f\xfd", "zstd data"),
    (b"\x7fELF", "ELF executable"),
    (b"\x00asm", "WebAssembly module"),
    (b"\xca\xfe\xba\xbe", "Java class or Mach-O fat binary"),
    (b"SQLite format 3\x00", "SQLite database"),
    (b"RIFF", "RIFF container (WAV/AVI/WebP)"),
    (b"\x00\x00\x01\x00", "ICO image"),
];

/// "binary file, 12345 bytes, starts with 89 50 4e 47 (PNG image)".
pub fn binary_summary(data: &[u8], total: u64) -> String {
    let head: Vec<String> = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut out = format!("binary file, {total} bytes");
    if !head.is_empty() {
        out.push_str(&format!(", starts with {}", head.join(" ")));
    }
    if let Some((_, kind)) = MAGIC.iter().find(|(m, _)| data.starts_with(m)) {
        out.push_str(&format!(" ({kind})"));
    } else if data.len() > 262 && &data[257..262] == b"ustar" {
        out.push_str(" (tar archive)");
    }
    out
}

/// Unified diff with 3 lines of context and `a/PATH` / `b/PATH` headers; empty when equal.
pub fn unified_diff(old: &str, new: &str, path: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string()
}

/// The diff text used when one side is not text.
pub fn binary_diff(path: &str) -> String {
    format!("Binary files a/{path} and b/{path} differ\n")
}

/// At most `max` bytes of `s`, cut at a char boundary.
pub fn cut_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes a byte stream as lossy UTF-8 without splitting a character across chunks:
/// an incomplete sequence at the end of a chunk is carried over to the next one.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, chunk: &[u8]) -> String {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let mut out = String::with_capacity(buf.len());
        let mut rest: &[u8] = &buf;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).expect("validated prefix"));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        None => {
                            // Truncated sequence at the end: wait for the next chunk.
                            self.carry = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// What is left at end of stream (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.carry);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_never_splits_a_character() {
        let text = "héllo wörld €😀";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut s = Utf8Stream::default();
            let mut out = s.push(&bytes[..split]);
            out += &s.push(&bytes[split..]);
            out += &s.finish();
            assert_eq!(out, text, "split at {split}");
        }
        // One byte at a time, too.
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        for b in bytes {
            let part = s.push(std::slice::from_ref(b));
            assert!(!part.contains('\u{fffd}'));
            out += &part;
        }
        assert_eq!(out, text);
    }

    #[test]
    fn utf8_stream_replaces_invalid_bytes() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(s.push(b"\xe2\x82"), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn binary_detection_and_summary() {
        assert_eq!(as_text(b"plain\n"), Some("plain\n"));
        assert_eq!(as_text(b"nul\0inside"), None);
        assert_eq!(as_text(b"\xff\xfe"), None);
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        let s = binary_summary(png, 12345);
        assert!(
            s.starts_with("binary file, 12345 bytes, starts with 89 50 4e 47"),
            "{s}"
        );
        assert!(s.ends_with("(PNG image)"), "{s}");
    }

    #[test]
    fn diff_has_headers_and_context() {
        let d = unified_diff("a\nb\nc\n", "a\nB\nc\n", "x.txt");
        assert!(d.starts_with("--- a/x.txt\n+++ b/x.txt\n@@"), "{d}");
        assert!(d.contains("-b\n+B\n"), "{d}");
        assert_eq!(unified_diff("same", "same", "x"), "");
        assert_eq!(cut_at_char("é", 1), "");
        assert_eq!(sha256_hex(b"").len(), 64);
    }
}
