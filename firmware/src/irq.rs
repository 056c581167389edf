//! Device interrupts, the CPL3 half: route an IOAPIC pin to this CPU and
//! take the pending marks the CPL0 stubs (`arch::irq`) leave.
//!
//! Everything here is MMIO or port I/O that CPL3 may do on the boot map
//! (user-accessible, I/O bitmap open below 0x800), so no CPL0 instruction is
//! spent on it except the one system call that sets IF. Interrupts then
//! arrive while this CPU runs at CPL3; the stub marks the pin and writes the
//! EOI, and the driver's loop services the device between units of work.
use crate::arch::cpu;
use crate::arch::irq::{
    self as arch_irq, LAPIC_BASE, NR_IRQS, SPURIOUS_VECTOR, TIMER_PENDING, TIMER_VECTOR,
    VECTOR_BASE,
};
use crate::syscall;
use core::ptr::{read_volatile, write_volatile};
use guest_mm::SpinLock;

pub use arch_irq::{count, take_mask, take_pending};

const LAPIC_ID: u64 = 0x20;
const LAPIC_SVR: u64 = 0xf0;
const SVR_ENABLE: u32 = 1 << 8;
const LAPIC_LVT_TIMER: u64 = 0x320;
const LAPIC_TIMER_INITIAL: u64 = 0x380;
const LAPIC_TIMER_DIVIDE: u64 = 0x3e0;
/// Divide configuration 0b1011: divide by 1. KVM's LAPIC timer then counts
/// at its 1 GHz APIC bus clock, so a count is about a nanosecond (elsewhere
/// it may differ; the timer is only a watchdog).
const TIMER_DIVIDE_BY_1: u32 = 0b1011;
const IOAPIC_BASE: u64 = 0xfec0_0000;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOREDTBL: u32 = 0x10;
/// Interrupt masks of the two 8259s. KVM's PIC starts with nothing masked
/// and device GSIs below 16 reach it too; with LINT0 in ExtINT mode it
/// would deliver them on vectors 0..15 (the exception vectors) once IF is
/// set, so both are masked before that.
const PIC1_DATA: u16 = 0x21;
const PIC2_DATA: u16 = 0xa1;

/// Serialises IOREGSEL/IOWIN pairs between CPUs.
static IOAPIC_LOCK: SpinLock<()> = SpinLock::new(());

#[derive(Clone, Copy, Debug)]
pub struct BadIrq(pub u32);

impl core::fmt::Display for BadIrq {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "IRQ {} is not an IOAPIC pin (0..{})",
            self.0,
            NR_IRQS - 1
        )
    }
}

fn mmio_read(addr: u64) -> u32 {
    // SAFETY: LAPIC/IOAPIC registers, identity mapped below 4 GiB.
    unsafe { read_volatile(addr as *const u32) }
}

fn mmio_write(addr: u64, v: u32) {
    // SAFETY: as mmio_read.
    unsafe { write_volatile(addr as *mut u32, v) }
}

fn ioapic_write(reg: u32, v: u32) {
    mmio_write(IOAPIC_BASE + IOREGSEL, reg);
    mmio_write(IOAPIC_BASE + IOWIN, v);
}

/// Routes IOAPIC pin `irq` to this CPU (fixed delivery, physical
/// destination, edge, active high, unmasked) and turns interrupts on here.
/// About ten exits (two 8259 masks, four LAPIC and four IOAPIC accesses)
/// and one system call; done once per device.
pub fn route_to_this_cpu(irq: u32) -> Result<(), BadIrq> {
    if irq as usize >= NR_IRQS {
        return Err(BadIrq(irq));
    }
    cpu::outb(PIC1_DATA, 0xff);
    cpu::outb(PIC2_DATA, 0xff);
    let apic_id = mmio_read(LAPIC_BASE + LAPIC_ID) >> 24;
    mmio_write(LAPIC_BASE + LAPIC_SVR, SVR_ENABLE | SPURIOUS_VECTOR as u32);
    // One-shot LAPIC timer on its own vector, armed by `wait` only.
    mmio_write(LAPIC_BASE + LAPIC_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
    mmio_write(LAPIC_BASE + LAPIC_LVT_TIMER, TIMER_VECTOR as u32);
    {
        let _g = IOAPIC_LOCK.lock();
        let reg = IOREDTBL + 2 * irq;
        // Destination first, then the low word, which unmasks.
        ioapic_write(reg + 1, apic_id << 24);
        ioapic_write(reg, (VECTOR_BASE as u32) + irq);
    }
    syscall::call0(syscall::SYS_INTERRUPTS_ON);
    Ok(())
}

/// Sleeps (CPL0 `hlt` through a system call) until pin `irq` interrupts or
/// about `watchdog_ns` pass, whichever is first; returns at once if the pin
/// is already marked. Costs one LAPIC write and one system call; the vCPU
/// sleeps in KVM meanwhile instead of spinning on a host core. The caller
/// takes the marks: the pin's with `take_pending`, the watchdog's with
/// `take_mask(TIMER_PENDING)`. Any other interrupt also ends the wait.
pub fn wait(irq: u32, watchdog_ns: u32) {
    // Writing the initial count (re)starts the one-shot countdown; a mark
    // the previous countdown left is stale from here on.
    mmio_write(LAPIC_BASE + LAPIC_TIMER_INITIAL, watchdog_ns.max(1));
    take_mask(TIMER_PENDING);
    syscall::call1(
        syscall::SYS_WAIT_INTERRUPT,
        ((1u32 << irq) | TIMER_PENDING) as u64,
    );
}

/// Stops the watchdog timer (one LAPIC write), so that it cannot fire in
/// the middle of later work.
pub fn stop_watchdog() {
    mmio_write(LAPIC_BASE + LAPIC_TIMER_INITIAL, 0);
}

pub const WATCHDOG: u32 = TIMER_PENDING;

const LAPIC_TIMER_CURRENT: u64 = 0x390;
const LVT_MASKED: u32 = 1 << 16;

/// TSC cycles per millisecond, measured against the LAPIC timer (KVM's
/// counts at 1 GHz with divide-by-1, see `TIMER_DIVIDE_BY_1`): for code
/// that must wait real time (the balloon's reporting delay), since nothing
/// tells this kernel its TSC rate. Masks the timer while it counts and
/// leaves it stopped; call after `route_to_this_cpu` (which enables the
/// LAPIC). Four exits and ~10 ms.
pub fn tsc_per_ms() -> u64 {
    mmio_write(
        LAPIC_BASE + LAPIC_LVT_TIMER,
        TIMER_VECTOR as u32 | LVT_MASKED,
    );
    mmio_write(LAPIC_BASE + LAPIC_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
    mmio_write(LAPIC_BASE + LAPIC_TIMER_INITIAL, u32::MAX);
    let (c0, t0) = (mmio_read(LAPIC_BASE + LAPIC_TIMER_CURRENT), cpu::rdtsc());
    while cpu::rdtsc() - t0 < 20_000_000 {
        core::hint::spin_loop();
    }
    let (c1, t1) = (mmio_read(LAPIC_BASE + LAPIC_TIMER_CURRENT), cpu::rdtsc());
    mmio_write(LAPIC_BASE + LAPIC_TIMER_INITIAL, 0);
    mmio_write(LAPIC_BASE + LAPIC_LVT_TIMER, TIMER_VECTOR as u32);
    let ns = c0.wrapping_sub(c1).max(1) as u64;
    ((t1 - t0) * 1_000_000 / ns).max(1)
}
