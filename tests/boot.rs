//! Booting the bundled guest kernel: the report's VMM and guest views agree,
//! the default memtest workload passes on every vCPU, and the exit statuses
//! for success, guest failure and timeout are the documented ones.
#[macro_use]
mod common;

use common::{f64_at, run, u64_at, Output};
use serde_json::Value;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn assert_no_leftovers(out: &Output) {
    assert!(
        out.leftovers.is_empty(),
        "processes left behind: {:?}\n{}",
        out.leftovers,
        out.describe()
    );
}

/// Boots with `vcpus` × `memory` (running memtest) and checks the report.
fn boot_and_check(vcpus: u32, memory: &str, memory_bytes: u64) -> Output {
    let n = vcpus.to_string();
    let out = run(&["--vcpus", &n, "--memory", memory, "--quiet"]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(0), "{ctx}");
    assert_no_leftovers(&out);
    let r = out.report();
    assert_eq!(r["exit"]["status"], "success", "{r:#}");
    assert_eq!(r["exit"]["code"], 0, "{r:#}");
    assert_eq!(u64_at(&r["config"], "vcpus"), u64::from(vcpus));
    assert_eq!(u64_at(&r["config"], "memory_bytes"), memory_bytes);

    // The guest's view of the machine matches what the VMM built.
    let ready = out.guest_event("ready");
    assert_eq!(u64_at(ready, "vcpus"), u64::from(vcpus), "ready: {ready:#}");
    let cpus = ready["cpus"].as_array().expect("ready.cpus is an array");
    assert_eq!(
        cpus.len(),
        vcpus as usize,
        "one cpus entry per vCPU: {ready:#}"
    );
    for c in cpus {
        assert_eq!(c["cpl"], 3, "every CPU reaches user mode (CPL 3): {c}");
    }
    let mem = &r["memory"];
    assert_eq!(
        u64_at(ready, "total_pages"),
        u64_at(mem, "e820_ram_pages"),
        "guest total_pages vs VMM e820_ram_pages"
    );
    let vmm_e820 = mem["e820"].as_array().expect("memory.e820 is an array");
    assert!(!vmm_e820.is_empty(), "empty e820: {mem:#}");
    for e in vmm_e820 {
        for k in ["addr", "size", "type"] {
            assert!(e[k].is_u64(), "e820 entry without numeric {k}: {e}");
        }
    }
    assert_eq!(ready["e820"], mem["e820"], "guest e820 vs VMM e820");
    let ram = u64_at(mem, "e820_ram_bytes");
    assert!(
        ram <= memory_bytes && memory_bytes - ram <= MIB,
        "e820_ram_bytes {ram} is not within 1 MiB of {memory_bytes}"
    );
    assert_eq!(
        u64_at(ready, "e820_ram_bytes"),
        ram,
        "guest vs VMM e820_ram_bytes"
    );
    assert!(
        u64_at(mem, "guest_rss_bytes") > 0,
        "guest RAM was never touched: {mem:#}"
    );

    // memtest: every free page written and verified, on every vCPU.
    let w = out.guest_event("workload");
    assert_eq!(w["name"], "memtest", "{w:#}");
    assert_eq!(w["ok"], true, "{w:#}");
    assert_eq!(u64_at(w, "errors"), 0, "{w:#}");
    let written = u64_at(w, "pages_written");
    assert!(written > 0, "{w:#}");
    assert_eq!(written, u64_at(w, "pages_verified"), "{w:#}");
    assert_eq!(
        u64_at(w, "free_pages_after"),
        u64_at(w, "free_pages_before"),
        "memtest leaked pages: {w:#}"
    );
    let per_cpu = w["per_cpu"]
        .as_array()
        .expect("workload.per_cpu is an array");
    assert_eq!(
        per_cpu.len(),
        vcpus as usize,
        "one per_cpu entry per vCPU: {w:#}"
    );
    for c in per_cpu {
        assert!(u64_at(c, "pages_written") > 0, "a vCPU wrote nothing: {c}");
        assert_eq!(c["ok"], true, "{c}");
        assert_eq!(u64_at(c, "errors"), 0, "{c}");
    }
    let per_cpu_sum: u64 = per_cpu.iter().map(|c| u64_at(c, "pages_written")).sum();
    assert_eq!(
        per_cpu_sum, written,
        "per-CPU pages_written do not add up: {w:#}"
    );

    // Milestones in order.
    let p = &r["phases_us"];
    let (ready_us, done_us, exit_us) = (
        f64_at(p, "guest_ready"),
        f64_at(p, "workload_done"),
        f64_at(p, "guest_exit"),
    );
    assert!(
        ready_us < done_us && done_us <= exit_us,
        "phases out of order: {p:#}"
    );
    out
}

