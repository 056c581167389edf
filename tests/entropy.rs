//! `workload=entropy`: the guest kernel's virtio core and virtio-rng driver
//! against memvisor's virtio-rng device (`--entropy`: virtio-mmio, announced
//! with `virtio_mmio.device=` on the command line): N bytes arrive, they
//! look random, EVENT_IDX keeps QueueNotify exits to at most one per
//! request, and the device's interrupt reaches the guest.
#[macro_use]
mod common;

use common::{f64_at, run, u64_at};

#[test]
fn entropy_reads_n_bytes_with_at_most_one_notification_per_request() {
    require_kvm!();
    let n = 65536;
    let cmdline = format!("console=ttyS0 workload=entropy bytes={n}");
    let out = run(&["--entropy", "--cmdline", &cmdline]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let w = out.guest_event("workload");
    assert_eq!(w["name"], "entropy", "{w}");
    assert_eq!(w["ok"], true, "{w}");
    assert_eq!(u64_at(w, "bytes"), n, "{w}");
    let requests = u64_at(w, "requests");
    assert!(requests >= n / 4096, "{w}");
    assert!(u64_at(w, "notifications") >= 1, "{w}");
    assert!(f64_at(w, "notifications_per_request") <= 1.0, "{w}");
    assert!(u64_at(w, "interrupts") >= 1, "{w}");
    assert_eq!(w["device"]["event_idx"], true, "{w}");
    let d = &w["distribution"];
    assert_eq!(d["chi2_checked"], true, "{w}");
    assert_eq!(d["ok"], true, "{w}");
    assert_eq!(u64_at(d, "distinct"), 256, "{w}");
}

#[test]
fn entropy_reads_an_odd_byte_count_exactly() {
    require_kvm!();
    let out = run(&[
        "--entropy",
        "--cmdline",
        "console=ttyS0 workload=entropy bytes=5001 virtio_wait=spin",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let w = out.guest_event("workload");
    assert_eq!(w["ok"], true, "{w}");
    assert_eq!(u64_at(w, "bytes"), 5001, "{w}");
}

#[test]
fn entropy_rejects_a_byte_count_that_is_zero_or_not_a_number() {
    require_kvm!();
    for bad in ["0", "lots", "-5"] {
        let cmdline = format!("console=ttyS0 workload=entropy bytes={bad}");
        let out = run(&["--entropy", "--cmdline", &cmdline]);
        assert_eq!(out.code, Some(1), "bytes={bad}: {}", out.describe());
        let e = out.guest_event("error");
        let msg = e["message"].as_str().unwrap_or_default();
        assert!(msg.contains(&format!("bytes={bad}")), "{e}");
    }
}

#[test]
fn entropy_without_a_device_fails_with_an_error_line() {
    require_kvm!();
    let out = run(&["--cmdline", "console=ttyS0 workload=entropy"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let e = out.guest_event("error");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains("no device with ID 4"), "{e}");
    assert!(msg.contains("--entropy"), "{e}");
}
