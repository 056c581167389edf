//! How guest-mm reaches physical memory.
//!
//! The allocators store their own metadata (grown region arrays, bitmaps) in
//! the physical memory they manage, because before a heap exists there is
//! nowhere else to put it. Going through [`PhysMemory`] instead of casting
//! addresses to pointers lets the same code run inside the guest (identity
//! map) and in host unit tests (a buffer standing in for RAM).

use crate::addr::PhysAddr;

/// Translates physical addresses to pointers the current code may use.
///
/// # Safety
///
/// guest-mm writes through the returned pointers from safe functions, so an
/// implementation must guarantee, for every address `pa` inside memory given
/// to [`Memblock::add`](crate::memblock::Memblock::add):
///
/// * the pointer is valid for reads and writes of every byte from `pa` to the
///   end of the memory range containing it, with consecutive physical
///   addresses mapped to consecutive bytes;
/// * the pointer has the same remainder modulo 8 as `pa`, so 8-aligned
///   physical addresses can be used as `u64`/[`Region`](crate::memblock::Region)
///   storage;
/// * the translation does not change while guest-mm uses the memory.
///
/// For other addresses it may panic; it must not return a pointer that
/// aliases memory owned by someone else.
pub unsafe trait PhysMemory {
    /// The pointer through which `pa` is accessed.
    fn phys_to_ptr(&self, pa: PhysAddr) -> *mut u8;
}

// SAFETY: a shared reference translates exactly as the memory it refers
// to, so it keeps every promise that memory makes.
unsafe impl<T: PhysMemory + ?Sized> PhysMemory for &T {
    fn phys_to_ptr(&self, pa: PhysAddr) -> *mut u8 {
        (**self).phys_to_ptr(pa)
    }
}

/// The guest kernel's view: it runs with physical memory identity mapped,
/// so the translation is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityMap;

// SAFETY: the guest kernel maps all RAM 1:1 before guest-mm runs and never
// remaps it, so address `pa` is accessible at pointer value `pa` with equal
// alignment; contiguity and stability follow from the identity mapping.
unsafe impl PhysMemory for IdentityMap {
    fn phys_to_ptr(&self, pa: PhysAddr) -> *mut u8 {
        // Exposed provenance: the pointer is conjured from an integer that
        // names memory no Rust allocation owns.
        core::ptr::with_exposed_provenance_mut(pa.0 as usize)
    }
}

/// Host-side stand-in for guest RAM, for tests and benchmarks (feature `sim`).
#[cfg(any(test, feature = "sim"))]
pub mod sim {
    use super::PhysMemory;
    use crate::addr::PhysAddr;
    use core::cell::UnsafeCell;

    /// A buffer that pretends to be physical memory `[base, base + len)`.
    ///
    /// Words are `UnsafeCell`s because [`PhysMemory::phys_to_ptr`] hands out
    /// writable pointers from `&self`; `u64` keeps the buffer 8-aligned.
    pub struct SimMemory {
        base: PhysAddr,
        words: Vec<UnsafeCell<u64>>,
    }

    impl SimMemory {
        /// Zeroed memory covering `[base, base + len)`; both must be multiples
        /// of 8 so the alignment promise of [`PhysMemory`] holds.
        pub fn new(base: PhysAddr, len: u64) -> Self {
            assert!(base.0.is_multiple_of(8) && len.is_multiple_of(8));
            assert!(base.0.checked_add(len).is_some());
            let words = (0..len / 8).map(|_| UnsafeCell::new(0)).collect();
            SimMemory { base, words }
        }

        /// The first simulated address.
        pub fn base(&self) -> PhysAddr {
            self.base
        }

        /// One past the last simulated address.
        pub fn end(&self) -> PhysAddr {
            PhysAddr(self.base.0 + self.words.len() as u64 * 8)
        }

        /// A copy of the contents, to check that failed operations wrote
        /// nothing.
        pub fn snapshot(&self) -> Vec<u64> {
            self.snapshot_range(self.base, self.end().0 - self.base.0)
        }

        /// A copy of the 8-byte words overlapping `[pa, pa + len)`, clipped to
        /// the simulated range; cheaper than [`SimMemory::snapshot`] when
        /// only some pages can have changed.
        pub fn snapshot_range(&self, pa: PhysAddr, len: u64) -> Vec<u64> {
            let first = (pa.0.saturating_sub(self.base.0) / 8) as usize;
            let last = (pa.0.saturating_add(len).saturating_sub(self.base.0)).div_ceil(8);
            let last = (last as usize).min(self.words.len());
            let words = self.words.get(first..last).unwrap_or(&[]);
            // SAFETY: tests are single-threaded with respect to one
            // SimMemory and hold no pointers across this call, so nothing
            // writes the cells while they are read.
            words.iter().map(|w| unsafe { *w.get() }).collect()
        }
    }

    // SAFETY: every in-range address maps into the single `words` buffer,
    // which is contiguous, 8-aligned at an 8-aligned `base`, never
    // reallocated, and mutable through `UnsafeCell`. Addresses outside the
    // buffer panic rather than produce a dangling pointer.
    unsafe impl PhysMemory for SimMemory {
        fn phys_to_ptr(&self, pa: PhysAddr) -> *mut u8 {
            assert!(
                pa >= self.base && pa < self.end(),
                "{pa:?} outside simulated memory {:?}..{:?}",
                self.base,
                self.end()
            );
            let off = (pa.0 - self.base.0) as usize;
            // `raw_get` keeps the provenance of the whole slice, so the
            // pointer may be used beyond the first word.
            UnsafeCell::raw_get(self.words.as_ptr())
                .cast::<u8>()
                .wrapping_add(off)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn translates_and_writes() {
            let m = SimMemory::new(PhysAddr(0x1000), 0x1000);
            let p = m.phys_to_ptr(PhysAddr(0x1008));
            assert!(p.cast::<u64>().is_aligned());
            // SAFETY: 0x1008..0x1010 lies inside the simulated range.
            unsafe { p.cast::<u64>().write(7) };
            assert_eq!(m.snapshot()[1], 7);
        }

        #[test]
        #[should_panic]
        fn rejects_outside() {
            let m = SimMemory::new(PhysAddr(0x1000), 0x1000);
            let _ = m.phys_to_ptr(PhysAddr(0x2000));
        }
    }
}
