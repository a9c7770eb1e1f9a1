//! The `dev` image's root filesystem: a development toolchain (git, python3 with pip, venv
//! and pytest, bash, coreutils, a C compiler, make, curl, …) taken from the Debian packages
//! installed on this host, with their dependencies — no registry, no network.
//!
//! The files come from `dpkg -L` of each package in the dependency closure, written at their
//! canonical paths (the host is /usr-merged, and so is the image); links that
//! `update-alternatives` made (`cc`, `awk`) are in no package's list and are added by name.
//! Only system files are read: nothing under a workspace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::SandboxError;

/// What the `dev` image holds (their dependencies come along).
pub const DEV_PACKAGES: &[&str] = &[
    "dash",
    "bash",
    "coreutils",
    "findutils",
    "grep",
    "sed",
    "diffutils",
    "tar",
    "gzip",
    "procps",
    "make",
    "gcc",
    "libc6-dev",
    "binutils",
    "git",
    "python3",
    "python3-pip",
    "python3-venv",
    "python3-pytest",
    "curl",
    "ca-certificates",
];

/// Documentation and translations: not needed to run anything.
const SKIP_PREFIXES: &[&str] = &[
    "/usr/share/doc/",
    "/usr/share/man/",
    "/usr/share/info/",
    "/usr/share/locale/",
    "/usr/share/lintian/",
    "/usr/share/bug/",
];

/// Links `update-alternatives` (or a package's postinst) makes, in no package's file list.
const ALTERNATIVES: &[(&str, &str)] = &[("/usr/bin/sh", "dash"), ("/usr/bin/cc", "gcc")];
const ALTERNATIVE_NAMES: &[&str] = &["awk", "c++", "cpp", "pager", "python", "pip"];

