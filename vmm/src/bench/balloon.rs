//! `memvisor bench balloon`: how fast the balloon takes guest RAM from the
//! host and gives it back, beside issue 9's goals and the published anchors.
//!
//! Each run spawns `memvisor run --prefault` (every page of guest RAM
//! written by the host before the guest starts, so the Rss the balloon can
//! take is all there) with `workload=balloon-hold` holding 64 MiB busy, and
//! drives the balloon over the API socket as a user's script would:
//!
//! - Reclaim: `PATCH /balloon` to the inflate target, then the child's
//!   VmRSS (/proc/PID/status) is read every 200 µs until it stops falling.
//!   The drop is complete at the first reading within 2 MiB of the final
//!   one; reclaim speed is the balloon's bytes over target set → complete,
//!   and the time to 90% of the drop is reported beside it.
//! - Return: `PATCH /balloon` to 0. Deflating changes nothing on the host
//!   (the pages refault when the guest touches them), so return speed is
//!   the bytes over target set → the guest's `actual` back at 0, from the
//!   device's own step timing in the run's report.
//! - Free page reporting, in its own run (reporting on, the balloon left at
//!   0): the guest holds as much as the balloon would take, frees it and
//!   sends a `balloon-freed` record the VMM stamps on arrival (the bench
//!   sets the VMM's clock origin at spawn, CLOCK_MONOTONIC shared between
//!   processes, so the stamp and the bench's Rss readings are on one
//!   clock). The figure is free → Rss down by 90% of the freed bytes. It
//!   does not depend on `balloon_mode` (reporting hands over free blocks of
//!   order ≥ 9 either way), so it runs once per guest size.
//!
//! Besides the fresh guests, an aged one (`fragment=4`: the guest
//! first keeps one page in four of its free memory, so what is free is
//! scattered through every 2 MiB block, as in a Linux guest that has run
//! for a while) inflates 512 MiB in `4k` mode: its PFNs no longer merge
//! into whole huge pages, each run is its own discard and splits a host
//! huge page, so this row, not the fresh one, is what a Linux guest's 4K
//! balloon costs.
//!
//! Figures are medians over `--runs` runs, the configurations interleaved
//! run by run.
use super::api::{wait_for, Guard};
use super::boot::TempDir;
use super::stats::{summarize, Summary};
use super::verdict;
use crate::api::client::request;
use crate::clock::{now_ns, SPAWN_ENV};
use crate::memory::rss::vm_rss_of;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct BalloonBenchOptions {
    pub runs: u32,
    /// One 256 MiB guest inflated by 128 MiB instead of the sizes.
    pub quick: bool,
    pub json: bool,
}

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// What the hold workload keeps busy while the balloon moves.
const HOLD: &str = "64M";
/// Rss polling period.
const POLL: Duration = Duration::from_micros(200);
/// A reading this close to the final one counts as the drop complete (the
/// VMM's own allocations move VmRSS by a little).
const SETTLED: u64 = 2 * MIB;
/// No change larger than SETTLED for this long: the drop is over.
const QUIET: Duration = Duration::from_millis(500);
/// Goals from issue 9.
const GOAL_2M_GIBS: f64 = 20.0;
const GOAL_4K_GIBS: f64 = 2.0;
const GOAL_2M_90_MS: f64 = 250.0;
const GOAL_REPORT_MS: f64 = 1000.0;
/// Anchors from issue 9: QEMU 7.2 with a Linux guest on this host;
/// HyperAlloc (EuroSys'25) reclaim / return; this host's discard limit.
const ANCHORS: &str = "anchors: QEMU 7.2 here 0.55 GiB/s inflate, 90% of the drop in 500 ms; \
     HyperAlloc 4K virtio-balloon 0.95 / 2.3 GiB/s, huge-page balloon 136 / 326, \
     virtio-mem 34.5 / 102 (reclaim / return); host discard limit ~230 GiB/s";
const ANCHOR_REPORT: &str = "anchor: QEMU 7.2 free page reporting ~2 s after the free";

#[derive(Clone, Copy)]
struct Case {
    memory_mib: u64,
    amount_mib: u64,
    mode: &'static str,
    /// balloon-hold's `fragment=K` (keep one free page in K first); 0: a
    /// fresh guest.
    fragment: u32,
}

