//! CPL0 exception dump.
//!
//! Runs at CPL0, where the PVM emulator rejects the SSE moves inside
//! `core::fmt`, so formatting here is hand-rolled integer code writing bytes
//! one at a time. The dump goes to COM1 for humans and as a JSON record for
//! the report; then the guest exits with `GUEST_EXIT_CRASH`.
use crate::abi;
use crate::arch::cpu;
use crate::hostio::{self, COM1};
use core::ptr::{addr_of_mut, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};

/// Saved by `trap_common` / `syscall_entry`, lowest address first.
#[repr(C)]
pub struct TrapFrame {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const NAMES: [&[u8]; 32] = [
    b"#DE divide error",
    b"#DB debug",
    b"NMI",
    b"#BP breakpoint",
    b"#OF overflow",
    b"#BR bound range",
    b"#UD invalid opcode",
    b"#NM device not available",
    b"#DF double fault",
    b"coprocessor overrun",
    b"#TS invalid TSS",
    b"#NP segment not present",
    b"#SS stack fault",
    b"#GP general protection",
    b"#PF page fault",
    b"reserved",
    b"#MF x87 error",
    b"#AC alignment check",
    b"#MC machine check",
    b"#XM SIMD error",
    b"#VE virtualization",
    b"#CP control protection",
    b"reserved",
    b"reserved",
    b"reserved",
    b"reserved",
    b"reserved",
    b"reserved",
    b"#HV hypervisor injection",
    b"#VC VMM communication",
    b"#SX security",
    b"reserved",
];

static CRASHING: AtomicBool = AtomicBool::new(false);

/// A fixed buffer for the JSON record (header + payload), filled byte by byte.
struct Dump {
    len: usize,
}

#[repr(C, align(16))]
struct DumpBuf([u8; 1024]);
static mut DUMP: DumpBuf = DumpBuf([0; 1024]);
const HDR: usize = abi::RECORD_HEADER_LEN as usize;

impl Dump {
    #[link_section = ".text.cpl0"]
    fn byte(&mut self, b: u8) {
        if HDR + self.len < 1024 {
            // SAFETY: only the CPU that won CRASHING writes DUMP; index bounded.
            unsafe { write_volatile((addr_of_mut!(DUMP.0) as *mut u8).add(HDR + self.len), b) };
            self.len += 1;
        }
    }
    #[link_section = ".text.cpl0"]
    fn bytes(&mut self, s: &[u8]) {
        let mut i = 0;
        while i < s.len() {
            self.byte(s[i]);
            i += 1;
        }
    }
    #[link_section = ".text.cpl0"]
    fn hex(&mut self, v: u64) {
        self.bytes(b"\"0x");
        hex_digits(v, |b| self.byte(b));
        self.byte(b'"');
    }
    #[link_section = ".text.cpl0"]
    fn dec(&mut self, v: u64) {
        dec_digits(v, |b| self.byte(b));
    }
}

#[link_section = ".text.cpl0"]
fn hex_digits(v: u64, mut out: impl FnMut(u8)) {
    let mut shift = 64;
    while shift > 0 {
        shift -= 4;
        let d = ((v >> shift) & 0xf) as u8;
        out(if d < 10 { b'0' + d } else { b'a' + d - 10 });
    }
}

#[link_section = ".text.cpl0"]
fn dec_digits(v: u64, mut out: impl FnMut(u8)) {
    // No digit array: zero-initialising one compiles to SSE stores.
    let mut div = 1u64;
    while v / div >= 10 {
        div *= 10;
    }
    while div > 0 {
        out(b'0' + ((v / div) % 10) as u8);
        div /= 10;
    }
}

/// Names of the general registers in `TrapFrame` order.
static REG_NAMES: [&[u8]; 15] = [
    b"rax", b"rbx", b"rcx", b"rdx", b"rsi", b"rdi", b"rbp", b"r8", b"r9", b"r10", b"r11", b"r12",
    b"r13", b"r14", b"r15",
];

/// Register `i` of the frame, read without building an array on the stack.
#[link_section = ".text.cpl0"]
fn reg(f: &TrapFrame, i: usize) -> u64 {
    // SAFETY: TrapFrame is repr(C) and starts with the 15 u64 registers.
    unsafe { core::ptr::read_volatile((f as *const TrapFrame as *const u64).add(i)) }
}

#[link_section = ".text.cpl0"]
fn com1(s: &[u8]) {
    let mut i = 0;
    while i < s.len() {
        cpu::outb(COM1, s[i]);
        i += 1;
    }
}

#[link_section = ".text.cpl0"]
fn com1_reg(name: &[u8], v: u64) {
    com1(name);
    com1(b"=");
    hex_digits(v, |b| cpu::outb(COM1, b));
    com1(b" ");
}

/// Entered from `trap_common` with the full frame. Returns (to `iretq`) for
/// system calls, through the gate or in their PVM form (#UD on `int 0x80`);
/// everything else is fatal.
#[link_section = ".text.cpl0"]
pub extern "C" fn exception(f: &mut TrapFrame) {
    if f.vector & 0xff == crate::syscall::SYSCALL_VECTOR as u64 {
        crate::syscall::dispatch(f);
        return;
    }
    if f.vector == 6 && f.cs & 3 == 3 && is_int80(f.rip) {
        f.rip += 2;
        crate::syscall::dispatch(f);
        return;
    }
    crash(f)
}

#[link_section = ".text.cpl0"]
fn is_int80(rip: u64) -> bool {
    let p = rip as *const u8;
    // SAFETY: RIP of a CPL3 instruction that just faulted with #UD (not #PF),
    // so its bytes are mapped; identity map.
    unsafe {
        p.read_volatile() == crate::syscall::INT80[0]
            && p.add(1).read_volatile() == crate::syscall::INT80[1]
    }
}

#[link_section = ".text.cpl0"]
fn crash(f: &TrapFrame) -> ! {
    if CRASHING.swap(true, Ordering::AcqRel) {
        cpu::halt_forever(); // another CPU is already reporting
    }
    let vector = (f.vector & 0xff) as usize;
    let name = if vector < 32 {
        NAMES[vector]
    } else {
        b"unknown" as &[u8]
    };
    let cr2 = cpu::read_cr2();

    com1(b"\r\nmemvisor-guest: exception ");
    dec_digits(vector as u64, |b| cpu::outb(COM1, b));
    com1(b" (");
    com1(name);
    com1(b")\r\n");
    com1_reg(b"error", f.error);
    com1_reg(b"rip", f.rip);
    com1_reg(b"cs", f.cs);
    com1_reg(b"rflags", f.rflags);
    com1(b"\r\n");
    com1_reg(b"rsp", f.rsp);
    com1_reg(b"cr2", cr2);
    com1_reg(b"cr3", cpu::read_cr3());
    com1(b"\r\n");
    let mut i = 0;
    while i < REG_NAMES.len() {
        com1_reg(REG_NAMES[i], reg(f, i));
        if i % 4 == 3 {
            com1(b"\r\n");
        }
        i += 1;
    }
    com1(b"\r\n");

    let mut d = Dump { len: 0 };
    d.bytes(b"{\"event\":\"exception\",\"vector\":");
    d.dec(vector as u64);
    d.bytes(b",\"name\":\"");
    d.bytes(name);
    d.bytes(b"\",\"error_code\":");
    d.hex(f.error);
    d.bytes(b",\"rip\":");
    d.hex(f.rip);
    d.bytes(b",\"cpl\":");
    d.dec(f.cs & 3);
    d.bytes(b",\"rsp\":");
    d.hex(f.rsp);
    d.bytes(b",\"cr2\":");
    d.hex(cr2);
    d.bytes(b",\"regs\":{");
    let mut i = 0;
    while i < REG_NAMES.len() {
        if i > 0 {
            d.byte(b',');
        }
        d.byte(b'"');
        d.bytes(REG_NAMES[i]);
        d.bytes(b"\":");
        d.hex(reg(f, i));
        i += 1;
    }
    d.bytes(b"}}");
    // SAFETY: DUMP is ours (CRASHING) and the header slot precedes the payload.
    let base = unsafe { addr_of_mut!(DUMP.0) } as *mut u32;
    // SAFETY: as above; four aligned u32 header words.
    unsafe {
        write_volatile(base, abi::RECORD_MAGIC);
        write_volatile(base.add(1), abi::RECORD_JSON);
        write_volatile(base.add(2), d.len as u32);
        write_volatile(base.add(3), 0);
    }
    cpu::outl(abi::RESULTS_PORT, base as u32);
    hostio::exit(abi::GUEST_EXIT_CRASH)
}

/// A CPL0 failure with no frame to dump (e.g. a panic inside CPL0 code).
#[link_section = ".text.cpl0"]
pub fn fatal_cpl0(msg: &[u8]) -> ! {
    com1(b"\r\nmemvisor-guest: ");
    com1(msg);
    com1(b"\r\n");
    hostio::exit(abi::GUEST_EXIT_CRASH)
}
