//! Early-boot physical memory bookkeeping.
//!
//! Before any real allocator exists the kernel still has to know which RAM
//! exists, which parts are taken (kernel image, firmware tables, its own
//! early allocations), and has to hand out a few blocks. Two sorted lists of
//! ranges, `memory` and `reserved`, answer all three questions cheaply and
//! need no heap: the free memory is simply `memory` minus `reserved`.
//!
//! The lists start in fixed arrays inside [`Memblock`] so it can live in a
//! `static` before anything is mapped. Firmware memory maps are usually
//! short, but some are not, so a full list is moved to a twice-as-large array
//! carved out of the very memory being described.

use core::{fmt, mem::size_of, ptr, slice};

use crate::addr::{align_down, align_up, PhysAddr, PAGE_SIZE};
use crate::phys::PhysMemory;

/// Regions each list holds before it has to grow; the same starting point as
/// Linux, which is plenty for typical firmware maps.
pub const INIT_REGIONS: usize = 128;

/// A half-open physical range `[base, base + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte of the range.
    pub base: PhysAddr,
    /// Length in bytes; never zero inside a [`Memblock`] list.
    pub size: u64,
}

impl Region {
    const EMPTY: Region = Region {
        base: PhysAddr(0),
        size: 0,
    };

    /// One past the last byte. Regions stored in a [`Memblock`] never wrap,
    /// because ranges whose end overflows are rejected on the way in.
    pub const fn end(&self) -> PhysAddr {
        PhysAddr(self.base.0 + self.size)
    }
}

/// Why a memblock operation was refused. The requested change is not made;
/// see `Memblock::grow` for the one side effect a failure can leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemblockError {
    /// `base + size` does not fit in 64 bits.
    Overflow,
    /// An alignment that is not a power of two.
    InvalidAlign,
    /// A zero-byte allocation, which has no sensible address to return.
    InvalidSize,
    /// No free range satisfies the allocation.
    NoMemory,
    /// A region list is full and no free memory is left to grow it into.
    NoRegionSpace,
}

impl fmt::Display for MemblockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemblockError::Overflow => "physical range wraps past 2^64",
            MemblockError::InvalidAlign => "alignment is not a power of two",
            MemblockError::InvalidSize => "zero-sized allocation",
            MemblockError::NoMemory => "no free memory satisfies the request",
            MemblockError::NoRegionSpace => "region list full and cannot grow",
        })
    }
}

/// One sorted list of non-overlapping, non-adjacent regions.
///
/// Adjacent ranges are always merged so that "is this list minimal" has one
/// answer and growth is only needed for genuinely separate ranges.
struct RegionList {
    inline: [Region; INIT_REGIONS],
    /// Grown storage in physical memory, or null while `inline` is used.
    /// Always `cap` initialized entries.
    ext: *mut Region,
    /// Physical address of `ext`, needed to release it from `reserved`.
    ext_pa: PhysAddr,
    cap: usize,
    len: usize,
}

impl RegionList {
    const fn new() -> Self {
        RegionList {
            inline: [Region::EMPTY; INIT_REGIONS],
            ext: ptr::null_mut(),
            ext_pa: PhysAddr(0),
            cap: INIT_REGIONS,
            len: 0,
        }
    }

    fn storage(&self) -> &[Region] {
        if self.ext.is_null() {
            &self.inline
        } else {
            // SAFETY: `ext` was installed by `switch_to`, which initialized
            // all `cap` entries in memory that stays reserved (hence unused
            // by anyone else) for as long as it is installed; `&self` keeps
            // this list from being mutated while the slice lives.
            unsafe { slice::from_raw_parts(self.ext, self.cap) }
        }
    }

    fn storage_mut(&mut self) -> &mut [Region] {
        if self.ext.is_null() {
            &mut self.inline
        } else {
            // SAFETY: as in `storage`; `&mut self` makes the access unique.
            unsafe { slice::from_raw_parts_mut(self.ext, self.cap) }
        }
    }

    fn as_slice(&self) -> &[Region] {
        &self.storage()[..self.len]
    }

    /// Indices `[i, j)` of the regions that overlap or touch `[base, end)`,
    /// i.e. the ones a merging insert would swallow.
    fn touching(&self, base: u64, end: u64) -> (usize, usize) {
        let r = self.as_slice();
        (
            r.partition_point(|x| x.end().0 < base),
            r.partition_point(|x| x.base.0 <= end),
        )
    }

    /// Whether inserting `[base, end)` adds a region rather than widening one.
    fn needs_slot(&self, base: u64, end: u64) -> bool {
        let (i, j) = self.touching(base, end);
        i == j
    }

