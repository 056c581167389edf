//! `memvisor bench boot`: whole-process boot time, measured from outside.
//!
//! Each run spawns `memvisor run` with `MEMVISOR_SPAWN_NS` set to the clock
//! reading taken just before the spawn, so the child's report gives every
//! phase (and guest-ready) from that same instant; spawn→exit is measured
//! here. The VMM's own memory cost is VmRSS minus guest-RAM Rss (smaps).
//! Every run serves the control API (`--api-sock`), so the event loop, the
//! API thread and its socket are in the figures.
use super::stats::{summarize, Summary};
use crate::clock::{now_ns, SPAWN_ENV};
use crate::resources::format_size;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};

pub struct BootBenchOptions {
    pub runs: u32,
    pub json: bool,
    pub memory: u64,
    pub vcpus: u32,
    pub cmdline: String,
    /// `--numa` specs passed on to every run.
    pub numa: Vec<String>,
}

/// Anchors to print beside our figures (from the issue and HOST_FACTS).
const ANCHORS: &[&str] = &[
    "goals (issue 6) are for 256M and 1 vCPU, judged on the median; compass goal for ready: 3 ms",
    "Firecracker: VMM start alone 6-60 ms wall (typ. 12 ms), RSS overhead promise <= 5 MiB",
    "QEMU 7.2 microvm on this host: ~40 ms process start to exit of a trivial guest, ~39 MB peak RSS",
];

#[derive(Serialize)]
struct BenchResult {
    runs: u32,
    memory: String,
    vcpus: u32,
    cmdline: String,
    numa: Vec<String>,
    spawn_to_ready_ms: Summary,
    spawn_to_exit_ms: Summary,
    vmm_overhead_mib: Summary,
    /// Median time spent in each phase (from the previous milestone), ms.
    phase_median_ms: Vec<(String, f64)>,
    anchors: &'static [&'static str],
}

