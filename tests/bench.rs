//! `memvisor bench boot`: the JSON output is well formed. No timing
//! thresholds here (targets belong to benchmarks, not tests).
#[macro_use]
mod common;

use common::{f64_at, memvisor, TempDir};
use serde_json::Value;

#[test]
fn bench_boot_json_is_well_formed() {
    require_kvm!();
    // A private TMPDIR, to check that the per-run reports are cleaned up.
    let tmp = TempDir::new("bench-tmp");
    let out = memvisor(
        &["bench", "boot", "--runs", "2", "--json"],
        &[("TMPDIR", tmp.as_str())],
    );
    let ctx = out.describe();
    assert_eq!(out.code, Some(0), "{ctx}");
    assert!(
        out.leftovers.is_empty(),
        "processes left behind: {:?}\n{ctx}",
        out.leftovers
    );
    let r: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{ctx}"));
    assert_eq!(r["runs"], 2, "{r:#}");
    for key in ["spawn_to_ready_ms", "spawn_to_exit_ms", "vmm_overhead_mib"] {
        let s = &r[key];
        let (min, median, max) = (f64_at(s, "min"), f64_at(s, "median"), f64_at(s, "max"));
        assert!(
            min <= median && median <= max,
            "{key}: not min <= median <= max: {s}"
        );
        assert!(median > 0.0, "{key}: median is not positive: {s}");
    }
    let phases = r["phase_median_ms"]
        .as_array()
        .expect("phase_median_ms is an array");
    assert!(!phases.is_empty(), "no phases: {r:#}");
    for p in phases {
        assert!(
            p[0].is_string() && p[1].is_number(),
            "phase entry is not [name, ms]: {p}"
        );
    }
    // The per-run report files went into TMPDIR and were cleaned up.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("reading the bench TMPDIR")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "bench left files behind: {left:?}");
}