/// The aged guest's case: 512 MiB of a 1 GiB guest that kept one page in
/// four of its free memory.
const AGED: (u64, u64, u32) = (1024, 512, 4);

fn cases(quick: bool) -> Vec<Case> {
    let sizes: &[(u64, u64)] = if quick {
        &[(256, 128)]
    } else {
        &[(1024, 768), (4096, 3072)]
    };
    let mut v = Vec::new();
    for &(memory_mib, amount_mib) in sizes {
        for mode in ["4k", "2m"] {
            v.push(Case {
                memory_mib,
                amount_mib,
                mode,
                fragment: 0,
            });
        }
    }
    if !quick {
        let (memory_mib, amount_mib, fragment) = AGED;
        v.push(Case {
            memory_mib,
            amount_mib,
            mode: "4k",
            fragment,
        });
    }
    v
}

/// One inflate/deflate cycle.
#[derive(Clone, Copy)]
struct CycleSample {
    reclaim_gib_s: f64,
    complete_ms: f64,
    drop_90_ms: f64,
    /// Rss drop over the balloon's bytes.
    dropped_share: f64,
    /// The device's own target set → last discard returned.
    device_rss_done_ms: f64,
    return_gib_s: f64,
    return_ms: f64,
}

#[derive(Serialize)]
struct CycleRow {
    guest_mib: u64,
    balloon_mib: u64,
    mode: &'static str,
    /// `fragment=K` of an aged guest, 0 for a fresh one.
    fragment: u32,
    reclaim_gib_s: Summary,
    complete_ms: Summary,
    drop_90_ms: Summary,
    dropped_share: f64,
    device_rss_done_ms: f64,
    return_gib_s: Summary,
    return_ms: Summary,
}

#[derive(Serialize)]
struct ReportRow {
    guest_mib: u64,
    freed_mib: u64,
    /// Why the row has no figure.
    not_measured: Option<String>,
    free_to_90_ms: Option<Summary>,
}

#[derive(Serialize)]
struct BalloonBenchResult {
    runs: u32,
    written_first: &'static str,
    hold: &'static str,
    cycles: Vec<CycleRow>,
    reporting: Vec<ReportRow>,
    goals: Vec<String>,
}

/// A spawned `memvisor run` with the balloon and API socket; its clock
/// origin is `spawn_ns`.
struct Vmm {
    guard: Guard,
    sock: std::path::PathBuf,
    report: std::path::PathBuf,
    stderr: std::path::PathBuf,
    spawn_ns: u64,
}

impl Vmm {
    /// What the run said on stderr, for an error message.
    fn said(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let s = s.trim();
        // The end says why; keep the message short.
        let start = (s.len().saturating_sub(2000)..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len());
        s[start..].to_string()
    }
}

fn spawn(dir: &TempDir, memory_mib: u64, balloon: &str, cmdline: &str) -> Result<Vmm> {
    let exe = std::env::current_exe().context("locating the memvisor binary")?;
    // A socket path must fit sun_path (108 bytes); a deep TMPDIR does not.
    let mut sock = dir.0.join("balloon.sock");
    if sock.as_os_str().len() >= 100 {
        sock = format!("/tmp/memvisor-bench-balloon-{}.sock", std::process::id()).into();
    }
    let report = dir.0.join("balloon.json");
    let stderr = dir.0.join("balloon.err");
    let _ = std::fs::remove_file(&report);
    let spawn_ns = now_ns();
    let child = Command::new(exe)
        .args(["run", "--quiet", "--prefault", "--timeout", "300"])
        .args(["--memory", &format!("{memory_mib}M")])
        .args(["--balloon", balloon, "--cmdline", cmdline])
        .arg("--api-sock")
        .arg(&sock)
        .arg("--report")
        .arg(&report)
        .env(SPAWN_ENV, spawn_ns.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).context("creating the run's stderr file")?)
        .spawn()
        .context("spawning memvisor run")?;
    Ok(Vmm {
        guard: Guard(child),
        sock,
        report,
        stderr,
        spawn_ns,
    })
}

fn set_target(sock: &Path, mib: u64) -> Result<()> {
    let body = format!("{{\"amount_mib\":{mib}}}");
    let (code, text) = request(sock, "PATCH", "/balloon", Some(&body))
        .with_context(|| format!("PATCH /balloon {body}"))?;
    if code != 204 {
        bail!("PATCH /balloon {body}: status {code}: {text}");
    }
    Ok(())
}

