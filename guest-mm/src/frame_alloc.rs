//! A bitmap page-frame allocator: the bridge from memblock to the buddy
//! allocator.
//!
//! memblock's range lists get slower with every allocation that fragments
//! them, and it cannot take memory back cheaply. Once RAM is known, this
//! allocator takes over with one bit per frame, which makes allocation,
//! freeing and double-free detection constant-space and simple to verify.
//!
//! It keeps two bitmaps over `[min_pfn, max_pfn)`: *free* (the allocation
//! state) and *managed* (frames ever handed in). The second one lets a safe
//! [`FrameAllocator::free_run`] refuse frames it never owned, such as the
//! kernel image or the bitmaps themselves, instead of later handing them out.

use core::fmt;

use crate::addr::{Pfn, PhysAddr, PAGE_SIZE};
use crate::memblock::{Memblock, MemblockError};
use crate::phys::PhysMemory;

/// Why a frame operation was refused. Nothing is changed when one is
/// returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// memblock could not provide the bitmap.
    Memblock(MemblockError),
    /// memblock holds no whole page of RAM to manage.
    NoMemory,
    /// Part of the run lies outside `[min_pfn, max_pfn)`.
    OutOfRange,
    /// Part of the run was never handed to this allocator (reserved at
    /// hand-off), so it is not this allocator's to free.
    NotManaged,
    /// Part of the run is already free: a double free.
    AlreadyFree,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Memblock(e) => write!(f, "bitmap allocation failed: {e}"),
            FrameError::NoMemory => f.write_str("no RAM to manage"),
            FrameError::OutOfRange => f.write_str("frame outside the managed span"),
            FrameError::NotManaged => f.write_str("frame was never handed to the allocator"),
            FrameError::AlreadyFree => f.write_str("frame is already free"),
        }
    }
}

impl From<MemblockError> for FrameError {
    fn from(e: MemblockError) -> Self {
        FrameError::Memblock(e)
    }
}

/// Which of the two bitmaps; they are stored back to back.
#[derive(Clone, Copy)]
enum Map {
    Free = 0,
    Managed = 1,
}

/// The bitmaps as reached through one `PhysMemory` for one call.
struct Bits {
    ptr: *mut u64,
    words: usize,
}

impl Bits {
    fn index(&self, map: Map, w: usize) -> usize {
        // Bounds are checked even in release builds: an index bug here would
        // otherwise scribble over arbitrary physical memory.
        assert!(w < self.words);
        map as usize * self.words + w
    }

    fn get(&self, map: Map, w: usize) -> u64 {
        let i = self.index(map, w);
        // SAFETY: `ptr` points at the `2 * words` u64s the allocator
        // reserved in memblock (so nobody else uses them), translated by a
        // `PhysMemory` whose contract makes it valid and 8-aligned (the
        // bitmap is page-aligned); `i < 2 * words`.
        unsafe { self.ptr.add(i).read() }
    }

    fn set(&self, map: Map, w: usize, v: u64) {
        let i = self.index(map, w);
        // SAFETY: as in `get`; `&mut FrameAllocator` at every writing call
        // site rules out concurrent access.
        unsafe { self.ptr.add(i).write(v) }
    }

    /// Calls `f(word, mask)` for the words covering bits `[start, start +
    /// len)`, stopping early when `f` returns false; returns whether it ran
    /// to the end.
    fn words_of(start: u64, len: u64, mut f: impl FnMut(usize, u64) -> bool) -> bool {
        let end = start + len;
        let mut i = start;
        while i < end {
            let w = i / 64;
            let lo = i % 64;
            let hi = (end - w * 64).min(64);
            let width = hi - lo;
            let mask = if width == 64 {
                !0
            } else {
                ((1u64 << width) - 1) << lo
            };
            if !f(w as usize, mask) {
                return false;
            }
            i = w * 64 + hi;
        }
        true
    }

    fn fill(&self, map: Map, start: u64, len: u64, value: bool) {
        Self::words_of(start, len, |w, m| {
            let old = self.get(map, w);
            self.set(map, w, if value { old | m } else { old & !m });
            true
        });
    }

    fn all_set(&self, map: Map, start: u64, len: u64) -> bool {
        Self::words_of(start, len, |w, m| self.get(map, w) & m == m)
    }

    fn any_set(&self, map: Map, start: u64, len: u64) -> bool {
        !Self::words_of(start, len, |w, m| self.get(map, w) & m == 0)
    }

    /// First set bit of `map` in `[from, to)`, skipping all-zero words.
    fn find_set(&self, map: Map, from: u64, to: u64) -> Option<u64> {
        if from >= to {
            return None;
        }
        let mut w = from / 64;
        let mut word = self.get(map, w as usize) & (!0u64 << (from % 64));
        loop {
            if word != 0 {
                let bit = w * 64 + u64::from(word.trailing_zeros());
                return (bit < to).then_some(bit);
            }
            w += 1;
            if w * 64 >= to {
                return None;
            }
            word = self.get(map, w as usize);
        }
    }

    /// Length of the run of set bits starting at `start`, capped at `max`
    /// and at `limit`.
    fn run_len(&self, map: Map, start: u64, max: u64, limit: u64) -> u64 {
        let mut n = 0;
        let mut i = start;
        while n < max && i < limit {
            let off = i % 64;
            let ones = u64::from((self.get(map, (i / 64) as usize) >> off).trailing_ones());
            let take = ones.min(max - n).min(limit - i);
            n += take;
            i += take;
            if take < 64 - off {
                break;
            }
        }
        n
    }
}

