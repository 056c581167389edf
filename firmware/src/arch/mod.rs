//! The CPL0 core: entry, descriptor tables, privilege switch.
pub mod cpu;
pub mod entry;
pub mod gdt;
pub mod idt;
