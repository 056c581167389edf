//! The control API against a running memvisor: Firecracker's boot flow
//! (`--wait-for-start`, PUT boot-source / machine-config / entropy,
//! InstanceStart), pausing and resuming a running memtest, state rules, and
//! one VMM per socket.
#[macro_use]
mod common;

use common::{memvisor, unique_path, TempFile, BIN};
use memvisor::api::client::request;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A memvisor process serving the API on its own socket.
struct Vmm {
    child: Child,
    sock: PathBuf,
    report: TempFile,
}

impl Vmm {
    fn spawn(extra: &[&str]) -> Vmm {
        let sock = unique_path("api.sock");
        let report = TempFile::new("api-report");
        let mut args = vec!["run", "--quiet", "--timeout", "60", "--api-sock"];
        args.push(sock.to_str().unwrap());
        args.extend_from_slice(&["--report", report.as_str()]);
        args.extend_from_slice(extra);
        let child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        // The file appears at bind(); wait until it accepts connections.
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no API socket after 10 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        Vmm {
            child,
            sock,
            report,
        }
    }

    fn call(&self, method: &str, uri: &str, body: Option<&str>) -> (u16, String) {
        request(&self.sock, method, uri, body).unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
    }

    fn state(&self) -> String {
        let (code, body) = self.call("GET", "/", None);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["state"].as_str().unwrap().to_string()
    }

    /// Waits for exit; returns the exit code and the report.
    fn wait(mut self) -> (i32, serde_json::Value) {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > Duration::from_secs(80) {
                let _ = self.child.kill();
                panic!("memvisor did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!self.sock.exists(), "the socket file is removed on exit");
        let r = serde_json::from_slice(&std::fs::read(self.report.path()).unwrap()).unwrap();
        (status.code().unwrap_or(-1), r)
    }
}

#[test]
fn firecracker_boot_flow_boots_the_bundled_kernel() {
    require_kvm!();
    let kernel = TempFile::new("kernel.elf");
    let out = memvisor(&["kernel", "--output", kernel.as_str()], &[]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let vmm = Vmm::spawn(&["--wait-for-start"]);
    assert_eq!(vmm.state(), "Not started");
    // Before start, runtime requests are refused with Firecracker's words.
    let (code, body) = vmm.call("PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not supported before starting"), "{body}");
    let boot = format!(
        r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0 workload=boot"}}"#,
        kernel.as_str()
    );
    assert_eq!(vmm.call("PUT", "/boot-source", Some(&boot)).0, 204);
    let mc = r#"{"vcpu_count":2,"mem_size_mib":128}"#;
    assert_eq!(vmm.call("PUT", "/machine-config", Some(mc)).0, 204);
    assert_eq!(vmm.call("PUT", "/entropy", Some("{}")).0, 204);
    let (code, body) = vmm.call("GET", "/machine-config", None);
    assert_eq!(code, 200);
    assert!(
        body.contains(r#""vcpu_count":2"#) && body.contains(r#""mem_size_mib":128"#),
        "{body}"
    );
    let (code, body) = vmm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(code, 204, "{body}");
    // Started: pre-boot requests are refused now (the guest may already
    // have exited, in which case the socket is gone).
    if let Ok((code, body)) = request(&vmm.sock, "PUT", "/machine-config", Some(mc)) {
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("not supported after starting"), "{body}");
    }
    let (code, r) = vmm.wait();
    assert_eq!(code, 0, "{}", r["exit"]);
    assert_eq!(r["config"]["vcpus"], 2);
    assert_eq!(r["config"]["memory_bytes"], 128u64 << 20);
    assert!(
        r["config"]["cmdline"]
            .as_str()
            .unwrap()
            .contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{}",
        r["config"]
    );
}

#[test]
fn pause_and_resume_a_running_memtest() {
    require_kvm!();
    let vmm = Vmm::spawn(&["--memory", "2G", "--vcpus", "2"]);
    for _ in 0..5 {
        // The guest may not be running yet or may have finished: stop if so.
        let (code, body) = vmm.call("PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
        assert_eq!(code, 204, "{body}");
        assert_eq!(vmm.state(), "Paused");
        std::thread::sleep(Duration::from_millis(30));
        let (code, body) = vmm.call("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
        assert_eq!(code, 204, "{body}");
        assert_eq!(vmm.state(), "Running");
        std::thread::sleep(Duration::from_millis(30));
    }
    let (code, r) = vmm.wait();
    assert_eq!(code, 0, "{}", r["exit"]);
    let wl = r["guest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["event"] == "workload")
        .unwrap();
    assert_eq!(wl["ok"], true, "{wl}");
    assert_eq!(wl["errors"], 0, "{wl}");
    assert!(r["exits"]["kicks"].as_u64().unwrap() >= 5, "{}", r["exits"]);
}

#[test]
fn a_second_vmm_on_the_same_socket_is_refused() {
    require_kvm!();
    let first = Vmm::spawn(&["--wait-for-start"]);
    let sock = first.sock.to_str().unwrap().to_string();
    let out = memvisor(&["run", "--api-sock", &sock, "--wait-for-start"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("another VMM is serving"),
        "{}",
        out.stderr
    );
    assert!(
        Path::new(&sock).exists(),
        "the first VMM's socket is left alone"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.child.id() as i32, libc::SIGTERM) };
    let (code, r) = first.wait();
    assert_eq!(code, 143, "{}", r["exit"]);
}
