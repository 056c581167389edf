//! `memvisor bench api`: control-API latency against a running guest.
//!
//! Spawns `memvisor run --api-sock` with an `idle` guest (every vCPU halted,
//! asleep in KVM until kicked) or a `spin` one (every vCPU spinning at CPL3,
//! on a host core when asked to stop; with as many vCPUs as host cores the
//! VMM's own threads then wait for a core), then
//! times from this process, over the Unix socket, round trip by round trip:
//! `GET /machine-config`, `PATCH /vm Paused` (answered once every vCPU is
//! out of KVM_RUN) and `PATCH /vm Resumed`. A curl-equivalent client, so the
//! figures are what a user's script sees.
use super::boot::TempDir;
use super::stats::percentile;
use super::verdict;
use crate::api::client::request;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guest the API is timed against: its workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GuestLoad {
    Idle,
    Spin,
}

impl GuestLoad {
    fn workload(self) -> &'static str {
        match self {
            GuestLoad::Idle => "idle",
            GuestLoad::Spin => "spin",
        }
    }
}

pub struct ApiBenchOptions {
    pub guest: GuestLoad,
    pub requests: u32,
    pub pauses: u32,
    pub vcpus: u32,
    pub json: bool,
}

/// Goals from the issue.
const GOAL_REQUEST_P99_MS: f64 = 1.0;
const GOAL_PAUSE_PER_VCPU_MS: f64 = 1.0;

#[derive(Serialize)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Serialize)]
struct ApiBenchResult {
    guest: GuestLoad,
    host_cpus: usize,
    vcpus: u32,
    requests: u32,
    pauses: u32,
    get_machine_config: Latency,
    pause_to_paused: Latency,
    resume_to_running: Latency,
    pause_p99_per_vcpu_ms: f64,
    goals: Vec<String>,
}

fn latency(ms: &[f64]) -> Latency {
    Latency {
        p50_ms: percentile(ms, 50.0).unwrap_or(0.0),
        p99_ms: percentile(ms, 99.0).unwrap_or(0.0),
        max_ms: percentile(ms, 100.0).unwrap_or(0.0),
    }
}

/// Kills the child VMM on every path out.
pub(super) struct Guard(pub(super) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // Only a child not yet reaped: a reaped one's pid may be reused.
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Polls `ready` every 2 ms until it holds; fails if the VMM exits first
/// or `limit` passes.
pub(super) fn wait_for(
    guard: &mut Guard,
    limit: Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let t = Instant::now();
    while !ready() {
        if let Some(st) = guard.0.try_wait()? {
            bail!("the VMM exited ({st}) before it would {what}");
        }
        if t.elapsed() > limit {
            bail!("the VMM did not {what} within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn timed(sock: &Path, method: &str, uri: &str, body: Option<&str>, want: u16) -> Result<f64> {
    let t = Instant::now();
    let (code, text) =
        request(sock, method, uri, body).with_context(|| format!("{method} {uri}"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if code != want {
        bail!("{method} {uri}: status {code}, expected {want}: {text}");
    }
    Ok(ms)
}

pub fn bench_api(o: &ApiBenchOptions) -> Result<()> {
    let dir = TempDir::new()?;
    let sock = dir.0.join("api.sock");
    let exe = std::env::current_exe().context("finding the memvisor binary")?;
    let child = Command::new(exe)
        .args(["run", "--quiet", "--timeout", "3600", "--memory", "256M"])
        .args([
            "--vcpus",
            &o.vcpus.to_string(),
            "--cmdline",
            &format!("workload={}", o.guest.workload()),
        ])
        .arg("--api-sock")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning memvisor run")?;
    let mut guard = Guard(child);
    wait_for(&mut guard, Duration::from_secs(10), "serve its API", || {
        request(&sock, "GET", "/", None).is_ok()
    })?;
    // Let every vCPU reach its spin loop.
    std::thread::sleep(Duration::from_millis(100));
    let mut get = Vec::new();
    for _ in 0..o.requests {
        get.push(timed(&sock, "GET", "/machine-config", None, 200)?);
    }
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    for _ in 0..o.pauses {
        pause.push(timed(
            &sock,
            "PATCH",
            "/vm",
            Some(r#"{"state":"Paused"}"#),
            204,
        )?);
        resume.push(timed(
            &sock,
            "PATCH",
            "/vm",
            Some(r#"{"state":"Resumed"}"#),
            204,
        )?);
        // Let the vCPUs get back into KVM_RUN before the next pause.
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(guard);
    let r = ApiBenchResult {
        guest: o.guest,
        host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        vcpus: o.vcpus,
        requests: o.requests,
        pauses: o.pauses,
        get_machine_config: latency(&get),
        pause_p99_per_vcpu_ms: percentile(&pause, 99.0).unwrap_or(0.0) / o.vcpus as f64,
        pause_to_paused: latency(&pause),
        resume_to_running: latency(&resume),
        goals: Vec::new(),
    };
    let goals = vec![
        format!(
            "GET /machine-config p99 {:.3} ms, goal < {GOAL_REQUEST_P99_MS} ms: {}",
            r.get_machine_config.p99_ms,
            verdict(r.get_machine_config.p99_ms < GOAL_REQUEST_P99_MS)
        ),
        format!(
            "pause p99 per vCPU {:.3} ms, goal < {GOAL_PAUSE_PER_VCPU_MS} ms: {}",
            r.pause_p99_per_vcpu_ms,
            verdict(r.pause_p99_per_vcpu_ms < GOAL_PAUSE_PER_VCPU_MS)
        ),
    ];
    let r = ApiBenchResult { goals, ..r };
    if o.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "memvisor bench api: {} vCPUs (workload={}) on {} host CPUs, {} requests, {} pause/resume pairs",
        r.vcpus,
        r.guest.workload(),
        r.host_cpus,
        r.requests,
        r.pauses
    );
    println!(
        "  {:<24} {:>9} {:>9} {:>9}",
        "round trip (ms)", "p50", "p99", "max"
    );
    for (name, l) in [
        ("GET /machine-config", &r.get_machine_config),
        ("pause -> Paused", &r.pause_to_paused),
        ("resume -> Running", &r.resume_to_running),
    ] {
        println!(
            "  {name:<24} {:>9.3} {:>9.3} {:>9.3}",
            l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    for g in &r.goals {
        println!("  {g}");
    }
    Ok(())
}
