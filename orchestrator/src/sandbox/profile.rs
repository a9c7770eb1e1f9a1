//! The locked container profile: limits and runtime as one typed struct, and the one function
//! that turns a profile into a Docker container configuration.

use std::collections::HashMap;
use std::path::PathBuf;

use airlock_executor::protocol::{Mask, MaskKind, ProtectedPath, Protection};
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountTmpfsOptions, MountType, ResourcesUlimits,
};

use super::SandboxError;

/// Label present on every container Airlock creates (the reaper's filter).
pub const LABEL_MANAGED: &str = "airlock.managed";
/// Label naming the orchestrator instance that owns the container.
pub const LABEL_INSTANCE: &str = "airlock.instance";
pub const LABEL_SESSION: &str = "airlock.session";
pub const LABEL_CALL: &str = "airlock.call";
pub const LABEL_TOOL: &str = "airlock.tool";

/// Where the workspace appears inside every container.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// The source of every file mask: reads as empty, and the mount is read-only. Not a workspace
/// path, so nothing a tool does can change what it is.
pub const FILE_MASK_SOURCE: &str = "/dev/null";
/// Size of the empty read-only tmpfs that masks a directory.
const DIR_MASK_BYTES: i64 = 4096;

/// The executor binary inside the image.
pub const EXECUTOR_PATH: &str = "/usr/local/bin/airlock-executor";
/// The only environment a container gets (invariant: nothing from the host).
pub const CONTAINER_ENV: [&str; 3] = ["PATH=/bin:/usr/bin", "HOME=/tmp", "LANG=C.UTF-8"];

pub use crate::limits::{Profile, Runtime, RUNSC_MIN_PIDS};

/// Refuses a profile out of bounds (the same bounds the policy compiler applies).
pub fn validate(profile: &Profile) -> Result<(), SandboxError> {
    profile.check().map_err(SandboxError::InvalidProfile)
}

/// What one container is for: whose workspace, in which mode, labelled how.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// Absolute host path of the user's workspace root (bind-mounted, never opened here).
    pub workspace: PathBuf,
    /// Mount the workspace read-write (only for an applied mutating call).
    pub writable: bool,
    pub session_id: String,
    pub call_id: String,
    pub tool: String,
    /// The policy's protected paths for this user: the sandbox masks what they match.
    pub protected: Vec<ProtectedPath>,
}

