//! The executor wire protocol: one JSON `Request` on stdin, JSON-lines `Event`s on stdout.
//!
//! This module is shared by the executor (inside the container) and the orchestrator (outside),
//! so both sides agree on one definition. Tool and argument names are the public contract.

use serde::{Deserialize, Serialize};

/// Version of the wire protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 2;

/// Exit status the executor uses when it reported an `error` event (the tool failed cleanly).
pub const EXIT_TOOL_ERROR: i32 = 3;
/// Exit status for a request the executor could not even parse.
pub const EXIT_BAD_REQUEST: i32 = 2;
/// Exit status when the executor's own deadline (`ExecLimits::deadline_secs`) ended the call.
pub const EXIT_DEADLINE: i32 = 124;

/// One tool call with its arguments. `#[serde(tag = "tool", content = "args")]` gives
/// `{"tool": "read_file", "args": {...}}`, the same shape the API and the LLM use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "tool", content = "args", rename_all = "snake_case")]
pub enum ToolCall {
    ReadFile(ReadFileArgs),
    ListDir(ListDirArgs),
    Search(SearchArgs),
    WriteFile(WriteFileArgs),
    EditFile(EditFileArgs),
    RunShell(RunShellArgs),
    /// Puts back what an applied call replaced (`POST /v1/tool-calls/{id}/revert`). Never
    /// offered to a model and not accepted from a proposal: the orchestrator builds it from
    /// the call's undo record.
    Revert(RevertArgs),
}

impl ToolCall {
    /// The tool's public name.
    pub fn name(&self) -> &'static str {
        match self {
            ToolCall::ReadFile(_) => "read_file",
            ToolCall::ListDir(_) => "list_dir",
            ToolCall::Search(_) => "search",
            ToolCall::WriteFile(_) => "write_file",
            ToolCall::EditFile(_) => "edit_file",
            ToolCall::RunShell(_) => "run_shell",
            ToolCall::Revert(_) => "revert",
        }
    }

    /// Whether the call needs the workspace mounted read-write when applied.
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            ToolCall::WriteFile(_)
                | ToolCall::EditFile(_)
                | ToolCall::RunShell(_)
                | ToolCall::Revert(_)
        )
    }

    /// Whether the tool has a preview mode (compute the diff, write nothing).
    pub fn has_preview(&self) -> bool {
        matches!(
            self,
            ToolCall::WriteFile(_) | ToolCall::EditFile(_) | ToolCall::Revert(_)
        )
    }

    /// Every tool a model or a client may propose, in a stable order (`revert` is not one:
    /// the revert route builds it).
    pub const NAMES: [&'static str; 6] = [
        "read_file",
        "list_dir",
        "search",
        "write_file",
        "edit_file",
        "run_shell",
    ];

    /// Parses `{tool, args}` given separately (as the CLI and API receive them).
    pub fn from_parts(tool: &str, args: serde_json::Value) -> Result<ToolCall, String> {
        if !Self::NAMES.contains(&tool) {
            return Err(format!(
                "unknown tool `{tool}`; known tools: {}",
                Self::NAMES.join(", ")
            ));
        }
        // serde reads a struct from a JSON array too (`[path, offset, …]`): the arguments and
        // each edit must be objects, as their schemas say.
        if !args.is_object() {
            return Err(format!(
                "invalid arguments for `{tool}`: expected a JSON object"
            ));
        }
        if let Some(edits) = args.get("edits").and_then(|e| e.as_array()) {
            if edits.iter().any(|e| !e.is_object()) {
                return Err(format!(
                    "invalid arguments for `{tool}`: each of `edits` must be an object"
                ));
            }
        }
        let v = serde_json::json!({ "tool": tool, "args": args });
        serde_json::from_value(v).map_err(|e| format!("invalid arguments for `{tool}`: {e}"))
    }

    /// Parses a stored call: any proposable tool, or a `revert` the orchestrator built.
    pub fn from_record(tool: &str, args: serde_json::Value) -> Result<ToolCall, String> {
        if tool != "revert" {
            return Self::from_parts(tool, args);
        }
        let v = serde_json::json!({ "tool": tool, "args": args });
        serde_json::from_value(v).map_err(|e| format!("invalid arguments for `{tool}`: {e}"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    pub path: String,
    /// First line to return, 1-based (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Maximum number of lines to return (default: up to the byte cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListDirArgs {
    /// Directory relative to the workspace (default: the workspace root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How many levels to descend (default 1 = direct children only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// A regular expression (Rust `regex` syntax), matched line by line.
    pub pattern: String,
    /// Directory or file to search, relative to the workspace (default: the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only files whose workspace-relative path matches this glob (e.g. `**/*.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    pub path: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditFileArgs {
    pub path: String,
    pub edits: Vec<Edit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    pub old_string: String,
    pub new_string: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_all: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunShellArgs {
    pub command: String,
    /// Working directory relative to the workspace (default: the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The command's own time limit; the sandbox's wall-clock deadline still applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// `revert`: put each file back as it was before call `reverts`, provided it is still as that
/// call left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertArgs {
    /// The call whose change is reverted.
    pub reverts: String,
    pub files: Vec<RevertFile>,
}

/// One file of an undo record: what it is now (after the call) and what to put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertFile {
    /// Canonical workspace-relative path.
    pub path: String,
    /// sha256 of the file as the call left it (`"absent"`: the call removed it). Anything
    /// else at revert time is a conflict.
    pub expected_sha256: String,
    /// sha256 of the content to put back (`"absent"`: the call created it; revert removes it).
    pub restore_sha256: String,
    /// The content to put back, base64: present in an undo record and in the request the
    /// executor gets, left out of the stored call (the approval binds `restore_sha256`, and the
    /// executor refuses content that does not have it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// Permission bits to restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// What an applied change replaced: enough to revert it, and what could not be kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UndoRecord {
    pub files: Vec<RevertFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_kept: Vec<NotKept>,
}

impl UndoRecord {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.not_kept.is_empty()
    }
}

/// A changed file whose previous content was not kept, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotKept {
    pub path: String,
    pub reason: String,
}

