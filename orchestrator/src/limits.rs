//! The container profile as data — limits, runtime, image, uid:gid — and the one definition of
//! each limit's bounds, shared by the policy compiler (errors with file:line) and the sandbox
//! (which refuses a profile out of bounds whoever built it). Pure: no Docker, Redis or HTTP.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Smallest pids limit that leaves room for gVisor's Sentry threads (measured: 64 is not enough).
pub const RUNSC_MIN_PIDS: u32 = 128;

const MIB: u64 = 1 << 20;

/// OCI runtime used to start sandbox containers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// The engine's standard runtime.
    #[default]
    Runc,
    /// gVisor: a user-space kernel between the tool and the host kernel.
    Runsc,
}

impl Runtime {
    pub fn as_str(&self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Runsc => "runsc",
        }
    }
}

impl std::str::FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "runc" => Ok(Runtime::Runc),
            "runsc" => Ok(Runtime::Runsc),
            other => Err(format!(
                "unknown runtime `{other}`: expected `runc` or `runsc`"
            )),
        }
    }
}

/// The bounds of each limit: `Err` says what is wrong, in words that fit after the key name.
pub mod bounds {
    use super::{Runtime, MIB, RUNSC_MIN_PIDS};

    pub fn memory(v: u64) -> Result<(), String> {
        if v < 8 * MIB {
            return Err(format!("{v} bytes is below the minimum of 8 MiB"));
        }
        Ok(())
    }

    pub fn cpus(v: f64) -> Result<(), String> {
        if !(v > 0.0 && v <= 64.0) {
            return Err(format!("{v} must be more than 0 and at most 64"));
        }
        Ok(())
    }

    pub fn pids(v: u32) -> Result<(), String> {
        if !(4..=1 << 22).contains(&v) {
            return Err(format!(
                "{v} must be between 4 and 4194304 (runsc needs at least {RUNSC_MIN_PIDS})"
            ));
        }
        Ok(())
    }

    /// The pids limit under a runtime (gVisor's own threads count against it).
    pub fn pids_for(v: u32, runtime: Runtime) -> Result<(), String> {
        pids(v)?;
        if runtime == Runtime::Runsc && v < RUNSC_MIN_PIDS {
            return Err(format!(
                "{v} is too small for runsc: gVisor's own kernel threads count against the container's pids limit, so below {RUNSC_MIN_PIDS} the sandbox dies before the tool runs"
            ));
        }
        Ok(())
    }

    pub fn timeout_secs(v: u64) -> Result<(), String> {
        if !(1..=86_400).contains(&v) {
            return Err(format!("{v} must be between 1 and 86400"));
        }
        Ok(())
    }

    pub fn output(v: u64) -> Result<(), String> {
        if v < 4096 {
            return Err(format!("{v} bytes is below the minimum of 4096"));
        }
        Ok(())
    }

    pub fn tmpfs(v: u64) -> Result<(), String> {
        if v < MIB {
            return Err(format!("{v} bytes is below the minimum of 1 MiB"));
        }
        Ok(())
    }

    pub fn file_size(v: u64) -> Result<(), String> {
        if v < 4096 {
            return Err(format!("{v} bytes is below the minimum of 4096"));
        }
        Ok(())
    }

    pub fn open_files(v: u64) -> Result<(), String> {
        if !(16..=1 << 20).contains(&v) {
            return Err(format!("{v} must be between 16 and 1048576"));
        }
        Ok(())
    }

    /// `concurrent_calls` and `calls_per_minute`.
    pub fn per_user(v: u32) -> Result<(), String> {
        if v == 0 {
            return Err("must be at least 1 (deny the tools instead to stop a user)".into());
        }
        Ok(())
    }
}

