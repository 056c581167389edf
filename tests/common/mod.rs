//! Shared helpers for the memvisor integration tests (included with
//! `#[macro_use] mod common;` from each test file).
//!
//! * `require_kvm!()` skips a test (with a line on stderr) when /dev/kvm is
//!   absent, or panics instead when `REQUIRE_KVM=1` is set.
//! * `run(&[...])` runs `memvisor run ...` with a report file and a timeout,
//!   `memvisor(...)` runs any memvisor command line; both guard against a
//!   hang and clean up their temporary files.
#![allow(dead_code)]

pub mod api_vmm;
pub mod hugetlb;

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BIN: &str = env!("CARGO_BIN_EXE_memvisor");
pub const KVM_DEVICE: &str = "/dev/kvm";
/// How long any single memvisor invocation may take before the test fails.
pub const HANG_GUARD: Duration = Duration::from_secs(90);
/// The `--timeout` given to `memvisor run` when the caller does not pass one.
pub const DEFAULT_RUN_TIMEOUT: &str = "30";
/// Environment variable carrying a per-invocation tag, so that leftover
/// processes (memvisor or anything it spawned) can be found in /proc.
pub const TAG_ENV: &str = "MEMVISOR_INTEGRATION_TEST_TAG";

pub fn kvm_available() -> bool {
    Path::new(KVM_DEVICE).exists()
}

/// Whether a KVM test should go on. Prints the skip line and returns false
/// when /dev/kvm is absent; panics instead under `REQUIRE_KVM=1`.
pub fn kvm_or_skip(test: &str) -> bool {
    if kvm_available() {
        return true;
    }
    if std::env::var("REQUIRE_KVM").is_ok_and(|v| v == "1") {
        panic!("{test}: {KVM_DEVICE} not present, and REQUIRE_KVM=1 makes that a failure");
    }
    // Straight to fd 2: libtest captures eprintln!, and a skip must show in
    // a passing run.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipping {test}: {KVM_DEVICE} not present (set REQUIRE_KVM=1 to fail instead)"
    );
    false
}

/// The running test's name (libtest names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("this test")
        .to_string()
}

/// `require_kvm!()` at the top of a test: returns early (skip) or panics,
/// see `kvm_or_skip`.
macro_rules! require_kvm {
    () => {
        if !$crate::common::kvm_or_skip(&$crate::common::current_test()) {
            return;
        }
    };
}

/// `api_vmm_newtype!(Vmm)` declares a test file's own `struct Vmm(ApiVmm)`
/// that derefs to the shared [`api_vmm::ApiVmm`] (spawn, call, wait), so
/// the file can add the methods of its own tests beside them.
#[allow(unused_macros)] // only the API-driving test files use it
macro_rules! api_vmm_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        struct $name($crate::common::api_vmm::ApiVmm);

        impl std::ops::Deref for $name {
            type Target = $crate::common::api_vmm::ApiVmm;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }
    };
}

/// Two guest NUMA nodes of 128 MiB, CPU 0 on node 0 and CPU 1 on node 1,
/// distance 20, both on host node 0 (this host has one): `run` arguments.
pub const TWO_NODES: [&str; 8] = [
    "--vcpus",
    "2",
    "--memory",
    "256M",
    "--numa",
    "node=0,size=128M,cpus=0,host-node=0",
    "--numa",
    "node=1,size=128M,cpus=1,host-node=0,distance=0@20",
];

