//! `airlock bench sandbox`: Airlock's tool-call latency against `docker run --rm` with the same
//! flags and image, interleaved in one run so both see the same machine.

use std::path::Path;
use std::time::{Duration, Instant};

use airlock_executor::protocol::{Event, ReadFileArgs, Request, ToolCall};

use crate::sandbox::profile::{CONTAINER_ENV, EXECUTOR_PATH, WORKSPACE_MOUNT};
use crate::sandbox::{CallSpec, Profile, Sandbox, SandboxError, SandboxEvent};

/// Latencies of one benchmark run, one sample per iteration and path.
#[derive(Debug, Default, Clone)]
pub struct SandboxBench {
    /// Create + attach + start + request → result, as a call that needs no approval.
    pub cold: Vec<Duration>,
    /// Request → result on a container started beforehand (the approval path).
    pub prepared: Vec<Duration>,
    /// `docker run --rm -i` with the same profile, request on stdin, until the CLI exits.
    pub docker_run: Vec<Duration>,
}

pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort();
    let idx = ((s.len() - 1) as f64 * p).round() as usize;
    s[idx]
}

impl SandboxBench {
    pub fn report(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let base = percentile(&self.docker_run, 0.5);
        let ratio = |d: Duration| ms(d) / ms(base).max(f64::EPSILON);
        let line = |name: &str, v: &[Duration]| {
            format!(
                "{name:<28} p50 {:>8.1} ms   p90 {:>8.1} ms   ratio {:.3}\n",
                ms(percentile(v, 0.5)),
                ms(percentile(v, 0.9)),
                ratio(percentile(v, 0.5))
            )
        };
        let mut out = format!("read_file through the sandbox, n = {}\n", self.cold.len());
        out += &line("docker run --rm (baseline)", &self.docker_run);
        out += &line("airlock cold call", &self.cold);
        out += &line("airlock prepared call", &self.prepared);
        out
    }
}

/// The `docker run` arguments equivalent to the locked profile (baseline only: Airlock itself
/// never shells out to Docker).
pub fn docker_run_args(image_id: &str, profile: &Profile, workspace: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "-i".into(),
        "--network=none".into(),
        "--read-only".into(),
        "--cap-drop=ALL".into(),
        "--security-opt=no-new-privileges:true".into(),
        "--ipc=private".into(),
        format!("--user={}:{}", profile.uid, profile.gid),
        format!("--pids-limit={}", profile.pids),
        format!("--memory={}", profile.memory_bytes),
        format!("--memory-swap={}", profile.memory_bytes),
        format!("--cpus={}", profile.cpus),
        format!("--ulimit=nofile={0}:{0}", profile.nofile),
        format!("--ulimit=fsize={0}:{0}", profile.fsize_bytes),
        format!(
            "--tmpfs=/tmp:rw,nosuid,nodev,noexec,size={},mode=1777",
            profile.tmpfs_bytes
        ),
        format!(
            "--mount=type=bind,src={},dst={WORKSPACE_MOUNT},readonly",
            workspace.display()
        ),
        "--log-driver=none".into(),
        format!("--runtime={}", profile.runtime.as_str()),
        format!("--workdir={WORKSPACE_MOUNT}"),
        format!("--entrypoint={EXECUTOR_PATH}"),
    ];
    for e in CONTAINER_ENV {
        a.push(format!("--env={e}"));
    }
    a.push(image_id.to_string());
    a
}

fn is_result(ev: &SandboxEvent) -> bool {
    matches!(ev, SandboxEvent::Executor(Event::Result { .. }))
}

/// Runs `n` interleaved iterations of the three paths over `workspace`, which must contain
/// `bench.txt`.
pub async fn bench_sandbox(
    sandbox: &Sandbox,
    profile: &Profile,
    workspace: &Path,
    n: usize,
    mut progress: impl FnMut(usize),
) -> Result<SandboxBench, SandboxError> {
    let request = Request::new(ToolCall::ReadFile(ReadFileArgs {
        path: "bench.txt".into(),
        offset: None,
        limit: None,
    }));
    let mut line = serde_json::to_vec(&request).expect("request serializes");
    line.push(b'\n');
    let spec = |i: usize| CallSpec {
        workspace: workspace.to_path_buf(),
        writable: false,
        session_id: "bench".into(),
        call_id: format!("bench-{i}"),
        tool: "read_file".into(),
        protected: Vec::new(),
    };
    let args = docker_run_args(sandbox.image_id(), profile, workspace);
    let mut out = SandboxBench::default();
    let fail = |what: &str| SandboxError::Build(format!("benchmark call failed: {what}"));
    for i in 0..n {
        // Cold: everything on the critical path except removal.
        let t = Instant::now();
        let mut h = sandbox.run(profile, &spec(i), &request).await?;
        let mut ok = false;
        while let Some(ev) = h.next().await {
            if is_result(&ev) {
                out.cold.push(t.elapsed());
                ok = true;
            }
        }
        if !ok {
            return Err(fail("cold call returned no result"));
        }

        // Prepared: the container was started while the user read the approval prompt.
        let p = sandbox.prepare(profile, &spec(i)).await?;
        let t = Instant::now();
        let mut h = p.send(&request).await?;
        let mut ok = false;
        while let Some(ev) = h.next().await {
            if is_result(&ev) {
                out.prepared.push(t.elapsed());
                ok = true;
            }
        }
        if !ok {
            return Err(fail("prepared call returned no result"));
        }

        // Baseline: the docker CLI with the same flags.
        let t = Instant::now();
        let mut child = tokio::process::Command::new("docker")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().expect("piped");
            stdin.write_all(&line).await?;
        }
        let output = child.wait_with_output().await?;
        out.docker_run.push(t.elapsed());
        if !output.status.success()
            || !String::from_utf8_lossy(&output.stdout).contains("\"result\"")
        {
            return Err(fail(&format!(
                "docker run exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        progress(i + 1);
    }
    Ok(out)
}