    /// Replaces regions `i..j` with `new`; false (and no change) if the
    /// result would not fit.
    fn splice(&mut self, i: usize, j: usize, new: &[Region]) -> bool {
        let len = self.len;
        let new_len = len - (j - i) + new.len();
        if new_len > self.cap {
            return false;
        }
        let s = self.storage_mut();
        s.copy_within(j..len, i + new.len());
        s[i..i + new.len()].copy_from_slice(new);
        self.len = new_len;
        true
    }

    /// Adds `[base, end)`, merging everything it overlaps or touches.
    fn merge_in(&mut self, base: u64, end: u64) -> bool {
        let (i, j) = self.touching(base, end);
        let (lo, hi) = if i == j {
            (base, end)
        } else {
            let r = self.as_slice();
            (base.min(r[i].base.0), end.max(r[j - 1].end().0))
        };
        let merged = Region {
            base: PhysAddr(lo),
            size: hi - lo,
        };
        self.splice(i, j, &[merged])
    }

    /// Removes `[base, end)`; may split one region in two, so it can need a
    /// free slot.
    fn cut_out(&mut self, base: u64, end: u64) -> bool {
        let r = self.as_slice();
        let i = r.partition_point(|x| x.end().0 <= base);
        let j = r.partition_point(|x| x.base.0 < end);
        if i >= j {
            return true;
        }
        let mut pieces = [Region::EMPTY; 2];
        let mut n = 0;
        if r[i].base.0 < base {
            pieces[n] = Region {
                base: r[i].base,
                size: base - r[i].base.0,
            };
            n += 1;
        }
        let last_end = r[j - 1].end().0;
        if last_end > end {
            pieces[n] = Region {
                base: PhysAddr(end),
                size: last_end - end,
            };
            n += 1;
        }
        self.splice(i, j, &pieces[..n])
    }

    /// Moves the list into `new` and returns the previous grown storage as
    /// `(base, end)` so the caller can release it.
    ///
    /// # Safety
    ///
    /// `new` must be valid for writes of `new_cap >= self.len` regions,
    /// aligned, disjoint from the current storage, and stay exclusively
    /// owned by this list until it is replaced.
    unsafe fn switch_to(
        &mut self,
        new: *mut Region,
        new_pa: PhysAddr,
        new_cap: usize,
    ) -> Option<(u64, u64)> {
        let len = self.len;
        // SAFETY: the caller guarantees `new` is writable for `new_cap >=
        // len` entries and disjoint from the current storage, which holds
        // `len` initialized entries.
        unsafe { ptr::copy_nonoverlapping(self.storage().as_ptr(), new, len) };
        for k in len..new_cap {
            // SAFETY: `k < new_cap`, inside the caller-guaranteed range;
            // filling the tail keeps every entry initialized, which
            // `storage` relies on.
            unsafe { new.add(k).write(Region::EMPTY) };
        }
        let old = (!self.ext.is_null()).then(|| {
            let start = self.ext_pa.0;
            (start, start + region_array_bytes(self.cap))
        });
        self.ext = new;
        self.ext_pa = new_pa;
        self.cap = new_cap;
        old
    }
}

/// Bytes reserved for a grown array of `cap` regions: whole pages, so the
/// array never shares a page with memory that is later freed page-wise.
fn region_array_bytes(cap: usize) -> u64 {
    let raw = (cap * size_of::<Region>()) as u64;
    raw.next_multiple_of(PAGE_SIZE)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Reserved,
}

/// The early-boot view of physical memory: what exists and what is taken.
pub struct Memblock {
    memory: RegionList,
    reserved: RegionList,
}

// SAFETY: the only non-`Send` parts are the grown-array pointers, which point
// at physical memory this `Memblock` has reserved for itself and which no
// other code touches, so moving the owner to another CPU is fine.
unsafe impl Send for Memblock {}
// SAFETY: `&Memblock` only allows reading the lists; there is no interior
// mutability, so shared access from several CPUs cannot race.
unsafe impl Sync for Memblock {}

impl Default for Memblock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Memblock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memblock")
            .field("memory", &self.memory())
            .field("reserved", &self.reserved())
            .finish()
    }
}

/// Validates `[base, base + size)`: `Ok(None)` for an empty range, which
/// every operation treats as a no-op.
fn checked_range(base: PhysAddr, size: u64) -> Result<Option<(u64, u64)>, MemblockError> {
    let end = base.0.checked_add(size).ok_or(MemblockError::Overflow)?;
    Ok((size != 0).then_some((base.0, end)))
}

impl Memblock {
    /// An empty memblock; `const` so it can be a `static` initialized before
    /// any code runs.
    pub const fn new() -> Self {
        Memblock {
            memory: RegionList::new(),
            reserved: RegionList::new(),
        }
    }

