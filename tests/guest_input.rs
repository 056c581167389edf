//! Guest input is hostile and bounded: a guest flooding the results channel
//! with maximal records cannot grow the VMM's memory or its report past the
//! stated limits, and what was dropped is counted. Also the guest's other
//! ways to end a run: an i8042 reset.
#[macro_use]
mod common;

use common::{run, u64_at};

const MIB: u64 = 1 << 20;

#[test]
fn a_record_flood_keeps_vmm_memory_and_the_report_bounded() {
    require_kvm!();
    // 2 vCPUs × 1500 records × 64 KiB = 187 MiB of guest output.
    let out = run(&[
        "--memory",
        "32M",
        "--vcpus",
        "2",
        "--quiet",
        "--record-budget",
        "1M",
        "--cmdline",
        "workload=flood records=1500",
    ]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(0), "{ctx}");
    let r = out.report();
    let wl = out.guest_event("workload");
    assert_eq!(wl["ok"], true, "{wl}");
    assert_eq!(u64_at(wl, "records_sent"), 3000, "{wl}");
    let dropped = u64_at(r, "dropped_records");
    assert!(
        dropped > 2900,
        "most records are dropped and counted: {dropped}"
    );
    assert!(u64_at(r, "dropped_bytes") >= dropped * 65_000);
    // The report: the guest lines within the budget, plus a few KiB.
    let size = serde_json::to_string_pretty(r).unwrap().len() as u64;
    assert!(
        size < MIB + 512 * 1024,
        "report of {size} bytes for a 1 MiB budget"
    );
    // Peak RSS: guest RAM + 64 MiB at most, as the README states.
    let peak = u64_at(&r["memory"], "vm_peak_rss_bytes");
    assert!(
        peak < 32 * MIB + 64 * MIB,
        "peak VMM RSS {} MiB",
        peak / MIB
    );
}

#[test]
fn an_i8042_reset_ends_the_run_cleanly() {
    require_kvm!();
    let out = run(&["--quiet", "--cmdline", "workload=reset"]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(0), "{ctx}");
    let e = &out.report()["exit"];
    assert_eq!(e["status"], "reset", "{e}");
}
