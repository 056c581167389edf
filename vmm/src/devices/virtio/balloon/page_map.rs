//! The pages in the balloon, for the device (which huge pages are wholly
//! inflated) and the collapse worker (which blocks have none left).
use super::{BALLOON_PAGE, PFN_SHIFT};

/// One bit per 4 KiB page of the guest-physical space up to the end of
/// RAM: set while the page is in the balloon. Its size is fixed by guest
/// RAM, never by what the guest sends.
pub struct PageMap {
    bits: Vec<u64>,
}

impl PageMap {
    pub fn new(end: u64) -> Self {
        let pages = end.div_ceil(BALLOON_PAGE) as usize;
        PageMap {
            bits: vec![0; pages.div_ceil(64)],
        }
    }

    /// Sets (or clears) the pages of `[gpa, gpa + len)` that the map covers.
    pub(super) fn set(&mut self, gpa: u64, len: u64, on: bool) {
        for p in Self::pfns(gpa, len) {
            let Some(w) = self.bits.get_mut((p / 64) as usize) else {
                return;
            };
            if on {
                *w |= 1 << (p % 64);
            } else {
                *w &= !(1 << (p % 64));
            }
        }
    }

    /// Whether page `pfn` is set (a page the map does not cover is not).
    fn is_set(&self, pfn: u64) -> bool {
        self.bits
            .get((pfn / 64) as usize)
            .is_some_and(|w| w & (1 << (pfn % 64)) != 0)
    }

    /// The pages of `[gpa, gpa + len)`.
    fn pfns(gpa: u64, len: u64) -> std::ops::Range<u64> {
        let first = gpa >> PFN_SHIFT;
        first..first + (len >> PFN_SHIFT)
    }

    pub fn any_in(&self, gpa: u64, len: u64) -> bool {
        Self::pfns(gpa, len).any(|p| self.is_set(p))
    }

    /// Whether every page of `[gpa, gpa + len)` is set.
    pub(super) fn all_in(&self, gpa: u64, len: u64) -> bool {
        Self::pfns(gpa, len).all(|p| self.is_set(p))
    }

    pub(super) fn clear_all(&mut self) {
        self.bits.fill(0);
    }
}
