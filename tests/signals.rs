//! Signals: SIGINT, SIGTERM and SIGHUP each end the VM through the normal
//! teardown, with exit status 128 + signal number, a complete report, and no
//! vCPU thread left running.
#[macro_use]
mod common;

use common::{TempFile, BIN};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts a long memtest, sends `signo` mid-run, and checks the exit status
/// and the report.
fn signal_ends_the_run(signo: libc::c_int, name: &str, code: i32) {
    let report = TempFile::new("signal-report");
    // A 4 GiB memtest runs for seconds: long enough to interrupt mid-workload.
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--memory",
            "4G",
            "--vcpus",
            "2",
            "--timeout",
            "60",
            "--quiet",
            "--report",
        ])
        .arg(report.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signo) }, 0);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "memvisor did not stop within 10 s of {name}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(code), "{name}: {status:?}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    assert_eq!(r["exit"]["status"], "interrupted", "{}", r["exit"]);
    assert_eq!(r["exit"]["code"], code, "{}", r["exit"]);
    assert_eq!(r["exit"]["signal"], name, "{}", r["exit"]);
    assert!(r["phases_us"]["teardown_done"].as_f64().unwrap() > 0.0);
    assert!(r["phases_us"]["vm_closed"].as_f64().unwrap() > 0.0);
    assert!(
        r["memory"]["vm_rss_bytes"].as_u64().unwrap() > 0,
        "{}",
        r["memory"]
    );
    assert_eq!(r["guest"][0]["event"], "ready", "the guest lines are in it");
}

#[test]
fn sigterm_writes_a_complete_report_and_exits_143() {
    require_kvm!();
    signal_ends_the_run(libc::SIGTERM, "SIGTERM", 143);
}

#[test]
fn sighup_ends_the_run_with_129() {
    require_kvm!();
    signal_ends_the_run(libc::SIGHUP, "SIGHUP", 129);
}

#[test]
fn sigint_stops_the_vm_with_130() {
    require_kvm!();
    let report = TempFile::new("sigint-report");
    // A 4 GiB memtest runs for seconds: long enough to interrupt mid-workload.
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--memory",
            "4G",
            "--vcpus",
            "2",
            "--timeout",
            "60",
            "--quiet",
            "--report",
        ])
        .arg(report.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "memvisor did not stop within 10 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    assert_eq!(r["exit"]["status"], "interrupted", "{}", r["exit"]);
    assert!(r["phases_us"]["teardown_done"].as_f64().unwrap() > 0.0);
}
