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
    assert!(r["numa_boot"].is_object(), "{r:#}");
    assert!(!r["goals"].as_array().unwrap().is_empty());
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
