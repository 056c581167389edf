//! Host side of guest RAM: mappings backed as `--backing` and `--thp` say
//! (see [`backing`]), wrapped for vm-memory, with one KVM memslot per
//! region; and the calls that act on it later: prefault, discard, collapse.
//!
//! Why THP by default: on these hosts the guest's first touch of a 4 KiB page
//! costs ~21 µs of shadow paging, a 2 MiB page about the same once; 256 MiB
//! of RAM is 128 such faults instead of 65,536.
//!
//! Discard and collapse take guest-physical ranges that will come from the
//! guest (balloon PFNs): each range is checked, with overflow-safe
//! arithmetic, to lie wholly inside one RAM region before anything is done.
pub mod accounting;
pub mod backing;
pub mod dirty;
mod discard;
pub mod layout;
pub mod mempolicy;
pub mod numa;
pub mod reserve;
mod resident;
pub mod rss;
pub mod walk_model;

use backing::{BackingConfig, BackingError, HostMapping, MapError, Thp};
use std::io;
use std::sync::Arc;
use vm_memory::bitmap::{AtomicBitmap, Bitmap, WithBitmapSlice};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

pub use layout::{E820Entry, E820_RAM};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest RAM ({backing}): {what} failed")]
    Mmap {
        size: u64,
        backing: &'static str,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Backing(#[from] BackingError),
    #[error("cannot bind guest RAM region {slot} to host node {host_node} (mbind MPOL_BIND)")]
    Bind {
        slot: u32,
        host_node: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot describe guest RAM to vm-memory: {0}")]
    Region(String),
    #[error("KVM rejected memslot {slot} ({size} bytes at guest address {base:#x})")]
    Memslot {
        slot: u32,
        base: u64,
        size: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest range {gpa:#x}+{len:#x} is not wholly inside guest RAM ({ram})")]
    OutsideRam { gpa: u64, len: u64, ram: String },
    #[error("guest range {gpa:#x}+{len:#x} is not aligned to the {align:#x}-byte pages of {backing} RAM")]
    Unaligned {
        gpa: u64,
        len: u64,
        align: u64,
        backing: &'static str,
    },
    #[error("collapse: guest RAM is mapped with --thp off (MADV_NOHUGEPAGE), so it cannot be collapsed into huge pages")]
    CollapseThpOff,
    #[error("{what} of guest range {gpa:#x}+{len:#x} failed")]
    Advice {
        what: &'static str,
        gpa: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
}

/// Keeps a region's host mapping alive for as long as any clone of the
/// region exists, and, with `--dirty-log` on, records which pages the VMM
/// itself wrote.
///
/// Why it lives in vm-memory's bitmap slot: guest RAM is mapped 2 MiB-aligned
/// by us (vm-memory cannot align its own mmap), so vm-memory sees it as a raw,
/// unowned pointer. A `GuestMemoryMmap` is cheaply cloneable (virtio devices
/// keep clones), and a clone that outlived the mapping read freed memory from
/// safe code. The bitmap is the one value each region carries by ownership,
/// so an `Arc` of the mapping there makes every clone own it.
///
/// Why the VMM's writes need a bitmap of their own: KVM's dirty log sees only
/// what the guest's vCPUs write through stage-2; a device filling a buffer
/// writes through our mapping, which KVM never sees. Every vm-memory write
/// marks the pages it touched here ([`dirty`] harvests them). `None` when
/// dirty logging is off: a write then costs one not-taken branch.
#[derive(Debug)]
pub struct RamOwner {
    _mapping: Arc<HostMapping>,
    vmm_writes: Option<AtomicBitmap>,
}

impl RamOwner {
    /// Pages of this region the VMM wrote, if tracked.
    pub fn vmm_writes(&self) -> Option<&AtomicBitmap> {
        self.vmm_writes.as_ref()
    }
}

/// Which range of the mappings [`GuestRam::locate`] found.
struct Located<'a> {
    map: &'a HostMapping,
    /// Offset into the region (and its memfd).
    offset: u64,
}

impl<'a> WithBitmapSlice<'a> for RamOwner {
    type S = <Option<AtomicBitmap> as WithBitmapSlice<'a>>::S;
}

impl Bitmap for RamOwner {
    fn mark_dirty(&self, offset: usize, len: usize) {
        self.vmm_writes.mark_dirty(offset, len)
    }
    fn dirty_at(&self, offset: usize) -> bool {
        self.vmm_writes.dirty_at(offset)
    }
    fn slice_at(&self, offset: usize) -> <Self as WithBitmapSlice<'_>>::S {
        self.vmm_writes.slice_at(offset)
    }
}

/// Guest RAM as vm-memory sees it; every clone keeps the mappings alive.
pub type GuestMemory = GuestMemoryMmap<RamOwner>;
/// One region of [`GuestMemory`].
pub type GuestRegion = GuestRegionMmap<RamOwner>;

/// A guest RAM region and where it lives on the host.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct RamRegion {
    pub guest_base: u64,
    pub size: u64,
    pub host_addr: u64,
    pub slot: u32,
    /// The guest NUMA node it belongs to (0 without `--numa`).
    pub node: u32,
    /// The host node it is bound to (None: not bound, without `--numa`).
    pub host_node: Option<u32>,
}

pub struct GuestRam {
    memory: GuestMemory,
    regions: Vec<RamRegion>,
    /// The region mappings, index for index with `regions`.
    mappings: Vec<Arc<HostMapping>>,
    config: BackingConfig,
    counters: accounting::OpCounters,
    /// Batched discards (`discard.rs`).
    batch: discard::Batcher,
}

impl GuestRam {
    /// Maps `size` bytes of anonymous THP guest RAM (the default backing)
    /// laid out by [`layout::ram_regions`].
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        Self::with_backing(size, BackingConfig::default())
    }

    /// Maps `size` bytes of guest RAM backed as `config` says. The host's
    /// support for it is checked by [`backing::check_host`] first.
    pub fn with_backing(size: u64, config: BackingConfig) -> Result<Self, MemoryError> {
        let one = numa::NodeRam {
            size,
            host_node: None,
        };
        Self::with_nodes(&[one], config, false)
    }

    /// As [`Self::with_backing`], with the VMM's own writes to each region
    /// recorded page by page (see [`RamOwner`]), for `--dirty-log`.
    pub fn with_vmm_write_tracking(size: u64, config: BackingConfig) -> Result<Self, MemoryError> {
        let one = numa::NodeRam {
            size,
            host_node: None,
        };
        Self::with_nodes(&[one], config, true)
    }

    /// Maps guest RAM node after node ([`layout::node_ram_regions`]), each
    /// region its own mapping and memslot, and binds every region of a
    /// node with a host node to it before anything touches it. With
    /// `track`, the VMM's own writes are recorded as
    /// [`Self::with_vmm_write_tracking`] says.
    pub fn with_nodes(
        nodes: &[numa::NodeRam],
        config: BackingConfig,
        track: bool,
    ) -> Result<Self, MemoryError> {
        let mut mm_regions = Vec::new();
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        let sizes: Vec<u64> = nodes.iter().map(|n| n.size).collect();
        for (slot, (node, base, len)) in layout::node_ram_regions(&sizes).into_iter().enumerate() {
            let host_node = nodes[node].host_node;
            let name = format!("memvisor-ram-{slot}");
            let map = Arc::new(
                backing::map(config, len as usize, &name).map_err(|e| match e {
                    MapError::Backing(b) => MemoryError::Backing(b),
                    MapError::Io(what, source) => MemoryError::Mmap {
                        size: len,
                        backing: config.backing.name(),
                        what,
                        source,
                    },
                })?,
            );
            if let Some(h) = host_node {
                mempolicy::bind(&map, h).map_err(|source| MemoryError::Bind {
                    slot: slot as u32,
                    host_node: h,
                    source,
                })?;
            }
            let host_addr = map.addr;
            let flags = map.flags;
            // SAFETY: `host_addr` is a live mapping of `len` bytes with these
            // protections and flags, and the region's bitmap (`RamOwner`)
            // holds it alive as long as the region or any clone exists.
            let region = unsafe {
                MmapRegionBuilder::new_with_bitmap(
                    len as usize,
                    RamOwner {
                        _mapping: map.clone(),
                        vmm_writes: track
                            .then(|| AtomicBitmap::new(len as usize, dirty::PAGE_SIZE_NZ)),
                    },
                )
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(flags)
                .with_raw_mmap_pointer(host_addr)
            }
            .build()
            .map_err(|e| MemoryError::Region(e.to_string()))?;
            let gr = GuestRegionMmap::new(region, GuestAddress(base))
                .ok_or_else(|| MemoryError::Region(format!("region at {base:#x} overflows")))?;
            regions.push(RamRegion {
                guest_base: base,
                size: len,
                host_addr: host_addr as u64,
                slot: slot as u32,
                node: node as u32,
                host_node,
            });
            mm_regions.push(gr);
            mappings.push(map);
        }
        let memory = GuestMemoryMmap::from_regions(mm_regions)
            .map_err(|e| MemoryError::Region(e.to_string()))?;
        Ok(GuestRam {
            memory,
            regions,
            mappings,
            config,
            counters: Default::default(),
            batch: Default::default(),
        })
    }

    pub fn config(&self) -> BackingConfig {
        self.config
    }

    /// Bytes and ranges discarded and collapsed so far.
    pub fn op_counts(&self) -> accounting::OpCounts {
        self.counters.snapshot()
    }

    /// Installs one memslot per region: KVM builds the stage-2 (EPT/NPT, or
    /// shadow) mappings from these lazily, on the guest's first touch.
    pub fn register(&self, vm: &kvm_ioctls::VmFd) -> Result<(), MemoryError> {
        self.register_with_flags(vm, 0)
    }

    /// [`Self::register`] with memslot `flags` (KVM_MEM_LOG_DIRTY_PAGES).
    pub fn register_with_flags(
        &self,
        vm: &kvm_ioctls::VmFd,
        flags: u32,
    ) -> Result<(), MemoryError> {
        for r in &self.regions {
            let slot = kvm_bindings::kvm_userspace_memory_region {
                slot: r.slot,
                flags,
                guest_phys_addr: r.guest_base,
                memory_size: r.size,
                userspace_addr: r.host_addr,
            };
            // SAFETY: the host range is a live mapping owned by self, which the
            // caller keeps alive as long as the VM.
            unsafe { vm.set_user_memory_region(slot) }.map_err(|source| MemoryError::Memslot {
                slot: r.slot,
                base: r.guest_base,
                size: r.size,
                source,
            })?;
        }
        Ok(())
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// End of the highest region (exclusive).
    pub fn end(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.guest_base + r.size)
            .max()
            .unwrap_or(0)
    }

    pub fn host_ranges(&self) -> Vec<(u64, u64)> {
        self.regions
            .iter()
            .map(|r| (r.host_addr, r.host_addr + r.size))
            .collect()
    }

    /// The mapping holding `[gpa, gpa + len)`, refusing a range that is
    /// not aligned to `align` or not wholly inside one region. No sum here
    /// can overflow: a guest chooses `gpa` and `len`.
    fn locate(&self, gpa: u64, len: u64, align: u64) -> Result<Located<'_>, MemoryError> {
        if !gpa.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(MemoryError::Unaligned {
                gpa,
                len,
                align,
                backing: self.config.backing.name(),
            });
        }
        let outside = || MemoryError::OutsideRam {
            gpa,
            len,
            ram: self
                .regions
                .iter()
                .map(|r| format!("{:#x}+{:#x}", r.guest_base, r.size))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let end = gpa.checked_add(len).ok_or_else(outside)?;
        self.regions
            .iter()
            .zip(&self.mappings)
            .find(|(r, _)| {
                // guest_base + size cannot overflow: regions are mapped.
                len > 0 && gpa >= r.guest_base && end <= r.guest_base + r.size
            })
            .map(|(r, m)| Located {
                map: m,
                offset: gpa - r.guest_base,
            })
            .ok_or_else(outside)
    }

    /// Asks the host to back `[gpa, gpa + len)` with transparent huge pages
    /// now (MADV_COLLAPSE, synchronous: call it off the vCPU threads).
    /// Only the whole 2 MiB pages inside the range are collapsed. Hugetlb
    /// RAM is huge already (nothing to do); RAM mapped with `--thp off` is
    /// refused. Ranges are checked as for [`Self::discard`].
    pub fn collapse(&self, gpa: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let at = self.locate(gpa.0, len, backing::PAGE as u64)?;
        if self.config.backing.is_hugetlb() {
            return Ok(());
        }
        if self.config.thp == Thp::Off {
            return Err(MemoryError::CollapseThpOff);
        }
        // SAFETY: advice on a range `locate` put inside our own mapping;
        // collapsing keeps its contents.
        let rc = unsafe {
            libc::madvise(
                at.map.addr.add(at.offset as usize).cast(),
                len as usize,
                libc::MADV_COLLAPSE,
            )
        };
        if rc != 0 {
            return Err(MemoryError::Advice {
                what: "collapse (MADV_COLLAPSE)",
                gpa: gpa.0,
                len,
                source: io::Error::last_os_error(),
            });
        }
        self.counters.collapsed(len);
        Ok(())
    }

    /// Populates all of guest RAM in the host page tables now
    /// (MADV_POPULATE_WRITE), so the guest's first touches find it there.
    pub fn populate(&self) -> Result<(), MemoryError> {
        for (r, m) in self.regions.iter().zip(&self.mappings) {
            loop {
                // SAFETY: advice on our own whole mapping; populating for
                // write keeps its contents.
                let rc = unsafe { libc::madvise(m.addr.cast(), m.size, libc::MADV_POPULATE_WRITE) };
                let e = io::Error::last_os_error();
                match (rc, e.raw_os_error()) {
                    (0, _) => break,
                    (_, Some(libc::EINTR | libc::EAGAIN)) => continue,
                    _ => {
                        return Err(MemoryError::Advice {
                            what: "prefault (MADV_POPULATE_WRITE)",
                            gpa: r.guest_base,
                            len: r.size,
                            source: e,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

/// Merges guest ranges `(gpa, len)` into maximal runs: sorted, with
/// overlapping and adjacent ranges joined and empty ones dropped, so a
/// balloon's page list becomes as few discards as possible. Ends are
/// computed in 128 bits, so a range that runs past 2^64 still does after
/// merging (and a range check refuses it) instead of wrapping.
pub fn coalesce(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u128)> = ranges
        .into_iter()
        .filter(|&(_, len)| len > 0)
        .map(|(gpa, len)| (gpa, gpa as u128 + len as u128))
        .collect();
    spans.sort_unstable();
    let mut runs: Vec<(u64, u128)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match runs.last_mut() {
            Some(last) if start as u128 <= last.1 => last.1 = last.1.max(end),
            _ => runs.push((start, end)),
        }
    }
    runs.into_iter()
        .map(|(s, e)| (s, (e - s as u128).min(u64::MAX as u128) as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::backing::Backing;
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_huge_page_aligned_and_usable() {
        let ram = GuestRam::new(64 << 20).unwrap();
        assert_eq!(ram.size(), 64 << 20);
        for r in ram.regions() {
            assert_eq!(r.host_addr % backing::HUGE as u64, 0);
        }
        ram.memory()
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            ram.memory().read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(ram
            .memory()
            .read_obj::<u32>(GuestAddress(64 << 20))
            .is_err());
    }

    /// A clone of guest memory outliving `GuestRam` must still own the
    /// mapping (this read crashed with SIGSEGV when `GuestRam` alone did).
    #[test]
    fn a_memory_clone_keeps_the_mapping_alive() {
        let ram = GuestRam::new(16 << 20).unwrap();
        ram.memory().write_obj(7u64, GuestAddress(0x2000)).unwrap();
        let m = ram.memory().clone();
        drop(ram);
        assert_eq!(m.read_obj::<u64>(GuestAddress(0x2000)).unwrap(), 7);
    }

    pub(super) const MIB: u64 = 1 << 20;

    use backing::tests::pool_free_backings;

    /// Writes a non-zero byte to every 4 KiB page of `[0, size)`.
    pub(super) fn touch(ram: &GuestRam, size: u64) {
        for gpa in (0..size).step_by(4096) {
            ram.memory().write_obj(0xa5u8, GuestAddress(gpa)).unwrap();
        }
    }

    pub(super) fn smaps(ram: &GuestRam) -> rss::SmapsSum {
        rss::smaps_of(&ram.host_ranges()).unwrap()
    }

    pub(super) fn byte(ram: &GuestRam, gpa: u64) -> u8 {
        ram.memory().read_obj::<u8>(GuestAddress(gpa)).unwrap()
    }

    #[test]
    fn every_backing_maps_2m_aligned() {
        for cfg in pool_free_backings() {
            let ram = GuestRam::with_backing(8 * MIB, cfg).unwrap();
            for r in ram.regions() {
                assert_eq!(r.host_addr % backing::HUGE as u64, 0, "{cfg:?}");
                assert_eq!(r.guest_base % backing::HUGE as u64, 0, "{cfg:?}");
            }
            touch(&ram, 8 * MIB);
            assert_eq!(byte(&ram, 8 * MIB - 1), 0);
        }
    }

    #[test]
    fn discard_drops_rss_by_exactly_the_range_and_reads_zeros() {
        for cfg in pool_free_backings() {
            let ram = GuestRam::with_backing(16 * MIB, cfg).unwrap();
            touch(&ram, 16 * MIB);
            let before = smaps(&ram).rss;
            assert_eq!(before, 16 * MIB, "{cfg:?}: every page touched");
            // Part of one 2 MiB page, then two whole ones.
            let ranges = [(MIB + 4096, 3 * 4096), (4 * MIB, 4 * MIB)];
            for (gpa, len) in ranges {
                ram.discard(GuestAddress(gpa), len).unwrap();
            }
            let dropped: u64 = ranges.iter().map(|r| r.1).sum();
            assert_eq!(before - smaps(&ram).rss, dropped, "{cfg:?}");
            for (gpa, len) in ranges {
                for p in (gpa..gpa + len).step_by(4096) {
                    assert_eq!(byte(&ram, p), 0, "{cfg:?}: {p:#x} reads zero");
                }
                assert_eq!(byte(&ram, gpa - 4096), 0xa5, "{cfg:?}: below kept");
                assert_eq!(byte(&ram, gpa + len), 0xa5, "{cfg:?}: above kept");
            }
        }
    }

    #[test]
    fn ranges_not_wholly_inside_ram_are_refused_and_nothing_is_discarded() {
        // 3 GiB + 4 MiB: two regions, either side of the MMIO gap. Nothing
        // is touched but the pages below, so this costs no memory.
        let size = layout::MMIO_GAP_START + 4 * MIB;
        for cfg in pool_free_backings() {
            let ram = GuestRam::with_backing(size, cfg).unwrap();
            let gap = layout::MMIO_GAP_START;
            let top = layout::MMIO_GAP_END + 4 * MIB;
            let marks = [0, gap - 4096, layout::MMIO_GAP_END, top - 4096];
            for m in marks {
                ram.memory().write_obj(0x5au8, GuestAddress(m)).unwrap();
            }
            let before = smaps(&ram).rss;
            let bad = [
                (top, 4096),                                     // just past the end
                (top - 4096, 8192),                              // straddles the end
                (gap - 4096, 8192),                              // straddles the gap
                (gap, 4096),                                     // inside the gap
                (gap - 4096, layout::MMIO_GAP_END - gap + 8192), // across the gap
                (u64::MAX - 4095, 8192),                         // wraps past 2^64
                (4096, u64::MAX - 4095),                         // wraps past 2^64
                (0, !4095),                                      // all of the space
                (0, 4096 + 1),                                   // unaligned length
                (1, 4096),                                       // unaligned start
                (0, 0),                                          // empty
            ];
            for (gpa, len) in bad {
                assert!(
                    ram.discard(GuestAddress(gpa), len).is_err(),
                    "{cfg:?}: discard {gpa:#x}+{len:#x} was not refused"
                );
                assert!(
                    ram.collapse(GuestAddress(gpa), len).is_err(),
                    "{cfg:?}: collapse {gpa:#x}+{len:#x} was not refused"
                );
            }
            assert_eq!(smaps(&ram).rss, before, "{cfg:?}: nothing discarded");
            for m in marks {
                assert_eq!(byte(&ram, m), 0x5a, "{cfg:?}: {m:#x} kept");
            }
            // Each region's last page is inside, the whole of each fits.
            ram.discard(GuestAddress(gap - 4096), 4096).unwrap();
            ram.discard(GuestAddress(layout::MMIO_GAP_END), 4 * MIB)
                .unwrap();
            assert_eq!(byte(&ram, gap - 4096), 0);
            assert_eq!(byte(&ram, top - 4096), 0);
        }
    }

    #[test]
    fn the_refusal_names_the_range_and_ram() {
        let ram = GuestRam::new(16 * MIB).unwrap();
        let e = ram.discard(GuestAddress(16 * MIB), 4096).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("0x1000000+0x1000") && m.contains("0x0+0x1000000"),
            "{m}"
        );
    }

    #[test]
    fn collapse_makes_split_thp_whole_again() {
        let ram = GuestRam::new(8 * MIB).unwrap();
        touch(&ram, 8 * MIB);
        if smaps(&ram).anon_huge == 0 {
            eprintln!("skipping: this host gave no THP to an MADV_HUGEPAGE mapping");
            return;
        }
        // Splitting one 4 KiB page out of each 2 MiB page leaves them 4K-mapped.
        for h in 0..4 {
            ram.discard(GuestAddress(h * 2 * MIB + 4096), 4096).unwrap();
        }
        touch(&ram, 8 * MIB);
        assert!(smaps(&ram).anon_huge < 8 * MIB);
        // MADV_COLLAPSE may fail for a moment (EAGAIN) on a busy host.
        let mut r = ram.collapse(GuestAddress(0), 8 * MIB);
        for _ in 0..3 {
            if r.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            r = ram.collapse(GuestAddress(0), 8 * MIB);
        }
        r.unwrap();
        assert_eq!(smaps(&ram).anon_huge, 8 * MIB);
        assert_eq!(byte(&ram, 4096), 0xa5, "contents kept");
        let off = GuestRam::with_backing(
            4 * MIB,
            BackingConfig {
                backing: Backing::Anon,
                thp: Thp::Off,
            },
        )
        .unwrap();
        assert!(matches!(
            off.collapse(GuestAddress(0), 4 * MIB),
            Err(MemoryError::CollapseThpOff)
        ));
    }

    #[test]
    fn populate_makes_all_of_ram_resident() {
        for cfg in pool_free_backings() {
            let ram = GuestRam::with_backing(8 * MIB, cfg).unwrap();
            assert_eq!(smaps(&ram).rss, 0, "{cfg:?}");
            ram.populate().unwrap();
            assert_eq!(smaps(&ram).rss, 8 * MIB, "{cfg:?}");
        }
    }

    /// Hugetlb RAM, only where the pool already has the pages (unit tests
    /// do not change the host; tests/memory_backing.rs reserves them).
    #[test]
    fn hugetlb_discards_whole_huge_pages() {
        // Others reserving and giving back pages must wait until we are done.
        let _pool = reserve::PoolLock::take().unwrap();
        let need = 4 * MIB;
        if backing::HugePool::read()
            .map_or(true, |p| p.check(Backing::Hugetlbfs, 2 * need).is_err())
        {
            eprintln!("skipping: fewer than 4 free 2 MiB hugetlb pages");
            return;
        }
        for backing in [Backing::Hugetlbfs, Backing::MemfdHugetlb] {
            let cfg = BackingConfig {
                backing,
                thp: Thp::On,
            };
            let ram = GuestRam::with_backing(need, cfg).unwrap();
            assert_eq!(ram.regions()[0].host_addr % backing::HUGE as u64, 0);
            touch(&ram, need);
            assert_eq!(smaps(&ram).hugetlb, need, "{backing:?}");
            assert!(ram.discard(GuestAddress(0), 4096).is_err(), "{backing:?}");
            ram.discard(GuestAddress(2 * MIB), 2 * MIB).unwrap();
            assert_eq!(smaps(&ram).hugetlb, 2 * MIB, "{backing:?}");
            assert_eq!(byte(&ram, 2 * MIB), 0);
            assert_eq!(byte(&ram, 0), 0xa5);
        }
    }

    #[test]
    fn coalescing_merges_adjacent_and_overlapping_ranges() {
        let p = 4096;
        assert_eq!(coalesce([]), vec![]);
        assert_eq!(
            coalesce([
                (5 * p, p),
                (0, p),
                (p, p),
                (3 * p, 2 * p),
                (9 * p, 0),
                (p, p)
            ]),
            vec![(0, 2 * p), (3 * p, 3 * p)],
            "sorted, adjacent joined, duplicates and empties dropped"
        );
        assert_eq!(
            coalesce([(0, 4 * p), (p, p), (3 * p, 2 * p)]),
            vec![(0, 5 * p)],
            "overlaps joined"
        );
        // A range running past 2^64 stays one that does: never wraps into RAM.
        let r = coalesce([(u64::MAX - p + 1, 2 * p), (u64::MAX - 2 * p + 1, p)]);
        assert_eq!(r.len(), 1);
        assert!(r[0].0.checked_add(r[0].1).is_none(), "{r:?}");
        let ram = GuestRam::new(16 * MIB).unwrap();
        for (gpa, len) in r {
            assert!(ram.discard(GuestAddress(gpa), len).is_err());
        }
    }
}
