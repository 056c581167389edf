//! `memvisor bench memory`: what the host side of guest RAM costs, in one
//! run, beside issue 8's goals.
//!
//! - Guest first-touch bandwidth: `memvisor run --cmdline "workload=touch
//!   touch_mib=N"` for each backing (THP on, THP off, hugetlbfs,
//!   memfd-hugetlb); the guest times its own writes (one byte per 4 KiB
//!   page of freshly allocated memory) with the TSC, and the report's
//!   `tsc_khz` turns cycles into seconds. Goal: THP on at least 10x THP off.
//!   The hugetlb rows reserve their pages for the run
//!   (`memory::reserve`) and give them back; where that fails (not root,
//!   memory too fragmented) they say why and are skipped.
//! - Prefault: `--prefault` time per GiB (from the report's `prefault_us`),
//!   and the first-touch bandwidth after it.
//! - Discard and collapse throughput on 1 GiB of THP-backed `GuestRam`,
//!   host side, in this process: discard of THP-populated RAM in 2 MiB
//!   ranges (as a balloon's coalesced ranges arrive); collapse of RAM
//!   populated with 4 KiB pages (MADV_NOHUGEPAGE while populating, then
//!   MADV_HUGEPAGE again), in one MADV_COLLAPSE call.
//! - Boot with `--numa` (2 guest nodes of 128 MiB and one vCPU each, both
//!   on host node 0) against boot without (256 MiB, 2 vCPUs), spawn→ready
//!   medians and their delta beside the goal (within 1 ms).
//!
//! Each figure is the median of `--runs` runs after one warm-up round that
//! is not counted, the configurations interleaved run by run so that a
//! noisy moment hits them all alike.
use super::boot::{boot_once, BootBenchOptions, TempDir};
use super::stats::{summarize, Summary};
use super::verdict;
use crate::memory::backing::{Backing, Thp, HUGE};
use crate::memory::reserve::Reservation;
use crate::memory::{rss, GuestRam};
use crate::resources::format_size;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Instant;
use vm_memory::GuestAddress;

pub struct MemoryBenchOptions {
    pub runs: u32,
    pub json: bool,
    /// MiB the guest touches per run (guest RAM is this plus 256 MiB).
    pub touch_mib: u64,
}

const GIB: f64 = (1u64 << 30) as f64;
/// Host-side discard and collapse work on this much RAM.
const HOST_RAM: u64 = 1 << 30;
/// Goals from issue 8.
const GOAL_THP_RATIO: f64 = 10.0;
const GOAL_NUMA_BOOT_MS: f64 = 1.0;
/// What HOST_FACTS measured for discarding touched THP guest RAM here.
const DISCARD_HOST_LIMIT_GIBS: f64 = 230.0;

/// One first-touch configuration.
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    backing: Backing,
    thp: Thp,
    prefault: bool,
}

const CASES: [Case; 5] = [
    Case {
        name: "THP on",
        backing: Backing::Anon,
        thp: Thp::On,
        prefault: false,
    },
    Case {
        name: "THP off (4K)",
        backing: Backing::Anon,
        thp: Thp::Off,
        prefault: false,
    },
    Case {
        name: "hugetlbfs",
        backing: Backing::Hugetlbfs,
        thp: Thp::On,
        prefault: false,
    },
    Case {
        name: "memfd-hugetlb",
        backing: Backing::MemfdHugetlb,
        thp: Thp::On,
        prefault: false,
    },
    Case {
        name: "THP on, after --prefault",
        backing: Backing::Anon,
        thp: Thp::On,
        prefault: true,
    },
];

