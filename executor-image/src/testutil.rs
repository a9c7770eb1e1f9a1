//! Test harness: a workspace in a temp dir (with an `outside` sibling), run through either
//! resolver.

use crate::protocol::*;
use crate::resolve::Strategy;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

pub struct T {
    pub dir: tempfile::TempDir,
    pub strategy: Strategy,
    pub limits: ExecLimits,
    pub protected: Vec<ProtectedPath>,
    pub mode: Mode,
    pub expected: Option<String>,
    pub hunks: Option<Vec<u32>>,
    pub expected_new: Option<String>,
    pub keep: Option<u64>,
}

/// The same fresh workspace, once per resolver.
pub fn both() -> Vec<T> {
    vec![T::new(Strategy::Auto), T::new(Strategy::WalkOnly)]
}

impl T {
    pub fn new(strategy: Strategy) -> T {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "top secret\n").unwrap();
        T {
            dir,
            strategy,
            limits: ExecLimits::default(),
            protected: vec![
                ProtectedPath {
                    glob: "**/.env".into(),
                    protection: Protection::NoAccess,
                },
                ProtectedPath {
                    glob: ".git/**".into(),
                    protection: Protection::ReadOnly,
                },
            ],
            mode: Mode::Preview,
            expected: None,
            hunks: None,
            expected_new: None,
            keep: None,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn outside(&self, rel: &str) -> PathBuf {
        self.dir.path().join("outside").join(rel)
    }

    pub fn read_outside(&self, rel: &str) -> String {
        std::fs::read_to_string(self.outside(rel)).unwrap()
    }

    pub fn write(&self, rel: &str, content: &str) {
        self.write_bytes(rel, content.as_bytes());
    }

    pub fn write_bytes(&self, rel: &str, content: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.path(rel)).unwrap();
    }

    pub fn symlink(&self, target: &str, rel: &str) {
        symlink(target, self.path(rel)).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    /// Switches to apply mode with this expected sha256.
    pub fn apply(&mut self, expected: Option<&str>) {
        self.mode = Mode::Apply;
        self.expected = expected.map(Into::into);
    }

    /// Runs an applied call that keeps previous content; returns its undo record (empty when
    /// it sent none) and the result.
    pub fn run_undo(
        &mut self,
        call: ToolCall,
    ) -> (UndoRecord, Result<ToolResult, crate::ToolError>) {
        self.mode = Mode::Apply;
        self.keep.get_or_insert(1024 * 1024);
        let (events, r) = self.run_events(call);
        let undo = events
            .into_iter()
            .find_map(|e| match e {
                Event::Undo { undo } => Some(undo),
                _ => None,
            })
            .unwrap_or_default();
        (undo, r)
    }

    /// Temporary files a write left behind.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in walk(&self.root()) {
            let name = e.file_name().unwrap().to_string_lossy().into_owned();
            if name.contains(".airlock-") {
                out.push(name);
            }
        }
        out
    }

    pub fn request(&self, call: ToolCall) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            call,
            mode: self.mode,
            expected_sha256: self.expected.clone(),
            hunks: self.hunks.clone(),
            expected_new_sha256: self.expected_new.clone(),
            protected: self.protected.clone(),
            keep_previous: self.keep,
            limits: self.limits.clone(),
            sandbox: None,
            survey: false,
        }
    }

    pub fn run(&self, call: ToolCall) -> Result<ToolResult, crate::ToolError> {
        self.run_with_sink(call, &mut |_| {})
    }

    pub fn run_with_sink(
        &self,
        call: ToolCall,
        sink: &mut dyn FnMut(Event),
    ) -> Result<ToolResult, crate::ToolError> {
        crate::execute_with(&self.request(call), &self.root(), self.strategy, sink)
    }

    pub fn run_events(&self, call: ToolCall) -> (Vec<Event>, Result<ToolResult, crate::ToolError>) {
        let mut events = Vec::new();
        let r = self.run_with_sink(call, &mut |e| events.push(e));
        (events, r)
    }

    /// Links that escape in every way, protected files, and some ordinary oddities.
    pub fn escape_fixture(&self) {
        self.symlink("/etc/passwd", "abs");
        self.symlink("../../..", "up");
        self.symlink("/", "root");
        self.symlink("/proc/self/root", "magic");
        self.symlink("/etc", "etc");
        self.symlink("../outside", "outdir");
        self.symlink("../outside/newfile", "dangling");
        self.symlink("loop2", "loop1");
        self.symlink("loop1", "loop2");
        self.write("back\\slash", "bs");
        self.write("%2e%2e", "pct");
        self.write("dir/target.txt", "target\n");
        self.symlink("dir/target.txt", "inlink");
        self.symlink("dir", "dirlink");
        self.write(".env", "SECRET=1\n");
        self.write("sub/.env", "SECRET=2\n");
        self.symlink(".env", "innocent");
        self.symlink("../.env", "sub/innocent2");
        self.write(".git/config", "[core]\n");
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
