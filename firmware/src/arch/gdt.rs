//! GDT, per-CPU TSS (with the I/O bitmap CPL3 needs), and per-CPU bring-up.
use crate::arch::{entry, idt};
use crate::MAX_CPUS;
use core::arch::asm;
use core::ptr::{addr_of, addr_of_mut, write_volatile};
use core::sync::atomic::{AtomicU32, Ordering};

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x20 | 3;
pub const USER_CS: u16 = 0x28 | 3;
const TSS0: u16 = 0x30;
const FIXED: usize = 6;

/// Ports below this are open to CPL3 (COM1, 0xf4, memvisor's 0x6e0 ports);
/// anything above faults, so the bitmap stays small.
const IOMAP_PORTS: usize = 0x800;

#[repr(C, align(64))]
struct Tss {
    /// The 104-byte 64-bit TSS as u32 words; RSP0 sits at byte 4 (unaligned
    /// as a u64), the I/O map base in the top half of word 25.
    words: [u32; 26],
    iomap: [u8; IOMAP_PORTS / 8],
    /// The CPU reads one byte past the map; it must be all ones.
    end: u8,
}

const TSS_INIT: Tss = Tss {
    words: [0; 26],
    iomap: [0; IOMAP_PORTS / 8],
    end: 0xff,
};
static mut TSS: [Tss; MAX_CPUS] = [TSS_INIT; MAX_CPUS];

#[repr(C, align(16))]
struct Gdt([u64; FIXED + 2 * MAX_CPUS]);

static mut GDT: Gdt = {
    let mut g = [0u64; FIXED + 2 * MAX_CPUS];
    g[1] = 0x00af_9b00_0000_ffff; // kernel code, 64-bit
    g[2] = 0x00cf_9300_0000_ffff; // kernel data
    g[3] = 0x00cf_fb00_0000_ffff; // user code, 32-bit (unused; keeps the sysret layout)
    g[4] = 0x00cf_f300_0000_ffff; // user data
    g[5] = 0x00af_fb00_0000_ffff; // user code, 64-bit
    Gdt(g)
};

static TABLES_READY: AtomicU32 = AtomicU32::new(0);

#[repr(C, packed)]
pub struct DescriptorPointer {
    pub limit: u16,
    pub base: u64,
}

/// CPL0 bring-up of one CPU: load GDT, TSS and IDT and return to `_start`,
/// which drops to CPL3.
///
/// Only what must happen at CPL0 happens here: every instruction is emulated
/// on PVM hosts, and filling the 33 IDT gates there took ~0.7 ms (measured
/// with rdtsc, ~20 µs per gate). The BSP writes only its own TSS descriptor
/// and loads an IDT that is still empty; [`finish_tables`] fills the gates
/// and the other CPUs' descriptors natively at CPL3 (all memory is
/// user-accessible on the boot map) before releasing the APs, which wait
/// here. Until then an exception on the BSP ends in a triple fault, which the
/// VMM reports with its RIP.
#[link_section = ".text.cpl0"]
pub extern "C" fn cpu_init(cpu: u64, _ncpus: u64) {
    let cpu = cpu as usize;
    if cpu == 0 {
        set_tss_descriptor(0);
    } else {
        while TABLES_READY.load(Ordering::Acquire) == 0 {
            core::hint::spin_loop();
        }
    }
    let gdtr = DescriptorPointer {
        limit: (size_of::<Gdt>() - 1) as u16,
        base: addr_of!(GDT) as u64,
    };
    let sel = TSS0 + 16 * cpu as u16;
    // SAFETY: the GDT is static and this CPU's TSS descriptor is written;
    // reloading CS needs a far return; data segments are flat.
    unsafe {
        asm!(
            "lgdt [{gdtr}]",
            "push {kcs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {kds:x}",
            "mov ds, {kds:x}",
            "mov es, {kds:x}",
            "ltr {sel:x}",
            gdtr = in(reg) &gdtr,
            kcs = const KERNEL_CS as u32,
            kds = in(reg) KERNEL_DS as u64,
            sel = in(reg) sel as u64,
            tmp = out(reg) _,
        );
    }
    idt::load();
    enable_sse();
}

/// CPL3 half of the BSP's bring-up: IDT gates and the APs' TSS descriptors,
/// then release the APs.
pub fn finish_tables(ncpus: usize) {
    idt::fill();
    for cpu in 1..ncpus.min(MAX_CPUS) {
        set_tss_descriptor(cpu);
    }
    TABLES_READY.store(1, Ordering::Release);
}

/// CR0.MP and CR4.OSFXSR/OSXMMEXCPT: compiled CPL3 code uses SSE. Written
/// only when not already so (memvisor sets them at entry): under shadow
/// paging a control-register write can reset the vCPU's MMU context.
#[link_section = ".text.cpl0"]
fn enable_sse() {
    // SAFETY: CPL0; only FPU/SSE control bits change.
    unsafe {
        asm!(
            "mov rax, cr0",
            "mov rcx, rax",
            "and rax, ~4",      // EM off
            "or rax, 2",        // MP on
            "cmp rax, rcx",
            "je 2f",
            "mov cr0, rax",
            "2:",
            "mov rax, cr4",
            "mov rcx, rax",
            "or rax, 0x600",    // OSFXSR | OSXMMEXCPT
            "cmp rax, rcx",
            "je 3f",
            "mov cr4, rax",
            "3:",
            out("rax") _,
            out("rcx") _,
            options(nostack),
        );
    }
}

/// Runs at CPL0 (the BSP's own) and at CPL3 (the others'), hence inline.
#[inline(always)]
fn set_tss_descriptor(cpu: usize) {
    // SAFETY: called by the BSP alone before TABLES_READY is published.
    unsafe {
        let tss = addr_of_mut!(TSS[cpu]);
        let words = addr_of_mut!((*tss).words) as *mut u32;
        let rsp0 = entry::kernel_stack_top(cpu);
        write_volatile(words.add(1), rsp0 as u32);
        write_volatile(words.add(2), (rsp0 >> 32) as u32);
        let iomap_base = (addr_of!((*tss).iomap) as u64 - tss as u64) as u32;
        write_volatile(words.add(25), iomap_base << 16);

        let base = tss as u64;
        let limit = (size_of::<Tss>() - 1) as u64;
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89u64 << 40) // present, 64-bit TSS (available)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let gdt = addr_of_mut!(GDT.0) as *mut u64;
        write_volatile(gdt.add(FIXED + 2 * cpu), low);
        write_volatile(gdt.add(FIXED + 2 * cpu + 1), base >> 32);
    }
}
