//! Device interrupts at CPL0: one tiny stub per IOAPIC pin that only marks
//! the pin pending, counts it and writes the LAPIC EOI.
//!
//! Every CPL0 instruction is emulated on PVM hosts (~250 ns each), so the
//! stub is four instructions plus a shared five-instruction tail and takes
//! no frame; the work an interrupt announces (reading the device's
//! InterruptStatus, draining a used ring) is done by the CPL3 loop that
//! polls [`IRQ_PENDING`] between units of work. No scheduler, no wakeups.
//! Routing (LAPIC enable, IOAPIC redirection entries, masking the 8259s) is
//! plain MMIO and port I/O that CPL3 does itself, see `crate::irq`.
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

/// IOAPIC pin `n` arrives on vector `VECTOR_BASE + n`.
pub const VECTOR_BASE: usize = 0x30;
/// Pins of the IOAPIC (KVM's in-kernel IOAPIC has 24).
pub const NR_IRQS: usize = 24;
/// The LAPIC timer (the wait watchdog, see `crate::irq::wait`): marks
/// [`TIMER_PENDING`] in `IRQ_PENDING`, above the pins.
pub const TIMER_VECTOR: usize = VECTOR_BASE + NR_IRQS;
pub const TIMER_PENDING: u32 = 1 << 31;
/// The LAPIC's spurious vector; its gate is a bare `iretq` (no EOI).
pub const SPURIOUS_VECTOR: usize = 0xff;
/// xAPIC MMIO base and the EOI register.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
pub const LAPIC_EOI: u64 = 0xb0;
const STUB_STRIDE: u64 = 32;

/// Bit n: pin n interrupted since CPL3 last took the mark.
pub static IRQ_PENDING: AtomicU32 = AtomicU32::new(0);
/// Interrupts taken per pin, ever.
pub static IRQ_COUNT: [AtomicU32; NR_IRQS] = [const { AtomicU32::new(0) }; NR_IRQS];

extern "C" {
    static irq_stubs: u8;
    static irq_spurious: u8;
}

// Interrupt gates (IF clear on entry) on the CPL0 stack from the TSS. Each
// stub is 23 bytes: `lock or` (11), `lock inc` (7), `jmp` (5).
global_asm!(
    ".section .text.cpl0, \"ax\"",
    ".balign 32",
    ".global irq_stubs",
    "irq_stubs:",
    ".set irq, 0",
    ".rept {nr}",
    "  .balign 32",
    "  lock or dword ptr [rip + {pending}], 1 << irq",
    "  lock inc dword ptr [rip + {count} + 4 * irq]",
    "  jmp irq_eoi",
    "  .set irq, irq + 1",
    ".endr",
    ".balign 32",
    "irq_timer:",
    "  lock or dword ptr [rip + {pending}], {timer}",
    "irq_eoi:",
    "    push rax",
    "    mov eax, {eoi}",
    "    mov dword ptr [rax], 0",
    "    pop rax",
    "    iretq",
    ".balign 16",
    ".global irq_spurious",
    "irq_spurious:",
    "    iretq",
    nr = const NR_IRQS,
    pending = sym IRQ_PENDING,
    count = sym IRQ_COUNT,
    eoi = const LAPIC_BASE + LAPIC_EOI,
    timer = const TIMER_PENDING,
);

/// (vector, handler) of every device-interrupt gate, for `idt::fill`.
pub fn gates() -> impl Iterator<Item = (usize, u64)> {
    let stubs = &raw const irq_stubs as u64;
    // The timer stub follows the last pin's, one stride on.
    (0..=NR_IRQS)
        .map(move |irq| (VECTOR_BASE + irq, stubs + irq as u64 * STUB_STRIDE))
        .chain(core::iter::once((
            SPURIOUS_VECTOR,
            &raw const irq_spurious as u64,
        )))
}

/// System call body (CPL0, IF clear): unless a mark in `mask` is already
/// pending, enable interrupts and halt until one arrives (any interrupt
/// wakes it; the caller re-checks). `sti` holds interrupts off for one more
/// instruction, so one arriving after the check still wakes the `hlt`.
#[link_section = ".text.cpl0"]
pub fn wait(mask: u32) {
    if IRQ_PENDING.load(Ordering::Relaxed) & mask == 0 {
        // SAFETY: CPL0; the interrupt taken inside returns after `hlt`.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) }
    }
}

/// Takes pin `irq`'s pending mark (CPL3); true if it was set.
pub fn take_pending(irq: u32) -> bool {
    take_mask(1u32 << irq)
}

/// Takes the marks in `mask`; true if any was set.
pub fn take_mask(mask: u32) -> bool {
    IRQ_PENDING.fetch_and(!mask, Ordering::AcqRel) & mask != 0
}

/// Interrupts pin `irq` has delivered so far.
pub fn count(irq: u32) -> u32 {
    IRQ_COUNT[irq as usize].load(Ordering::Relaxed)
}
