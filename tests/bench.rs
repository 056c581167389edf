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
