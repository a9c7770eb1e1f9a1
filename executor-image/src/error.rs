//! The executor's one error type: a stable [`ErrorCode`] plus a message a person understands.

use crate::protocol::ErrorCode;
use rustix::io::Errno;
use std::fmt;

/// A tool failure, reported as an `error` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ToolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ToolError {
        ToolError {
            code,
            message: message.into(),
        }
    }

    /// Maps an errno from an operation on `path` (the path as the caller wrote it).
    pub fn from_errno(err: Errno, path: &str) -> ToolError {
        let shown = show(path);
        let (code, what) = match err {
            Errno::NOENT => (ErrorCode::NotFound, "does not exist".to_string()),
            Errno::NOTDIR => (
                ErrorCode::NotADirectory,
                "is not a directory (or a component of it is not)".to_string(),
            ),
            Errno::ISDIR => (ErrorCode::IsADirectory, "is a directory".to_string()),
            Errno::ACCESS | Errno::PERM => (
                ErrorCode::PermissionDenied,
                ": permission denied".to_string(),
            ),
            Errno::ROFS => (
                ErrorCode::PermissionDenied,
                ": read-only file system (this call has a read-only workspace)".to_string(),
            ),
            // RESOLVE_BENEATH reports an escape as EXDEV, RESOLVE_NO_MAGICLINKS as ELOOP.
            Errno::XDEV | Errno::LOOP => (
                ErrorCode::PathOutsideWorkspace,
                "resolves outside the workspace".to_string(),
            ),
            Errno::FBIG => (
                ErrorCode::TooLarge,
                "exceeds the sandbox's file-size limit".to_string(),
            ),
            Errno::NOSPC | Errno::DQUOT => (
                ErrorCode::TooLarge,
                ": no space left in the workspace (disk full or quota exceeded)".to_string(),
            ),
            other => (ErrorCode::Io, format!(": I/O error: {}", describe(other))),
        };
        // `what` starts with ": " when it does not read as a predicate of the path.
        let sep = if what.starts_with(':') { "" } else { " " };
        ToolError::new(code, format!("{shown}{sep}{what}"))
    }

    /// Maps a `std::io::Error` through its errno when it has one.
    pub fn from_io(err: &std::io::Error, path: &str) -> ToolError {
        match err.raw_os_error() {
            Some(raw) => ToolError::from_errno(Errno::from_raw_os_error(raw), path),
            None => ToolError::new(ErrorCode::Io, format!("{}: I/O error: {err}", show(path))),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ToolError {
        ToolError::new(ErrorCode::InvalidRequest, message)
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ToolError {}

/// Human text for an errno ("No such file or directory (os error 2)").
pub fn describe(err: Errno) -> String {
    std::io::Error::from(err).to_string()
}

/// How a caller-given path appears in messages: in backticks, `.` for the root.
pub fn show(path: &str) -> String {
    if path.is_empty() {
        "`.`".to_string()
    } else {
        format!("`{path}`")
    }
}

pub type ToolResultOr<T> = Result<T, ToolError>;