/// One bit per frame over `[min_pfn, max_pfn)`, allocated next-fit.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(Clone))]
pub struct FrameAllocator {
    /// Physical address of the free bitmap, immediately followed by the
    /// managed bitmap; each is `words` u64s.
    bitmap: PhysAddr,
    words: u64,
    min_pfn: u64,
    max_pfn: u64,
    /// Bit index where the next search starts. Next-fit spreads allocations
    /// instead of rescanning the same exhausted low words every time.
    cursor: u64,
    free: u64,
    total: u64,
}

impl FrameAllocator {
    /// Takes over every whole free page of `mb`.
    ///
    /// The bitmap comes from `mb.alloc`, so it is reserved before the free
    /// ranges are read and can never be handed out as a frame. `mb` keeps
    /// working afterwards, but memory it allocates later is not known to
    /// this allocator (and vice versa): stop allocating from memblock once
    /// this exists.
    pub fn from_memblock(mb: &mut Memblock, mem: &dyn PhysMemory) -> Result<Self, FrameError> {
        let (Some(first), Some(last)) = (mb.memory().first(), mb.memory().last()) else {
            return Err(FrameError::NoMemory);
        };
        let min_pfn = first.base.0.div_ceil(PAGE_SIZE);
        let max_pfn = last.end().0 / PAGE_SIZE;
        if max_pfn <= min_pfn {
            return Err(FrameError::NoMemory);
        }
        let words = (max_pfn - min_pfn).div_ceil(64);
        let bytes = (words * 2 * 8).next_multiple_of(PAGE_SIZE);
        let bitmap = mb.alloc(mem, bytes, PAGE_SIZE, PhysAddr(0))?;
        let mut fa = FrameAllocator {
            bitmap,
            words,
            min_pfn,
            max_pfn,
            cursor: 0,
            free: 0,
            total: 0,
        };
        let bits = fa.bits(mem);
        for w in 0..words as usize {
            bits.set(Map::Free, w, 0);
            bits.set(Map::Managed, w, 0);
        }
        for (s, e) in mb.free_ranges() {
            let (sp, ep) = (s.pfn().0, e.pfn().0);
            debug_assert!(min_pfn <= sp && ep <= max_pfn);
            bits.fill(Map::Free, sp - min_pfn, ep - sp, true);
            bits.fill(Map::Managed, sp - min_pfn, ep - sp, true);
            fa.total += ep - sp;
        }
        fa.free = fa.total;
        Ok(fa)
    }

    fn bits(&self, mem: &dyn PhysMemory) -> Bits {
        Bits {
            ptr: mem.phys_to_ptr(self.bitmap).cast::<u64>(),
            words: self.words as usize,
        }
    }

    fn nbits(&self) -> u64 {
        self.max_pfn - self.min_pfn
    }

    /// Up to `max` physically contiguous free frames (at least one), found
    /// next-fit; `None` when nothing is free or `max` is 0. Returning a
    /// shorter run rather than failing lets callers that merely prefer
    /// contiguity (page tables, DMA buffers split into chunks) make progress.
    pub fn alloc_run(&mut self, mem: &dyn PhysMemory, max: u64) -> Option<(Pfn, u64)> {
        if max == 0 || self.free == 0 {
            return None;
        }
        let bits = self.bits(mem);
        let n = self.nbits();
        let start = bits
            .find_set(Map::Free, self.cursor, n)
            .or_else(|| bits.find_set(Map::Free, 0, self.cursor))?;
        let len = bits.run_len(Map::Free, start, max, n);
        debug_assert!(len >= 1);
        bits.fill(Map::Free, start, len, false);
        self.free -= len;
        self.cursor = if start + len == n { 0 } else { start + len };
        Some((Pfn(self.min_pfn + start), len))
    }

    /// One free frame, next-fit.
    pub fn alloc(&mut self, mem: &dyn PhysMemory) -> Option<Pfn> {
        self.alloc_run(mem, 1).map(|(pfn, _)| pfn)
    }

    /// Returns `count` frames starting at `pfn`. The whole run is checked
    /// first, so a bad free (double, foreign, out of range) changes nothing
    /// and the allocator's own metadata can never be handed out.
    pub fn free_run(
        &mut self,
        mem: &dyn PhysMemory,
        pfn: Pfn,
        count: u64,
    ) -> Result<(), FrameError> {
        if count == 0 {
            return Ok(());
        }
        let start = pfn
            .0
            .checked_sub(self.min_pfn)
            .ok_or(FrameError::OutOfRange)?;
        match start.checked_add(count) {
            Some(end) if end <= self.nbits() => {}
            _ => return Err(FrameError::OutOfRange),
        }
        let bits = self.bits(mem);
        if !bits.all_set(Map::Managed, start, count) {
            return Err(FrameError::NotManaged);
        }
        if bits.any_set(Map::Free, start, count) {
            return Err(FrameError::AlreadyFree);
        }
        bits.fill(Map::Free, start, count, true);
        self.free += count;
        Ok(())
    }

    /// Whether `pfn` is currently free (false outside the span).
    pub fn is_free(&self, mem: &dyn PhysMemory, pfn: Pfn) -> bool {
        match pfn.0.checked_sub(self.min_pfn) {
            Some(i) if i < self.nbits() => self.bits(mem).all_set(Map::Free, i, 1),
            _ => false,
        }
    }

    /// The frames the bitmap covers, `[min, max)`; not all of them are
    /// managed.
    pub fn span(&self) -> (Pfn, Pfn) {
        (Pfn(self.min_pfn), Pfn(self.max_pfn))
    }

    /// Frames free right now.
    pub fn free_pages(&self) -> u64 {
        self.free
    }

    /// Frames ever handed in: free plus allocated.
    pub fn total_pages(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests;
