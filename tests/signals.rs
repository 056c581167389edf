//! Ctrl-C: SIGINT ends the VM cleanly with exit status 130, a report, and no
//! vCPU thread left running.
#[macro_use]
mod common;

use common::{TempFile, BIN};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
