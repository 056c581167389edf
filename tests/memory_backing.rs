//! Guest RAM backing (`--backing`, `--thp`, `--prefault`): what each one
//! gives the guest, checked in the report's smaps figures.
//!
//! The hugetlb tests reserve 2 MiB pages themselves (as root, through
//! /proc/sys/vm/nr_hugepages) and give them back; without root they skip,
//! or fail under REQUIRE_KVM=1.
#[macro_use]
mod common;

use common::{run, u64_at, Output};
use memvisor::memory::reserve::{PoolLock, Reservation};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const RAM: u64 = 256 * MIB;
const POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

fn memtest(extra: &[&str]) -> Output {
    let mut args = vec!["--quiet", "--memory", "256M"];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let w = out.guest_event("workload");
    assert_eq!(w["ok"], true, "{w:#}");
    assert_eq!(w["errors"], 0, "{w:#}");
    out
}

fn memory(out: &Output) -> &Value {
    &out.report()["memory"]
}

/// Guest-ready → workload-done, ms: the memtest's first touch of guest RAM.
fn first_touch_ms(out: &Output) -> f64 {
    let p = &out.report()["phases_us"];
    (p["workload_done"].as_f64().unwrap() - p["guest_ready"].as_f64().unwrap()) / 1000.0
}

#[test]
fn thp_on_backs_touched_ram_with_huge_pages() {
    require_kvm!();
    let out = memtest(&["--thp", "on"]);
    let m = memory(&out);
    let (rss, huge) = (
        u64_at(m, "guest_rss_bytes"),
        u64_at(m, "guest_anon_huge_bytes"),
    );
    assert!(rss > RAM / 2, "memtest touched only {rss} bytes\n{m:#}");
    assert!(
        huge * 10 >= rss * 9,
        "only {huge} of {rss} touched bytes are THP\n{m:#}"
    );
    assert_eq!(out.report()["config"]["thp"], "on");
    assert_eq!(out.report()["config"]["backing"], "anon");
    eprintln!("anon THP on: first touch {:.1} ms", first_touch_ms(&out));
}

#[test]
fn thp_off_gives_no_huge_pages() {
    require_kvm!();
    let out = memtest(&["--thp", "off"]);
    let m = memory(&out);
    assert!(u64_at(m, "guest_rss_bytes") > RAM / 2, "{m:#}");
    assert_eq!(u64_at(m, "guest_anon_huge_bytes"), 0, "{m:#}");
    assert_eq!(out.report()["config"]["thp"], "off");
    eprintln!("anon THP off: first touch {:.1} ms", first_touch_ms(&out));
}

fn shmem_thp_mode() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p).ok().and_then(|t| {
            let s = t.find('[')?;
            let e = t[s..].find(']')? + s;
            Some(t[s + 1..e].to_string())
        })
    };
    match read("/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/shmem_enabled") {
        Some(m) if m != "inherit" => m,
        _ => read("/sys/kernel/mm/transparent_hugepage/shmem_enabled").unwrap_or_default(),
    }
}

#[test]
fn memfd_with_thp_on_is_refused_where_shmem_thp_is_off() {
    require_kvm!();
    let mode = shmem_thp_mode();
    let out = run(&["--quiet", "--backing", "memfd", "--thp", "on"]);
    if matches!(mode.as_str(), "never" | "deny") {
        assert_eq!(out.code, Some(2), "{}", out.describe());
        let first = out.stderr.lines().next().unwrap_or_default();
        for needle in ["--backing memfd --thp on", "shmem_enabled", "--thp off"] {
            assert!(first.contains(needle), "no {needle:?} in: {first}");
        }
        assert!(out.report.is_none(), "no report for a refused run");
    } else {
        assert_eq!(out.code, Some(0), "shmem THP is {mode}\n{}", out.describe());
    }
}

#[test]
fn memfd_boots_with_4k_pages() {
    require_kvm!();
    let out = memtest(&["--backing", "memfd", "--thp", "off"]);
    let m = memory(&out);
    assert_eq!(out.report()["config"]["backing"], "memfd");
    assert!(u64_at(m, "guest_rss_bytes") > RAM / 2, "{m:#}");
    assert_eq!(u64_at(m, "guest_anon_huge_bytes"), 0, "{m:#}");
    assert_eq!(u64_at(m, "guest_hugetlb_bytes"), 0, "{m:#}");
    eprintln!("memfd (4K): first touch {:.1} ms", first_touch_ms(&out));
}

