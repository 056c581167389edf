//! The kernel's identity map, planned: which large pages map guest-physical
//! space 1:1, and which of them are uncached (Linux's
//! `arch/x86/mm/ident_map.c` builds the same kind of map for kexec and the
//! early boot path).
//!
//! memvisor's kernel runs its CPL3 code over an identity map of all RAM and
//! of the device hole below 4 GiB (virtio-mmio windows, IOAPIC, LAPIC). The
//! VMM builds one for the entry; the kernel then builds its own with
//! `pgtable` and equal effect, so that it owns every table it runs on. This
//! module only decides the leaves, so the rule is tested on the host
//! without page tables:
//!
//! * it covers `[0, max(4 GiB, end of RAM))`, like the VMM's map;
//! * a 2 MiB page holding any RAM is write-back, one holding none is
//!   uncached (PCD|PWT), which is what the device hole needs and what
//!   nothing else cares about (no code touches non-RAM outside the hole);
//! * with `gib_pages` (for CPUs that walk 1 GiB leaves; see the
//!   firmware's `vm_space::KmapMode` for a host that says so and does
//!   not), every 1 GiB that is uniform (all of it RAM-holding, or none of
//!   it) is one 1 GiB page. Fewer pages
//!   matter on hosts whose KVM shadows guest page tables: every guest
//!   page-table page the kernel touches is one more shadow page to build
//!   after the switch.

/// 2 MiB and 1 GiB, the two leaf sizes the plan uses.
pub const SIZE_2M: u64 = 1 << 21;
pub const SIZE_1G: u64 = 1 << 30;
/// The map covers at least this much, RAM or not (the device hole).
pub const MIN_TOP: u64 = 4 << 30;

/// One leaf of the plan: `[addr, addr + size)` mapped to itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub addr: u64,
    pub size: u64,
    pub uncached: bool,
}

/// The leaves covering `[0, top)` in address order; see the module doc.
#[derive(Clone, Copy)]
pub struct IdentPlan<'a> {
    ram: &'a [(u64, u64)],
    next: u64,
    top: u64,
    gib_pages: bool,
}

impl<'a> IdentPlan<'a> {
    /// `ram`: (start, length) of every RAM range, any order.
    pub fn new(ram: &'a [(u64, u64)], gib_pages: bool) -> Self {
        let ram_end = ram
            .iter()
            .map(|&(s, l)| s.saturating_add(l))
            .max()
            .unwrap_or(0);
        let unit = if gib_pages { SIZE_1G } else { SIZE_2M };
        let top = ram_end.max(MIN_TOP).div_ceil(unit).saturating_mul(unit);
        IdentPlan {
            ram,
            next: 0,
            top,
            gib_pages,
        }
    }

    /// One past the last mapped address.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Table pages a 4-level map of this plan needs: the PML4, one PDPT
    /// per 512 GiB slot used, one page directory per GiB holding 2 MiB
    /// leaves. So they can be set aside before the page allocator exists.
    pub fn table_pages(&self) -> u64 {
        let plan = IdentPlan { next: 0, ..*self };
        let (mut pdpts, mut pds) = (0, 0);
        let (mut last_slot, mut last_gib) = (u64::MAX, u64::MAX);
        for l in plan {
            if l.addr >> 39 != last_slot {
                last_slot = l.addr >> 39;
                pdpts += 1;
            }
            if l.size == SIZE_2M && l.addr >> 30 != last_gib {
                last_gib = l.addr >> 30;
                pds += 1;
            }
        }
        1 + pdpts + pds
    }

    fn has_ram(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        self.ram
            .iter()
            .any(|&(s, l)| l > 0 && s < end && s.saturating_add(l) > start)
    }

    /// Whether every 2 MiB page of the GiB at `start` has RAM, or none has;
    /// Some(has RAM) then.
    fn uniform_gib(&self, start: u64) -> Option<bool> {
        let first = self.has_ram(start, SIZE_2M);
        (1..SIZE_1G / SIZE_2M)
            .all(|i| self.has_ram(start + i * SIZE_2M, SIZE_2M) == first)
            .then_some(first)
    }
}

