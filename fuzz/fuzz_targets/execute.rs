//! The executor's tools on a real (temporary) workspace: `airlock_executor::run_request` with
//! a request built from the input (every tool but `run_shell`, preview and apply, protected
//! paths, limits, survey, a sandbox view). The request is what the executor reads from stdin,
//! so every field is hostile; `run_shell` is left out because it runs a command.
//!
//! Each input gets a fresh copy of a small workspace (files, a binary file, a read-only file,
//! `.env`, `.git/`, symlinks in and out, a FIFO) next to an `outside/` directory.
//!
//! Invariants:
//! * never panics; exactly one final `result` or `error` event, last, after at most one
//!   `checked` (only for a request with a sandbox view) and no `output`; the exit status
//!   matches it;
//! * every path a result names is canonical and beneath the root;
//! * nothing outside the root changes; a preview, a read, a listing, a search and a survey
//!   change nothing at all; an applied write or edit changes only its own file and creates
//!   only that file's missing parent directories (no temporary file left behind);
//! * a path under a `no_access` rule is never read, and one under a `no_access` or
//!   `read_only` rule never written (rules match the path or any of its parents).
#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use airlock_executor::protocol::*;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Call {
    Read {
        path: String,
        offset: Option<u64>,
        limit: Option<u64>,
    },
    List {
        path: Option<String>,
        depth: Option<u32>,
    },
    Search {
        pattern: String,
        path: Option<String>,
        glob: Option<String>,
    },
    Write {
        path: String,
        content: String,
    },
    Edit {
        path: String,
        edits: Vec<(String, String, Option<bool>)>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    call: Call,
    apply: bool,
    expected_sha256: Option<String>,
    protected: Vec<(String, bool)>,
    limits: [u16; 9],
    survey: bool,
    sandbox: Option<Vec<(String, bool, bool)>>,
}

const FILES: &[(&str, &[u8])] = &[
    ("a.txt", b"alpha\nbeta\ngamma\n"),
    ("sub/b.txt", b"one\ntwo two\n"),
    ("sub/deeper/c.rs", b"fn main() {}\n"),
    ("bin.dat", b"\x00\x01\x02binary\xff"),
    ("ro.txt", b"read only\n"),
    (".env", b"KEY=1\n"),
    (".git/config", b"[core]\n"),
    ("keys/id_rsa", b"not a key\n"),
];
const LINKS: &[(&str, &str)] = &[
    ("link", "sub/b.txt"),
    ("sub_link", "sub"),
    ("out_link", "../outside/secret"),
    ("out_dir", "../outside"),
    ("abs_link", "/etc/hostname"),
    ("env_link", ".env"),
    ("dangling", "new_dir/new.txt"),
];
const SECRET: &[u8] = b"AIRLOCK-FUZZ-OUTSIDE-SECRET\n";

/// A fresh temp directory, on tmpfs when there is one (a few times faster than a disk).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

fn build(base: &Path) {
    let ws = base.join("ws");
    for d in ["ws/sub/deeper", "ws/.git", "ws/keys", "outside"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    fs::write(base.join("outside/secret"), SECRET).unwrap();
    for (f, body) in FILES {
        fs::write(ws.join(f), body).unwrap();
    }
    fs::set_permissions(ws.join("ro.txt"), fs::Permissions::from_mode(0o444)).unwrap();
    for (name, target) in LINKS {
        symlink(target, ws.join(name)).unwrap();
    }
    rustix::fs::mkfifoat(rustix::fs::CWD, ws.join("fifo"), rustix::fs::Mode::RUSR).unwrap();
}

/// Path (relative to `base`) → (kind, mode, size, content hash) of everything beneath `base`.
fn tree(base: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let body = if m.is_file() {
                format!("{:?}", fs::read(&p).unwrap())
            } else if m.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::new()
            };
            out.insert(rel, format!("{:?} {:o} {body}", m.file_type(), m.mode()));
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(base, base, &mut out);
    out
}

fn request(input: &Input) -> Request {
    let call = match &input.call {
        Call::Read {
            path,
            offset,
            limit,
        } => ToolCall::ReadFile(ReadFileArgs {
            path: path.clone(),
            offset: *offset,
            limit: *limit,
        }),
        Call::List { path, depth } => ToolCall::ListDir(ListDirArgs {
            path: path.clone(),
            depth: *depth,
        }),
        Call::Search {
            pattern,
            path,
            glob,
        } => ToolCall::Search(SearchArgs {
            pattern: pattern.clone(),
            path: path.clone(),
            glob: glob.clone(),
        }),
        Call::Write { path, content } => ToolCall::WriteFile(WriteFileArgs {
            path: path.clone(),
            content: content.clone(),
        }),
        Call::Edit { path, edits } => ToolCall::EditFile(EditFileArgs {
            path: path.clone(),
            edits: edits
                .iter()
                .take(8)
                .map(|(o, n, r)| Edit {
                    old_string: o.clone(),
                    new_string: n.clone(),
                    replace_all: *r,
                })
                .collect(),
        }),
    };
    let l = input.limits.map(u64::from);
    let mut req = Request::new(call);
    req.mode = if input.apply {
        Mode::Apply
    } else {
        Mode::Preview
    };
    req.expected_sha256 = input.expected_sha256.clone();
    req.protected = input
        .protected
        .iter()
        .take(6)
        .map(|(glob, ro)| ProtectedPath {
            glob: glob.clone(),
            protection: if *ro {
                Protection::ReadOnly
            } else {
                Protection::NoAccess
            },
        })
        .collect();
    // Small caps (a u16 each) keep every input fast; the edges (0, 1) are what matter.
    req.limits = ExecLimits {
        max_file_bytes: l[0],
        max_read_bytes: l[1],
        max_search_results: l[2] as u32,
        max_depth: (l[3] % 64) as u32,
        max_entries: l[4] as u32,
        max_diff_file_bytes: l[5],
        max_snapshot_files: l[6] as u32,
        max_survey_entries: l[7] as u32,
        max_masks: (l[8] % 128) as u32,
        deadline_secs: 0,
    };
    req.survey = input.survey;
    req.sandbox = input.sandbox.as_ref().map(|masks| SandboxView {
        masks: masks
            .iter()
            .take(6)
            .map(|(path, dir, ro)| Mask {
                path: path.clone(),
                kind: if *dir { MaskKind::Dir } else { MaskKind::File },
                protection: if *ro {
                    Protection::ReadOnly
                } else {
                    Protection::NoAccess
                },
            })
            .collect(),
        known_links: Vec::new(),
        merged: Vec::new(),
    });
    req
}

