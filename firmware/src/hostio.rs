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

/// A binary record: header and payload, one per CPU (below 4 GiB, in the
/// image).
#[repr(C, align(16))]
struct PtWalkRecord {
    hdr: abi::RecordHeader,
    req: abi::PtWalkRequest,
}
static mut PTWALK: [PtWalkRecord; crate::MAX_CPUS] = [const {
    PtWalkRecord {
        hdr: abi::RecordHeader {
            magic: abi::RECORD_MAGIC,
            kind: abi::RECORD_PTWALK,
            len: abi::PTWALK_REQUEST_LEN,
            reserved: 0,
        },
        req: abi::PtWalkRequest {
            cpu: 0,
            config: 0,
            root: 0,
            start: 0,
            len: 0,
            samples: 0,
            levels: 0,
            thp: 0,
            reserved: 0,
        },
    }
}; crate::MAX_CPUS];

/// Asks the VMM to model `req`'s page walks (`abi::RECORD_PTWALK`), from
/// CPU `req.cpu`'s own buffer. The VMM works synchronously on this exit and
/// answers nothing (one without the model drops the unknown kind with a
/// warning), so the guest neither waits for nor depends on a reply; it
/// only keeps the tables unchanged until this returns.
pub fn send_ptwalk(req: abi::PtWalkRequest) {
    let cpu = req.cpu as usize;
    // SAFETY: each CPU writes only its own slot; the header is constant.
    let rec = unsafe { &mut *core::ptr::addr_of_mut!(PTWALK[cpu]) };
    rec.req = req;
    cpu::outl(abi::RESULTS_PORT, rec as *const PtWalkRecord as u32);
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