impl Iterator for IdentPlan<'_> {
    type Item = Leaf;

    fn next(&mut self) -> Option<Leaf> {
        let addr = self.next;
        if addr >= self.top {
            return None;
        }
        if self.gib_pages && addr.is_multiple_of(SIZE_1G) && addr + SIZE_1G <= self.top {
            if let Some(ram) = self.uniform_gib(addr) {
                self.next = addr + SIZE_1G;
                return Some(Leaf {
                    addr,
                    size: SIZE_1G,
                    uncached: !ram,
                });
            }
        }
        self.next = addr + SIZE_2M;
        Some(Leaf {
            addr,
            size: SIZE_2M,
            uncached: !self.has_ram(addr, SIZE_2M),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// The way memvisor's VMM lays out 256 MiB: low RAM below the legacy
    /// hole, the rest from 1 MiB.
    const SMALL: [(u64, u64); 2] = [(0, 0x9f000), (MIB, 255 * MIB)];

    /// The leaves tile [0, top) without gaps or overlaps, each aligned to
    /// its size, and every address's caching follows the RAM rule.
    fn check_tiling(ram: &[(u64, u64)], gib: bool) -> Vec<Leaf> {
        let plan = IdentPlan::new(ram, gib);
        let top = plan.top();
        let leaves: Vec<Leaf> = plan.collect();
        let mut at = 0;
        for l in &leaves {
            assert_eq!(l.addr, at, "gap or overlap at {at:#x}");
            assert!(l.addr.is_multiple_of(l.size), "{l:?} misaligned");
            assert!(l.size == SIZE_2M || (gib && l.size == SIZE_1G), "{l:?}");
            at += l.size;
        }
        assert_eq!(at, top);
        for l in &leaves {
            let mut a = l.addr;
            while a < l.addr + l.size {
                let ram_here = ram.iter().any(|&(s, n)| s < a + SIZE_2M && s + n > a);
                assert_eq!(l.uncached, !ram_here, "{l:?} at {a:#x}");
                a += SIZE_2M;
            }
        }
        leaves
    }

    #[test]
    fn small_ram_maps_four_gib_with_only_the_ramless_part_uncached() {
        let leaves = check_tiling(&SMALL, false);
        assert_eq!(leaves.len(), 2048);
        assert_eq!(leaves.iter().filter(|l| !l.uncached).count(), 128);
        // The device hole the VMM maps uncached (3..4 GiB) is uncached here.
        assert!(leaves
            .iter()
            .filter(|l| l.addr >= 3 * GIB)
            .all(|l| l.uncached));
    }

    #[test]
    fn gib_pages_where_uniform_and_2m_where_ram_ends_inside_a_gib() {
        let leaves = check_tiling(&SMALL, true);
        // GiB 0 holds RAM only in its first 256 MiB: 512 2 MiB pages;
        // GiBs 1, 2, 3 hold none: one uncached 1 GiB page each.
        assert_eq!(leaves.len(), 512 + 3);
        assert_eq!(
            leaves[512..],
            [1, 2, 3].map(|g| Leaf {
                addr: g * GIB,
                size: SIZE_1G,
                uncached: true
            })
        );
        // A full first GiB of RAM becomes one cached 1 GiB page.
        let leaves = check_tiling(&[(0, 0x9f000), (MIB, GIB - MIB)], true);
        assert_eq!(leaves.len(), 4);
        assert!(!leaves[0].uncached && leaves[0].size == SIZE_1G);
    }

    #[test]
    fn ram_above_four_gib_is_covered_and_rounded_up() {
        // 3 GiB below the hole, 1.5 GiB relocated above 4 GiB.
        let ram = [(0, 0x9f000), (MIB, 3 * GIB - MIB), (4 * GIB, 3 * GIB / 2)];
        for gib in [false, true] {
            let leaves = check_tiling(&ram, gib);
            let top = leaves.last().map(|l| l.addr + l.size).unwrap();
            assert_eq!(top, if gib { 6 * GIB } else { 4 * GIB + 3 * GIB / 2 });
            let hole: Vec<_> = leaves
                .iter()
                .filter(|l| (3 * GIB..4 * GIB).contains(&l.addr))
                .collect();
            assert!(hole.iter().all(|l| l.uncached), "{hole:?}");
        }
    }

    #[test]
    fn table_pages_count_the_pml4_pdpts_and_page_directories() {
        // 4 GiB of 2 MiB pages: PML4, one PDPT, four page directories.
        assert_eq!(IdentPlan::new(&SMALL, false).table_pages(), 6);
        // 1 GiB pages above the first GiB: only GiB 0 needs a directory.
        assert_eq!(IdentPlan::new(&SMALL, true).table_pages(), 3);
        // RAM past 512 GiB needs a second PDPT.
        let big = [
            (0, 0x9f000),
            (MIB, 3 * GIB - MIB),
            (4 * GIB, 509 * GIB + 2 * MIB),
        ];
        let plan = IdentPlan::new(&big, true);
        assert_eq!(plan.top(), 514 * GIB);
        // Every GiB is all RAM or none of it except GiB 513 (RAM in its
        // first 2 MiB only): PML4, two PDPTs, one page directory.
        assert_eq!(plan.table_pages(), 4);
        let dirs: Vec<u64> = plan
            .filter(|l| l.size == SIZE_2M)
            .map(|l| l.addr >> 30)
            .collect();
        assert_eq!(dirs, [513; 512]);
    }

    #[test]
    fn no_ram_still_maps_the_device_hole() {
        let leaves = check_tiling(&[], false);
        assert_eq!(leaves.len(), 2048);
        assert!(leaves.iter().all(|l| l.uncached));
    }
}