/// Whether `path` can name a mask: canonical, relative, no `.`/`..`, no NUL. A view comes
/// from an executor, so it is checked here before any of it reaches a mount.
pub fn valid_mask_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() < 4096
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The mounts over a container's protected paths. `no_access`: `/dev/null` over a file, an
/// empty read-only tmpfs over a directory (sources the workspace cannot touch). `read_only`: a
/// read-only view of the same path, only where the workspace itself is writable.
fn mask_mounts(spec: &CallSpec, masks: &[Mask]) -> Vec<Mount> {
    let rprivate = || {
        Some(MountBindOptions {
            propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
            ..Default::default()
        })
    };
    masks
        .iter()
        .filter(|m| valid_mask_path(&m.path))
        .filter_map(|m| {
            let target = Some(format!("{WORKSPACE_MOUNT}/{}", m.path));
            Some(match (m.protection, m.kind) {
                (Protection::NoAccess, MaskKind::File) => Mount {
                    target,
                    source: Some(FILE_MASK_SOURCE.into()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    bind_options: rprivate(),
                    ..Default::default()
                },
                (Protection::NoAccess, MaskKind::Dir) => Mount {
                    target,
                    typ: Some(MountType::TMPFS),
                    read_only: Some(true),
                    tmpfs_options: Some(MountTmpfsOptions {
                        size_bytes: Some(DIR_MASK_BYTES),
                        mode: Some(0o555),
                        options: None,
                    }),
                    ..Default::default()
                },
                (Protection::ReadOnly, _) if spec.writable => Mount {
                    target,
                    source: Some(spec.workspace.join(&m.path).to_string_lossy().into_owned()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    bind_options: rprivate(),
                    ..Default::default()
                },
                (Protection::ReadOnly, _) => return None,
            })
        })
        .collect()
}

/// THE function that creates every container's configuration. Every field of the locked
/// profile is set here and nowhere else; callers choose only the values in `Profile` and
/// `CallSpec`, none of which can weaken isolation (validated above).
pub fn locked_container_config(
    image_id: &str,
    instance: &str,
    profile: &Profile,
    spec: &CallSpec,
    masks: &[Mask],
) -> ContainerCreateBody {
    let mut labels = HashMap::new();
    labels.insert(LABEL_MANAGED.to_string(), "1".to_string());
    labels.insert(LABEL_INSTANCE.to_string(), instance.to_string());
    labels.insert(LABEL_SESSION.to_string(), spec.session_id.clone());
    labels.insert(LABEL_CALL.to_string(), spec.call_id.clone());
    labels.insert(LABEL_TOOL.to_string(), spec.tool.clone());

    let mut tmpfs = HashMap::new();
    tmpfs.insert(
        "/tmp".to_string(),
        format!(
            "rw,nosuid,nodev,noexec,size={},mode=1777",
            profile.tmpfs_bytes
        ),
    );

    let ulimit = |name: &str, v: u64| ResourcesUlimits {
        name: Some(name.to_string()),
        soft: Some(v as i64),
        hard: Some(v as i64),
    };

    let host_config = HostConfig {
        network_mode: Some("none".into()),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: None,
        // The default seccomp profile stays on because no `seccomp=` option is ever given.
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        privileged: Some(false),
        ipc_mode: Some("private".into()),
        pid_mode: None,
        uts_mode: None,
        userns_mode: None,
        pids_limit: Some(profile.pids as i64),
        memory: Some(profile.memory_bytes as i64),
        memory_swap: Some(profile.memory_bytes as i64),
        nano_cpus: Some((profile.cpus * 1e9) as i64),
        ulimits: Some(vec![
            ulimit("nofile", profile.nofile),
            ulimit("fsize", profile.fsize_bytes),
        ]),
        tmpfs: Some(tmpfs),
        // The workspace, then the masks over its protected paths (the engine mounts parents
        // before children).
        mounts: Some(
            std::iter::once(Mount {
                target: Some(WORKSPACE_MOUNT.into()),
                source: Some(spec.workspace.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(!spec.writable),
                bind_options: Some(MountBindOptions {
                    propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .chain(mask_mounts(spec, masks))
            .collect(),
        ),
        binds: None,
        // No log driver: a flood of output never lands on the host's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        runtime: Some(profile.runtime.as_str().into()),
        init: Some(false),
        auto_remove: Some(false),
        oom_kill_disable: Some(false),
        ..Default::default()
    };

    ContainerCreateBody {
        image: Some(image_id.to_string()),
        entrypoint: Some(vec![EXECUTOR_PATH.into()]),
        cmd: Some(vec![]),
        user: Some(format!("{}:{}", profile.uid, profile.gid)),
        env: Some(CONTAINER_ENV.iter().map(|s| s.to_string()).collect()),
        working_dir: Some(WORKSPACE_MOUNT.into()),
        hostname: Some("sandbox".into()),
        network_disabled: Some(true),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(writable: bool) -> CallSpec {
        CallSpec {
            workspace: "/srv/ws/alice".into(),
            writable,
            session_id: "s1".into(),
            call_id: "c1".into(),
            tool: "read_file".into(),
            protected: Vec::new(),
        }
    }

    #[test]
    fn config_applies_the_whole_profile() {
        let p = Profile::default();
        let c = locked_container_config("sha256:abc", "test", &p, &spec(false), &[]);
        let h = c.host_config.as_ref().unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(h.memory, h.memory_swap);
        assert_eq!(h.mounts.as_ref().unwrap().len(), 1);
        assert_eq!(h.mounts.as_ref().unwrap()[0].read_only, Some(true));
        assert!(!h
            .security_opt
            .as_ref()
            .unwrap()
            .iter()
            .any(|o| o.contains("seccomp")));
        assert_eq!(c.user.as_deref(), Some("65532:65532"));
        assert_eq!(c.env.as_ref().unwrap().len(), 3);
        let w = locked_container_config("sha256:abc", "test", &p, &spec(true), &[]);
        assert_eq!(
            w.host_config.unwrap().mounts.unwrap()[0].read_only,
            Some(false)
        );
    }

    #[test]
    fn masks_are_read_only_and_never_weaken_the_workspace() {
        let masks = [
            Mask {
                path: ".env".into(),
                kind: MaskKind::File,
                protection: Protection::NoAccess,
            },
            Mask {
                path: "secrets".into(),
                kind: MaskKind::Dir,
                protection: Protection::NoAccess,
            },
            Mask {
                path: ".git".into(),
                kind: MaskKind::Dir,
                protection: Protection::ReadOnly,
            },
            Mask {
                path: "../etc".into(),
                kind: MaskKind::Dir,
                protection: Protection::ReadOnly,
            },
        ];
        let p = Profile::default();
        for writable in [false, true] {
            let c = locked_container_config("sha256:abc", "t", &p, &spec(writable), &masks);
            let mounts = c.host_config.unwrap().mounts.unwrap();
            assert_eq!(mounts[0].target.as_deref(), Some(WORKSPACE_MOUNT));
            assert_eq!(mounts[0].read_only, Some(!writable));
            // `../etc` is never mounted; the view of `.git` only where the workspace is writable.
            assert_eq!(mounts.len(), if writable { 4 } else { 3 });
            for m in &mounts[1..] {
                assert_eq!(m.read_only, Some(true), "{m:?}");
                let t = m.target.as_deref().unwrap();
                assert!(t.starts_with("/workspace/") && !t.contains(".."), "{t}");
                match m.typ {
                    Some(MountType::BIND) => {
                        let src = m.source.as_deref().unwrap();
                        assert!(
                            src == FILE_MASK_SOURCE || src == "/srv/ws/alice/.git",
                            "{src}"
                        )
                    }
                    Some(MountType::TMPFS) => assert!(m.source.is_none()),
                    ref other => panic!("{other:?}"),
                }
            }
        }
        assert!(!valid_mask_path(""));
        assert!(!valid_mask_path("a//b"));
        assert!(!valid_mask_path("/etc"));
        assert!(valid_mask_path("a/.env"));
    }

    #[test]
    fn root_and_silly_limits_are_refused() {
        let mut p = Profile {
            uid: 0,
            ..Profile::default()
        };
        assert!(validate(&p).is_err());
        p.uid = 1000;
        assert!(validate(&p).is_ok());
        p.cpus = 0.0;
        assert!(validate(&p).is_err());
    }

    #[test]
    fn profile_rejects_unknown_keys() {
        let err = serde_json::from_str::<Profile>(r#"{"memory_bytes": 1, "privileged": true}"#)
            .unwrap_err();
        assert!(err.to_string().contains("privileged"));
    }
}