/// Resource limits and runtime for one sandbox container. Every field has a sane default;
/// policies override them per group or user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Memory limit in bytes; swap is set equal so the container cannot swap.
    pub memory_bytes: u64,
    /// CPU quota in CPUs (0.5 = half a core).
    pub cpus: f64,
    /// Maximum number of processes/threads (stops fork bombs).
    pub pids: u32,
    /// Wall-clock deadline, counted from when the request is written.
    pub timeout_secs: u64,
    /// Cap on bytes the container writes to stdout+stderr; exceeding it kills the container.
    pub output_bytes: u64,
    /// Size of the tmpfs mounted at `/tmp`.
    pub tmpfs_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub nofile: u64,
    /// `RLIMIT_FSIZE`: the largest file a tool can write.
    pub fsize_bytes: u64,
    pub runtime: Runtime,
    /// Non-root uid and gid the tool runs as (the owner of the user's workspace).
    pub uid: u32,
    pub gid: u32,
    /// Executor image named by the policy (a tag or ID the sandbox has pinned); `None` is the
    /// sandbox's own image.
    pub image: Option<String>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            memory_bytes: 256 * MIB,
            cpus: 1.0,
            pids: 128,
            timeout_secs: 60,
            output_bytes: 4 * MIB,
            tmpfs_bytes: 64 * MIB,
            nofile: 256,
            fsize_bytes: 64 * MIB,
            runtime: Runtime::Runc,
            uid: 65532,
            gid: 65532,
            image: None,
        }
    }
}

impl Profile {
    /// Rejects profiles that would weaken the sandbox or cannot start a container, with the
    /// same bounds the policy compiler applies.
    pub fn check(&self) -> Result<(), String> {
        if self.uid == 0 || self.gid == 0 {
            return Err("uid and gid must not be 0: sandbox containers never run as root".into());
        }
        let field = |name: &str, r: Result<(), String>| r.map_err(|e| format!("{name} = {e}"));
        field("memory_bytes", bounds::memory(self.memory_bytes))?;
        field("cpus", bounds::cpus(self.cpus))?;
        field("pids", bounds::pids_for(self.pids, self.runtime))?;
        field("timeout_secs", bounds::timeout_secs(self.timeout_secs))?;
        field("output_bytes", bounds::output(self.output_bytes))?;
        field("tmpfs_bytes", bounds::tmpfs(self.tmpfs_bytes))?;
        field("nofile", bounds::open_files(self.nofile))?;
        field("fsize_bytes", bounds::file_size(self.fsize_bytes))?;
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_is_in_bounds_and_each_bound_bites() {
        Profile::default().check().unwrap();
        let bad = [
            Profile {
                uid: 0,
                ..Profile::default()
            },
            Profile {
                memory_bytes: 8 * MIB - 1,
                ..Profile::default()
            },
            Profile {
                cpus: 0.0,
                ..Profile::default()
            },
            Profile {
                cpus: 64.5,
                ..Profile::default()
            },
            Profile {
                pids: 3,
                ..Profile::default()
            },
            Profile {
                pids: (1 << 22) + 1,
                ..Profile::default()
            },
            Profile {
                pids: 64,
                runtime: Runtime::Runsc,
                ..Profile::default()
            },
            Profile {
                timeout_secs: 0,
                ..Profile::default()
            },
            Profile {
                timeout_secs: 86_401,
                ..Profile::default()
            },
            Profile {
                output_bytes: 4095,
                ..Profile::default()
            },
            Profile {
                tmpfs_bytes: MIB - 1,
                ..Profile::default()
            },
            Profile {
                nofile: 15,
                ..Profile::default()
            },
            Profile {
                nofile: (1 << 20) + 1,
                ..Profile::default()
            },
            Profile {
                fsize_bytes: 4095,
                ..Profile::default()
            },
        ];
        for p in bad {
            assert!(p.check().is_err(), "{p:?} passed");
        }
        let edge = Profile {
            memory_bytes: 8 * MIB,
            cpus: 64.0,
            pids: 128,
            runtime: Runtime::Runsc,
            timeout_secs: 86_400,
            output_bytes: 4096,
            tmpfs_bytes: MIB,
            nofile: 1 << 20,
            fsize_bytes: 4096,
            ..Profile::default()
        };
        edge.check().unwrap();
    }
}
