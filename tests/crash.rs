//! Guests that crash, fail or hang: the bundled kernel's `fault` workload
//! (an exception taken at CPL3 and dumped by the CPL0 handler), and tiny
//! hand-made ELF kernels (a few bytes of x86-64 code loaded at 1 MiB) booted
//! through `--kernel`.
#[macro_use]
mod common;

use common::{run, Output, TempFile};
use std::time::Duration;

const LOAD_ADDR: u64 = 0x10_0000;
/// The port the guest writes its exit status to (firmware/src/abi.rs).
const EXIT_PORT: u8 = 0xf4;
const UD2: [u8; 2] = [0x0f, 0x0b];

/// A minimal static ELF64 executable whose single PT_LOAD segment holds
/// `code` at LOAD_ADDR, which is also the entry point.
fn tiny_elf(code: &[u8]) -> Vec<u8> {
    const CODE_OFFSET: usize = 0x1000;
    let mut img = Vec::new();
    // ELF header.
    img.extend_from_slice(b"\x7fELF");
    img.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    img.extend_from_slice(&[0; 8]);
    img.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    img.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    img.extend_from_slice(&1u32.to_le_bytes()); // e_version
    img.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    img.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    img.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    img.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, 1, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        img.extend_from_slice(&half.to_le_bytes());
    }
    // Program header: PT_LOAD, R+X.
    img.extend_from_slice(&1u32.to_le_bytes());
    img.extend_from_slice(&5u32.to_le_bytes());
    for word in [
        CODE_OFFSET as u64,
        LOAD_ADDR,
        LOAD_ADDR,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        img.extend_from_slice(&word.to_le_bytes());
    }
    img.resize(CODE_OFFSET, 0);
    img.extend_from_slice(code);
    img
}

/// `mov eax, status; out EXIT_PORT, eax; ud2`.
fn exit_with(status: u32) -> Vec<u8> {
    let mut code = vec![0xb8];
    code.extend_from_slice(&status.to_le_bytes());
    code.extend_from_slice(&[0xe7, EXIT_PORT]);
    code.extend_from_slice(&UD2);
    code
}

fn run_kernel(code: &[u8], extra: &[&str]) -> Output {
    let kernel = TempFile::with_contents("tiny-kernel.elf", &tiny_elf(code));
    let mut args = vec!["--kernel", kernel.as_str(), "--memory", "32M", "--quiet"];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(
        out.leftovers.is_empty(),
        "processes left behind: {:?}\n{}",
        out.leftovers,
        out.describe()
    );
    assert!(
        out.elapsed < Duration::from_secs(10),
        "took {:?}\n{}",
        out.elapsed,
        out.describe()
    );
    out
}

#[test]
fn triple_fault_is_a_crash() {
    require_kvm!();
    // With the VMM's empty IDT, #UD escalates to a triple fault.
    let code = UD2.repeat(4);
    let out = run_kernel(&code, &[]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(3), "{ctx}");
    let e = &out.report()["exit"];
    assert_eq!(e["status"], "crash", "{e:#}");
    assert_eq!(e["code"], 3, "{e:#}");
    assert_eq!(e["vcpu"], 0, "{e:#}");
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("triple fault"),
        "reason does not say triple fault: {reason}"
    );
    let rip = e["rip"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rip for a crash: {e:#}"));
    assert!(
        (LOAD_ADDR..LOAD_ADDR + code.len() as u64).contains(&rip),
        "rip {rip:#x} is outside the guest code: {e:#}"
    );
    assert_eq!(out.report()["config"]["kernel_format"], "elf");
}

#[test]
fn guest_reported_crash_is_a_crash() {
    require_kvm!();
    let out = run_kernel(&exit_with(3), &[]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(3), "{ctx}");
    let e = &out.report()["exit"];
    assert_eq!(e["status"], "crash", "{e:#}");
    assert_eq!(e["guest_status"], 3, "{e:#}");
}

#[test]
fn guest_reported_failure_is_a_failure() {
    require_kvm!();
    let out = run_kernel(&exit_with(7), &[]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(1), "{ctx}");
    let e = &out.report()["exit"];
    assert_eq!(e["status"], "failure", "{e:#}");
    assert_eq!(e["guest_status"], 7, "{e:#}");
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains('7'),
        "reason does not give the guest status: {reason}"
    );
}

#[test]
fn spinning_guest_times_out() {
    require_kvm!();
    // `jmp $`: the vCPU never exits on its own and must be kicked out.
    let out = run_kernel(&[0xeb, 0xfe], &["--timeout", "0.5"]);
    let ctx = out.describe();
    assert_eq!(out.code, Some(4), "{ctx}");
    assert!(
        out.elapsed >= Duration::from_millis(500),
        "stopped before the timeout\n{ctx}"
    );
    let e = &out.report()["exit"];
    assert_eq!(e["status"], "timeout", "{e:#}");
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("0.5 s"),
        "reason does not give the timeout: {reason}"
    );
}

#[test]
fn guest_exception_is_dumped_and_is_a_crash() {
    require_kvm!();
    let out = run(&["--cmdline", "workload=fault"]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    let exc = out.guest_event("exception");
    assert_eq!(exc["vector"], 14, "{exc}");
    assert_eq!(exc["cpl"], 3, "{exc}");
    assert_eq!(exc["cr2"], "0x00007f0000000000", "{exc}");
    let reason = out.report()["exit"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("exception 14") && reason.contains("page fault"),
        "{reason}"
    );
    // The CPL0 dump also reaches the console (COM1).
    assert!(
        out.stdout.contains("#PF page fault") && out.stdout.contains("cr2=00007f0000000000"),
        "{}",
        out.stdout
    );
}
