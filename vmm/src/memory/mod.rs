//! Host side of guest RAM: anonymous mappings backed by transparent huge pages,
//! wrapped for vm-memory, with one KVM memslot per region.
//!
//! Why THP by default: on these hosts the guest's first touch of a 4 KiB page
//! costs ~21 µs of shadow paging, a 2 MiB page about the same once; 256 MiB
//! of RAM is 128 such faults instead of 65,536.
pub mod layout;
pub mod rss;

use std::io;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

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

/// One mapping we own; unmapped on drop.
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
        // SAFETY: we created exactly this mapping and nothing refers to it
        // any more (GuestRam drops its GuestMemoryMmap first).
        unsafe { libc::munmap(self.addr.cast(), self.size) };
    }
}

/// A guest RAM region and where it lives on the host.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct RamRegion {
    pub guest_base: u64,
    pub size: u64,
    pub host_addr: u64,
    pub slot: u32,
}

pub struct GuestRam {
    // Field order matters: vm-memory's view is dropped before the mappings.
    memory: GuestMemoryMmap,
    regions: Vec<RamRegion>,
    _maps: Vec<HostMapping>,
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
        let mut maps = Vec::new();
        let mut mm_regions = Vec::new();
        let mut regions = Vec::new();
        for (slot, (base, len)) in layout::ram_regions(size).into_iter().enumerate() {
            let map = map_aligned(len as usize)?;
            // SAFETY: `map` is a live mapping of `len` bytes with these
            // protections and flags, and it outlives the MmapRegion (field order).
            let region = unsafe {
                MmapRegion::build_raw(
                    map.addr,
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                )
            }
            .map_err(|e| MemoryError::Region(e.to_string()))?;
            let gr = GuestRegionMmap::new(region, GuestAddress(base))
                .ok_or_else(|| MemoryError::Region(format!("region at {base:#x} overflows")))?;
            regions.push(RamRegion {
                guest_base: base,
                size: len,
                host_addr: map.addr as u64,
                slot: slot as u32,
            });
            mm_regions.push(gr);
            maps.push(map);
        }
        let memory = GuestMemoryMmap::from_regions(mm_regions)
            .map_err(|e| MemoryError::Region(e.to_string()))?;
        Ok(GuestRam {
            memory,
            regions,
            _maps: maps,
        })
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

    pub fn memory(&self) -> &GuestMemoryMmap {
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
}