#[derive(Serialize)]
struct TouchRow {
    case: &'static str,
    /// Why the row has no figures.
    skipped: Option<String>,
    gib_per_s: Option<Summary>,
    /// Median GiB/s over THP off's median.
    vs_thp_off: Option<f64>,
    /// Median of KVM's pages_2m at exit, and of the huge (THP or hugetlb)
    /// share of the guest RAM the host holds: the mapping behind the figure.
    kvm_pages_2m: Option<f64>,
    huge_share: Option<f64>,
    /// With --prefault: its median time per GiB of guest RAM, ms.
    prefault_ms_per_gib: Option<f64>,
}

#[derive(Serialize)]
struct HostRow {
    op: &'static str,
    gib_per_s: Summary,
    /// Rss (discard) or AnonHugePages (collapse) before and after, MiB
    /// (medians): the operation did what it is timed for.
    before_mib: f64,
    after_mib: f64,
}

#[derive(Serialize)]
struct NumaRow {
    /// Why it was not measured (the --numa run failed), or null.
    status: Option<String>,
    ready_ms_without: Option<Summary>,
    ready_ms_with: Option<Summary>,
    difference_ms: Option<f64>,
}

#[derive(Serialize)]
struct MemoryBenchResult {
    runs: u32,
    touch_mib: u64,
    guest_memory: String,
    first_touch: Vec<TouchRow>,
    host: Vec<HostRow>,
    numa_boot: NumaRow,
    goals: Vec<String>,
}

/// What one run of the touch workload gave.
#[derive(Clone, Copy)]
struct TouchSample {
    gib_per_s: f64,
    pages_2m: f64,
    huge_share: f64,
    prefault_us: Option<f64>,
}

