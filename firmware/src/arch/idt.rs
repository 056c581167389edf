//! IDT: exception vectors 0..32 go to the crash dump, 0x80 is the system-call
//! gate, 0x30.. are the device-interrupt stubs (`irq`, one per IOAPIC pin)
//! and 0xff the LAPIC's spurious vector. Everything else stays not-present:
//! CPUs run with interrupts off (tickless) until a driver routes a pin to
//! them, so a stray vector shows up as #NP with its number in the error code.
use crate::arch::gdt::{DescriptorPointer, KERNEL_CS};
use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut, write_volatile};

const STUB_STRIDE: u64 = 16;

#[repr(C, align(16))]
struct Idt([u64; 512]);
static mut IDT: Idt = Idt([0; 512]);

extern "C" {
    static trap_stubs: u8;
}

global_asm!(
    ".section .text.cpl0, \"ax\"",
    ".balign 16",
    ".global trap_stubs",
    "trap_stubs:",
    ".set vec, 0",
    ".rept 32",
    "  .balign 16",
    // Vectors that push an error code: #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX.
    "  .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)",
    "  .else",
    "    push 0",
    "  .endif",
    "  push vec",
    "  jmp trap_common",
    "  .set vec, vec + 1",
    ".endr",
);

global_asm!(
    ".section .text.cpl0, \"ax\"",
    "trap_common:",
    "    push r15", "push r14", "push r13", "push r12", "push r11", "push r10", "push r9", "push r8",
    "    push rbp", "push rdi", "push rsi", "push rdx", "push rcx", "push rbx", "push rax",
    "    cld",
    "    mov rdi, rsp",
    "    call {handler}",
    // The handler returns only for a fault it fixed up (the #UD gate).
    ".global trap_return",
    "trap_return:",
    "    pop rax", "pop rbx", "pop rcx", "pop rdx", "pop rsi", "pop rdi", "pop rbp",
    "    pop r8", "pop r9", "pop r10", "pop r11", "pop r12", "pop r13", "pop r14", "pop r15",
    "    add rsp, 16",
    "    iretq",
    handler = sym crate::trap::exception,
);

fn set_gate(vector: usize, handler: u64, dpl: u64) {
    let low = (handler & 0xffff)
        | ((KERNEL_CS as u64) << 16)
        | ((0x8e | (dpl << 5)) << 40) // present interrupt gate: IF cleared on entry
        | (((handler >> 16) & 0xffff) << 48);
    // SAFETY: BSP only, before any exception can be taken (see gdt::cpu_init).
    unsafe {
        let idt = addr_of_mut!(IDT.0) as *mut u64;
        write_volatile(idt.add(2 * vector), low);
        write_volatile(idt.add(2 * vector + 1), handler >> 32);
    }
}

/// Fills the gates; runs at CPL3 (see `gdt::cpu_init`).
pub fn fill() {
    let stubs = addr_of!(trap_stubs) as u64;
    let mut v = 0;
    while v < 32 {
        set_gate(v, stubs + v as u64 * STUB_STRIDE, 0);
        v += 1;
    }
    set_gate(
        crate::syscall::SYSCALL_VECTOR,
        addr_of!(crate::syscall::syscall_entry) as u64,
        3,
    );
    for (vector, handler) in crate::arch::irq::gates() {
        set_gate(vector, handler, 0);
    }
}

#[link_section = ".text.cpl0"]
pub fn load() {
    let idtr = DescriptorPointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: addr_of!(IDT) as u64,
    };
    // SAFETY: the IDT is static and filled before TABLES_READY.
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(nostack)) }
}