    /// Declares `[base, base + size)` as RAM.
    ///
    /// # Safety
    ///
    /// Unreserved parts of added memory are handed to guest-mm, which writes
    /// its own metadata there (grown region arrays, bitmaps) through `mem`.
    /// So the range must be RAM reachable through every [`PhysMemory`]
    /// passed to this `Memblock`, and anything live inside it (the kernel
    /// image, this `Memblock` itself, boot data) must be reserved before this
    /// call: growing a full list may place the new array in any unreserved
    /// memory.
    pub unsafe fn add(
        &mut self,
        mem: &dyn PhysMemory,
        base: PhysAddr,
        size: u64,
    ) -> Result<(), MemblockError> {
        match checked_range(base, size)? {
            Some((b, e)) => self.insert(mem, Kind::Memory, b, e),
            None => Ok(()),
        }
    }

    /// Marks `[base, base + size)` as in use. The range need not be inside
    /// `memory`: firmware often reports tables in holes, and reserving them
    /// up front keeps a later `add` of that range from freeing them.
    pub fn reserve(
        &mut self,
        mem: &dyn PhysMemory,
        base: PhysAddr,
        size: u64,
    ) -> Result<(), MemblockError> {
        match checked_range(base, size)? {
            Some((b, e)) => self.insert(mem, Kind::Reserved, b, e),
            None => Ok(()),
        }
    }

    /// Bottom-up first fit in memory minus reserved, at or above `min`,
    /// aligned to `align`; the result is reserved. Bottom-up keeps early
    /// allocations out of the high memory later wanted for large contiguous
    /// buffers.
    pub fn alloc(
        &mut self,
        mem: &dyn PhysMemory,
        size: u64,
        align: u64,
        min: PhysAddr,
    ) -> Result<PhysAddr, MemblockError> {
        if size == 0 {
            return Err(MemblockError::InvalidSize);
        }
        if !align.is_power_of_two() {
            return Err(MemblockError::InvalidAlign);
        }
        let pa = self
            .find_free(size, align, min.0, (0, 0))
            .ok_or(MemblockError::NoMemory)?;
        self.insert(mem, Kind::Reserved, pa, pa + size)?;
        Ok(PhysAddr(pa))
    }

    /// All RAM, sorted, merged.
    pub fn memory(&self) -> &[Region] {
        self.memory.as_slice()
    }

    /// All reservations, sorted, merged (including memblock's own arrays).
    pub fn reserved(&self) -> &[Region] {
        self.reserved.as_slice()
    }