/// One `memvisor run` of the touch workload.
fn touch_run(dir: &TempDir, case: &Case, memory: u64, mib: u64) -> Result<TouchSample> {
    let exe = std::env::current_exe().context("locating the memvisor binary")?;
    let report = dir.0.join("touch.json");
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--quiet", "--memory", &format_size(memory)])
        .args(["--cmdline", &format!("workload=touch touch_mib={mib}")])
        .args(["--backing", case.backing.name()])
        .args(["--thp", if case.thp == Thp::On { "on" } else { "off" }])
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if case.prefault {
        cmd.arg("--prefault");
    }
    let out = cmd.output().context("spawning memvisor run")?;
    if !out.status.success() {
        bail!(
            "{}: memvisor run failed ({}): {}",
            case.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let r: Value =
        serde_json::from_slice(&std::fs::read(&report)?).context("parsing the run's report")?;
    let _ = std::fs::remove_file(&report);
    let w = r["guest"]
        .as_array()
        .and_then(|g| g.iter().find(|e| e["event"] == "workload"))
        .context("no workload line in the report")?;
    let (bytes, cycles, khz) = (
        w["bytes"].as_f64().context("workload without bytes")?,
        w["tsc_cycles"]
            .as_f64()
            .context("workload without tsc_cycles")?,
        r["tsc_khz"].as_f64().context("report without tsc_khz")?,
    );
    if cycles <= 0.0 || khz <= 0.0 {
        bail!("{}: {cycles} cycles at {khz} kHz", case.name);
    }
    let secs = cycles / (khz * 1e3);
    let m = &r["memory"];
    let held = m["guest_rss_bytes"].as_f64().unwrap_or(0.0)
        + m["guest_hugetlb_bytes"].as_f64().unwrap_or(0.0);
    let huge = m["guest_anon_huge_bytes"].as_f64().unwrap_or(0.0)
        + m["guest_hugetlb_bytes"].as_f64().unwrap_or(0.0);
    Ok(TouchSample {
        gib_per_s: bytes / secs / GIB,
        pages_2m: m["kvm"]["pages_2m"].as_f64().unwrap_or(f64::NAN),
        huge_share: if held > 0.0 { huge / held } else { 0.0 },
        prefault_us: m["prefault_us"].as_f64(),
    })
}

fn median(v: &[f64]) -> Option<f64> {
    summarize(v).map(|s| s.median)
}

/// Sets the THP advice of all of `ram` (the bench builds 4 KiB-populated
/// RAM this way, to have something to collapse).
fn advise(ram: &GuestRam, advice: libc::c_int) -> Result<()> {
    for r in ram.regions() {
        // SAFETY: advice on guest RAM this process mapped and owns; THP
        // advice never changes contents.
        if unsafe { libc::madvise(r.host_addr as *mut libc::c_void, r.size as usize, advice) } != 0
        {
            return Err(std::io::Error::last_os_error()).context("madvise");
        }
    }
    Ok(())
}

fn smaps(ram: &GuestRam) -> Result<rss::SmapsSum> {
    rss::smaps_of(&ram.host_ranges()).context("reading smaps")
}

const MIB: f64 = (1u64 << 20) as f64;

/// Discards 1 GiB of THP-populated RAM in 2 MiB ranges: (GiB/s, Rss MiB
/// before, after).
fn discard_run() -> Result<(f64, f64, f64)> {
    let ram = GuestRam::new(HOST_RAM)?;
    ram.populate()?;
    let before = smaps(&ram)?.rss as f64 / MIB;
    let t = Instant::now();
    for gpa in (0..HOST_RAM).step_by(HUGE) {
        ram.discard(GuestAddress(gpa), HUGE as u64)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let after = smaps(&ram)?.rss as f64 / MIB;
    Ok((HOST_RAM as f64 / GIB / secs, before, after))
}

/// Collapses 1 GiB of RAM populated with 4 KiB pages: (GiB/s, THP MiB
/// before, after).
fn collapse_run() -> Result<(f64, f64, f64)> {
    let ram = GuestRam::new(HOST_RAM)?;
    advise(&ram, libc::MADV_NOHUGEPAGE)?;
    ram.populate()?;
    advise(&ram, libc::MADV_HUGEPAGE)?;
    let before = smaps(&ram)?.anon_huge as f64 / MIB;
    let t = Instant::now();
    // MADV_COLLAPSE gives up (EAGAIN) now and then on a busy host: retry
    // a few times, all of it timed.
    let mut r = ram.collapse(GuestAddress(0), HOST_RAM);
    for _ in 0..3 {
        if r.is_ok() {
            break;
        }
        r = ram.collapse(GuestAddress(0), HOST_RAM);
    }
    r?;
    let secs = t.elapsed().as_secs_f64();
    let after = smaps(&ram)?.anon_huge as f64 / MIB;
    Ok((HOST_RAM as f64 / GIB / secs, before, after))
}

fn host_row(op: &'static str, runs: &[(f64, f64, f64)]) -> HostRow {
    let col = |f: fn(&(f64, f64, f64)) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    HostRow {
        op,
        gib_per_s: summarize(&col(|r| r.0)).unwrap_or_default(),
        before_mib: median(&col(|r| r.1)).unwrap_or(0.0),
        after_mib: median(&col(|r| r.2)).unwrap_or(0.0),
    }
}

/// The boots compared: 256 MiB and 2 vCPUs, without `--numa` and with two
/// guest nodes of half the RAM and one vCPU each, both on host node 0 (the
/// one node every host has). Each run is `bench boot`'s.
fn numa_boot_options(numa: bool) -> BootBenchOptions {
    BootBenchOptions {
        runs: 1,
        json: false,
        memory: 256 << 20,
        vcpus: 2,
        cmdline: "workload=boot".into(),
        numa: if numa {
            vec![
                "node=0,size=128M,cpus=0,host-node=0".into(),
                "node=1,size=128M,cpus=1,host-node=0".into(),
            ]
        } else {
            Vec::new()
        },
    }
}

fn numa_row(dir: &TempDir, runs: u32) -> Result<NumaRow> {
    let (plain, numa) = (numa_boot_options(false), numa_boot_options(true));
    // Also the warm-up round, not counted. Tags stay short: the API
    // socket's path must fit in sun_path (108 bytes) under any TMPDIR.
    if let Err(e) = boot_once(dir, "w", &numa) {
        return Ok(NumaRow {
            status: Some(format!("--numa run failed: {e:#}")),
            ready_ms_without: None,
            ready_ms_with: None,
            difference_ms: None,
        });
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..runs {
        without.push(boot_once(dir, &format!("p{i}"), &plain)?.ready_ms);
        with.push(boot_once(dir, &format!("n{i}"), &numa)?.ready_ms);
    }
    let (w, wo) = (summarize(&with), summarize(&without));
    Ok(NumaRow {
        status: None,
        difference_ms: w.zip(wo).map(|(a, b)| a.median - b.median),
        ready_ms_with: w,
        ready_ms_without: wo,
    })
}

pub fn bench_memory(o: &MemoryBenchOptions) -> Result<()> {
    if o.runs == 0 || o.touch_mib == 0 {
        bail!("--runs and --touch-mib must be at least 1");
    }
    let memory = (o.touch_mib + 256) << 20;
    let dir = TempDir::new()?;
    let huge_pages = memory / HUGE as u64;
    // Reserved for the whole run (and locked against other reservers), given
    // back on every path out.
    let reservation = Reservation::pages(huge_pages).map_err(|e| {
        format!(
            "cannot reserve {huge_pages} hugetlb pages: {:#}",
            anyhow::Error::new(e)
        )
    });
    let mut samples: Vec<Vec<TouchSample>> = vec![Vec::new(); CASES.len()];
    let mut skipped: Vec<Option<String>> = vec![None; CASES.len()];
    // Round 0 warms up and is not counted: on the hosts measured here the
    // first use of host memory no process touched before costs ~30x more
    // (512 MiB of THP: 1.5 s in a first run, 50-60 ms in the next ones),
    // which says what the host's host does, not what memvisor does.
    for round in 0..=o.runs {
        for (i, case) in CASES.iter().enumerate() {
            if case.backing.is_hugetlb() {
                if let Err(e) = &reservation {
                    skipped[i] = Some(e.clone());
                }
            }
            if skipped[i].is_some() {
                continue;
            }
            let run = match touch_run(&dir, case, memory, o.touch_mib) {
                Ok(r) => r,
                // The pool is the host's: a process that does not take
                // memvisor's lock may have taken the pages meanwhile.
                Err(e) if case.backing.is_hugetlb() => {
                    skipped[i] = Some(format!("{e:#}"));
                    samples[i].clear();
                    continue;
                }
                Err(e) => return Err(e),
            };
            if round > 0 {
                samples[i].push(run);
            }
        }
    }
    drop(reservation);
    let off = median(&samples[1].iter().map(|s| s.gib_per_s).collect::<Vec<_>>());
    let first_touch: Vec<TouchRow> = CASES
        .iter()
        .zip(samples.iter().zip(skipped))
        .map(|(case, (s, skipped))| {
            let col = |f: fn(&TouchSample) -> f64| s.iter().map(f).collect::<Vec<_>>();
            let bw = summarize(&col(|r| r.gib_per_s));
            TouchRow {
                case: case.name,
                skipped,
                vs_thp_off: bw.zip(off).map(|(b, o)| b.median / o),
                gib_per_s: bw,
                kvm_pages_2m: median(&col(|r| r.pages_2m)),
                huge_share: median(&col(|r| r.huge_share)),
                prefault_ms_per_gib: median(
                    &s.iter()
                        .filter_map(|r| r.prefault_us)
                        .map(|us| us / 1000.0 / (memory as f64 / GIB))
                        .collect::<Vec<_>>(),
                ),
            }
        })
        .collect();
    let (mut discards, mut collapses) = (Vec::new(), Vec::new());
    for round in 0..=o.runs {
        let (d, c) = (discard_run()?, collapse_run()?);
        if round > 0 {
            discards.push(d);
            collapses.push(c);
        }
    }
    let host = vec![
        host_row("discard", &discards),
        host_row("collapse", &collapses),
    ];
    let numa_boot = numa_row(&dir, o.runs)?;
    let mut goals = Vec::new();
    if let Some(r) = first_touch[0].vs_thp_off {
        goals.push(format!(
            "first touch THP on / THP off {r:.1}x, goal >= {GOAL_THP_RATIO}x: {}",
            verdict(r >= GOAL_THP_RATIO)
        ));
    }
    goals.push(format!(
        "discard {:.1} GiB/s on THP RAM (host limit measured here ~{DISCARD_HOST_LIMIT_GIBS} GiB/s): {:.0}% of it",
        host[0].gib_per_s.median,
        100.0 * host[0].gib_per_s.median / DISCARD_HOST_LIMIT_GIBS
    ));
    goals.push(match (&numa_boot.status, numa_boot.difference_ms) {
        (None, Some(d)) => format!(
            "boot with --numa (2 nodes) {d:+.3} ms vs without, goal within {GOAL_NUMA_BOOT_MS} ms: {}",
            verdict(d.abs() <= GOAL_NUMA_BOOT_MS)
        ),
        (s, _) => format!(
            "boot with --numa within {GOAL_NUMA_BOOT_MS} ms of boot without: {}",
            s.as_deref().unwrap_or("not measured")
        ),
    });
    let result = MemoryBenchResult {
        runs: o.runs,
        touch_mib: o.touch_mib,
        guest_memory: format_size(memory),
        first_touch,
        host,
        numa_boot,
        goals,
    };
    drop(dir);
    if o.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_table(&result);
    }
    Ok(())
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn print_table(r: &MemoryBenchResult) {
    println!(
        "memvisor bench memory: {} runs (medians), guest touches {} MiB of {} (workload=touch)",
        r.runs, r.touch_mib, r.guest_memory
    );
    println!(
        "  {:<26} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  prefault ms/GiB",
        "first touch (GiB/s)", "min", "median", "max", "vs 4K", "pages_2m", "huge"
    );
    for t in &r.first_touch {
        if let Some(why) = &t.skipped {
            println!("  {:<26} skipped: {why}", t.case);
            continue;
        }
        let s = t.gib_per_s.unwrap_or_default();
        println!(
            "  {:<26} {:>9.3} {:>9.3} {:>9.3} {:>8}x {:>9} {:>6}%  {}",
            t.case,
            s.min,
            s.median,
            s.max,
            opt(t.vs_thp_off, 1),
            opt(t.kvm_pages_2m, 0),
            opt(t.huge_share.map(|h| 100.0 * h), 0),
            opt(t.prefault_ms_per_gib, 1)
        );
    }
    println!(
        "  {:<26} {:>9} {:>9} {:>9}  before -> after (MiB)",
        "host side, 1 GiB (GiB/s)", "min", "median", "max"
    );
    for h in &r.host {
        let what = if h.op == "discard" { "Rss" } else { "THP" };
        println!(
            "  {:<26} {:>9.2} {:>9.2} {:>9.2}  {what} {:.0} -> {:.0}",
            h.op, h.gib_per_s.min, h.gib_per_s.median, h.gib_per_s.max, h.before_mib, h.after_mib
        );
    }
    let n = &r.numa_boot;
    match (&n.status, n.ready_ms_without, n.ready_ms_with) {
        (None, Some(a), Some(b)) => println!(
            "  spawn -> ready (ms, 256M, 2 vCPUs): without --numa {:.3}, with --numa (2 nodes) {:.3}, delta {:+.3} (goal within {GOAL_NUMA_BOOT_MS})",
            a.median,
            b.median,
            b.median - a.median
        ),
        (s, _, _) => println!(
            "  boot with --numa: {}",
            s.as_deref().unwrap_or("not measured")
        ),
    }
    for g in &r.goals {
        println!("  {g}");
    }
}
