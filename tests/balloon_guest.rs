//! The guest's virtio-balloon driver against memvisor's device: inflate and
//! deflate through the API in both modes with the memory content checked,
//! deflate on OOM, free page reporting, a hostile guest, and the driver's
//! command-line options.
#[macro_use]
mod common;

use common::api_vmm::ApiVmm;

use common::{run, u64_at};
use memvisor::api::client::request;
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

api_vmm_newtype!(
    /// A memvisor process running a balloon workload with the API on.
    Vmm
);

impl Vmm {
    fn spawn(args: &[&str]) -> Vmm {
        Vmm(ApiVmm::spawn(80, args, Stdio::null()))
    }

    fn call(&self, method: &str, uri: &str, body: Option<&str>) -> (u16, Value) {
        let (code, body) = request(&self.sock, method, uri, body)
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    fn set_mib(&self, mib: u64) {
        let body = format!(r#"{{"amount_mib":{mib}}}"#);
        let (code, v) = self.call("PATCH", "/balloon", Some(&body));
        assert_eq!(code, 204, "{v}");
    }

    /// Polls the statistics until the guest's `actual` is `mib`.
    fn wait_actual(&self, mib: u64) -> Value {
        let t = Instant::now();
        loop {
            let (code, v) = self.call("GET", "/balloon/statistics", None);
            assert_eq!(code, 200, "{v}");
            if v["actual_mib"].as_u64() == Some(mib) {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "actual never reached {mib} MiB: {v}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The VMM's resident memory now (VmRSS).
    fn rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    fn wait(mut self) -> (i32, Value) {
        self.wait_report(Duration::from_secs(90))
    }
}

fn guest_workload(r: &Value) -> &Value {
    r["guest"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|g| g["event"] == "workload")
        .unwrap_or_else(|| panic!("no workload line: {}", r["guest"]))
}

/// Inflate 512M of a 1G guest whose RAM is all resident, check the VMM's
/// Rss fell by at least 95% of it, deflate to 0, and let the guest reuse
/// the memory (content-checked) and end.
fn cycle(mode: &str, vcpus: &str) {
    let cmdline = format!(
        "console=ttyS0 workload=balloon-hold size=64M seconds=60 cycles=1 balloon_mode={mode}"
    );
    let vmm = Vmm::spawn(&[
        "--memory",
        "1G",
        "--vcpus",
        vcpus,
        "--prefault",
        "--balloon",
        "amount_mib=0,stats_polling_interval_s=1",
        "--cmdline",
        &cmdline,
    ]);
    // The device is active once the guest's driver set it up: until then
    // a target is refused.
    let t = Instant::now();
    while vmm.call("PATCH", "/balloon", Some(r#"{"amount_mib":0}"#)).0 != 204 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the driver never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = vmm.rss();
    vmm.set_mib(512);
    let stats = vmm.wait_actual(512);
    // The discards happen before the device returns the buffers, so the
    // Rss has fallen by the time `actual` says so.
    let after = vmm.rss();
    assert!(
        before.saturating_sub(after) >= 512 * MIB * 95 / 100,
        "{mode}: Rss {before} -> {after}: less than 95% of 512 MiB returned"
    );
    // The guest's numbers reach the host's statistics.
    assert!(u64_at(&stats, "free_memory") > 0, "{stats}");
    assert!(
        u64_at(&stats, "total_memory") > 1000 * MIB && u64_at(&stats, "total_memory") < 1024 * MIB,
        "{stats}"
    );
    assert!(
        u64_at(&stats, "available_memory") <= u64_at(&stats, "free_memory"),
        "{stats}"
    );
    vmm.set_mib(0);
    vmm.wait_actual(0);
    let (code, r) = vmm.wait();
    let w = guest_workload(&r);
    assert_eq!(code, 0, "{mode}: {w}");
    assert_eq!(w["ok"], true, "{w}");
    assert_eq!(w["mode"], mode);
    assert_eq!(w["cycles_seen"], 1, "{w}");
    let b = &w["balloon"];
    assert_eq!(u64_at(b, "inflated_pages"), 131072, "{b}");
    assert_eq!(u64_at(b, "deflated_pages"), 131072, "{b}");
    assert_eq!(
        u64_at(w, "held_errors") + u64_at(w, "reuse_errors"),
        0,
        "{w}"
    );
    // Nothing leaked: with the balloon empty, every page is free again.
    assert_eq!(
        u64_at(w, "free_pages_end"),
        u64_at(w, "free_pages_start"),
        "{w}"
    );
    // The deflated memory was used again: more than the 512 MiB that was
    // in the balloon is reused.
    assert!(u64_at(w, "reused_pages") > 131072, "{w}");
    if mode == "2m" {
        assert_eq!(u64_at(b, "huge_units"), 256, "{b}");
    } else {
        assert_eq!(u64_at(b, "huge_units"), 0, "{b}");
    }
    // Many PFNs per buffer, many buffers per kick.
    assert!(u64_at(b, "inflate_buffers") <= 160, "{b}");
    assert!(u64_at(b, "inflate_batches") <= 4, "{b}");
    let host = &r["balloon"];
    assert_eq!(u64_at(host, "inflate_pages"), 131072, "{host}");
    assert_eq!(u64_at(host, "rejected_total"), 0, "{host}");
    if mode == "2m" {
        assert!(u64_at(host, "whole_2m_freed") >= 256, "{host}");
    }
}

#[test]
fn inflate_and_deflate_in_2m_mode_return_memory_and_reuse_it() {
    require_kvm!();
    cycle("2m", "1");
}

#[test]
fn inflate_and_deflate_in_4k_mode_return_memory_and_reuse_it() {
    require_kvm!();
    // Two vCPUs touching the held memory, both servicing the driver.
    cycle("4k", "2");
}

#[test]
fn an_oom_deflates_the_balloon_and_the_allocation_goes_on() {
    require_kvm!();
    for mode in ["2m", "4k"] {
        let out = run(&[
            "--memory",
            "256M",
            "--balloon",
            "amount_mib=192,deflate_on_oom=on",
            "--cmdline",
            &format!("workload=balloon-hold size=16M seconds=1 cycles=0 balloon_mode={mode}"),
        ]);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        let w = out.guest_event("workload");
        let b = &w["balloon"];
        assert_eq!(u64_at(b, "inflated_pages"), 192 * 256, "{mode}: {b}");
        // The reuse phase wanted more than was free: the OOM step took
        // the balloon down, a little at a time, and the pages were used.
        assert!(u64_at(b, "oom_deflates") > 1, "{mode}: {b}");
        assert!(u64_at(b, "oom_deflated_pages") >= 190 * 256, "{mode}: {b}");
        assert!(u64_at(w, "reused_pages") > 200 * 256, "{mode}: {w}");
        assert_eq!(
            u64_at(w, "free_pages_end"),
            u64_at(w, "free_pages_start"),
            "{mode}: {w}"
        );
        assert_eq!(w["ok"], true, "{w}");
    }
}

#[test]
fn without_deflate_on_oom_the_balloon_keeps_its_pages() {
    require_kvm!();
    let out = run(&[
        "--memory",
        "256M",
        "--balloon",
        "amount_mib=192",
        "--cmdline",
        "workload=balloon-hold size=16M seconds=1 cycles=0",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let w = out.guest_event("workload");
    let b = &w["balloon"];
    assert_eq!(u64_at(b, "oom_deflates"), 0, "{b}");
    assert_eq!(u64_at(w, "balloon_pages"), 192 * 256, "{w}");
    assert!(u64_at(w, "reused_pages") < 64 * 256, "{w}");
}

#[test]
fn free_page_reporting_hands_freed_memory_back_without_inflating() {
    require_kvm!();
    let out = run(&[
        "--memory",
        "512M",
        "--balloon",
        "amount_mib=0,free_page_reporting=on",
        "--cmdline",
        "workload=balloon-hold size=256M seconds=1 cycles=0 linger=1500",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let w = out.guest_event("workload");
    let b = &w["balloon"];
    assert_eq!(u64_at(b, "inflated_pages"), 0, "{b}");
    // Everything was freed at the end (the held memory and the reuse);
    // within the linger the free memory was reported, all but the low
    // watermark's share.
    assert!(u64_at(b, "reported_pages") >= 400 * 256, "{b}");
    assert!(u64_at(b, "report_passes") >= 1, "{b}");
    // What the end freed was reported within the linger.
    assert!(u64_at(w, "reported_after_free") >= 200 * 256, "{w}");
    // Every reported block came back to the free lists.
    assert_eq!(
        u64_at(w, "free_pages_end"),
        u64_at(w, "free_pages_start"),
        "{w}"
    );
    let host = &out.report()["balloon"];
    assert!(u64_at(host, "report_pages") >= 400 * 256, "{host}");
    // And the host let go of it: the guest's Rss at the end is what was
    // not reported.
    let rss = u64_at(&out.report()["memory"], "guest_rss_bytes");
    assert!(rss < 112 * MIB, "guest Rss {rss} after reporting");

    // A pass waits for the frees to gather: ending 100 ms after the last
    // free, before the delay is up, reports none of it.
    let out = run(&[
        "--memory",
        "512M",
        "--balloon",
        "amount_mib=0,free_page_reporting=on",
        "--cmdline",
        "workload=balloon-hold size=256M seconds=1 cycles=0 linger=100",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let w = out.guest_event("workload");
    assert_eq!(u64_at(w, "reported_after_free"), 0, "{w}");
    // Reporting ran before that all the same (what was free at boot).
    assert!(u64_at(&w["balloon"], "reported_pages") > 0, "{w}");
}

#[test]
fn a_hostile_guest_is_refused_and_counted_and_the_device_keeps_serving() {
    require_kvm!();
    let out = run(&[
        "--memory",
        "256M",
        "--balloon",
        "amount_mib=0,free_page_reporting=on,stats_polling_interval_s=1",
        "--cmdline",
        "workload=balloon-hostile",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let w = out.guest_event("workload");
    assert_eq!(w["honest_inflate"], true, "{w}");
    assert_eq!(w["honest_deflate"], true, "{w}");
    assert_eq!(w["canary_bad_words"], 0, "{w}");
    let host = &out.report()["balloon"];
    let rej = &host["rejected"];
    for kind in [
        "pfn_outside_ram",
        "chain_loop",
        "next_out_of_range",
        "buffer_outside_ram",
        "wrong_direction",
        "bad_length",
        "indirect",
        "head_out_of_range",
    ] {
        assert!(u64_at(rej, kind) > 0, "{kind} not counted: {host}");
    }
    // Only the honest page was discarded.
    assert_eq!(u64_at(host, "inflate_pages"), 1, "{host}");
}

#[test]
fn balloon_mode_and_sizes_are_checked() {
    require_kvm!();
    let out = run(&["--cmdline", "workload=balloon-hold balloon_mode=3m"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let e = out.guest_event("error");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("balloon_mode") && m.contains("4k or 2m"), "{m}");
    let out = run(&[
        "--balloon",
        "amount_mib=0",
        "--cmdline",
        "workload=balloon-hold size=12345",
    ]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let m = out.guest_event("error")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.contains("size=12345"), "{m}");
    for bad in ["fragment=1", "fragment=513", "fragment=abc"] {
        let out = run(&[
            "--balloon",
            "amount_mib=0",
            "--cmdline",
            &format!("workload=balloon-hold {bad}"),
        ]);
        assert_eq!(out.code, Some(1), "{bad}: {}", out.describe());
        let m = out.guest_event("error")["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(m.contains(bad) && m.contains("from 2 to 512"), "{m}");
    }
    // No device: say how to get one.
    let out = run(&["--cmdline", "workload=balloon-hold"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let m = out.guest_event("error")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.contains("--balloon"), "{m}");
}
