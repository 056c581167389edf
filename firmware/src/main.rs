//! memvisor's minimal guest kernel.
//!
//! A thin CPL0 core (entry, GDT/IDT/TSS, exception dump, a system-call gate)
//! and everything else at CPL3: on PVM hosts CPL0 code is emulated one
//! instruction at a time while CPL3 runs natively, so the kernel proper
//! (guest-mm, workloads, JSON reports) is ordinary user-mode code over an
//! identity map the VMM built, and crosses into CPL0 only when it must.
#![no_std]
#![no_main]

mod abi;
mod acpi;
mod arch;
mod bootinfo;
mod cmdline;
mod hostio;
mod irq;
mod json;
mod mem;
mod mm;
mod numa;
mod smp;
mod syscall;
mod trap;
mod user;
mod virtio;
mod vm_space;
mod workloads;

/// Upper bound on vCPUs: sizes the per-CPU stacks and TSS array.
pub const MAX_CPUS: usize = abi::MAX_VCPUS;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if arch::cpu::current_cpl() == 0 {
        // core::fmt uses SSE moves that the PVM emulator rejects at CPL0.
        trap::fatal_cpl0(b"panic in CPL0 code");
    }
    hostio::crash(info)
}
