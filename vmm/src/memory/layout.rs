//! Guest-physical layout (x86-64), in one place.
//!
//! Low memory follows the Linux loaders (Firecracker, QEMU): zero page at
//! 0x7000, boot page tables from 0x9000, command line at 0x20000, RAM below
//! the EBDA and from 1 MiB; a 1 GiB hole below 4 GiB is kept for MMIO devices.

pub const BOOT_GDT: u64 = 0x500;
pub const BOOT_IDT: u64 = 0x520;
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
/// Page directories, one per GiB of identity map.
pub const PD_START: u64 = 0x21000;
pub const PD_END: u64 = 0x9f000;
pub const EBDA_START: u64 = 0x9fc00;
/// The ACPI tables, RSDP first: the BIOS read-only area (abi.rs) where the
/// ACPI spec has an OS scan for the RSDP, so a guest that ignores
/// boot_params.acpi_rsdp_addr still finds it, inside the legacy hole e820
/// keeps out of RAM, so no guest allocator reuses it.
pub const ACPI_START: u64 = crate::abi::ACPI_AREA_START;
pub const ACPI_END: u64 = crate::abi::ACPI_AREA_END;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_GAP_START: u64 = 3 << 30;
pub const MMIO_GAP_END: u64 = 4 << 30;
/// virtio-mmio device windows, one 4 KiB page each from here (Firecracker
/// puts its devices at the same address), allocated by vm-allocator.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
pub const MMIO_DEVICES_END: u64 = 0xdfff_ffff;
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// IOAPIC pins handed to devices: 0-4 are the PIT, keyboard, cascade and
/// COM1/COM2 by convention, 23 is the last IOAPIC pin.
pub const IRQ_BASE: u32 = 5;
pub const IRQ_MAX: u32 = 23;

pub const E820_RAM: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: u32,
}

/// (guest base, size) of each RAM region: below the MMIO gap, then above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_GAP_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
    }
}

/// The e820 map the guest sees: usable RAM minus the legacy hole (EBDA, VGA,
/// BIOS ROM) between 0x9fc00 and 1 MiB, which Linux expects to find there.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    for (base, len) in ram_regions(size) {
        let start = base.max(HIMEM_START);
        let end = base + len;
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Bytes of RAM the e820 map declares.
pub fn e820_ram_bytes(map: &[E820Entry]) -> u64 {
    map.iter()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.size)
        .sum()
}

/// Whole 4 KiB pages of RAM the e820 map declares (partial pages dropped, as
/// Linux's memblock does).
pub fn e820_ram_pages(map: &[E820Entry]) -> u64 {
    map.iter()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| ((e.addr + e.size) >> 12).saturating_sub((e.addr + 4095) >> 12))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region_with_low_hole() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        let m = e820_map(256 << 20);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[1],
            E820Entry {
                addr: HIMEM_START,
                size: (256 << 20) - HIMEM_START,
                kind: E820_RAM
            }
        );
        assert_eq!(e820_ram_pages(&m), 159 + (255 << 8));
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let r = ram_regions(6 << 30);
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 3 << 30)]);
        let m = e820_map(6 << 30);
        assert_eq!(m.last().unwrap().addr, 4 << 30);
        assert_eq!(e820_ram_bytes(&m), (6 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn low_memory_areas_do_not_overlap() {
        let areas = [
            (BOOT_GDT, 0x20),
            (BOOT_IDT, 0x10),
            (ZERO_PAGE, 0x1000),
            (PML4, 0x1000),
            (PDPT, 0x1000),
            (CMDLINE, CMDLINE_MAX as u64),
            (PD_START, PD_END - PD_START),
            (ACPI_START, ACPI_END - ACPI_START),
        ];
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
            assert!(a.0 + a.1 <= EBDA_START || a.0 == ACPI_START);
        }
        // The ACPI area is not RAM in the e820 map of any size.
        for e in e820_map(16 << 20) {
            assert!(e.addr + e.size <= ACPI_START || e.addr >= ACPI_END, "{e:?}");
        }
        const { assert!(ACPI_END <= HIMEM_START) };
    }
}