#[test]
fn boot_1_vcpu_128m() {
    require_kvm!();
    boot_and_check(1, "128M", 128 * MIB);
}

#[test]
fn boot_2_vcpus_128m() {
    require_kvm!();
    boot_and_check(2, "128M", 128 * MIB);
}

#[test]
fn boot_1_vcpu_1g() {
    require_kvm!();
    boot_and_check(1, "1G", 1024 * MIB);
}

#[test]
fn boot_2_vcpus_1g() {
    require_kvm!();
    boot_and_check(2, "1G", 1024 * MIB);
}

/// memtest divides the free pages evenly: every vCPU takes exactly its
/// share (free pages / vCPUs, the remainder spread one page each), however
/// late it starts. With 64 vCPUs on a few host cores the first vCPUs used to
/// drain the allocator before the last ones ran (issue 6): repeated, since
/// that depended on scheduling.
#[test]
fn memtest_64_vcpus_every_vcpu_gets_its_share() {
    require_kvm!();
    for _ in 0..3 {
        let out = boot_and_check(64, "128M", 128 * MIB);
        let w = out.guest_event("workload");
        let before = u64_at(w, "free_pages_before");
        let per_cpu = w["per_cpu"].as_array().expect("workload.per_cpu");
        let mut shares = 0;
        for c in per_cpu {
            let share = u64_at(c, "share_pages");
            assert!(
                share == before / 64 || share == before / 64 + 1,
                "uneven share: {c}"
            );
            assert_eq!(u64_at(c, "pages_taken"), share, "{c}");
            assert_eq!(
                u64_at(c, "pages_written") + u64_at(c, "list_pages"),
                share,
                "{c}"
            );
            shares += share;
        }
        assert_eq!(shares, before, "shares do not add up: {w:#}");
    }
}

#[test]
fn boot_workload_reports_ready_and_exits() {
    require_kvm!();
    let out = run(&["--cmdline", "workload=boot", "--memory", "128M", "--quiet"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_no_leftovers(&out);
    assert_eq!(out.report()["exit"]["status"], "success");
    assert_eq!(out.guest_event("ready")["workload"], "boot");
    let w = out.guest_event("workload");
    assert_eq!(w["name"], "boot", "{w:#}");
    assert_eq!(w["ok"], true, "{w:#}");
}

#[test]
fn unknown_workload_fails_and_names_it() {
    require_kvm!();
    let out = run(&["--cmdline", "workload=nope", "--memory", "128M"]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(1), "{ctx}");
    assert_no_leftovers(&out);
    let r = out.report();
    assert_eq!(r["exit"]["status"], "failure", "{r:#}");
    let msg = out.guest_event("error")["message"]
        .as_str()
        .expect("error.message is a string")
        .to_string();
    assert!(
        msg.contains("'nope'"),
        "error message does not name the workload: {msg}"
    );
    assert!(
        msg.contains("memtest") && msg.contains("boot"),
        "error message does not list valid workloads: {msg}"
    );
    let reason = r["exit"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("nope"),
        "exit.reason does not name the workload: {reason}"
    );
    // The human-facing output (guest console + summary) says so too.
    let summary = format!("{}{}", out.stdout, out.stderr);
    assert!(
        summary.contains("'nope'") && summary.contains("valid workloads"),
        "{ctx}"
    );
    assert!(
        summary.contains("exit 1"),
        "summary does not give the exit status: {ctx}"
    );
}

#[test]
fn report_to_stdout_is_valid_json() {
    require_kvm!();
    let out = run(&["--memory", "128M", "--report", "-"]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(0), "{ctx}");
    assert_no_leftovers(&out);
    let r: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{ctx}"));
    assert_eq!(r["exit"]["status"], "success", "{r:#}");
    assert!(
        r["guest"]
            .as_array()
            .is_some_and(|g| g.iter().any(|e| e["event"] == "ready")),
        "{r:#}"
    );
}

#[test]
fn tiny_timeout_stops_a_long_run() {
    require_kvm!();
    let out = run(&[
        "--vcpus",
        "2",
        "--memory",
        "1G",
        "--timeout",
        "0.001",
        "--quiet",
    ]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(4), "{ctx}");
    assert_no_leftovers(&out);
    assert!(
        out.elapsed < Duration::from_secs(10),
        "the timeout took {:?} to act\n{ctx}",
        out.elapsed
    );
    let r = out.report();
    assert_eq!(r["exit"]["status"], "timeout", "{r:#}");
    assert_eq!(r["exit"]["code"], 4, "{r:#}");
}
