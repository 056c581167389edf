//! Bad input: every case exits with status 2 promptly, prints one clear
//! error line on stderr naming the bad value (and what would be valid), and
//! leaves no process behind. Bad values of the bundled guest kernel's own
//! options (`--cmdline`) are the guest's to reject: exit status 1, with an
//! `error` line naming the option, the value and what is valid.
#[macro_use]
mod common;

use common::{host_mem_total_mib, run, run_env, Output, TempFile};
use std::time::Duration;

const PROMPT: Duration = Duration::from_secs(10);

/// Checks exit status 2, promptness, no leftovers, no guest output on
/// stdout, and that the first stderr line is an error containing every
/// needle. Lines after it may only be clap's usage/help hints.
fn assert_bad_input(out: &Output, needles: &[&str]) {
    let ctx = out.describe();
    assert_eq!(out.code, Some(2), "{ctx}");
    assert!(out.elapsed < PROMPT, "took {:?}\n{ctx}", out.elapsed);
    assert!(
        out.leftovers.is_empty(),
        "processes left behind: {:?}\n{ctx}",
        out.leftovers
    );
    assert!(
        out.stdout.trim().is_empty(),
        "nothing should reach stdout\n{ctx}"
    );
    let mut lines = out.stderr.lines().filter(|l| !l.trim().is_empty());
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("nothing on stderr\n{ctx}"));
    assert!(
        first.starts_with("memvisor: error: ") || first.starts_with("error: "),
        "not an error line: {first}\n{ctx}"
    );
    for n in needles {
        assert!(
            first.contains(n),
            "the error line does not mention {n:?}: {first}\n{ctx}"
        );
    }
    for rest in lines {
        assert!(
            rest.starts_with("Usage:")
                || rest.starts_with("For more information")
                || rest.trim_start().starts_with("tip:"),
            "more than one error line on stderr: {rest:?}\n{ctx}"
        );
    }
    if let Some(r) = &out.report {
        panic!("no report should be written for bad input, got {r:#}");
    }
}

// --- KVM device ---------------------------------------------------------
// These do not need a real /dev/kvm: memvisor is pointed elsewhere.

#[test]
fn kvm_device_missing() {
    let missing = common::unique_path("no-such-kvm");
    let p = missing.to_str().unwrap();
    let out = run_env(&["--memory", "128M"], &[("MEMVISOR_KVM_DEVICE", p)]);
    assert_bad_input(&out, &[p, "cannot open KVM device"]);
}

#[test]
fn kvm_device_is_a_regular_file() {
    let f = TempFile::with_contents("not-kvm", b"not a device\n");
    let out = run_env(
        &["--memory", "128M"],
        &[("MEMVISOR_KVM_DEVICE", f.as_str())],
    );
    assert_bad_input(&out, &[f.as_str(), "not a KVM device"]);
}

// --- kernel -------------------------------------------------------------

#[test]
fn kernel_missing() {
    require_kvm!();
    let missing = common::unique_path("no-such-kernel");
    let p = missing.to_str().unwrap();
    let out = run(&["--kernel", p, "--memory", "128M"]);
    assert_bad_input(&out, &[p, "cannot read kernel"]);
}

#[test]
fn kernel_neither_elf_nor_bzimage() {
    require_kvm!();
    let f = TempFile::with_contents("text-kernel", b"this is just a text file\n");
    let out = run(&["--kernel", f.as_str(), "--memory", "128M"]);
    assert_bad_input(&out, &[f.as_str(), "neither an ELF", "bzImage"]);
}

#[test]
fn kernel_empty_file() {
    require_kvm!();
    let f = TempFile::with_contents("empty-kernel", b"");
    let out = run(&["--kernel", f.as_str(), "--memory", "128M"]);
    assert_bad_input(&out, &[f.as_str(), "neither an ELF", "bzImage", "empty"]);
}

// --- memory -------------------------------------------------------------

#[test]
fn memory_below_minimum() {
    require_kvm!();
    let out = run(&["--memory", "8M"]);
    assert_bad_input(&out, &["--memory 8M", "16 MiB"]);
}

#[test]
fn memory_not_2m_aligned() {
    require_kvm!();
    let out = run(&["--memory", "17M"]);
    assert_bad_input(&out, &["--memory 17M", "multiple of 2 MiB"]);
}

#[test]
fn memory_above_host_memory() {
    require_kvm!();
    let out = run(&["--memory", "100000G"]);
    let host = format!("{} MiB", host_mem_total_mib());
    assert_bad_input(&out, &["--memory 100000G", &host]);
}

/// Syntax errors are caught before KVM is touched: no /dev/kvm needed.
#[test]
fn memory_not_a_size() {
    let out = run(&["--memory", "abc"]);
    assert_bad_input(&out, &["'abc'", "--memory", "K, M or G"]);
}

// --- vCPUs --------------------------------------------------------------

#[test]
fn vcpus_zero() {
    require_kvm!();
    let out = run(&["--vcpus", "0", "--memory", "128M"]);
    // The bundled kernel's limit, not KVM's.
    assert_bad_input(&out, &["--vcpus 0", "valid: 1 to 64"]);
}

#[test]
fn vcpus_above_kvm_max() {
    require_kvm!();
    let out = run(&["--vcpus", "100000", "--memory", "128M"]);
    assert_bad_input(&out, &["--vcpus 100000", "at most "]);
}