/// Waits for the VMM to end and returns its report.
fn finish(vmm: &mut Vmm) -> Result<Value> {
    let t = Instant::now();
    let st = loop {
        if let Some(st) = vmm.guard.0.try_wait()? {
            break st;
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("the VMM did not end within 300 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !st.success() {
        bail!("memvisor run failed ({st}): {}", vmm.said());
    }
    serde_json::from_slice(&std::fs::read(&vmm.report).context("reading the run's report")?)
        .context("parsing the run's report")
}

/// (ns, VmRSS) readings from now until the Rss stops changing, or `limit`.
fn watch_rss(pid: u32, until_quiet: bool, limit: Duration) -> Result<Vec<(u64, u64)>> {
    let start = now_ns();
    let mut v = Vec::new();
    let mut last_change = start;
    let mut last = vm_rss_of(pid)?;
    while (now_ns() - start) < limit.as_nanos() as u64 {
        let Ok(rss) = vm_rss_of(pid) else { break };
        let t = now_ns();
        v.push((t, rss));
        if rss.abs_diff(last) > SETTLED {
            last = rss;
            last_change = t;
        }
        if until_quiet && t - last_change > QUIET.as_nanos() as u64 {
            break;
        }
        std::thread::sleep(POLL);
    }
    Ok(v)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn cycle_once(dir: &TempDir, c: &Case) -> Result<CycleSample> {
    let mut cmdline = format!(
        "workload=balloon-hold size={HOLD} cycles=1 seconds=240 balloon_mode={}",
        c.mode
    );
    if c.fragment > 0 {
        cmdline += &format!(" fragment={}", c.fragment);
    }
    let mut vmm = spawn(dir, c.memory_mib, "amount_mib=0", &cmdline)?;
    let pid = vmm.guard.0.id();
    // Firecracker refuses a target until the guest's driver is up.
    let sock = vmm.sock.clone();
    let up = wait_for(
        &mut vmm.guard,
        Duration::from_secs(120),
        "bring the balloon up",
        || set_target(&sock, 0).is_ok(),
    );
    if let Err(e) = up {
        bail!("{e:#}: {}", vmm.said());
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = vm_rss_of(pid)?;
    let t0 = now_ns();
    set_target(&sock, c.amount_mib)?;
    let samples = watch_rss(pid, true, Duration::from_secs(120))?;
    let last = samples.last().context("no Rss reading")?.1;
    let dropped = before.saturating_sub(last);
    if dropped < c.amount_mib * MIB / 2 {
        bail!(
            "{} MiB {} inflate by {} MiB: Rss dropped only {} MiB",
            c.memory_mib,
            c.mode,
            c.amount_mib,
            dropped / MIB
        );
    }
    let first = |ok: &dyn Fn(u64) -> bool| {
        samples
            .iter()
            .find(|&&(_, r)| ok(r))
            .map(|&(t, _)| t - t0)
            .context("no reading reached it")
    };
    let complete = first(&|r| r <= last + SETTLED)?;
    let drop_90 = first(&|r| before.saturating_sub(r) * 10 >= dropped * 9)?;
    set_target(&sock, 0)?;
    let report = finish(&mut vmm)?;
    let steps = report["balloon"]["steps"]
        .as_array()
        .context("no balloon steps in the report")?;
    let step = |kind: &str, key: &str| {
        steps
            .iter()
            .find(|s| s["kind"] == kind)
            .and_then(|s| s[key].as_f64())
            .with_context(|| format!("no {kind} step with {key} in the report"))
    };
    let return_ms = step("deflate", "actual_reached_ms")?;
    let bytes = (c.amount_mib * MIB) as f64;
    Ok(CycleSample {
        reclaim_gib_s: bytes / GIB / (complete as f64 / 1e9),
        complete_ms: ms(complete),
        drop_90_ms: ms(drop_90),
        dropped_share: dropped as f64 / bytes,
        device_rss_done_ms: step("inflate", "rss_done_ms")?,
        return_gib_s: bytes / GIB / (return_ms / 1e3),
        return_ms,
    })
}

/// Free → Rss down by 90% of the freed bytes, with free page reporting.
fn report_once(dir: &TempDir, memory_mib: u64, freed_mib: u64) -> Result<f64> {
    let cmdline = format!("workload=balloon-hold size={freed_mib}M cycles=0 seconds=1 linger=3000");
    let mut vmm = spawn(
        dir,
        memory_mib,
        "amount_mib=0,free_page_reporting=on",
        &cmdline,
    )?;
    let pid = vmm.guard.0.id();
    let samples = watch_rss(pid, false, Duration::from_secs(300))?;
    let report = finish(&mut vmm)?;
    let at_us = report["guest"]
        .as_array()
        .and_then(|g| g.iter().find(|e| e["event"] == "balloon-freed"))
        .and_then(|e| e["at_us"].as_f64())
        .context("no balloon-freed record in the report")?;
    if report["clock_origin"] != "spawn" {
        bail!("the run's clock origin is not the spawn: its stamps cannot be compared");
    }
    let freed_ns = vmm.spawn_ns + (at_us * 1e3) as u64;
    let at_free = samples
        .iter()
        .rev()
        .find(|&&(t, _)| t <= freed_ns)
        .context("no Rss reading before the free")?
        .1;
    let want = freed_mib * MIB * 9 / 10;
    samples
        .iter()
        .find(|&&(t, r)| t >= freed_ns && at_free.saturating_sub(r) >= want)
        .map(|&(t, _)| ms(t - freed_ns))
        .with_context(|| {
            format!("Rss never dropped by 90% of the {freed_mib} MiB freed within the 3 s linger")
        })
}

fn median(v: &[f64]) -> f64 {
    summarize(v).map_or(0.0, |s| s.median)
}

pub fn bench_balloon(o: &BalloonBenchOptions) -> Result<()> {
    let dir = TempDir::new()?;
    let cases = cases(o.quick);
    // Reporting does not depend on the mode, nor on age: fresh sizes only.
    let mut sizes: Vec<(u64, u64)> = cases
        .iter()
        .filter(|c| c.fragment == 0)
        .map(|c| (c.memory_mib, c.amount_mib))
        .collect();
    sizes.dedup();
    let mut cyc: Vec<Vec<CycleSample>> = vec![Vec::new(); cases.len()];
    let mut rep: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
    let mut rep_err: Vec<Option<String>> = vec![None; sizes.len()];
    for _ in 0..o.runs {
        for (i, c) in cases.iter().enumerate() {
            cyc[i].push(cycle_once(&dir, c)?);
        }
        for (i, &(m, a)) in sizes.iter().enumerate() {
            match report_once(&dir, m, a) {
                Ok(v) => rep[i].push(v),
                Err(e) => rep_err[i] = Some(format!("{e:#}")),
            }
        }
    }
    let summary = |v: Vec<f64>| summarize(&v).unwrap_or_default();
    let cycles: Vec<CycleRow> = cases
        .iter()
        .zip(&cyc)
        .map(|(c, s)| {
            let f = |g: fn(&CycleSample) -> f64| s.iter().map(g).collect::<Vec<_>>();
            CycleRow {
                guest_mib: c.memory_mib,
                balloon_mib: c.amount_mib,
                mode: c.mode,
                fragment: c.fragment,
                reclaim_gib_s: summary(f(|x| x.reclaim_gib_s)),
                complete_ms: summary(f(|x| x.complete_ms)),
                drop_90_ms: summary(f(|x| x.drop_90_ms)),
                dropped_share: median(&f(|x| x.dropped_share)),
                device_rss_done_ms: median(&f(|x| x.device_rss_done_ms)),
                return_gib_s: summary(f(|x| x.return_gib_s)),
                return_ms: summary(f(|x| x.return_ms)),
            }
        })
        .collect();
    let reporting: Vec<ReportRow> = sizes
        .iter()
        .zip(rep.iter().zip(rep_err))
        .map(|(&(m, a), (v, err))| ReportRow {
            guest_mib: m,
            freed_mib: a,
            // One failed run voids the row: a median over the runs that
            // happened to drop in time would flatter it.
            not_measured: err,
            free_to_90_ms: summarize(v).filter(|_| v.len() == o.runs as usize),
        })
        .collect();
    let mut goals = Vec::new();
    for r in &cycles {
        let goal = if r.mode == "2m" {
            GOAL_2M_GIBS
        } else {
            GOAL_4K_GIBS
        };
        let gib = r.reclaim_gib_s.median;
        goals.push(format!(
            "{} reclaim, {} MiB of {} MiB{}: {gib:.2} GiB/s, goal >= {goal}: {}",
            r.mode,
            r.balloon_mib,
            r.guest_mib,
            aged(r.fragment),
            verdict(gib >= goal)
        ));
        if r.mode == "2m" && r.guest_mib == 1024 && r.balloon_mib == 768 && r.fragment == 0 {
            let t = r.drop_90_ms.median;
            goals.push(format!(
                "2m 90% of the drop, 768 MiB of 1 GiB: {t:.1} ms, goal <= {GOAL_2M_90_MS} ms: {}",
                verdict(t <= GOAL_2M_90_MS)
            ));
        }
    }
    for r in &reporting {
        goals.push(match &r.free_to_90_ms {
            Some(s) => format!(
                "free page reporting, {} MiB freed in {} MiB: {:.1} ms, goal <= {GOAL_REPORT_MS} ms: {}",
                r.freed_mib,
                r.guest_mib,
                s.median,
                verdict(s.median <= GOAL_REPORT_MS)
            ),
            None => format!(
                "free page reporting, {} MiB freed in {} MiB: not measured ({}), goal <= {GOAL_REPORT_MS} ms: NOT met",
                r.freed_mib,
                r.guest_mib,
                r.not_measured.as_deref().unwrap_or("no runs")
            ),
        });
    }
    let r = BalloonBenchResult {
        runs: o.runs,
        written_first: "--prefault",
        hold: HOLD,
        cycles,
        reporting,
        goals,
    };
    if o.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    print(&r);
    Ok(())
}

/// How a row's guest was prepared, for the goal lines.
fn aged(fragment: u32) -> String {
    match fragment {
        0 => String::new(),
        k => format!(" (aged: fragment={k})"),
    }
}

fn print(r: &BalloonBenchResult) {
    println!(
        "memvisor bench balloon: {} runs, guest RAM written in full first ({}), workload=balloon-hold size={}; medians (min-max)",
        r.runs, r.written_first, r.hold
    );
    println!(
        "  {:<6} {:<6} {:<7} {:<4} {:>22} {:>20} {:>20} {:>6} {:>20}",
        "guest",
        "state",
        "balloon",
        "mode",
        "reclaim GiB/s",
        "Rss drop done ms",
        "90% of drop ms",
        "drop",
        "return GiB/s"
    );
    let s = |x: &Summary, p: usize| format!("{:.p$} ({:.p$}-{:.p$})", x.median, x.min, x.max);
    for c in &r.cycles {
        println!(
            "  {:<6} {:<6} {:<7} {:<4} {:>22} {:>20} {:>20} {:>5.0}% {:>20}",
            format!("{}M", c.guest_mib),
            match c.fragment {
                0 => "fresh".to_string(),
                k => format!("aged{k}"),
            },
            format!("{}M", c.balloon_mib),
            c.mode,
            s(&c.reclaim_gib_s, 2),
            s(&c.complete_ms, 1),
            s(&c.drop_90_ms, 1),
            c.dropped_share * 100.0,
            s(&c.return_gib_s, 1),
        );
    }
    println!("  (the device's own target set -> last discard: {})", {
        let v: Vec<String> = r
            .cycles
            .iter()
            .map(|c| {
                let age = if c.fragment > 0 { " aged" } else { "" };
                format!(
                    "{} {}M{age} {:.1} ms",
                    c.mode, c.guest_mib, c.device_rss_done_ms
                )
            })
            .collect();
        v.join(", ")
    });
    for f in &r.reporting {
        match &f.free_to_90_ms {
            Some(x) => println!(
                "  free page reporting, {}M freed in a {}M guest: free -> 90% of it off the Rss {} ms",
                f.freed_mib,
                f.guest_mib,
                s(x, 1)
            ),
            None => println!(
                "  free page reporting, {}M freed in a {}M guest: not measured: {}",
                f.freed_mib,
                f.guest_mib,
                f.not_measured.as_deref().unwrap_or("no runs")
            ),
        }
    }
    for g in &r.goals {
        println!("  {g}");
    }
    println!("  {ANCHORS}");
    println!("  {ANCHOR_REPORT}");
}
