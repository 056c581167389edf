//! The boot identity map: all of guest-physical space below
//! max(4 GiB, end of RAM), in 2 MiB pages, user-accessible. Whatever the RAM
//! size, that includes the MMIO hole below 4 GiB (virtio-mmio windows,
//! IOAPIC, LAPIC), mapped uncached (PCD|PWT: PAT entry 3, UC) so that our
//! kernel's drivers reach their registers from CPL3 with no set-up.
//!
//! Built by the VMM, as Linux loaders do for the 64-bit entry, so the guest
//! spends no emulated CPL0 instructions on it and its CPL3 code takes no page
//! faults. The U/S bit is set at every level because our kernel runs its
//! workloads at CPL3 on this map; Linux replaces it with its own early on.
use super::BootError;
use crate::memory::layout::{MMIO_GAP_END, MMIO_GAP_START, PDPT, PD_END, PD_START, PML4};
use crate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

/// x86-64 paging-entry bits (SDM vol. 3, 4.5), for the map built here and
/// for the walk model that reads the guest's own tables.
pub mod pte {
    pub const PRESENT: u64 = 1;
    pub const WRITABLE: u64 = 2;
    pub const USER: u64 = 4;
    pub const PWT: u64 = 8;
    pub const PCD: u64 = 0x10;
    /// PS: a leaf at the PD (2 MiB) or PDPT (1 GiB).
    pub const HUGE: u64 = 0x80;
    /// Address bits of an entry (and of CR3): 12 to 51.
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}
use pte::{HUGE, PCD, PRESENT, PWT, USER, WRITABLE};
const GIB: u64 = 1 << 30;

/// GiB of address space the map covers for RAM ending at `ram_end`.
pub fn mapped_gib(ram_end: u64) -> u64 {
    ram_end.max(4 * GIB).div_ceil(GIB)
}

/// Writes PML4, PDPT and one page directory per GiB; returns CR3.
pub fn build_identity_map(mem: &GuestMemory, ram_end: u64) -> Result<u64, BootError> {
    let gib = mapped_gib(ram_end);
    let max = (PD_END - PD_START) / 0x1000;
    if gib > max.min(512) {
        return Err(BootError::TooMuchMemory { gib, max });
    }
    let flags = PRESENT | WRITABLE | USER;
    mem.write_obj(PDPT | flags, GuestAddress(PML4))?;
    let mut pdpt = vec![0u8; 8 * gib as usize];
    let mut pd = vec![0u8; 4096];
    for g in 0..gib {
        let pd_addr = PD_START + g * 0x1000;
        pdpt[8 * g as usize..8 * g as usize + 8].copy_from_slice(&(pd_addr | flags).to_le_bytes());
        for (i, e) in pd.chunks_exact_mut(8).enumerate() {
            let phys = g * GIB + ((i as u64) << 21);
            let cache = if (MMIO_GAP_START..MMIO_GAP_END).contains(&phys) {
                PCD | PWT
            } else {
                0
            };
            e.copy_from_slice(&(phys | flags | HUGE | cache).to_le_bytes());
        }
        mem.write_slice(&pd, GuestAddress(pd_addr))?;
    }
    mem.write_slice(&pdpt, GuestAddress(PDPT))?;
    Ok(PML4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the map the way the MMU does.
    fn translate(mem: &GuestMemory, cr3: u64, va: u64) -> Option<u64> {
        leaf(mem, cr3, va).map(|pde| (pde & !0x1f_ffff & 0x000f_ffff_ffff_f000) | (va & 0x1f_ffff))
    }

    /// The 2 MiB leaf entry mapping `va`, if present and user-accessible.
    fn leaf(mem: &GuestMemory, cr3: u64, va: u64) -> Option<u64> {
        let mask = 0x000f_ffff_ffff_f000;
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + 8 * ((va >> 39) & 511)))
            .ok()?;
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & mask) + 8 * ((va >> 30) & 511)))
            .ok()?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & mask) + 8 * ((va >> 21) & 511)))
            .ok()?;
        (pde & PRESENT != 0 && pde & HUGE != 0 && pde & USER != 0).then_some(pde)
    }

    #[test]
    fn maps_every_address_to_itself() {
        let ram = crate::memory::GuestRam::new(64 << 20).unwrap();
        let cr3 = build_identity_map(ram.memory(), ram.end()).unwrap();
        for va in [
            0,
            0x1234,
            0x10_0000,
            (64 << 20) - 8,
            3 << 30,
            (4u64 << 30) - 1,
        ] {
            assert_eq!(translate(ram.memory(), cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(ram.memory(), cr3, 4 << 30), None);
    }

    /// The MMIO hole (virtio-mmio windows, IOAPIC, LAPIC) is mapped for any
    /// RAM size, uncached; RAM is not.
    #[test]
    fn maps_the_mmio_hole_uncached_for_every_size() {
        use crate::memory::layout::MMIO_DEVICES_START;
        for size in [16u64 << 20, 256 << 20, 3 << 30] {
            let ram = crate::memory::GuestRam::new(size).unwrap();
            let cr3 = build_identity_map(ram.memory(), ram.end()).unwrap();
            for va in [
                MMIO_GAP_START,
                MMIO_DEVICES_START,
                MMIO_DEVICES_START + 0x1050,
                0xfec0_0010,
                0xfee0_00b0,
                MMIO_GAP_END - 4,
            ] {
                assert_eq!(translate(ram.memory(), cr3, va), Some(va), "{va:#x}");
                let pde = leaf(ram.memory(), cr3, va).unwrap();
                assert_eq!(pde & (PCD | PWT), PCD | PWT, "{va:#x} cached");
            }
            for va in [0, 0x10_0000, size - 8] {
                let pde = leaf(ram.memory(), cr3, va).unwrap();
                assert_eq!(pde & (PCD | PWT), 0, "RAM at {va:#x} uncached");
            }
        }
    }

    #[test]
    fn covers_ram_above_four_gib() {
        assert_eq!(mapped_gib(256 << 20), 4);
        assert_eq!(mapped_gib((6u64 << 30) + 1), 7);
    }
}
