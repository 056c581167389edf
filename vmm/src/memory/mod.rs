//! Host side of guest RAM: anonymous mappings backed by transparent huge pages,
//! wrapped for vm-memory, with one KVM memslot per region.
//!
//! Why THP by default: on these hosts the guest's first touch of a 4 KiB page
//! costs ~21 µs of shadow paging, a 2 MiB page about the same once; 256 MiB
//! of RAM is 128 such faults instead of 65,536.
pub mod layout;
pub mod rss;

use std::io;
use std::sync::Arc;
use vm_memory::bitmap::{Bitmap, WithBitmapSlice};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

pub use layout::{E820Entry, E820_RAM};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest RAM")]
    Mmap {
        size: u64,
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
}

/// One mapping we own; unmapped when the last reference goes.
#[derive(Debug)]
struct HostMapping {
    addr: *mut u8,
    size: usize,
}

// SAFETY: the mapping is plain memory; access is synchronised by its users
// (vm-memory's volatile accessors and the guest itself).
unsafe impl Send for HostMapping {}
// SAFETY: as above.
unsafe impl Sync for HostMapping {}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: we created exactly this mapping, and the last `RamOwner`
        // (hence the last region that points into it) is being dropped.
        unsafe { libc::munmap(self.addr.cast(), self.size) };
    }
}

/// Keeps a region's host mapping alive for as long as any clone of the
/// region exists.
///
/// Why it lives in vm-memory's bitmap slot: guest RAM is mapped 2 MiB-aligned
/// by us (vm-memory cannot align its own mmap), so vm-memory sees it as a raw,
/// unowned pointer. A `GuestMemoryMmap` is cheaply cloneable (virtio devices
/// keep clones), and a clone that outlived the mapping read freed memory from
/// safe code. The bitmap is the one value each region carries by ownership,
/// so an `Arc` of the mapping there makes every clone own it. Dirty tracking
/// is not done through vm-memory (KVM's dirty log does it), so the slot is
/// otherwise unused.
#[derive(Clone, Debug)]
pub struct RamOwner {
    _mapping: Arc<HostMapping>,
}

impl<'a> WithBitmapSlice<'a> for RamOwner {
    type S = ();
}

impl Bitmap for RamOwner {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}
    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }
    fn slice_at(&self, _offset: usize) {}
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
}

pub struct GuestRam {
    memory: GuestMemory,
    regions: Vec<RamRegion>,
}

const HUGE: usize = 2 << 20;

/// Maps `size` bytes aligned to 2 MiB, so every guest 2 MiB page can be one
/// host huge page, and asks for THP on it (the host's THP mode is `madvise`).
fn map_aligned(size: usize) -> Result<HostMapping, MemoryError> {
    let err = |source| MemoryError::Mmap {
        size: size as u64,
        source,
    };
    let span = size + HUGE;
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(err(io::Error::last_os_error()));
    }
    let start = raw as usize;
    let aligned = (start + HUGE - 1) & !(HUGE - 1);
    let head = aligned - start;
    let tail = span - head - size;
    // SAFETY: trimming the unaligned head and tail of the mapping made above.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    let map = HostMapping {
        addr: aligned as *mut u8,
        size,
    };
    // SAFETY: advice on our own mapping. Failure (THP disabled) only costs speed.
    unsafe { libc::madvise(map.addr.cast(), size, libc::MADV_HUGEPAGE) };
    Ok(map)
}

impl GuestRam {
    /// Maps `size` bytes of guest RAM laid out by [`layout::ram_regions`].
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        let mut mm_regions = Vec::new();
        let mut regions = Vec::new();
        for (slot, (base, len)) in layout::ram_regions(size).into_iter().enumerate() {
            let map = Arc::new(map_aligned(len as usize)?);
            let host_addr = map.addr;
            // SAFETY: `host_addr` is a live mapping of `len` bytes with these
            // protections and flags, and the region's bitmap (`RamOwner`)
            // holds it alive as long as the region or any clone exists.
            let region = unsafe {
                MmapRegionBuilder::new_with_bitmap(len as usize, RamOwner { _mapping: map })
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
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
            });
            mm_regions.push(gr);
        }
        let memory = GuestMemoryMmap::from_regions(mm_regions)
            .map_err(|e| MemoryError::Region(e.to_string()))?;
        Ok(GuestRam { memory, regions })
    }

    /// Installs one memslot per region: KVM builds the stage-2 (EPT/NPT, or
    /// shadow) mappings from these lazily, on the guest's first touch.
    pub fn register(&self, vm: &kvm_ioctls::VmFd) -> Result<(), MemoryError> {
        for r in &self.regions {
            let slot = kvm_bindings::kvm_userspace_memory_region {
                slot: r.slot,
                flags: 0,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_huge_page_aligned_and_usable() {
        let ram = GuestRam::new(64 << 20).unwrap();
        assert_eq!(ram.size(), 64 << 20);
        for r in ram.regions() {
            assert_eq!(r.host_addr % HUGE as u64, 0);
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
}
