//! The register state a vCPU starts in: 64-bit mode, paging on over the boot
//! identity map, flat segments from a boot GDT in low memory, as the Linux
//! 64-bit boot protocol requires (__BOOT_CS = 0x10, __BOOT_DS = 0x18).
use super::BootError;
use crate::memory::layout::{BOOT_GDT, BOOT_IDT, BOOT_STACK_TOP};
use crate::memory::GuestMemory;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

const GDT: [u64; 4] = [
    0,
    0,
    0x00af_9b00_0000_ffff, // 0x10: code, 64-bit
    0x00cf_9300_0000_ffff, // 0x18: data
];
const CODE_SEL: u16 = 0x10;
const DATA_SEL: u16 = 0x18;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Writes the boot GDT and an empty IDT into low memory.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), BootError> {
    for (i, d) in GDT.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(BOOT_GDT + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT))?;
    Ok(())
}

/// Decodes a GDT descriptor into KVM's segment form.
fn segment(selector: u16, desc: u64) -> kvm_segment {
    kvm_segment {
        base: ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24),
        limit: (((desc >> 48) & 0xf) << 16 | (desc & 0xffff)) as u32,
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present: ((desc >> 47) & 1) as u8,
        dpl: ((desc >> 45) & 3) as u8,
        db: ((desc >> 54) & 1) as u8,
        s: ((desc >> 44) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        g: ((desc >> 55) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Long-mode special registers, applied on top of KVM's reset state.
pub fn long_mode_sregs(mut s: kvm_sregs, cr3: u64) -> kvm_sregs {
    let code = segment(CODE_SEL, GDT[2]);
    let data = segment(DATA_SEL, GDT[3]);
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    // A busy 64-bit TSS; VMX refuses entry with an unusable TR.
    s.tr = kvm_segment {
        base: 0,
        limit: 0xfffff,
        selector: 0,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    s.gdt.base = BOOT_GDT;
    s.gdt.limit = (8 * GDT.len() - 1) as u16;
    s.idt.base = BOOT_IDT;
    s.idt.limit = 7;
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = cr3;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s.efer = EFER_LME | EFER_LMA;
    s
}

/// General registers at entry. `smp` is Some((index, count)) for the
/// memvisor SMP entry, which passes them in rdi and rdx.
pub fn entry_regs(entry: u64, boot_params: u64, smp: Option<(u32, u32)>) -> kvm_regs {
    let (rdi, rdx) = smp.map_or((0, 0), |(i, n)| (i as u64, n as u64));
    kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        rsi: boot_params,
        rdi,
        rdx,
        rflags: 2,
        ..Default::default()
    }
}

/// x87 and SSE control words in their power-on defaults.
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_ring0() {
        let s = long_mode_sregs(kvm_sregs::default(), 0x9000);
        assert_eq!(
            (s.cs.l, s.cs.db, s.cs.dpl, s.cs.present, s.cs.type_),
            (1, 0, 0, 1, 0xb)
        );
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!((s.ss.type_, s.ss.db, s.ss.selector), (3, 1, 0x18));
        assert_eq!(s.cs.limit, 0xfffff);
        assert_eq!(s.efer & EFER_LMA, EFER_LMA);
        assert_eq!(s.cr3, 0x9000);
    }

    #[test]
    fn smp_entry_passes_index_and_count() {
        let r = entry_regs(0x10_0000, 0x7000, Some((3, 4)));
        assert_eq!(
            (r.rip, r.rsi, r.rdi, r.rdx, r.rflags),
            (0x10_0000, 0x7000, 3, 4, 2)
        );
        let r = entry_regs(0x10_0200, 0x7000, None);
        assert_eq!((r.rdi, r.rdx), (0, 0));
    }
}
