//! Physical address and page-frame-number types.
//!
//! Addresses and frame numbers are both plain `u64`s in hardware, which makes
//! it easy to pass one where the other is meant (a classic 4096x bug). Distinct
//! newtypes turn that mistake into a type error.

use core::fmt;

/// log2 of the base page size; x86-64 base pages are 4 KiB.
pub const PAGE_SHIFT: u32 = 12;
/// The base page size in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

// guest-mm indexes physical memory with `usize`; casting `u64` lengths and
// offsets to `usize` is only lossless on a 64-bit target.
const _: () = assert!(usize::BITS == 64, "guest-mm assumes a 64-bit target");

/// A guest-physical byte address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

/// A page frame number: a physical address divided by [`PAGE_SIZE`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

impl fmt::Debug for PhysAddr {
    // Hex, because addresses are compared against memory maps that are
    // written in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pfn({:#x})", self.0)
    }
}

impl PhysAddr {
    /// The frame containing this address (rounds down), so a partially
    /// covered page is attributed to the frame it starts in.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }

    /// Rounds up to `align`; `None` if `align` is not a power of two or the
    /// result would not fit in 64 bits, so callers cannot silently wrap to 0.
    pub const fn align_up(self, align: u64) -> Option<PhysAddr> {
        match align_up(self.0, align) {
            Some(a) => Some(PhysAddr(a)),
            None => None,
        }
    }

    /// Rounds down to `align`; `None` if `align` is not a power of two.
    pub const fn align_down(self, align: u64) -> Option<PhysAddr> {
        match align_down(self.0, align) {
            Some(a) => Some(PhysAddr(a)),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align` (false for a
    /// non-power-of-two `align`, which no caller should ask about).
    pub const fn is_aligned(self, align: u64) -> bool {
        align.is_power_of_two() && self.0 & (align - 1) == 0
    }

    /// Adds a byte offset, reporting wrap-around instead of producing a low
    /// address that would alias real memory.
    pub const fn checked_add(self, bytes: u64) -> Option<PhysAddr> {
        match self.0.checked_add(bytes) {
            Some(a) => Some(PhysAddr(a)),
            None => None,
        }
    }
}

impl Pfn {
    /// The first byte of this frame. Frames produced by [`PhysAddr::pfn`]
    /// always fit; for hand-made ones see [`Pfn::checked_addr`].
    pub const fn addr(self) -> PhysAddr {
        debug_assert!(self.0 <= u64::MAX >> PAGE_SHIFT);
        PhysAddr(self.0 << PAGE_SHIFT)
    }

    /// Like [`Pfn::addr`], but `None` when the frame lies beyond the 64-bit
    /// address space (a shift would silently drop the top bits).
    pub const fn checked_addr(self) -> Option<PhysAddr> {
        if self.0 <= u64::MAX >> PAGE_SHIFT {
            Some(PhysAddr(self.0 << PAGE_SHIFT))
        } else {
            None
        }
    }
}

/// Rounds `x` up to a multiple of `align`. `None` if `align` is not a power
/// of two or if rounding would overflow: a wrapped result would be a small,
/// valid-looking address.
pub const fn align_up(x: u64, align: u64) -> Option<u64> {
    if !align.is_power_of_two() {
        return None;
    }
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Rounds `x` down to a multiple of `align`; `None` if `align` is not a power
/// of two (masking with a non-power-of-two gives nonsense, not an error).
pub const fn align_down(x: u64, align: u64) -> Option<u64> {
    if !align.is_power_of_two() {
        return None;
    }
    Some(x & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfn_round_trip() {
        assert_eq!(PhysAddr(0x1234_5678).pfn(), Pfn(0x12345));
        assert_eq!(Pfn(0x12345).addr(), PhysAddr(0x1234_5000));
        assert_eq!(Pfn(u64::MAX).checked_addr(), None);
        assert_eq!(
            Pfn(u64::MAX >> PAGE_SHIFT).checked_addr(),
            Some(PhysAddr(!(PAGE_SIZE - 1)))
        );
    }

    #[test]
    fn alignment() {
        assert_eq!(align_up(0, PAGE_SIZE), Some(0));
        assert_eq!(align_up(1, PAGE_SIZE), Some(PAGE_SIZE));
        assert_eq!(align_up(PAGE_SIZE, PAGE_SIZE), Some(PAGE_SIZE));
        assert_eq!(align_up(u64::MAX, 2), None);
        assert_eq!(align_up(u64::MAX - 4094, PAGE_SIZE), None);
        assert_eq!(align_up(5, 3), None);
        assert_eq!(align_up(5, 0), None);
        assert_eq!(align_down(PAGE_SIZE + 1, PAGE_SIZE), Some(PAGE_SIZE));
        assert_eq!(align_down(7, 6), None);
        assert_eq!(PhysAddr(0x1001).align_up(PAGE_SIZE), Some(PhysAddr(0x2000)));
        assert_eq!(
            PhysAddr(0x1fff).align_down(PAGE_SIZE),
            Some(PhysAddr(0x1000))
        );
        assert!(PhysAddr(0x2000).is_aligned(PAGE_SIZE));
        assert!(!PhysAddr(0x2008).is_aligned(16));
        assert!(!PhysAddr(0).is_aligned(3));
        assert_eq!(PhysAddr(u64::MAX).checked_add(1), None);
    }

    #[test]
    fn debug_is_hex() {
        assert_eq!(format!("{:?}", PhysAddr(0x1000)), "PhysAddr(0x1000)");
        assert_eq!(format!("{:?}", Pfn(0x10)), "Pfn(0x10)");
    }
}