/// Most files one undo record lists (kept and not kept); beyond, one summary entry.
pub const MAX_UNDO_FILES: usize = 1000;

/// Whether a mutating tool computes its diff only, or applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Compute the result (and diff) without writing anything.
    #[default]
    Preview,
    /// Apply the change. `expected_sha256` must match the file when given.
    Apply,
}

/// What a protected-path rule forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    /// Neither read nor written (e.g. `**/.env`).
    NoAccess,
    /// Readable, never written (e.g. `.git/**`).
    ReadOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedPath {
    /// Glob over the workspace-relative path *after* resolution (`**/.env`, `.git/**`).
    pub glob: String,
    pub protection: Protection,
}

/// Caps the executor applies; the orchestrator's profile sets them, defaults are sane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecLimits {
    /// Largest file `read_file`/`edit_file`/`search` will open.
    pub max_file_bytes: u64,
    /// Most content bytes a `read_file` returns in one call.
    pub max_read_bytes: u64,
    /// Most matches `search` returns.
    pub max_search_results: u32,
    /// Deepest level `list_dir`/`search` descend to.
    pub max_depth: u32,
    /// Most entries `list_dir` returns / `search` visits.
    pub max_entries: u32,
    /// Files at most this large get a diff in `run_shell`'s change report.
    pub max_diff_file_bytes: u64,
    /// Most files `run_shell` snapshots to report changes.
    pub max_snapshot_files: u32,
    /// Most entries the protected-path survey walks; a larger workspace cannot be masked and
    /// every call in it fails with `too_large` (fail closed).
    pub max_survey_entries: u32,
    /// Most masks one container gets; beyond it, masks are merged into directory masks.
    pub max_masks: u32,
    /// Seconds after the request arrives at which the executor (PID 1) kills everything in
    /// the container and exits, whoever else is gone (0: none). The orchestrator sets it a
    /// little past its own deadline, so a container outlives a killed orchestrator by no more.
    pub deadline_secs: u64,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            max_file_bytes: 10 * 1024 * 1024,
            max_read_bytes: 256 * 1024,
            max_search_results: 500,
            max_depth: 16,
            max_entries: 10_000,
            max_diff_file_bytes: 64 * 1024,
            max_snapshot_files: 20_000,
            max_survey_entries: 200_000,
            max_masks: 64,
            deadline_secs: 0,
        }
    }
}

/// The one request the executor reads from stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default = "default_version")]
    pub version: u32,
    pub call: ToolCall,
    #[serde(default)]
    pub mode: Mode,
    /// For an applied `write_file`/`edit_file`: the sha256 of the file the preview saw
    /// (`"absent"` when the preview saw no file). A mismatch is `stale_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_sha256: Option<String>,
    /// For `write_file`/`edit_file`: apply only these hunks of the change (ids from the
    /// preview's `hunks`), to the base the preview saw. In preview mode it shows the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hunks: Option<Vec<u32>>,
    /// For an applied change: the sha256 the new content must have (what the user approved,
    /// e.g. after choosing hunks). A mismatch writes nothing (`stale_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_new_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protected: Vec<ProtectedPath>,
    /// For an applied change: keep what it replaces — the previous content of the files it
    /// changes, up to this many bytes in all — and report it in one `undo` event before the
    /// result. The content of protected paths is never kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_previous: Option<u64>,
    #[serde(default)]
    pub limits: ExecLimits,
    /// The masks the orchestrator mounted over the protected paths of this container. When
    /// present, the executor first checks that every protected path it can see is masked
    /// (`checked`, or `stale_sandbox` and exit) and refuses masked paths in every tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxView>,
    /// Instead of running `call`, list the masks a container of this workspace needs
    /// (one `survey` event). Runs in a read-only container without masks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub survey: bool,
}

