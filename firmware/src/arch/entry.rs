//! Entry at CPL0 and the drop to CPL3.
//!
//! The VMM starts every vCPU here in 64-bit mode on its own identity map (see
//! `abi::NOTE_TYPE_SMP_ENTRY`): rdi = vCPU index, rsi = boot_params,
//! rdx = vCPU count. The path is kept to a few hundred instructions because
//! each one is emulated (~250 ns) on PVM hosts; the rest of boot runs at CPL3.
use crate::abi;
use crate::arch::gdt;
use crate::MAX_CPUS;
use core::arch::global_asm;

pub const KSTACK_SHIFT: u32 = 13; // 8 KiB CPL0 stack per CPU: trap frames only
pub const USTACK_SHIFT: u32 = 16; // 64 KiB CPL3 stack per CPU

#[repr(C, align(4096))]
pub struct Stacks<const N: usize>([u8; N]);

#[no_mangle]
pub static mut KERNEL_STACKS: Stacks<{ MAX_CPUS << KSTACK_SHIFT }> =
    Stacks([0; MAX_CPUS << KSTACK_SHIFT]);
#[no_mangle]
pub static mut USER_STACKS: Stacks<{ MAX_CPUS << USTACK_SHIFT }> =
    Stacks([0; MAX_CPUS << USTACK_SHIFT]);

/// The BSP's TSC at its first instruction: boot steps are reported relative
/// to it, in cycles (the VMM reports the TSC frequency).
#[no_mangle]
pub static mut ENTRY_TSC: u64 = 0;

/// Top of `cpu`'s CPL0 stack: the TSS's RSP0.
pub fn kernel_stack_top(cpu: usize) -> u64 {
    (&raw const KERNEL_STACKS) as u64 + ((cpu as u64 + 1) << KSTACK_SHIFT)
}

global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "    cli",
    "    cld",
    "    cmp rdi, {max_cpus}",
    "    jae 3f",
    "    mov rax, rdi",
    "    add rax, 1",
    "    shl rax, {kshift}",
    "    lea rsp, [rip + {kstacks}]",
    "    add rsp, rax",
    "    mov r12, rdi",
    "    mov r13, rsi",
    "    mov r14, rdx",
    "    test rdi, rdi",
    "    jnz 2f",
    "    mov dx, {mark_port}",
    "    mov eax, {mark_first}",
    "    out dx, eax",
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov [rip + {entry_tsc}], rax",
    "2:  mov rdi, r12",
    "    mov rsi, r14",
    "    call {cpu_init}",
    // iretq frame for CPL3: SS, RSP, RFLAGS (IF=0: tickless; a driver turns
    // interrupts on with SYS_INTERRUPTS_ON once it has routed its pin),
    // CS, RIP. RSP is 8 below a 16-byte boundary, as after a call.
    "    mov rax, r12",
    "    add rax, 1",
    "    shl rax, {ushift}",
    "    lea rcx, [rip + {ustacks}]",
    "    add rcx, rax",
    "    sub rcx, 8",
    "    push {user_ds}",
    "    push rcx",
    "    push 2",
    "    push {user_cs}",
    "    lea rax, [rip + {user_main}]",
    "    push rax",
    "    mov rdi, r12",
    "    mov rsi, r13",
    "    mov rdx, r14",
    "    xor ebp, ebp",
    "    iretq",
    // More vCPUs than this kernel has stacks for: park. The BSP reports it.
    "3:  cli",
    "    hlt",
    "    jmp 3b",
    max_cpus = const MAX_CPUS,
    kshift = const KSTACK_SHIFT,
    ushift = const USTACK_SHIFT,
    kstacks = sym KERNEL_STACKS,
    ustacks = sym USER_STACKS,
    mark_port = const abi::MARK_PORT,
    mark_first = const abi::MARK_FIRST_INSTRUCTION,
    cpu_init = sym gdt::cpu_init,
    user_ds = const gdt::USER_DS as u32,
    user_cs = const gdt::USER_CS as u32,
    user_main = sym crate::user::user_main,
    entry_tsc = sym ENTRY_TSC,
);

// The memvisor SMP-entry note (see abi::NOTE_TYPE_SMP_ENTRY). desc: flags, 1.
global_asm!(
    ".section .note.memvisor, \"a\"",
    ".balign 4",
    ".long 9",
    ".long 4",
    ".long {kind}",
    ".asciz \"memvisor\"",
    ".balign 4",
    ".long 1",
    ".balign 4",
    kind = const abi::NOTE_TYPE_SMP_ENTRY,
);
