//! Talking to the VMM: whole records through one port write each, the exit
//! port, and COM1 for crash dumps.
use crate::abi;
use crate::arch::cpu;
use crate::json::Line;
use guest_mm::SpinLock;

pub const COM1: u16 = 0x3f8;

/// Hands a finished record to the VMM: one exit however long the line is.
/// `rec` must start with a `RecordHeader` and live below 4 GiB (the kernel
/// image does, and the map is identity).
pub fn send(rec: &[u8]) {
    cpu::outl(abi::RESULTS_PORT, rec.as_ptr() as u32);
}

/// Ends the VM with `status` (see `abi::GUEST_EXIT_*`).
pub fn exit(status: u32) -> ! {
    cpu::outl(abi::EXIT_PORT, status);
    // Under a VMM without the exit port, stop here rather than run on.
    loop {
        core::hint::spin_loop();
    }
}

/// One shared line buffer: only the BSP reports, except for crashes, which
/// take the lock too (or a CPL0 path of their own).
pub static LINE: SpinLock<Line> = SpinLock::new(Line::new());

/// Reports a CPL3 panic and exits with `GUEST_EXIT_CRASH`.
pub fn crash(info: &core::panic::PanicInfo) -> ! {
    // A panic while holding LINE would deadlock: use a private buffer.
    static mut PANIC_LINE: Line = Line::new();
    // SAFETY: first-crasher-only is good enough here: we exit right after.
    let l = unsafe { &mut *core::ptr::addr_of_mut!(PANIC_LINE) };
    l.begin(abi::RECORD_JSON);
    l.raw("{\"event\":\"panic\",\"message\":");
    l.string_fmt(format_args!("{}", info.message()));
    if let Some(loc) = info.location() {
        l.raw(",\"file\":");
        l.string(loc.file());
        l.fmt(format_args!(",\"line\":{}", loc.line()));
    }
    l.raw("}");
    send(l.finish());
    exit(abi::GUEST_EXIT_CRASH)
}