/// What a mask hides: a file (bind of `/dev/null`) or a directory (an empty read-only tmpfs);
/// for `read_only` protection, a read-only view of the same file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskKind {
    File,
    Dir,
}

/// One mount over a protected path, relative to the workspace root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mask {
    /// Canonical workspace-relative path (`/`-separated, no `.`/`..`, never empty).
    pub path: String,
    pub kind: MaskKind,
    pub protection: Protection,
}

/// The protected-path survey of a workspace: the masks a container needs, and the hard-linked
/// files that were found to be no protected file's alias.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxView {
    pub masks: Vec<Mask>,
    /// Regular files with more than one link whose other names are not protected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_links: Vec<String>,
    /// Directories masked whole because the workspace had more matches than `max_masks`
    /// (or a name that cannot be mounted over), with the protection they got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<String>,
}

fn default_version() -> u32 {
    PROTOCOL_VERSION
}

/// Marker for "the file did not exist" in `expected_sha256` / `old_sha256`.
pub const ABSENT: &str = "absent";

impl Request {
    pub fn new(call: ToolCall) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            call,
            mode: Mode::Preview,
            expected_sha256: None,
            hunks: None,
            expected_new_sha256: None,
            protected: Vec::new(),
            keep_previous: None,
            limits: ExecLimits::default(),
            sandbox: None,
            survey: false,
        }
    }
}

/// Which stream an `output` chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// One line the executor writes on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A chunk of `run_shell` output, as produced (lossy UTF-8, never split inside a character).
    Output { stream: StreamKind, data: String },
    /// The tool finished; exactly one `result` or `error` ends the stream.
    Result { result: ToolResult },
    /// The tool failed with a stable code and a message a person understands.
    Error { code: ErrorCode, message: String },
    /// The container's masks cover every protected path the executor sees; the tool runs
    /// next. Sent first whenever the request carries a `sandbox` view.
    Checked { masks: u32 },
    /// The answer to a `survey` request.
    Survey { view: SandboxView },
    /// What an applied change replaced (the request asked with `keep_previous`); just before
    /// the `result`, only when something changed.
    Undo { undo: UndoRecord },
}

/// Stable error codes (public contract: clients match on them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The path is absolute, climbs out with `..`, or resolves (through a symlink) outside.
    PathOutsideWorkspace,
    /// The resolved path matches a protected-path rule for this kind of access.
    ProtectedPath,
    NotFound,
    /// An `edit_file` `old_string` matches more than once and `replace_all` is not set.
    NotUnique,
    /// The file changed since the preview the approval was bound to.
    StaleFile,
    /// The workspace has a protected path the container's masks do not cover (it changed
    /// since the survey): nothing ran; the orchestrator surveys again and retries once.
    StaleSandbox,
    /// A file or argument exceeds a cap.
    TooLarge,
    InvalidRequest,
    IsADirectory,
    NotADirectory,
    /// Text operation on a binary file.
    BinaryFile,
    /// The filesystem refused (read-only mount, permission, disk quota or file-size limit).
    PermissionDenied,
    /// `run_shell`'s own `timeout_secs` expired (the command was killed).
    Timeout,
    Io,
    Internal,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::PathOutsideWorkspace => "path_outside_workspace",
            ErrorCode::ProtectedPath => "protected_path",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotUnique => "not_unique",
            ErrorCode::StaleFile => "stale_file",
            ErrorCode::StaleSandbox => "stale_sandbox",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::BinaryFile => "binary_file",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Io => "io",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of a tool, one variant per tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "tool", rename_all = "snake_case")]
pub enum ToolResult {
    ReadFile(ReadFileResult),
    ListDir(ListDirResult),
    Search(SearchResult),
    WriteFile(ChangeResult),
    EditFile(ChangeResult),
    RunShell(RunShellResult),
    Revert(RevertResult),
}

