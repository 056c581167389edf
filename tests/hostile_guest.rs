//! Guests that are nothing but a hostile loop: a few bytes of x86-64 code in
//! a hand-made ELF, entered in long mode with the identity map. They reach
//! the VMM's devices in ways our bundled kernel never would.
#[macro_use]
mod common;

use common::{elf, run, TempFile};

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
