//! The CPL0 core: entry, descriptor tables, privilege switch, interrupt stubs.
pub mod cpu;
pub mod entry;
pub mod gdt;
pub mod idt;
pub mod irq;
pub mod mmu;
