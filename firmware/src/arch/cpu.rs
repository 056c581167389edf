//! Single-instruction helpers. Port I/O works from CPL3 too: every TSS carries
//! an I/O bitmap that opens the ports we use (IOPL alone was lost by the PVM
//! emulator's iretq).
use core::arch::asm;

#[inline(always)]
pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

#[inline(always)]
pub fn outl(port: u16, val: u32) {
    // SAFETY: see outb. `nomem` is not claimed: the VMM reads guest memory the
    // value points at, so earlier stores must not be reordered past this.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") val, options(nostack, preserves_flags)) }
}

#[inline(always)]
pub fn current_cpl() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) }
    cs & 3
}

#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter (CR4.TSD is clear).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    ((hi as u64) << 32) | lo as u64
}

#[inline(always)]
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: CPL0 only; reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

#[inline(always)]
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: CPL0 only; reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Stops this CPU for good: interrupts are off, so nothing wakes it and the
/// VMM sees an idle vCPU instead of a spinning one.
#[inline(always)]
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CPL0 only.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