/// A private directory for the runs' reports, removed on every path out.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new() -> Result<Self> {
        let base = std::env::temp_dir();
        for n in 0..100u32 {
            let p = base.join(format!(
                "memvisor-bench-{}-{}-{n}",
                std::process::id(),
                now_ns()
            ));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("creating a directory for the run reports"),
            }
        }
        bail!("cannot create a fresh directory in {}", base.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The phases of a report, in boot order.
const PHASE_ORDER: [&str; 13] = [
    "vmm_main",
    "kvm_opened",
    "vm_created",
    "memory_ready",
    "kernel_loaded",
    "vcpus_created",
    "first_kvm_run",
    "first_guest_instruction",
    "guest_ready",
    "workload_done",
    "guest_exit",
    "teardown_done",
    "vm_closed",
];

/// What one boot gave.
pub(crate) struct BootSample {
    /// Spawn→guest-ready (from the child's report) and spawn→exit, ms.
    pub ready_ms: f64,
    pub exit_ms: f64,
    pub vmm_overhead_mib: f64,
    /// Each phase's span from the previous one present, ms, in boot order.
    pub phase_spans_ms: Vec<(usize, f64)>,
}

/// Spawns one `memvisor run` as `o` describes (its report and API socket
/// in `dir`, named after `tag`: keep it short, the socket's path must fit
/// in sun_path) and reads its figures. A run that fails
/// is an error carrying its stderr.
pub(crate) fn boot_once(dir: &TempDir, tag: &str, o: &BootBenchOptions) -> Result<BootSample> {
    let exe = std::env::current_exe().context("locating the memvisor binary")?;
    let report_path = dir.0.join(format!("{tag}.json"));
    let mut cmd = Command::new(&exe);
    cmd.args([
        "run",
        "--quiet",
        "--memory",
        &format_size(o.memory),
        "--vcpus",
        &o.vcpus.to_string(),
    ])
    .args(["--cmdline", &o.cmdline])
    .args(o.numa.iter().flat_map(|s| ["--numa", s.as_str()]))
    .arg("--report")
    .arg(&report_path)
    // The API thread and its socket are part of what is measured.
    .arg("--api-sock")
    .arg(dir.0.join(format!("{tag}.sock")))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let t0 = now_ns();
    let out = cmd
        .env(SPAWN_ENV, t0.to_string())
        .output()
        .context("spawning memvisor run")?;
    let t1 = now_ns();
    if !out.status.success() {
        let _ = std::fs::remove_file(&report_path);
        bail!(
            "{tag} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path)?)
        .context("parsing the run's report")?;
    let _ = std::fs::remove_file(&report_path);
    if report["clock_origin"] != "spawn" {
        bail!(
            "the run did not take the spawn clock (clock_origin {})",
            report["clock_origin"]
        );
    }
    let phases = report["phases_us"]
        .as_object()
        .context("report without phases_us")?;
    let ready_ms = phases
        .get("guest_ready")
        .and_then(Value::as_f64)
        .context("no guest_ready phase")?
        / 1000.0;
    // Span of each phase = its timestamp minus the previous one, in boot order.
    let mut prev = 0.0;
    let mut phase_spans_ms = Vec::new();
    for (k, name) in PHASE_ORDER.iter().enumerate() {
        if let Some(t) = phases.get(*name).and_then(Value::as_f64) {
            phase_spans_ms.push((k, (t - prev) / 1000.0));
            prev = t;
        }
    }
    Ok(BootSample {
        ready_ms,
        exit_ms: (t1 - t0) as f64 / 1e6,
        vmm_overhead_mib: report["memory"]["vmm_overhead_bytes"]
            .as_f64()
            .unwrap_or(0.0)
            / (1 << 20) as f64,
        phase_spans_ms,
    })
}

pub fn bench_boot(o: &BootBenchOptions) -> Result<()> {
    if o.runs == 0 {
        bail!("--runs 0: at least 1 run is needed");
    }
    let dir = TempDir::new()?;
    let mut ready = Vec::new();
    let mut exit = Vec::new();
    let mut overhead = Vec::new();
    let mut phase_spans: BTreeMap<usize, (String, Vec<f64>)> = BTreeMap::new();
    for i in 0..o.runs {
        let s = boot_once(&dir, &format!("run{i}"), o)?;
        ready.push(s.ready_ms);
        exit.push(s.exit_ms);
        overhead.push(s.vmm_overhead_mib);
        for (k, span) in s.phase_spans_ms {
            phase_spans
                .entry(k)
                .or_insert_with(|| (PHASE_ORDER[k].to_string(), Vec::new()))
                .1
                .push(span);
        }
    }
    drop(dir);
    let result = BenchResult {
        runs: o.runs,
        memory: format_size(o.memory),
        vcpus: o.vcpus,
        cmdline: o.cmdline.clone(),
        numa: o.numa.clone(),
        spawn_to_ready_ms: summarize(&ready).expect("runs > 0"),
        spawn_to_exit_ms: summarize(&exit).expect("runs > 0"),
        vmm_overhead_mib: summarize(&overhead).expect("runs > 0"),
        phase_median_ms: phase_spans
            .into_values()
            .map(|(n, v)| (n, summarize(&v).map_or(0.0, |s| s.median)))
            .collect(),
        anchors: ANCHORS,
    };
    if o.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_table(&result);
    }
    Ok(())
}

fn print_table(r: &BenchResult) {
    println!(
        "memvisor bench boot: {} runs, {} RAM, {} vCPU(s), cmdline '{}'",
        r.runs, r.memory, r.vcpus, r.cmdline
    );
    for spec in &r.numa {
        println!("  --numa {spec}");
    }
    println!(
        "{:<26} {:>10} {:>10} {:>10}        goal (median)",
        "", "min", "median", "max"
    );
    for (name, s, unit, goal) in [
        ("spawn -> guest ready", r.spawn_to_ready_ms, "ms", 5.0),
        ("spawn -> exit", r.spawn_to_exit_ms, "ms", 10.0),
        ("VMM RSS overhead", r.vmm_overhead_mib, "MiB", 3.0),
    ] {
        let verdict = super::verdict(s.median <= goal);
        println!(
            "{:<26} {:>10.3} {:>10.3} {:>10.3}  {unit:<5} <= {goal} {unit}: {verdict}",
            name, s.min, s.median, s.max
        );
    }
    let total: f64 = r.phase_median_ms.iter().map(|p| p.1).sum();
    println!("phase (median ms since previous milestone, share of their sum):");
    for (name, ms) in &r.phase_median_ms {
        println!(
            "  {:<26} {:>9.3} ms {:>5.1}%",
            name,
            ms,
            100.0 * ms / total.max(1e-9)
        );
    }
    for a in r.anchors {
        println!("  {a}");
    }
}