/// A fresh path in the temp dir; nothing is created.
pub fn unique_path(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "memvisor-it-{}-{}-{nanos}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A temporary file removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(what: &str) -> Self {
        TempFile(unique_path(what))
    }

    pub fn with_contents(what: &str, contents: &[u8]) -> Self {
        let f = TempFile::new(what);
        std::fs::write(&f.0, contents).expect("writing a temporary file");
        f
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A temporary directory removed (with its contents) on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let p = unique_path(what);
        std::fs::create_dir(&p).expect("creating a temporary directory");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one memvisor invocation did.
#[derive(Debug)]
pub struct Output {
    /// The exit code, or None if killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The parsed `--report` file, if one was asked for and written.
    pub report: Option<Value>,
    pub elapsed: Duration,
    /// Processes still alive after memvisor exited that carry its tag.
    pub leftovers: Vec<String>,
}

impl Output {
    pub fn report(&self) -> &Value {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON report was written\n{}", self.describe()))
    }

    /// Exit code, stdout and stderr, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit code {:?} after {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// The first guest line with `"event": name`.
    pub fn guest_event(&self, name: &str) -> &Value {
        self.report()["guest"]
            .as_array()
            .expect("report.guest is an array")
            .iter()
            .find(|v| v["event"] == name)
            .unwrap_or_else(|| panic!("no guest event {name:?} in the report\n{:#}", self.report()))
    }
}

/// Runs the memvisor binary with `args` and extra environment, with a hang
/// guard. MEMVISOR_KVM_DEVICE, MEMVISOR_SPAWN_NS and RUST_LOG are cleared
/// unless given in `env`, so the invoking environment cannot change results.
pub fn memvisor(args: &[&str], env: &[(&str, &str)]) -> Output {
    memvisor_with_report(args, env, None)
}

fn memvisor_with_report(args: &[&str], env: &[(&str, &str)], report: Option<&Path>) -> Output {
    let out_file = TempFile::new("stdout");
    let err_file = TempFile::new("stderr");
    let tag = unique_path("tag")
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("MEMVISOR_KVM_DEVICE")
        .env_remove("MEMVISOR_SPAWN_NS")
        .env_remove("RUST_LOG")
        .env(TAG_ENV, &tag)
        .stdin(Stdio::null())
        .stdout(File::create(out_file.path()).expect("creating the stdout file"))
        .stderr(File::create(err_file.path()).expect("creating the stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawning memvisor");
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for memvisor") {
            break s;
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "memvisor {args:?} did not exit within {HANG_GUARD:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                std::fs::read_to_string(out_file.path()).unwrap_or_default(),
                std::fs::read_to_string(err_file.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let leftovers = tagged_processes(&tag);
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let report = report.and_then(|p| std::fs::read(p).ok()).map(|bytes| {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "the report is not valid JSON: {e}\n{}",
                String::from_utf8_lossy(&bytes)
            )
        })
    });
    Output {
        code: status.code(),
        stdout: read(out_file.path()),
        stderr: read(err_file.path()),
        report,
        elapsed,
        leftovers,
    }
}

/// `memvisor run ARGS --report <tmp> [--timeout 30]`: the report is parsed
/// and its file removed. Pass `--report` yourself to override it (then
/// `report` is None), and `--timeout` to override the default.
pub fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let report = TempFile::new("report.json");
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    let own_report = !args.contains(&"--report");
    if own_report {
        full.extend_from_slice(&["--report", report.as_str()]);
    }
    if !args.contains(&"--timeout") {
        full.extend_from_slice(&["--timeout", DEFAULT_RUN_TIMEOUT]);
    }
    memvisor_with_report(&full, env, own_report.then_some(report.path()))
}

/// Pids and command names of live processes whose environment holds `tag`.
fn tagged_processes(tag: &str) -> Vec<String> {
    let needle = format!("{TAG_ENV}={tag}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push(format!("{pid} ({})", comm.trim()));
        }
    }
    found
}

/// Host MemTotal in MiB, as memvisor reports it.
pub fn host_mem_total_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("reading /proc/meminfo");
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kb / 1024
}

/// Field `key` of `v` as u64, with a helpful panic.
pub fn u64_at(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v:#}"))
}

/// Field `key` of `v` as f64, with a helpful panic.
pub fn f64_at(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

pub const LOAD: u64 = 0x10_0000;

/// A minimal ELF64 executable for guests that are a few bytes of x86-64
/// code (entered in long mode on the VMM's identity map): one PT_LOAD segment at 1 MiB holding `code`,
/// entered at its first byte.
pub fn elf(code: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    e.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    // Program header: PT_LOAD, RWX, file offset 0x1000.
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&7u32.to_le_bytes());
    for v in [
        0x1000,
        LOAD,
        LOAD,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.resize(0x1000, 0);
    e.extend_from_slice(code);
    e
}