// --- command line -------------------------------------------------------

#[test]
fn unknown_flag() {
    let out = run(&["--bogus"]);
    assert_bad_input(&out, &["'--bogus'"]);
    assert!(
        out.stderr.contains("--help"),
        "no pointer to the valid flags\n{}",
        out.describe()
    );
}

#[test]
fn timeout_zero() {
    let out = run(&["--timeout", "0", "--memory", "128M"]);
    assert_bad_input(&out, &["--timeout", "'0'", "above 0 and below 1e9"]);
}

#[test]
fn kernel_not_a_regular_file() {
    require_kvm!();
    // /dev/zero never ends: it must be refused, not read.
    let out = run(&["--kernel", "/dev/zero"]);
    assert_bad_input(&out, &["/dev/zero", "not a regular file"]);
}

#[test]
fn kernel_larger_than_guest_ram() {
    require_kvm!();
    let k = TempFile::new("big-kernel");
    let f = std::fs::File::create(k.path()).unwrap();
    f.set_len(40 << 20).unwrap();
    let out = run(&["--kernel", k.as_str(), "--memory", "32M"]);
    assert_bad_input(&out, &[k.as_str(), "larger than the guest's 32M"]);
}

#[test]
fn wait_for_start_without_api_sock() {
    let out = run(&["--wait-for-start"]);
    assert_bad_input(&out, &["--api-sock"]);
}

#[test]
fn record_budget_out_of_range() {
    let out = run(&["--record-budget", "10"]);
    assert_bad_input(&out, &["10", "between 4K and 1G"]);
}

/// `memvisor run --report - | head -c 100`: a closed stdout ends our output
/// quietly, never with a panic (exit 134).
#[test]
fn a_closed_stdout_pipe_is_not_a_crash() {
    require_kvm!();
    use std::process::{Command, Stdio};
    for _ in 0..3 {
        let mut child = Command::new(common::BIN)
            .args(["run", "--report", "-", "--cmdline", "workload=boot"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the report is written: its write gets
        // EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// --- guest kernel options (--cmdline) -------------------------------------

/// The guest rejected `cmdline`: exit 1 (guest failure) promptly, and its
/// `error` line, the exit reason and the human-facing output (console and
/// summary) contain every needle.
fn assert_bad_guest_option(cmdline: &str, needles: &[&str]) {
    require_kvm!();
    let out = run(&["--cmdline", cmdline, "--memory", "128M"]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(1), "{ctx}");
    assert!(out.elapsed < PROMPT, "took {:?}\n{ctx}", out.elapsed);
    assert!(
        out.leftovers.is_empty(),
        "processes left behind: {:?}\n{ctx}",
        out.leftovers
    );
    let r = out.report();
    assert_eq!(r["exit"]["status"], "failure", "{r:#}");
    let msg = out.guest_event("error")["message"]
        .as_str()
        .expect("error.message is a string")
        .to_string();
    let reason = r["exit"]["reason"].as_str().unwrap_or_default();
    let human = format!("{}{}", out.stdout, out.stderr);
    for n in needles {
        assert!(
            msg.contains(n),
            "the guest error does not mention {n:?}: {msg}"
        );
        assert!(
            reason.contains(n),
            "exit.reason does not mention {n:?}: {reason}"
        );
        assert!(
            human.contains(n),
            "the output does not mention {n:?}\n{ctx}"
        );
    }
    assert!(
        !r["guest"]
            .as_array()
            .expect("report.guest is an array")
            .iter()
            .any(|e| e["event"] == "workload"),
        "a workload ran despite the bad option: {r:#}"
    );
}

#[test]
fn guest_alloc_iters_not_a_number() {
    assert_bad_guest_option(
        "workload=alloc alloc_iters=abc",
        &["alloc_iters", "'abc'", "1 to 1000000000"],
    );
}

#[test]
fn guest_alloc_iters_zero() {
    assert_bad_guest_option(
        "workload=alloc alloc_iters=0",
        &["alloc_iters", "'0'", "1 to 1000000000"],
    );
}

/// Checked whichever workload runs: a typo is a typo.
#[test]
fn guest_alloc_iters_bad_with_another_workload() {
    assert_bad_guest_option("workload=boot alloc_iters=12x", &["alloc_iters", "'12x'"]);
}

#[test]
fn guest_mobility_grouping_bad() {
    assert_bad_guest_option(
        "workload=boot mobility_grouping=maybe",
        &["mobility_grouping", "'maybe'", "on, off or auto"],
    );
}

#[test]
fn guest_option_without_value() {
    assert_bad_guest_option(
        "workload=boot alloc_iters",
        &["alloc_iters", "needs a value"],
    );
}

#[test]
fn guest_empty_workload() {
    assert_bad_guest_option("workload=", &["workload", "''", "memtest"]);
}

/// Keys the kernel does not know stay ignored: Linux-style command lines
/// carry them (console=, virtio_mmio.device=, bare flags).
#[test]
fn guest_unknown_keys_are_ignored() {
    require_kvm!();
    let out = run(&[
        "--cmdline",
        "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 quiet foo=bar \
         workload=boot mobility_grouping=off alloc_iters=10",
        "--memory",
        "128M",
        "--quiet",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.guest_event("workload")["name"], "boot");
}
