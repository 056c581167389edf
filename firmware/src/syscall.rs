//! The system-call gate: `int 0x80` from CPL3, `iretq` back. rax = number,
//! rdi/rsi/rdx = arguments, result in rax.
//!
//! On ordinary VMX/SVM hosts `int 0x80` goes through a DPL-3 interrupt gate.
//! On PVM hosts it arrives as #UD with RIP on the instruction (measured:
//! `syscall` there jumps to LSTAR without leaving CPL3, and `sysretq`
//! triple-faults), so the #UD handler recognises the two bytes `cd 80`, steps
//! over them and dispatches the same call: one kernel, both hosts. Kept tiny:
//! each call costs tens of microseconds on PVM, so CPL3 code asks for
//! privileged work only.
use crate::arch::{cpu, mmu};
use crate::trap::TrapFrame;
use core::arch::{asm, global_asm};

pub const SYSCALL_VECTOR: usize = 0x80;
pub const SYS_NOP: u64 = 0;
pub const SYS_HALT: u64 = 1;
pub const SYS_READ_CR3: u64 = 2;
/// Sets IF in the caller's saved RFLAGS: from the `iretq` on, this CPU takes
/// the device interrupts routed to it while at CPL3 (CPL3 cannot set IF
/// itself: `popf` ignores IF at IOPL 0).
pub const SYS_INTERRUPTS_ON: u64 = 3;
const RFLAGS_IF: u64 = 1 << 9;
/// rdi = mask of `arch::irq::IRQ_PENDING` bits: halt this CPU until one of
/// them may be set (see `arch::irq::wait`). The idle loop without a
/// scheduler: the vCPU sleeps in KVM instead of spinning on a host core.
pub const SYS_WAIT_INTERRUPT: u64 = 4;
/// rdi = a page-table root `arch::mmu` has registered: loads it into CR3
/// (which also flushes this CPU's TLB). Anything else: [`EINVAL`], CR3
/// unchanged.
pub const SYS_LOAD_CR3: u64 = 5;
/// rdi = start, rsi = end: invalidates this CPU's TLB entries for
/// [start, end) (`invlpg` per page up to `arch::mmu::FLUSH_CEILING_PAGES`,
/// else a CR3 reload); [`EINVAL`] for an empty range. Other CPUs are not
/// told: see `arch::mmu` for the rule that makes that safe.
pub const SYS_FLUSH_TLB: u64 = 6;
/// Drops every TLB entry of this CPU.
pub const SYS_FLUSH_TLB_ALL: u64 = 7;
/// Returned for an unknown number.
pub const ENOSYS: u64 = u64::MAX;
/// Returned for arguments the call refuses.
pub const EINVAL: u64 = u64::MAX - 1;
/// Encoding of `int 0x80`.
pub const INT80: [u8; 2] = [0xcd, 0x80];

// The gate pushes what an exception without an error code would (error 0,
// vector 0x80) and shares the exception path's register save and iretq;
// `trap::exception` hands vector 0x80 to `dispatch`.
global_asm!(
    ".section .text.cpl0, \"ax\"",
    ".balign 16",
    ".global syscall_entry",
    "syscall_entry:",
    "    push 0",
    "    push 0x80",
    "    jmp trap_common",
);

extern "C" {
    pub static syscall_entry: u8;
}

#[link_section = ".text.cpl0"]
pub extern "C" fn dispatch(f: &mut TrapFrame) {
    f.rax = match f.rax {
        SYS_NOP => 0,
        SYS_HALT => cpu::halt_forever(),
        SYS_READ_CR3 => cpu::read_cr3(),
        SYS_WAIT_INTERRUPT => {
            crate::arch::irq::wait(f.rdi as u32);
            0
        }
        SYS_INTERRUPTS_ON => {
            f.rflags |= RFLAGS_IF;
            0
        }
        SYS_LOAD_CR3 => ok_or_einval(mmu::load_cr3(f.rdi)),
        SYS_FLUSH_TLB => ok_or_einval(mmu::flush_range(f.rdi, f.rsi)),
        SYS_FLUSH_TLB_ALL => {
            mmu::flush_all();
            0
        }
        _ => ENOSYS,
    };
}

#[link_section = ".text.cpl0"]
fn ok_or_einval(ok: bool) -> u64 {
    if ok {
        0
    } else {
        EINVAL
    }
}

#[inline(always)]
pub fn call0(nr: u64) -> u64 {
    let ret: u64;
    // SAFETY: the gate saves and restores every register but rax.
    unsafe { asm!("int 0x80", inlateout("rax") nr => ret, options(nostack)) }
    ret
}

#[inline(always)]
pub fn call1(nr: u64, a0: u64) -> u64 {
    let ret: u64;
    // SAFETY: as call0; rdi is preserved by the gate.
    unsafe { asm!("int 0x80", inlateout("rax") nr => ret, in("rdi") a0, options(nostack)) }
    ret
}

#[inline(always)]
pub fn call2(nr: u64, a0: u64, a1: u64) -> u64 {
    let ret: u64;
    // SAFETY: as call0; rdi and rsi are preserved by the gate.
    unsafe {
        asm!("int 0x80", inlateout("rax") nr => ret, in("rdi") a0, in("rsi") a1,
             options(nostack))
    }
    ret
}

/// Parks this CPU in CPL0 `hlt` with interrupts off: the vCPU goes idle
/// instead of spinning on a host core.
pub fn halt() -> ! {
    call0(SYS_HALT);
    unreachable!("SYS_HALT returned")
}