/// The outcome of `revert`: what it changes (preview) or changed (apply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevertResult {
    pub reverts: String,
    /// One entry per file, as the revert changes it (`created`: put back a file the call
    /// removed; `deleted`: removed a file the call created).
    pub changes: Vec<FileChange>,
    /// False in preview mode.
    pub applied: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadFileResult {
    /// Workspace-relative path after resolution.
    pub path: String,
    /// The requested lines (absent for a binary file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// For a binary file: a short description instead of the bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_summary: Option<String>,
    pub total_bytes: u64,
    pub total_lines: u64,
    /// First line returned (1-based) and how many lines were returned.
    pub first_line: u64,
    pub lines_returned: u64,
    /// True when the byte cap or `limit` cut the content short.
    pub truncated: bool,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Path relative to the listed directory (`sub/file.txt` below depth 1).
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListDirResult {
    pub path: String,
    pub entries: Vec<DirEntry>,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchMatch {
    pub path: String,
    pub line_number: u64,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub matches: Vec<SearchMatch>,
    pub files_searched: u64,
    /// True when the result or walk cap stopped the search early.
    pub truncated: bool,
}

/// The outcome of `write_file` / `edit_file`, in preview or apply mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeResult {
    pub path: String,
    /// Unified diff of old → new content (`--- a/PATH` / `+++ b/PATH`).
    pub diff: String,
    /// sha256 of the file before the change, or `"absent"` when it did not exist.
    pub old_sha256: String,
    pub new_sha256: String,
    pub created: bool,
    /// False in preview mode.
    pub applied: bool,
    /// The hunks of the whole proposed change (old → proposed), with stable ids, so that a
    /// decision may approve some of them. Empty for a binary or unchanged file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hunks: Vec<crate::hunks::Hunk>,
    /// The hunks this result's content contains, when only some were chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_hunks: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Modified,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: String,
    pub kind: ChangeKind,
    /// Unified diff for small text files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunShellResult {
    pub exit_code: Option<i32>,
    /// Set when the command was ended by a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub changes: Vec<FileChange>,
    /// True when the workspace was too large to snapshot entirely.
    pub changes_truncated: bool,
    /// Processes the OOM killer ended in the container while the command ran (`None` when
    /// the container cannot read its memory cgroup, e.g. under gVisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by schemathesis: `{"tool": "list_dir", "args": [null, null]}` was a valid call,
    /// because serde reads a struct from an array.
    #[test]
    fn arguments_and_edits_must_be_objects() {
        use serde_json::json;
        for (tool, args) in [
            ("list_dir", json!([null, null])),
            ("read_file", json!(["a.txt"])),
            ("read_file", json!("a.txt")),
            ("edit_file", json!({"path": "a", "edits": [["x", "y"]]})),
        ] {
            let e = ToolCall::from_parts(tool, args.clone()).unwrap_err();
            assert!(e.contains("object"), "{tool} {args}: {e}");
        }
        assert!(ToolCall::from_parts("list_dir", json!({})).is_ok());
        let ok = json!({"path": "a", "edits": [{"old_string": "x", "new_string": "y"}]});
        assert!(ToolCall::from_parts("edit_file", ok).is_ok());
    }

    #[test]
    fn request_round_trips() {
        let json =
            r#"{"call":{"tool":"read_file","args":{"path":"a.txt","limit":3}},"mode":"preview"}"#;
        let req: Request = serde_json::from_str(json).unwrap();
        assert_eq!(
            req.call,
            ToolCall::ReadFile(ReadFileArgs {
                path: "a.txt".into(),
                offset: None,
                limit: Some(3)
            })
        );
        let back = serde_json::to_string(&req).unwrap();
        let again: Request = serde_json::from_str(&back).unwrap();
        assert_eq!(req, again);
    }

    #[test]
    fn unknown_argument_is_rejected() {
        let err = ToolCall::from_parts("read_file", serde_json::json!({"path":"a","bogus":1}))
            .unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let err = ToolCall::from_parts("rm_rf", serde_json::json!({})).unwrap_err();
        assert!(err.contains("unknown tool"), "{err}");
    }

    #[test]
    fn the_image_label_names_this_protocol_version() {
        // `airlock doctor` compares it with the orchestrator's version.
        let dockerfile = include_str!("../Dockerfile");
        assert!(
            dockerfile.contains(&format!("io.airlock.protocol=\"{PROTOCOL_VERSION}\"")),
            "executor-image/Dockerfile must label the image with protocol {PROTOCOL_VERSION}"
        );
    }

    #[test]
    fn events_have_stable_tags() {
        let e = Event::Error {
            code: ErrorCode::PathOutsideWorkspace,
            message: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"error","code":"path_outside_workspace","message":"x"}"#
        );
    }
}
