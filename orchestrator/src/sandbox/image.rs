//! Builds the executor image offline: a tar context made here (Dockerfile, static executor,
//! static busybox and its applet links) sent to the engine's build API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use super::SandboxError;

/// The tag `airlock image build` gives the image and the server uses by default.
pub const DEFAULT_TAG: &str = "airlock-executor:latest";
/// The tag of `airlock image build --profile dev`.
pub const DEV_TAG: &str = "airlock-executor:dev";

/// What the image holds besides the executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ImageProfile {
    /// A static busybox (`FROM scratch`), or the `--base` image's own tools.
    #[default]
    Minimal,
    /// A development toolchain from this host's Debian packages (`FROM scratch`): git,
    /// python3 with pip, venv and pytest, bash, coreutils, findutils, grep, sed, diff, make,
    /// gcc, curl (see `sandbox::toolchain::DEV_PACKAGES`).
    Dev,
}
/// The Dockerfile, kept in `executor-image/` and embedded so the binary builds it anywhere.
pub const DOCKERFILE: &str = include_str!("../../../executor-image/Dockerfile");
/// The sandbox user's default ids (the Dockerfile's `USER`).
pub const SANDBOX_UID: u32 = 65532;

/// Where `cargo rustc --target <triple>` puts the static executor, relative to the repo.
pub fn default_executor_path() -> PathBuf {
    PathBuf::from(format!(
        "target/{}-unknown-linux-gnu/release/airlock-executor",
        std::env::consts::ARCH
    ))
}

/// The command that builds the static executor (shown in errors).
pub fn executor_build_command() -> String {
    format!(
        "cargo rustc --release -p airlock-executor --bin airlock-executor --target {}-unknown-linux-gnu -- -C target-feature=+crt-static",
        std::env::consts::ARCH
    )
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The static `airlock-executor` binary.
    pub executor: PathBuf,
    /// A static busybox (Debian's `busybox-static` installs `/bin/busybox`); only for `scratch`.
    pub busybox: PathBuf,
    /// Base image: `scratch` (default) or e.g. a Debian image where a registry exists.
    pub base: String,
    pub tag: String,
    pub profile: ImageProfile,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            executor: default_executor_path(),
            busybox: PathBuf::from("/bin/busybox"),
            base: "scratch".into(),
            tag: DEFAULT_TAG.into(),
            profile: ImageProfile::Minimal,
        }
    }
}

/// The sandbox user's `/etc/passwd` and `/etc/group` (home `/tmp`, the only writable place
/// besides the workspace).
fn sandbox_accounts() -> (String, String) {
    (
        format!(
            "root:x:0:0:root:/root:/bin/sh\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:airlock sandbox:/tmp:/bin/sh\n"
        ),
        format!("root:x:0:\nsandbox:x:{SANDBOX_UID}:\n"),
    )
}

/// A build context and the sha256 of everything it was made from (the executor, the
/// Dockerfile, the profile and, for `dev`, each package's version): an image labelled with the
/// same hash needs no rebuild.
pub struct Context {
    pub tar: Vec<u8>,
    pub inputs_sha256: String,
}

/// True when the ELF file has no program interpreter (it is statically linked).
pub fn is_static_elf(bytes: &[u8]) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF executable".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        if off + 4 > bytes.len() {
            return Err("truncated ELF program headers".into());
        }
        let p_type =
            u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]);
        if p_type == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_static_binary(path: &Path, what: &str, how: &str) -> Result<Vec<u8>, SandboxError> {
    let bytes = std::fs::read(path).map_err(|e| {
        SandboxError::Build(format!(
            "cannot read the {what} at `{}`: {e}. {how}",
            path.display()
        ))
    })?;
    match is_static_elf(&bytes) {
        Ok(true) => Ok(bytes),
        Ok(false) => Err(SandboxError::Build(format!(
            "the {what} at `{}` is dynamically linked and cannot run in a `FROM scratch` image. {how}",
            path.display()
        ))),
        Err(e) => Err(SandboxError::Build(format!(
            "the {what} at `{}` is unusable: {e}. {how}",
            path.display()
        ))),
    }
}

/// Lists busybox's applets by asking the binary itself.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, SandboxError> {
    let out = std::process::Command::new(busybox)
        .arg("--list")
        .env_clear()
        .output()
        .map_err(|e| {
            SandboxError::Build(format!("cannot run `{} --list`: {e}", busybox.display()))
        })?;
    if !out.status.success() {
        return Err(SandboxError::Build(format!(
            "`{} --list` failed with {}",
            busybox.display(),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        // Applet names are plain words; anything else would be a path trick in the tar.
        .filter(|a| {
            !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.[".contains(c))
                && *a != "."
                && *a != ".."
        })
        .map(str::to_string)
        .collect())
}

fn append_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut h, path, std::io::empty())
}

fn append_symlink(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    target: &str,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o777);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Symlink);
    tar.append_link(&mut h, path, target)
}