struct Installed {
    /// Package → (its Pre-Depends and Depends, its version).
    pkgs: HashMap<String, (String, String)>,
    /// Virtual package → a package that provides it.
    provides: HashMap<String, String>,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, SandboxError> {
    let out = cmd.env("LC_ALL", "C").output().map_err(|e| {
        SandboxError::Build(format!(
            "cannot run {what}: {e} (is this a Debian or Ubuntu host?)"
        ))
    })?;
    if !out.status.success() {
        return Err(SandboxError::Build(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed() -> Result<Installed, SandboxError> {
    let out = run(
        Command::new("dpkg-query").args([
            "-W",
            "-f=${Package}\t${Status}\t${Provides}\t${Pre-Depends}\t${Depends}\t${Version}\n",
        ]),
        "dpkg-query",
    )?;
    let mut pkgs = HashMap::new();
    let mut provides = HashMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let field = |i: usize| f.get(i).copied().unwrap_or("");
        if !field(1).ends_with(" installed") {
            continue;
        }
        let deps = [field(3), field(4)]
            .iter()
            .filter(|d| !d.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        pkgs.insert(field(0).to_string(), (deps, field(5).to_string()));
        for p in field(2).split(',') {
            if let Some(p) = p.split_whitespace().next() {
                provides
                    .entry(p.to_string())
                    .or_insert_with(|| field(0).to_string());
            }
        }
    }
    Ok(Installed { pkgs, provides })
}

/// Strips `:arch`, `(>= version)` and `[arch]` from one dependency alternative.
fn dep_name(alt: &str) -> &str {
    let alt = alt.trim();
    let end = alt.find([' ', '(', '[']).unwrap_or(alt.len());
    alt[..end].split(':').next().unwrap_or("")
}

/// The installed packages `roots` need, with their versions; the missing roots named.
pub fn closure(roots: &[&str]) -> Result<BTreeMap<String, String>, SandboxError> {
    let inst = installed()?;
    let resolve = |n: &str| -> Option<String> {
        if inst.pkgs.contains_key(n) {
            Some(n.to_string())
        } else {
            inst.provides.get(n).cloned()
        }
    };
    let missing: Vec<&str> = roots
        .iter()
        .copied()
        .filter(|r| resolve(r).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(SandboxError::Build(format!(
            "the dev image is made from this host's Debian packages, and some are not installed: {} — install them with: apt-get install {}",
            missing.join(" "),
            missing.join(" ")
        )));
    }
    let mut want = BTreeMap::new();
    let mut todo: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
    while let Some(name) = todo.pop() {
        let Some(name) = resolve(dep_name(&name)) else {
            continue;
        };
        if want.contains_key(&name) {
            continue;
        }
        let (deps, version) = inst.pkgs[&name].clone();
        want.insert(name, version);
        for clause in deps.split(',').filter(|c| !c.trim().is_empty()) {
            // The first alternative that is installed.
            if let Some(alt) = clause
                .split('|')
                .map(dep_name)
                .find(|a| resolve(a).is_some())
            {
                todo.push(alt.to_string());
            }
        }
    }
    Ok(want)
}

/// Every path the packages installed.
pub fn package_files(names: &[&String]) -> Result<Vec<String>, SandboxError> {
    let mut files = Vec::new();
    for chunk in names.chunks(64) {
        let out = run(
            Command::new("dpkg")
                .arg("-L")
                .args(chunk.iter().map(|s| s.as_str())),
            "dpkg -L",
        )?;
        files.extend(
            out.lines()
                .filter(|l| l.starts_with('/') && *l != "/.")
                .map(str::to_string),
        );
    }
    Ok(files)
}

/// The sha256 naming what the image is made of: the packages and their versions.
pub fn inputs_sha256(packages: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (name, version) in packages {
        h.update(format!("{name}={version}\n"));
    }
    hex::encode(h.finalize())
}

/// The path with its parent directories resolved (the last component kept as it is).
fn canonical(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .unwrap_or_else(|_| parent.to_path_buf())
            .join(name),
        _ => path.to_path_buf(),
    }
}

/// Writes host files into a tar under `prefix`, each once, at its canonical path.
pub struct RootfsWriter<'a> {
    tar: &'a mut tar::Builder<Vec<u8>>,
    prefix: String,
    seen: BTreeSet<String>,
}

impl<'a> RootfsWriter<'a> {
    pub fn new(tar: &'a mut tar::Builder<Vec<u8>>, prefix: &str) -> RootfsWriter<'a> {
        RootfsWriter {
            tar,
            prefix: prefix.trim_end_matches('/').to_string(),
            seen: BTreeSet::new(),
        }
    }

    fn arc(&self, path: &str) -> String {
        format!("{}/{}", self.prefix, path.trim_start_matches('/'))
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn parents(&mut self, path: &str) -> std::io::Result<()> {
        if let Some(parent) = Path::new(path).parent() {
            let p = parent.to_string_lossy();
            if p != "/" && !p.is_empty() && !self.seen.contains(p.as_ref()) {
                self.dir(&p, 0o755)?;
            }
        }
        Ok(())
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> std::io::Result<()> {
        if self.seen.contains(path) {
            return Ok(());
        }
        self.parents(path)?;
        self.seen.insert(path.to_string());
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        let arc = self.arc(path);
        self.tar.append_data(&mut h, arc, std::io::empty())
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<()> {
        if self.seen.contains(path) {
            return Ok(());
        }
        self.parents(path)?;
        self.seen.insert(path.to_string());
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        let arc = self.arc(path);
        self.tar.append_link(&mut h, arc, target)
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
        if self.seen.contains(path) {
            return Ok(());
        }
        self.parents(path)?;
        self.seen.insert(path.to_string());
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        let arc = self.arc(path);
        self.tar.append_data(&mut h, arc, data)
    }

    /// Adds a host file, symlink (and what it points to) or directory (not its contents).
    pub fn host(&mut self, path: &str) -> std::io::Result<()> {
        if SKIP_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok(());
        }
        let src = canonical(Path::new(path));
        let arc = src.to_string_lossy().into_owned();
        if self.seen.contains(&arc) {
            return Ok(());
        }
        let Ok(meta) = std::fs::symlink_metadata(&src) else {
            return Ok(()); // listed by dpkg but removed since (a diverted or deleted file)
        };
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src)?;
            self.symlink(&arc, &target.to_string_lossy())?;
            if let Ok(real) = std::fs::canonicalize(&src) {
                self.host(&real.to_string_lossy())?;
            }
        } else if meta.is_dir() {
            self.dir(&arc, mode)?;
        } else if meta.is_file() {
            self.parents(&arc)?;
            self.seen.insert(arc.clone());
            let mut h = Self::header(tar::EntryType::Regular, mode, meta.len());
            let f = std::fs::File::open(&src)?;
            let a = self.arc(&arc);
            self.tar.append_data(&mut h, a, f)?;
        }
        Ok(())
    }

    pub fn contains(&self, path: &str) -> bool {
        self.seen.contains(path)
    }
}

/// Writes the `dev` root filesystem under `prefix` of `tar`; returns the packages it holds.
pub fn write_dev_rootfs(
    tar: &mut tar::Builder<Vec<u8>>,
    prefix: &str,
    passwd: &str,
    group: &str,
) -> Result<BTreeMap<String, String>, SandboxError> {
    let packages = closure(DEV_PACKAGES)?;
    let names: Vec<&String> = packages.keys().collect();
    let files = package_files(&names)?;
    let io = |e: std::io::Error| {
        SandboxError::Build(format!("cannot write the dev root filesystem: {e}"))
    };
    let mut fs = RootfsWriter::new(tar, prefix);
    // /usr-merged, like the host.
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
        ("/sbin", "usr/sbin"),
    ] {
        fs.symlink(link, target).map_err(io)?;
    }
    fs.dir("/tmp", 0o1777).map_err(io)?;
    fs.dir("/workspace", 0o755).map_err(io)?;
    for f in &files {
        fs.host(f).map_err(io)?;
    }
    for (link, target) in ALTERNATIVES {
        fs.symlink(link, target).map_err(io)?;
    }
    for name in ALTERNATIVE_NAMES {
        // /usr/bin/NAME -> /etc/alternatives/NAME -> the chosen program, when it is in the image.
        let alt = format!("/etc/alternatives/{name}");
        if let Ok(real) = std::fs::canonicalize(&alt) {
            if fs.contains(&real.to_string_lossy()) {
                fs.host(&format!("/usr/bin/{name}")).map_err(io)?;
                fs.host(&alt).map_err(io)?;
            }
        }
    }
    // Generated by update-ca-certificates, in no package's list: curl and pip need it.
    fs.host("/etc/ssl/certs/ca-certificates.crt").map_err(io)?;
    fs.file("/etc/passwd", passwd.as_bytes(), 0o644)
        .map_err(io)?;
    fs.file("/etc/group", group.as_bytes(), 0o644).map_err(io)?;
    Ok(packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_alternatives_are_reduced_to_package_names() {
        assert_eq!(dep_name(" libc6 (>= 2.34)"), "libc6");
        assert_eq!(dep_name("python3:any"), "python3");
        assert_eq!(dep_name("gcc-12 [amd64]"), "gcc-12");
        assert_eq!(dep_name("perl:any (>= 5.6)"), "perl");
    }

    #[test]
    fn the_inputs_hash_changes_with_a_version() {
        let mut a = BTreeMap::new();
        a.insert("git".to_string(), "1:2.39.5-0+deb12u2".to_string());
        let h1 = inputs_sha256(&a);
        a.insert("git".to_string(), "1:2.39.5-0+deb12u3".to_string());
        assert_ne!(h1, inputs_sha256(&a));
    }
}
