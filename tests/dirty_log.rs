//! `--dirty-log bitmap|ring`: with `workload=dirty`, the log's window holds
//! exactly the pages the guest wrote there plus the pages the VMM's
//! virtio-rng device wrote there (`--entropy`: eight buffers and the ring
//! page), and nothing else; a full dirty ring is harvested and the guest
//! goes on; a bad mode is refused with exit 2.
#[macro_use]
mod common;

use common::{memvisor, run, u64_at, unique_path, Output, BIN};
use memvisor::api::client::request;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Pages of `[first_pfn, count, stride]` runs, checked to be distinct.
fn run_pages(runs: &Value) -> Vec<u64> {
    let mut pages: Vec<u64> = runs
        .as_array()
        .expect("runs is an array")
        .iter()
        .flat_map(|r| {
            let (first, count, stride) = (
                r[0].as_u64().unwrap(),
                r[1].as_u64().unwrap(),
                r[2].as_u64().unwrap(),
            );
            (0..count).map(move |i| first + i * stride)
        })
        .collect();
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// Runs `workload=dirty` and checks the window, returning the run.
fn dirty_run(mode: &str, vcpus: &str, pages: u64, stride: u64) -> Output {
    dirty_run_in(mode, vcpus, pages, stride, "512M")
}

fn dirty_run_in(mode: &str, vcpus: &str, pages: u64, stride: u64, memory: &str) -> Output {
    let cmdline = format!("workload=dirty dirty_pages={pages} dirty_stride={stride}");
    let out = run(&[
        "--dirty-log",
        mode,
        "--entropy",
        "--vcpus",
        vcpus,
        "--memory",
        memory,
        "--cmdline",
        &cmdline,
    ]);
    let ctx = format!("--dirty-log {mode}, {vcpus} vCPUs, {pages} pages, stride {stride}");
    assert_eq!(out.code, Some(0), "{ctx}: {}", out.describe());
    let r = out.report();
    assert_eq!(r["config"]["dirty_log"], mode, "{ctx}");
    let w = out.guest_event("workload");
    assert_eq!(w["name"], "dirty", "{ctx}: {w}");
    assert_eq!(w["ok"], true, "{ctx}: {w}");
    assert_eq!(u64_at(w, "device_bytes"), 8 * 4096, "{ctx}: {w}");

    // What the guest says, checked here on its own terms: the pages asked
    // for, `stride` apart within each block, plus the ring page; the
    // device got eight buffer pages and the same ring page.
    let guest = run_pages(&w["runs"]);
    let device = run_pages(&w["device_runs"]);
    assert_eq!(guest.len() as u64, pages + 1, "{ctx}: {w}");
    assert_eq!(device.len(), 9, "{ctx}: {w}");
    let ring_page: Vec<_> = device.iter().filter(|p| guest.contains(p)).collect();
    assert_eq!(ring_page.len(), 1, "{ctx}: one page is both: {w}");

    let d = &r["memory"]["dirty"];
    assert_eq!(d["mode"], mode, "{ctx}: {d}");
    let c = &d["check"];
    assert_eq!(c["ok"], true, "{ctx}: {d}");
    assert_eq!(u64_at(c, "missing"), 0, "{ctx}: {d}");
    assert_eq!(u64_at(c, "extra"), 0, "{ctx}: {d}");
    assert_eq!(u64_at(c, "expected"), pages + 9, "{ctx}: {d}");
    assert_eq!(u64_at(c, "found"), pages + 9, "{ctx}: {d}");
    // KVM logged the guest's pages, the VMM's bitmap the device's: each
    // half is needed for the union to be exact.
    let win = &d["window"];
    assert_eq!(u64_at(win, "guest_pages"), pages + 1, "{ctx}: {d}");
    assert_eq!(u64_at(win, "vmm_pages"), 9, "{ctx}: {d}");
    // Over the run: boot-time writes of the VMM (kernel, page tables, boot
    // parameters) and of the guest come on top of the window.
    assert!(u64_at(d, "vmm_pages") > 9, "{ctx}: {d}");
    assert!(u64_at(d, "guest_pages") > pages, "{ctx}: {d}");
    assert!(
        u64_at(d, "pages_dirty") >= u64_at(d, "guest_pages").max(u64_at(d, "vmm_pages")),
        "{ctx}: {d}"
    );
    assert!(u64_at(d, "harvests") >= 3, "{ctx}: start, end, final: {d}");
    let line = format!("dirty log ({mode}): ");
    assert!(
        out.stdout.contains(&line) && out.stdout.contains("; check ok: "),
        "{ctx}: the summary says it: {}",
        out.describe()
    );
    out
}

#[test]
fn bitmap_logs_exactly_the_pages_the_guest_and_the_device_wrote() {
    require_kvm!();
    dirty_run("bitmap", "1", 300, 3);
    // A second vCPU waits, reading only, through the window.
    dirty_run("bitmap", "2", 1000, 1);
}

#[test]
fn ring_logs_exactly_the_pages_the_guest_and_the_device_wrote() {
    require_kvm!();
    dirty_run("ring", "2", 300, 3);
}

/// More pages than one 4096-entry ring holds: the vCPU exits with
/// KVM_EXIT_DIRTY_RING_FULL, the VMM harvests and resets, the guest goes on,
/// and nothing harvested on the way is lost from the window.
#[test]
fn a_full_dirty_ring_is_harvested_and_the_window_stays_exact() {
    require_kvm!();
    let out = dirty_run("ring", "1", 9000, 2);
    let d = &out.report()["memory"]["dirty"];
    assert!(u64_at(d, "ring_full_exits") >= 2, "{d}");
}

/// 4 GiB of RAM is two memslots, either side of the MMIO gap; the guest's
/// blocks come from the top one, so its slot is logged and read too.
#[test]
fn pages_in_the_memslot_above_4g_are_logged_in_both_modes() {
    require_kvm!();
    for mode in ["bitmap", "ring"] {
        let out = dirty_run_in(mode, "1", 2000, 5, "4G");
        assert_eq!(
            out.report()["memory"]["regions"].as_array().unwrap().len(),
            2
        );
        let pages = run_pages(&out.guest_event("workload")["runs"]);
        assert!(
            pages.iter().any(|&p| p >= (4u64 << 30) / 4096),
            "{mode}: no page above 4 GiB: {pages:?}"
        );
    }
}

/// `GET /vm/memory` carries the dirty log as it is now (harvested on the
/// request), while the guest runs; null without `--dirty-log`.
#[test]
fn get_vm_memory_reports_the_dirty_log_while_the_guest_runs() {
    require_kvm!();
    for (mode, want) in [("ring", true), ("off", false)] {
        let sock = unique_path("dirty.sock");
        let mut child = Command::new(BIN)
            .args(["run", "--quiet", "--timeout", "30", "--dirty-log", mode])
            .args(["--cmdline", "workload=spin", "--api-sock"])
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let body = loop {
            assert!(t.elapsed() < Duration::from_secs(10), "{mode}: no answer");
            match request(&sock, "GET", "/vm/memory", None) {
                Ok((200, body)) => break body,
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&sock);
        let m: Value = serde_json::from_str(&body).unwrap();
        let d = &m["dirty"];
        if want {
            assert_eq!(d["mode"], mode, "{m:#}");
            assert!(u64_at(d, "harvests") >= 1, "{m:#}");
            assert!(u64_at(d, "guest_pages") > 0, "the boot wrote: {m:#}");
            assert!(u64_at(d, "vmm_pages") > 0, "the VMM wrote: {m:#}");
        } else {
            assert!(d.is_null() && m.get("dirty").is_some(), "{m:#}");
        }
    }
}

/// Firecracker's `track_dirty_pages: true` turns the bitmap log on.
#[test]
fn track_dirty_pages_through_the_api_is_the_bitmap_log() {
    require_kvm!();
    let sock = unique_path("track.sock");
    let mut child = Command::new(BIN)
        .args(["run", "--quiet", "--timeout", "30", "--wait-for-start"])
        .args(["--cmdline", "workload=spin", "--api-sock"])
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while request(&sock, "GET", "/", None).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    let put = |uri: &str, body: &str| request(&sock, "PUT", uri, Some(body)).unwrap();
    let cfg = r#"{"vcpu_count": 1, "mem_size_mib": 256, "track_dirty_pages": true}"#;
    assert_eq!(put("/machine-config", cfg).0, 204);
    let (_, mc) = request(&sock, "GET", "/machine-config", None).unwrap();
    assert!(mc.contains(r#""track_dirty_pages":true"#), "{mc}");
    assert_eq!(
        put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    let (code, body) = request(&sock, "GET", "/vm/memory", None).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&sock);
    assert_eq!(code, 200, "{body}");
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["dirty"]["mode"], "bitmap", "{m:#}");
}

#[test]
fn without_dirty_logging_there_is_no_dirty_section() {
    require_kvm!();
    let out = run(&["--cmdline", "workload=dirty"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.report()["config"]["dirty_log"], "off");
    assert!(out.report()["memory"]["dirty"].is_null());
}

#[test]
fn a_bad_dirty_log_mode_exits_2_naming_the_valid_ones() {
    let out = memvisor(&["run", "--dirty-log", "maybe"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    for w in ["maybe", "off", "bitmap", "ring"] {
        assert!(out.stderr.contains(w), "{w}: {}", out.describe());
    }
}