    /// Free memory, shrunk inward to whole pages, because the page
    /// allocator hands out pages and a page that is partly reserved is not
    /// free.
    pub fn free_ranges(&self) -> FreeRanges<'_> {
        FreeRanges {
            raw: RawFree::new(self.memory(), self.reserved()),
        }
    }

    /// Whole pages of RAM.
    pub fn total_pages(&self) -> u64 {
        self.memory()
            .iter()
            .map(|r| whole_pages(r.base.0, r.end().0))
            .sum()
    }

    /// Whole free pages: what a page allocator built now would manage.
    pub fn free_pages(&self) -> u64 {
        self.free_ranges()
            .map(|(s, e)| (e.0 - s.0) / PAGE_SIZE)
            .sum()
    }

    fn list(&mut self, kind: Kind) -> &mut RegionList {
        match kind {
            Kind::Memory => &mut self.memory,
            Kind::Reserved => &mut self.reserved,
        }
    }

    /// Merging insert that grows the list first if the range needs a new
    /// slot and none is left.
    fn insert(
        &mut self,
        mem: &dyn PhysMemory,
        kind: Kind,
        base: u64,
        end: u64,
    ) -> Result<(), MemblockError> {
        let list = self.list(kind);
        if list.len == list.cap && list.needs_slot(base, end) {
            // The range being inserted is not in the lists yet, so the new
            // array must be kept from landing on it.
            self.grow(mem, kind, (base, end))?;
        }
        let inserted = self.list(kind).merge_in(base, end);
        debug_assert!(inserted, "grow guarantees a free slot");
        if inserted {
            Ok(())
        } else {
            Err(MemblockError::NoRegionSpace)
        }
    }

    /// Doubles list `kind`, placing the new array in free memory outside
    /// `avoid`, reserving it and releasing the previous grown array.
    ///
    /// Growing `memory` needs up to two `reserved` slots (the new array may
    /// add one region, releasing the old one may split one), so `reserved`
    /// is grown first when short; growing `reserved` itself always leaves
    /// room. Everything that can fail happens before the switch, so an error
    /// leaves the lists' contents unchanged, except that `reserved` may
    /// already have grown (and reserved its new array) when growing `memory`
    /// then finds no space.
    fn grow(
        &mut self,
        mem: &dyn PhysMemory,
        kind: Kind,
        avoid: (u64, u64),
    ) -> Result<(), MemblockError> {
        if kind == Kind::Memory && self.reserved.len + 2 > self.reserved.cap {
            self.grow(mem, Kind::Reserved, avoid)?;
        }
        let new_cap = self
            .list(kind)
            .cap
            .checked_mul(2)
            .ok_or(MemblockError::NoRegionSpace)?;
        let bytes = region_array_bytes(new_cap);
        let pa = self
            .find_free(bytes, PAGE_SIZE, 0, avoid)
            .ok_or(MemblockError::NoRegionSpace)?;
        let new = mem.phys_to_ptr(PhysAddr(pa)).cast::<Region>();
        debug_assert!(new.is_aligned());
        // SAFETY: `[pa, pa + bytes)` lies in added memory and outside
        // `reserved`, so by `add`'s contract nothing else uses it, and by
        // `PhysMemory`'s contract `new` is valid and 8-aligned (page-aligned
        // `pa`) for `new_cap` regions. It is disjoint from the current
        // storage: grown storage is reserved, and the inline array is part of
        // this `Memblock`, which `add`'s contract requires to be reserved.
        // It is reserved below before `&mut self` is released.
        let old = unsafe { self.list(kind).switch_to(new, PhysAddr(pa), new_cap) };
        let reserved_new = self.reserved.merge_in(pa, pa + bytes);
        assert!(reserved_new, "reserved room was ensured above");
        if let Some((s, e)) = old {
            let released = self.reserved.cut_out(s, e);
            assert!(released, "reserved room was ensured above");
        }
        Ok(())
    }

    /// Lowest aligned `size`-byte block in free memory at or above `min`
    /// that does not intersect `avoid`.
    fn find_free(&self, size: u64, align: u64, min: u64, avoid: (u64, u64)) -> Option<u64> {
        for (s, e) in RawFree::new(self.memory(), self.reserved()) {
            let s = s.max(min);
            for (ps, pe) in [(s, e.min(avoid.0)), (s.max(avoid.1), e)] {
                if ps >= pe {
                    continue;
                }
                let Some(a) = align_up(ps, align) else {
                    continue;
                };
                if a.checked_add(size).is_some_and(|end| end <= pe) {
                    return Some(a);
                }
            }
        }
        None
    }
}

/// Pages lying entirely inside `[start, end)`.
fn whole_pages(start: u64, end: u64) -> u64 {
    match (align_up(start, PAGE_SIZE), align_down(end, PAGE_SIZE)) {
        (Some(s), Some(e)) if s < e => (e - s) / PAGE_SIZE,
        _ => 0,
    }
}

/// Byte-exact `memory` minus `reserved`, in address order.
///
/// A single merge walk over both sorted lists: linear, no allocation.
struct RawFree<'a> {
    memory: &'a [Region],
    reserved: &'a [Region],
    mi: usize,
    ri: usize,
    /// Everything below this address has been reported or is reserved.
    cursor: u64,
}

impl<'a> RawFree<'a> {
    fn new(memory: &'a [Region], reserved: &'a [Region]) -> Self {
        RawFree {
            memory,
            reserved,
            mi: 0,
            ri: 0,
            cursor: 0,
        }
    }
}

impl Iterator for RawFree<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        loop {
            let m = self.memory.get(self.mi)?;
            let start = m.base.0.max(self.cursor);
            let mend = m.end().0;
            if start >= mend {
                self.mi += 1;
                continue;
            }
            while self
                .reserved
                .get(self.ri)
                .is_some_and(|r| r.end().0 <= start)
            {
                self.ri += 1;
            }
            match self.reserved.get(self.ri) {
                // `start` is inside a reservation: skip past it.
                Some(r) if r.base.0 <= start => self.cursor = r.end().0,
                Some(r) if r.base.0 < mend => {
                    self.cursor = r.end().0;
                    return Some((start, r.base.0));
                }
                _ => {
                    self.cursor = mend;
                    self.mi += 1;
                    return Some((start, mend));
                }
            }
        }
    }
}

/// Free ranges shrunk to whole pages, as `(start, end)` with both ends
/// page-aligned and `start < end`.
pub struct FreeRanges<'a> {
    raw: RawFree<'a>,
}

impl Iterator for FreeRanges<'_> {
    type Item = (PhysAddr, PhysAddr);

    fn next(&mut self) -> Option<(PhysAddr, PhysAddr)> {
        for (s, e) in self.raw.by_ref() {
            if let (Some(s), Some(e)) = (align_up(s, PAGE_SIZE), align_down(e, PAGE_SIZE)) {
                if s < e {
                    return Some((PhysAddr(s), PhysAddr(e)));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
