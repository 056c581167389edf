//! The control API against a running memvisor: Firecracker's boot flow
//! (`--wait-for-start`, PUT boot-source / machine-config / entropy,
//! InstanceStart), pausing and resuming a running memtest, state rules, and
//! one VMM per socket.
#[macro_use]
mod common;

use common::api_vmm::ApiVmm;

use common::{memvisor, unique_path, TempFile, BIN};
use memvisor::api::client::request;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

api_vmm_newtype!(
    /// A memvisor process serving the API on its own socket.
    Vmm
);

impl Vmm {
    fn spawn(extra: &[&str]) -> Vmm {
        Vmm(ApiVmm::spawn(60, extra, Stdio::piped()))
    }

    fn state(&self) -> String {
        let (code, body) = self.call("GET", "/", None);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["state"].as_str().unwrap().to_string()
    }

    /// Waits for exit; returns the exit code and the report.
    fn wait(mut self) -> (i32, serde_json::Value) {
        let done = self.wait_report(Duration::from_secs(80));
        assert!(!self.sock.exists(), "the socket file is removed on exit");
        done
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
    // huge_pages as Firecracker means it: omitted is "None", 4 KiB pages.
    assert!(body.contains(r#""huge_pages":"None""#), "{body}");
    // "2M" is hugetlbfs: taken when the host has the pages, otherwise
    // refused at once, saying how many are needed and how to reserve them.
    let (code, body) = vmm.call("PATCH", "/machine-config", Some(r#"{"huge_pages":"2M"}"#));
    if code != 204 {
        assert_eq!(code, 400, "{body}");
        assert!(
            body.contains("huge_pages") && body.contains("nr_hugepages"),
            "{body}"
        );
    }
    let thp = r#"{"huge_pages":"Transparent"}"#;
    assert_eq!(vmm.call("PATCH", "/machine-config", Some(thp)).0, 204);
    let (_, body) = vmm.call("GET", "/machine-config", None);
    assert!(body.contains(r#""huge_pages":"Transparent""#), "{body}");
    let (code, body) = vmm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(code, 204, "{body}");
    // Started: pre-boot requests are refused now (the guest may already
    // have exited, in which case the socket is gone, or be exiting, in
    // which case the request meets the teardown and is answered 503).
    if let Ok((code, body)) = request(&vmm.sock, "PUT", "/machine-config", Some(mc)) {
        if code != 503 || !body.contains("dropped the request unanswered") {
            assert_eq!(code, 400, "{body}");
            assert!(body.contains("not supported after starting"), "{body}");
        }
    }
    let (code, r) = vmm.wait();
    assert_eq!(code, 0, "{}", r["exit"]);
    assert_eq!(r["config"]["vcpus"], 2);
    assert_eq!(r["config"]["memory_bytes"], 128u64 << 20);
    assert_eq!(r["config"]["backing"], "anon");
    assert_eq!(r["config"]["thp"], "on");
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

/// Firecracker's state rules at their edges: a failed InstanceStart leaves
/// the VMM configurable and startable, pausing twice and resuming twice are
/// harmless, and SIGTERM while paused still writes the report.
#[test]
fn failed_start_then_start_then_double_pause_and_resume_then_sigterm() {
    require_kvm!();
    let bad = TempFile::with_contents("not-a-kernel", b"#!/bin/sh\necho hi\n");
    // jmp $: a guest that spins until stopped.
    let good = TempFile::with_contents("spin.elf", &spin_elf());
    let vmm = Vmm::spawn(&["--wait-for-start"]);
    let boot = |k: &TempFile| format!(r#"{{"kernel_image_path":"{}"}}"#, k.as_str());
    let start = r#"{"action_type":"InstanceStart"}"#;
    assert_eq!(vmm.call("PUT", "/boot-source", Some(&boot(&bad))).0, 204);
    for _ in 0..2 {
        let (code, body) = vmm.call("PUT", "/actions", Some(start));
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("not-a-kernel"), "{body}");
        assert_eq!(vmm.state(), "Not started");
    }
    assert_eq!(vmm.call("PUT", "/boot-source", Some(&boot(&good))).0, 204);
    let (code, body) = vmm.call("PUT", "/actions", Some(start));
    assert_eq!(code, 204, "{body}");
    assert_eq!(vmm.state(), "Running");
    for (state, now) in [
        ("Resumed", "Running"),
        ("Paused", "Paused"),
        ("Paused", "Paused"),
        ("Resumed", "Running"),
        ("Resumed", "Running"),
        ("Paused", "Paused"),
    ] {
        let (code, body) = vmm.call("PATCH", "/vm", Some(&format!(r#"{{"state":"{state}"}}"#)));
        assert!(code == 204 || code == 400, "{state}: {code} {body}");
        assert_eq!(vmm.state(), now, "after {state}");
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(vmm.child.id() as i32, libc::SIGTERM) };
    let (code, r) = vmm.wait();
    assert_eq!(code, 143, "{}", r["exit"]);
    assert_eq!(r["exit"]["status"], "interrupted");
}

/// A minimal ELF64 whose code at 1 MiB is `jmp $`.
fn spin_elf() -> Vec<u8> {
    elf(&[0xeb, 0xfe])
}

/// A minimal ELF64: `code` loaded and entered at 1 MiB.
fn elf(code: &[u8]) -> Vec<u8> {
    elf_with(code, false)
}

/// As `elf`, and with `smp` the memvisor SMP-entry note: every vCPU starts
/// at the entry point.
fn elf_with(code: &[u8], smp: bool) -> Vec<u8> {
    let load: u64 = 0x10_0000;
    let note_off: u64 = 0x800;
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e.extend_from_slice(&2u16.to_le_bytes());
    e.extend_from_slice(&0x3eu16.to_le_bytes());
    e.extend_from_slice(&1u32.to_le_bytes());
    for v in [load, 64, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1 + smp as u16, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&7u32.to_le_bytes());
    let n = code.len() as u64;
    for v in [0x1000, load, load, n, n, 0x1000] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    let mut note = Vec::new();
    for w in [9u32, 0, 0x4d56_0001] {
        note.extend_from_slice(&w.to_le_bytes());
    }
    note.extend_from_slice(b"memvisor\0\0\0\0");
    if smp {
        e.extend_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        e.extend_from_slice(&4u32.to_le_bytes());
        let len = note.len() as u64;
        for v in [note_off, 0, 0, len, len, 4] {
            e.extend_from_slice(&v.to_le_bytes());
        }
    }
    e.resize(note_off as usize, 0);
    e.extend_from_slice(&note);
    e.resize(0x1000, 0);
    e.extend_from_slice(code);
    e
}

/// Stdout as a 4 KiB pipe (the smallest), so a COM1 guest fills it fast.
fn small_pipe(out: &std::process::ChildStdout) {
    // SAFETY: fcntl on our end of the child's stdout pipe.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(out),
            libc::F_SETPIPE_SZ,
            4096,
        )
    };
}

/// A memvisor serving the API, its console on a pipe nobody reads yet.
fn spawn_piped(args: &[&str]) -> (Child, PathBuf, std::process::ChildStdout) {
    let sock = unique_path("api.sock");
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--timeout",
            "60",
            "--api-sock",
            sock.to_str().unwrap(),
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    small_pipe(&out);
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_millis(2));
    }
    (child, sock, out)
}

/// mov dx, 0x3f8; mov al, 'A'; 1: out dx, al; jmp 1b
const COM1_FLOOD: [u8; 9] = [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xeb, 0xfd];

/// Stuck vCPUs (all writing COM1 to a full pipe) make a pause fail after
/// the 2 s reply timeout once, not once per vCPU: the event loop, which
/// serves signals and the API, must not block for minutes.
#[test]
fn a_pause_with_every_vcpu_stuck_times_out_once() {
    require_kvm!();
    let kernel = TempFile::with_contents("com1-smp.elf", &elf_with(&COM1_FLOOD, true));
    let report = TempFile::new("api-report");
    let (mut child, sock, out) = spawn_piped(&[
        "--vcpus",
        "4",
        "--kernel",
        kernel.as_str(),
        "--report",
        report.as_str(),
    ]);
    std::thread::sleep(Duration::from_millis(500)); // the pipe fills
    let t = Instant::now();
    let (code, body) = request(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#)).unwrap();
    let took = t.elapsed();
    assert_eq!(code, 500, "the vCPUs are stuck writing to the pipe: {body}");
    assert!(took < Duration::from_secs(4), "the pause took {took:?}");
    drop(out); // EPIPE frees the vCPUs
               // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143));
}

/// A pause that timed out (a vCPU stuck in a device: here COM1 writing to
/// a stdout pipe nobody reads) still pauses the vCPUs that answer, and
/// later; the VM must then count as paused, so that Resume resumes it.
#[test]
fn a_pause_that_timed_out_can_be_resumed() {
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    require_kvm!();
    let kernel = TempFile::with_contents("com1.elf", &elf(&COM1_FLOOD));
    let report = TempFile::new("api-report");
    let (mut child, sock, mut out) =
        spawn_piped(&["--kernel", kernel.as_str(), "--report", report.as_str()]);
    let call = |m: &str, u: &str, b: Option<&str>| request(&sock, m, u, b).unwrap();
    std::thread::sleep(Duration::from_millis(500)); // the pipe fills
    let (code, body) = call("PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(code, 500, "the vCPU is stuck writing to the pipe: {body}");
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = out.read(&mut buf) {
            g.fetch_add(n, Ordering::SeqCst);
        }
    });
    std::thread::sleep(Duration::from_millis(300)); // it reads the Pause
    let (code, body) = call("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    assert_eq!(code, 204, "{body}");
    let before = got.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    let after = got.load(Ordering::SeqCst);
    assert!(
        after > before + 100,
        "the guest runs again after Resumed: {before} -> {after} console bytes"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
}