/// `memvisor bench memory --json`: every row is there with figures that
/// say the operation did what it is timed for (no timing thresholds).
#[test]
fn bench_memory_json_is_well_formed() {
    require_kvm!();
    let tmp = TempDir::new("bench-mem-tmp");
    let out = memvisor(
        &[
            "bench",
            "memory",
            "--runs",
            "1",
            "--touch-mib",
            "32",
            "--json",
        ],
        &[("TMPDIR", tmp.as_str())],
    );
    let ctx = out.describe();
    assert_eq!(out.code, Some(0), "{ctx}");
    assert!(out.leftovers.is_empty(), "{:?}\n{ctx}", out.leftovers);
    let r: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{ctx}"));
    let rows = r["first_touch"].as_array().expect("first_touch rows");
    let names: Vec<_> = rows.iter().map(|t| t["case"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "THP on",
            "THP off (4K)",
            "hugetlbfs",
            "memfd-hugetlb",
            "THP on, after --prefault"
        ]
    );
    for t in rows {
        if t["skipped"].is_string() {
            continue;
        }
        assert!(f64_at(&t["gib_per_s"], "median") > 0.0, "{t:#}");
    }
    assert_eq!(rows[1]["vs_thp_off"], 1.0, "THP off is the baseline");
    assert!(
        f64_at(&rows[4], "prefault_ms_per_gib") > 0.0,
        "{:#}",
        rows[4]
    );
    let host = r["host"].as_array().expect("host rows");
    assert_eq!(host[0]["op"], "discard");
    assert_eq!(f64_at(&host[0], "before_mib"), 1024.0, "{:#}", host[0]);
    assert!(f64_at(&host[0], "after_mib") < 8.0, "{:#}", host[0]);
    assert_eq!(host[1]["op"], "collapse");
    assert_eq!(f64_at(&host[1], "after_mib"), 1024.0, "{:#}", host[1]);
    let numa = &r["numa_boot"];
    assert!(
        numa["status"].is_null(),
        "the --numa boot row is measured: {numa:#}"
    );
    assert!(f64_at(&numa["ready_ms_with"], "median") > 0.0, "{numa:#}");
    assert!(
        f64_at(&numa["ready_ms_without"], "median") > 0.0,
        "{numa:#}"
    );
    assert!(numa["difference_ms"].is_f64(), "{numa:#}");
    let goals = r["goals"].as_array().unwrap();
    assert!(
        goals.iter().any(|g| g
            .as_str()
            .unwrap()
            .starts_with("boot with --numa (2 nodes) ")
            && g.as_str().unwrap().contains("goal within 1 ms")),
        "{goals:#?}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "bench left files behind: {left:?}");
}

#[test]
fn bench_memory_bad_sizes_exit_2_naming_them() {
    require_kvm!();
    for args in [
        ["--touch-mib", "0"],
        ["--touch-mib", "16385"],
        ["--runs", "0"],
    ] {
        let mut full = vec!["bench", "memory"];
        full.extend_from_slice(&args);
        let out = memvisor(&full, &[]);
        assert_eq!(out.code, Some(2), "{args:?}\n{}", out.describe());
        assert!(
            out.stderr.contains("--touch-mib 1 to 16384") && out.stderr.contains(args[1]),
            "{}",
            out.describe()
        );
    }
}

/// `memvisor bench boot | true`: the closed pipe ends the bench as it ends
/// any filter (SIGPIPE), never with a panic message.
#[test]
fn bench_output_into_a_closed_pipe_ends_quietly() {
    require_kvm!();
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::BIN)
        .args(["bench", "boot", "--runs", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning memvisor bench boot");
    // The reader goes away before the bench prints its first line.
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?} {err}");
}

/// `memvisor bench balloon --quick --json`: both modes' rows and the
/// reporting row are there, with figures that say the balloon did what it
/// is timed for (no timing thresholds).
#[test]
fn bench_balloon_json_is_well_formed() {
    require_kvm!();
    let tmp = TempDir::new("bench-balloon-tmp");
    let out = memvisor(
        &["bench", "balloon", "--runs", "1", "--quick", "--json"],
        &[("TMPDIR", tmp.as_str())],
    );
    let ctx = out.describe();
    assert_eq!(out.code, Some(0), "{ctx}");
    assert!(out.leftovers.is_empty(), "{:?}\n{ctx}", out.leftovers);
    let r: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{ctx}"));
    assert_eq!(r["runs"], 1, "{r:#}");
    assert_eq!(r["written_first"], "--prefault", "{r:#}");
    let rows = r["cycles"].as_array().expect("cycles rows");
    let modes: Vec<_> = rows.iter().map(|c| c["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["4k", "2m"], "{r:#}");
    for c in rows {
        assert_eq!(
            (c["guest_mib"].as_u64(), c["balloon_mib"].as_u64()),
            (Some(256), Some(128))
        );
        for key in [
            "reclaim_gib_s",
            "complete_ms",
            "drop_90_ms",
            "return_gib_s",
            "return_ms",
        ] {
            let s = &c[key];
            let (min, median, max) = (f64_at(s, "min"), f64_at(s, "median"), f64_at(s, "max"));
            assert!(
                min <= median && median <= max && median > 0.0,
                "{key}: {c:#}"
            );
        }
        // The figures time a real drop: the Rss fell by about the balloon.
        let share = f64_at(c, "dropped_share");
        assert!(
            (0.95..1.1).contains(&share),
            "Rss drop {share} of the balloon: {c:#}"
        );
        assert!(
            f64_at(&c["drop_90_ms"], "median") <= f64_at(&c["complete_ms"], "median"),
            "{c:#}"
        );
        assert!(f64_at(c, "device_rss_done_ms") > 0.0, "{c:#}");
    }
    let rep = r["reporting"].as_array().expect("reporting rows");
    assert_eq!(rep.len(), 1, "{r:#}");
    assert!(rep[0]["not_measured"].is_null(), "{:#}", rep[0]);
    assert!(
        f64_at(&rep[0]["free_to_90_ms"], "median") > 0.0,
        "{:#}",
        rep[0]
    );
    let goals: Vec<_> = r["goals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(goals.len(), 3, "{goals:#?}");
    // Each reclaim goal line carries its row's median and says met exactly
    // when that reaches the mode's goal.
    for (g, (row, goal)) in goals.iter().zip(rows.iter().zip([2.0, 20.0])) {
        let mode = row["mode"].as_str().unwrap();
        let median = f64_at(&row["reclaim_gib_s"], "median");
        let head =
            format!("{mode} reclaim, 128 MiB of 256 MiB: {median:.2} GiB/s, goal >= {goal}: ");
        assert!(g.starts_with(&head), "{g} does not start with {head}");
        assert_eq!(g.ends_with(": met"), median >= goal, "{g}");
    }
    assert!(goals[2].starts_with("free page reporting") && goals[2].contains("goal <= 1000 ms"));
    assert!(
        goals
            .iter()
            .all(|g| g.ends_with(": met") || g.ends_with(": NOT met")),
        "{goals:#?}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "bench left files behind: {left:?}");
}

#[test]
fn bench_balloon_zero_runs_exits_2() {
    let out = memvisor(&["bench", "balloon", "--runs", "0"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("--runs must be at least 1 (got 0)"),
        "{}",
        out.describe()
    );
}