fn pool_value(name: &str) -> u64 {
    std::fs::read_to_string(format!("{POOL}/{name}"))
        .unwrap_or_else(|e| panic!("reading {POOL}/{name}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// 2 MiB pages a new mapping could reserve now.
fn pool_available() -> u64 {
    pool_value("free_hugepages").saturating_sub(pool_value("resv_hugepages"))
        + pool_value("nr_overcommit_hugepages").saturating_sub(pool_value("surplus_hugepages"))
}

/// Whether this test may change the hugetlb pool: root may; others skip,
/// or fail under REQUIRE_KVM=1.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("REQUIRE_KVM").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: reserving hugetlb pages needs root, and REQUIRE_KVM=1 makes that a failure"
        );
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipping {test}: reserving hugetlb pages needs root (set REQUIRE_KVM=1 to fail instead)"
    );
    false
}

#[test]
fn hugetlb_backings_put_all_of_ram_in_huge_pages() {
    require_kvm!();
    if !root_or_skip("hugetlb_backings_put_all_of_ram_in_huge_pages") {
        return;
    }
    // Held across the runs: the pool is the host's, and other tests and
    // benches reserve from it (memory::reserve locks it for them all).
    let _reserved = Reservation::pages(RAM / (2 * MIB)).unwrap();
    for backing in ["hugetlbfs", "memfd-hugetlb"] {
        let free_before = pool_value("free_hugepages");
        let out = memtest(&["--backing", backing]);
        let m = memory(&out);
        assert_eq!(out.report()["config"]["backing"], backing);
        let huge = u64_at(m, "guest_hugetlb_bytes");
        assert!(
            huge * 10 >= RAM * 9,
            "{backing}: only {huge} bytes of hugetlb pages\n{m:#}"
        );
        assert_eq!(
            u64_at(m, "guest_rss_bytes"),
            0,
            "{backing}: no guest RAM in 4 KiB pages\n{m:#}"
        );
        assert_eq!(
            pool_value("free_hugepages"),
            free_before,
            "{backing}: pages given back"
        );
        eprintln!("{backing}: first touch {:.1} ms", first_touch_ms(&out));
    }
}

#[test]
fn too_few_hugetlb_pages_exit_2_naming_the_count_and_the_cure() {
    require_kvm!();
    let _pool = PoolLock::take().unwrap();
    let needed = (pool_available() + 8).max(8);
    let size = format!("{}M", needed * 2);
    for backing in ["hugetlbfs", "memfd-hugetlb"] {
        let out = run(&["--quiet", "--backing", backing, "--memory", &size]);
        assert_eq!(out.code, Some(2), "{}", out.describe());
        let first = out.stderr.lines().next().unwrap_or_default();
        for needle in [
            format!("--backing {backing}"),
            format!("{needed} huge pages"),
            "> /proc/sys/vm/nr_hugepages".to_string(),
        ] {
            assert!(first.contains(&needle), "no {needle:?} in: {first}");
        }
    }
}

#[test]
fn prefault_makes_all_of_ram_resident_at_boot() {
    require_kvm!();
    let boot = |extra: &[&str]| {
        let mut args = vec![
            "--quiet",
            "--memory",
            "256M",
            "--cmdline",
            "console=ttyS0 workload=boot",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        out
    };
    let lazy = boot(&[]);
    let lazy_rss = u64_at(memory(&lazy), "guest_rss_bytes");
    assert!(lazy_rss < RAM / 2, "boot alone touched {lazy_rss} bytes");
    assert!(memory(&lazy)["prefault_method"].is_null());

    let out = boot(&["--prefault"]);
    let m = memory(&out);
    let rss = u64_at(m, "guest_rss_bytes");
    assert!(
        rss * 100 >= RAM * 99,
        "only {rss} of {RAM} bytes resident after a prefaulted boot\n{m:#}"
    );
    assert_eq!(out.report()["config"]["prefault"], true);
    let method = m["prefault_method"].as_str().unwrap_or_default();
    assert!(
        ["kvm_pre_fault_memory", "madv_populate_write"].contains(&method),
        "{m:#}"
    );
    eprintln!(
        "prefault 256M: {method}, {:.1} ms (boot alone touched {:.1} MiB)",
        m["prefault_us"].as_f64().unwrap() / 1000.0,
        lazy_rss as f64 / MIB as f64
    );
}

#[test]
fn bad_backing_values_exit_2_naming_the_value_and_the_valid_ones() {
    require_kvm!();
    let out = run(&["--backing", "shm"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    for needle in [
        "shm",
        "--backing",
        "anon",
        "memfd",
        "memfd-hugetlb",
        "hugetlbfs",
    ] {
        assert!(
            out.stderr.contains(needle),
            "no {needle:?}\n{}",
            out.describe()
        );
    }
    let out = run(&["--thp", "maybe"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    for needle in ["maybe", "--thp", "on", "off"] {
        assert!(
            out.stderr.contains(needle),
            "no {needle:?}\n{}",
            out.describe()
        );
    }
    let out = run(&["--backing", "hugetlbfs", "--thp", "off"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("--thp off with --backing hugetlbfs"),
        "{}",
        out.describe()
    );
}