/// Makes the build context (an in-memory tar) for `opts`.
pub fn build_context(opts: &BuildOptions) -> Result<Context, SandboxError> {
    let how = format!("Build it with: {}", executor_build_command());
    let executor = read_static_binary(&opts.executor, "executor binary", &how)?;
    let scratch = opts.base == "scratch";
    if opts.profile == ImageProfile::Dev && !scratch {
        return Err(SandboxError::Build(
            "--profile dev is made FROM scratch from this host's Debian packages; --base is for the minimal profile (a base image with its own tools)".into(),
        ));
    }
    let mut inputs = sha2::Sha256::new();
    use sha2::Digest;
    inputs.update(sha2::Sha256::digest(&executor));
    inputs.update(DOCKERFILE.as_bytes());
    inputs.update(format!("{:?}\n{}\n", opts.profile, opts.base));
    let mut tar = tar::Builder::new(Vec::new());
    let io = |e: std::io::Error| SandboxError::Build(format!("cannot make the build context: {e}"));
    append_file(&mut tar, "Dockerfile", DOCKERFILE.as_bytes(), 0o644).map_err(io)?;
    append_dir(&mut tar, "executor", 0o755).map_err(io)?;
    append_file(&mut tar, "executor/airlock-executor", &executor, 0o755).map_err(io)?;
    append_dir(&mut tar, "base-rootfs", 0o755).map_err(io)?;
    if opts.profile == ImageProfile::Dev {
        let (passwd, group) = sandbox_accounts();
        let packages =
            super::toolchain::write_dev_rootfs(&mut tar, "base-rootfs", &passwd, &group)?;
        inputs.update(super::toolchain::inputs_sha256(&packages));
    } else if scratch {
        let busybox = read_static_binary(
            &opts.busybox,
            "busybox binary",
            "Install it with: apt-get install busybox-static",
        )?;
        for d in ["bin", "etc", "usr", "usr/bin", "usr/local", "usr/local/bin"] {
            append_dir(&mut tar, &format!("base-rootfs/{d}"), 0o755).map_err(io)?;
        }
        append_dir(&mut tar, "base-rootfs/tmp", 0o1777).map_err(io)?;
        append_dir(&mut tar, "base-rootfs/workspace", 0o755).map_err(io)?;
        append_file(&mut tar, "base-rootfs/bin/busybox", &busybox, 0o755).map_err(io)?;
        for applet in busybox_applets(&opts.busybox)? {
            if applet == "busybox" {
                continue;
            }
            append_symlink(&mut tar, &format!("base-rootfs/bin/{applet}"), "busybox")
                .map_err(io)?;
        }
        let (passwd, group) = sandbox_accounts();
        append_file(&mut tar, "base-rootfs/etc/passwd", passwd.as_bytes(), 0o644).map_err(io)?;
        append_file(&mut tar, "base-rootfs/etc/group", group.as_bytes(), 0o644).map_err(io)?;
    }
    let busybox_hash = if scratch && opts.profile == ImageProfile::Minimal {
        std::fs::read(&opts.busybox)
            .map(|b| hex::encode(sha2::Sha256::digest(b)))
            .unwrap_or_default()
    } else {
        String::new()
    };
    inputs.update(busybox_hash);
    Ok(Context {
        tar: tar.into_inner().map_err(io)?,
        inputs_sha256: hex::encode(inputs.finalize()),
    })
}

/// The label holding [`Context::inputs_sha256`].
pub const INPUTS_LABEL: &str = "io.airlock.inputs";

/// Builds and tags the image through the engine's API; returns its ID. `progress` receives
/// the builder's output lines.
pub async fn build_image(
    docker: &Docker,
    opts: &BuildOptions,
    mut progress: impl FnMut(&str),
) -> Result<String, SandboxError> {
    let context = build_context(opts)?;
    // Rebuilding the same inputs gives the same image: keep the one there is.
    if let Ok(img) = docker.inspect_image(&opts.tag).await {
        let labels = img.config.and_then(|c| c.labels).unwrap_or_default();
        if labels.get(INPUTS_LABEL) == Some(&context.inputs_sha256) {
            progress(&format!(
                "{} is up to date (inputs {})",
                opts.tag,
                &context.inputs_sha256[..12]
            ));
            return img
                .id
                .ok_or_else(|| SandboxError::Build("the engine reported no image ID".into()));
        }
    }
    let mut args = HashMap::new();
    args.insert("BASE".to_string(), opts.base.clone());
    let mut labels = HashMap::new();
    labels.insert(
        "io.airlock.executor-version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    labels.insert(INPUTS_LABEL.to_string(), context.inputs_sha256.clone());
    labels.insert(
        "io.airlock.profile".to_string(),
        format!("{:?}", opts.profile).to_lowercase(),
    );
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&opts.tag)
        .rm(true)
        .forcerm(true)
        .buildargs(&args)
        .labels(&labels)
        .build();
    let mut stream =
        docker.build_image(options, None, Some(bollard::body_full(context.tar.into())));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| SandboxError::Build(e.to_string()))?;
        if let Some(detail) = info.error_detail {
            return Err(SandboxError::Build(detail.message.unwrap_or_default()));
        }
        if let Some(line) = info.stream.as_deref() {
            let line = line.trim_end();
            if !line.is_empty() {
                progress(line);
            }
        }
    }
    let img = docker.inspect_image(&opts.tag).await?;
    img.id
        .ok_or_else(|| SandboxError::Build("the engine reported no image ID".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_check_reads_program_headers() {
        assert!(
            is_static_elf(b"not an elf at all, clearly not, no no no no no no no no no no no")
                .is_err()
        );
        // The test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(is_static_elf(&me), Ok(false));
    }
}
