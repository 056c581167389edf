//! Guests that are nothing but a hostile loop: a few bytes of x86-64 code in
//! a hand-made ELF, entered in long mode with the identity map. They reach
//! the VMM's devices in ways our bundled kernel never would.
#[macro_use]
mod common;

use common::{run, TempFile};

const LOAD: u64 = 0x10_0000;

/// A minimal ELF64 executable: one PT_LOAD segment at 1 MiB holding `code`,
/// entered at its first byte.
fn elf(code: &[u8]) -> Vec<u8> {
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

#[test]
fn a_com1_flood_is_bounded_by_the_record_budget() {
    require_kvm!();
    // mov dx, 0x3f8; mov al, 'A'; 1: out dx, al; jmp 1b
    let kernel = TempFile::with_contents(
        "com1-flood.elf",
        &elf(&[0x66, 0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xeb, 0xfd]),
    );
    let out = run(&[
        "--kernel",
        kernel.as_str(),
        "--record-budget",
        "4K",
        "--timeout",
        "2",
    ]);
    let ctx = out.describe();
    assert_eq!(out.report()["exit"]["status"], "timeout", "{ctx}");
    assert!(
        out.stdout.starts_with("AAAA"),
        "the guest's console output is shown: {ctx}"
    );
    // The console bytes within the budget, plus the summary line.
    assert!(
        out.stdout.len() < 4096 + 1024,
        "{} bytes of console output for a 4 KiB budget",
        out.stdout.len()
    );
}
