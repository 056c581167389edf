//! Frame descriptors: one compact `struct page` per frame (seed 0.1).
//!
//! 16 bytes instead of Linux's 64: list links are 32-bit indices into the
//! descriptor array rather than pointers (enough for 16 TiB of 4 KiB frames),
//! and only the fields the allocator uses exist. The array (`mem_map`) lives
//! in physical memory taken from memblock, reached through `PhysMemory`.
use crate::addr::{Pfn, PAGE_SIZE};
use crate::mmzone::MigrateType;

/// "No page": the end of a list.
pub const NIL: u32 = u32::MAX;

/// Never handed to the allocator (memblock-reserved, holes, the mem_map).
pub const PG_RESERVED: u8 = 1 << 0;
/// Head of a free block on a buddy free list; `order` is its order.
pub const PG_BUDDY: u8 = 1 << 1;
/// On a per-CPU list; `order` is its order.
pub const PG_PCP: u8 = 1 << 2;
/// Head of an allocated block; `order` is what was allocated, so a free of
/// the wrong order, a tail page or a free page is caught.
pub const PG_ALLOC: u8 = 1 << 3;
/// On a free block's head beside `PG_BUDDY`: the block was reported to the
/// hypervisor (free page reporting, `page_alloc::reporting`) and has stayed
/// free and unmerged since, so it need not be reported again. Taking the
/// block off its list clears it, as Linux's `del_page_from_free_list`
/// clears `PageReported`: whoever gets the block next (an allocation, a
/// merge into a bigger block, where it may become an inside page that must
/// carry no flags) has unreported memory.
pub const PG_REPORTED: u8 = 1 << 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub next: u32,
    pub prev: u32,
    /// References to an allocated block (1 after allocation).
    pub refcount: u32,
    pub flags: u8,
    pub order: u8,
    /// Migrate type of the list the block is on, or it was allocated as.
    pub mt: u8,
    /// Migrate type of the pageblock; valid on a pageblock's first page.
    pub pageblock_mt: u8,
}

impl Page {
    pub const RESERVED: Page = Page {
        next: NIL,
        prev: NIL,
        refcount: 0,
        flags: PG_RESERVED,
        order: 0,
        mt: 0,
        pageblock_mt: 0,
    };
    /// A page handed to the allocator, before it is put on any list.
    pub const FREE: Page = Page {
        flags: 0,
        ..Page::RESERVED
    };

    /// `flags` and `order` as one value, to test both with one compare.
    #[inline(always)]
    pub fn flags_order(&self) -> u64 {
        u16::from_le_bytes([self.flags, self.order]) as u64
    }

    /// [`Page::flags_order`] of the head of a block allocated with `order`
    /// (no descriptor has it for an order above 255).
    #[inline(always)]
    pub const fn allocated_head(order: usize) -> u64 {
        (order as u64) << 8 | PG_ALLOC as u64
    }

    pub fn migratetype(&self) -> MigrateType {
        MigrateType::from_index(self.mt as usize)
    }
}

/// The descriptor array for frames `[start_pfn, start_pfn + nr)`.
///
/// Descriptors are shared by every CPU, and which lock owns one changes
/// with the page's state (the zone lock for buddy pages, the CPU's per-CPU
/// lock for pages on its lists, the owner for an allocated page), so the
/// borrow checker cannot see who may write it: [`MemMap::at`] is `unsafe`
/// and each caller states which of those it holds. Everything safe here is
/// arithmetic on indices and never touches a descriptor.
pub struct MemMap {
    base: *mut Page,
    start_pfn: u64,
    nr: u64,
}

// SAFETY: the array is plain memory; access discipline is documented above
// and enforced by the allocator's locks.
unsafe impl Send for MemMap {}
// SAFETY: as above.
unsafe impl Sync for MemMap {}

pub const PAGE_DESC_SIZE: u64 = core::mem::size_of::<Page>() as u64;
const _: () = assert!(PAGE_DESC_SIZE == 16);

impl MemMap {
    /// # Safety
    /// `base` points to `nr` writable descriptors that nothing else uses,
    /// for as long as the MemMap lives.
    pub const unsafe fn new(base: *mut Page, start_pfn: u64, nr: u64) -> Self {
        MemMap {
            base,
            start_pfn,
            nr,
        }
    }

    /// Bytes of descriptors needed for `nr` frames, whole pages.
    pub const fn bytes_for(nr: u64) -> u64 {
        (nr * PAGE_DESC_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE
    }

    pub fn start_pfn(&self) -> u64 {
        self.start_pfn
    }
    pub fn end_pfn(&self) -> u64 {
        self.start_pfn + self.nr
    }
    pub fn contains(&self, pfn: u64) -> bool {
        pfn >= self.start_pfn && pfn < self.start_pfn + self.nr
    }

    /// Index of `pfn` in the array, if the array covers it (one compare).
    #[inline(always)]
    pub fn try_idx(&self, pfn: u64) -> Option<u32> {
        let i = pfn.wrapping_sub(self.start_pfn);
        (i < self.nr).then_some(i as u32)
    }

    /// Index of `pfn` in the array; the caller checked `contains`.
    #[inline(always)]
    pub fn idx(&self, pfn: u64) -> u32 {
        debug_assert!(self.contains(pfn));
        (pfn - self.start_pfn) as u32
    }
    #[inline(always)]
    pub fn pfn(&self, idx: u32) -> u64 {
        self.start_pfn + idx as u64
    }
    pub fn to_pfn(&self, idx: u32) -> Pfn {
        Pfn(self.pfn(idx))
    }

    /// Clears the flags of `n` descriptors from `idx` on (boot-time hand-off
    /// to the allocator; one bounds check for the whole run). `&mut self`:
    /// only the allocator's init, which owns the whole array, may do this.
    pub fn clear_flags(&mut self, idx: u32, n: u64) {
        assert!(idx as u64 + n <= self.nr, "descriptor range out of bounds");
        // SAFETY: in bounds (checked); `&mut self` is exclusive.
        for d in unsafe { core::slice::from_raw_parts_mut(self.base.add(idx as usize), n as usize) }
        {
            d.flags = 0;
        }
    }

    /// The descriptor at `idx`, without the bounds check, for the buddy
    /// merge loop, which checks each buddy against the zone's span (inside
    /// the map) anyway and would otherwise pay for both checks per level.
    ///
    /// # Safety
    /// `idx` is below the number of descriptors (checked in debug builds
    /// only), and [`MemMap::at`]'s exclusivity contract holds.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn at_unchecked(&self, idx: u32) -> &mut Page {
        debug_assert!((idx as u64) < self.nr, "page index out of range");
        // SAFETY: in bounds and exclusive (the caller's contract).
        unsafe { &mut *self.base.add(idx as usize) }
    }

    /// The descriptor at `idx` (panics when out of range).
    ///
    /// # Safety
    /// For as long as the returned reference lives, nothing else reads or
    /// writes this descriptor: the caller holds the lock that owns the page
    /// in its current state (the zone lock for a page on, or moving on or
    /// off, the buddy lists, and for any pageblock type; the CPU's per-CPU
    /// lock for a page on that CPU's lists), or owns the allocated block the
    /// page heads; and it keeps no other reference to the same descriptor.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn at(&self, idx: u32) -> &mut Page {
        assert!((idx as u64) < self.nr, "page index out of range");
        // SAFETY: in bounds (checked); exclusive per the caller's contract.
        unsafe { &mut *self.base.add(idx as usize) }
    }
}