/// Whether a rule with this protection covers `rel` (the path itself or a parent), as the
/// executor's protect module matches: globset defaults.
fn protected(req: &Request, rel: &str, kinds: &[Protection]) -> bool {
    let globs: Vec<_> = req
        .protected
        .iter()
        .filter(|p| kinds.contains(&p.protection))
        .filter_map(|p| globset::Glob::new(&p.glob).ok())
        .map(|g| g.compile_matcher())
        .collect();
    let mut p = rel;
    loop {
        if globs.iter().any(|g| g.is_match(p)) {
            return true;
        }
        match p.rfind('/') {
            Some(i) => p = &p[..i],
            None => return false,
        }
    }
}

fn beneath(root: &Path, rel: &str, what: &str) {
    assert!(
        !rel.starts_with('/') && rel.split('/').all(|c| !c.is_empty() && c != ".."),
        "{what}: `{rel}` is not canonical"
    );
    if rel != "." {
        let abs = root.join(rel);
        if let Ok(c) = fs::canonicalize(abs.parent().unwrap()) {
            assert!(c.starts_with(root), "{what}: `{rel}` resolves to {c:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
        return;
    };
    let req = request(&input);
    let dir = scratch();
    let base = fs::canonicalize(dir.path()).unwrap();
    build(&base);
    let root = base.join("ws");
    let before = tree(&base);

    let mut events = Vec::new();
    let code = airlock_executor::run_request(&req, &root, &mut |e| events.push(e));

    let (last, rest) = events.split_last().expect("at least one event");
    match rest {
        [] => {}
        [Event::Checked { .. }] => assert!(req.sandbox.is_some(), "checked without a sandbox"),
        other => panic!("unexpected events before the last: {other:?}"),
    }
    let result = match last {
        Event::Result { result } => {
            assert_eq!(code, 0);
            Some(result)
        }
        Event::Survey { view } => {
            assert!(req.survey && code == 0);
            for m in &view.masks {
                beneath(&root, &m.path, "survey mask");
            }
            None
        }
        Event::Error { code: c, message } => {
            assert_eq!(code, EXIT_TOOL_ERROR, "{c}: {message}");
            assert!(!message.is_empty());
            None
        }
        other => panic!("the last event is {other:?}"),
    };

    let after = tree(&base);
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(
        changed.iter().all(|k| k.starts_with("ws/")),
        "changed outside the root: {changed:?}"
    );
    let written = match result {
        Some(ToolResult::ReadFile(r)) => {
            beneath(&root, &r.path, "read_file");
            assert!(
                !protected(&req, &r.path, &[Protection::NoAccess]),
                "read a no_access path: {}",
                r.path
            );
            let content = r.content.as_deref().unwrap_or("").as_bytes();
            assert!(!content
                .windows(SECRET.len() - 1)
                .any(|w| w == &SECRET[..SECRET.len() - 1]));
            None
        }
        Some(ToolResult::ListDir(r)) => {
            beneath(&root, &r.path, "list_dir");
            None
        }
        Some(ToolResult::Search(r)) => {
            for m in &r.matches {
                beneath(&root, &m.path, "search match");
                assert!(
                    !protected(&req, &m.path, &[Protection::NoAccess]),
                    "{}",
                    m.path
                );
            }
            None
        }
        Some(ToolResult::WriteFile(r) | ToolResult::EditFile(r)) => {
            beneath(&root, &r.path, "write");
            assert_eq!(r.applied, req.mode == Mode::Apply);
            if r.applied {
                assert!(
                    !protected(&req, &r.path, &[Protection::NoAccess, Protection::ReadOnly]),
                    "wrote a protected path: {}",
                    r.path
                );
                Some(r.path.clone())
            } else {
                None
            }
        }
        Some(ToolResult::RunShell(_)) => panic!("no run_shell was asked for"),
        Some(ToolResult::Revert(_)) => panic!("no revert was asked for"),
        None => None,
    };
    match written {
        None => assert!(changed.is_empty(), "nothing was written, yet: {changed:?}"),
        Some(path) => {
            let target = format!("ws/{path}");
            for k in &changed {
                let ok = **k == target
                    || (target.starts_with(k.as_str())
                        && target.as_bytes().get(k.len()) == Some(&b'/')
                        && !before.contains_key(*k));
                assert!(ok, "writing {path} changed {k}: {changed:?}");
            }
        }
    }
});
