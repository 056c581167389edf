//! The buddy free lists of one zone: split, merge, and stealing between
//! migrate types (seed 2.2.1, 2.2.7, 3.3).
//!
//! Everything here runs under the zone lock and works on indices into the
//! descriptor array. A free block is its head page, flagged `PG_BUDDY`, on
//! the doubly linked list for its (order, migrate type).
//!
//! A [`Buddy`] exists only while its zone's lock is held (it borrows the
//! locked [`FreeArea`]), and the zone lock owns the descriptors of every
//! page on, or on its way onto or off, the zone's free lists, and every
//! pageblock type of the zone: that is the contract [`MemMap::at`] asks
//! for at each `// SAFETY:` below. Where the merge and split loops use
//! [`MemMap::at_unchecked`], the comment gives the bound instead: the
//! index lies in the zone's span `lo..hi`, which `Zone::set_map_span`
//! checked lies in the map.
use crate::gfp::AllocFlags;
use crate::mmzone::{
    MigrateType, MAX_ORDER, MIGRATE_TYPES, NR_ORDERS, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER,
};
use crate::page::{MemMap, NIL, PG_ALLOC, PG_BUDDY, PG_REPORTED, PG_RESERVED};

#[derive(Clone, Copy, Debug)]
pub struct FreeList {
    pub head: u32,
    pub tail: u32,
    pub count: u64,
}

impl FreeList {
    pub const EMPTY: FreeList = FreeList {
        head: NIL,
        tail: NIL,
        count: 0,
    };
}

/// What stealing did, for the caller's counters and watermark boost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StealOutcome {
    /// A block of another type was taken (an external-fragmentation event).
    pub fallback: bool,
    /// Pageblocks whose type changed.
    pub retyped: u32,
    /// The whole pageblock (or more) was taken.
    pub whole_block: bool,
}

/// A zone's free area, guarded by the zone lock.
pub struct FreeArea {
    pub lists: [[FreeList; MIGRATE_TYPES]; NR_ORDERS],
    /// Free blocks per order, all types.
    pub nr_free: [u64; NR_ORDERS],
    /// Pages in pageblocks reserved as HighAtomic.
    pub nr_reserved_highatomic: u64,
    /// Isolated pageblocks in the zone, so a merge need not look up two
    /// pageblock types when there are none ([NOT IN SEED]: Linux's
    /// `nr_isolate_pageblock` / `has_isolate_pageblock`). Kept by
    /// [`Buddy::set_pageblock_mt`], the only way a pageblock may be
    /// isolated or released.
    pub nr_isolate_pageblock: u64,
    /// Lock acquisitions, for the per-CPU-list checks (row 14).
    pub lock_acquisitions: u64,
    /// Frees that left a block of at least `reporting::PAGE_REPORTING_ORDER`
    /// on the lists: what may have made free page reporting worth a pass
    /// (Linux's `page_reporting_notify_free`). Reporting's own putbacks
    /// take theirs back.
    pub reportable_frees: u64,
    pub fallbacks: u64,
    pub steals_whole_block: u64,
    pub retypes: u64,
}

impl FreeArea {
    pub const EMPTY: FreeArea = FreeArea {
        lists: [[FreeList::EMPTY; MIGRATE_TYPES]; NR_ORDERS],
        nr_free: [0; NR_ORDERS],
        nr_reserved_highatomic: 0,
        nr_isolate_pageblock: 0,
        lock_acquisitions: 0,
        reportable_frees: 0,
        fallbacks: 0,
        steals_whole_block: 0,
        retypes: 0,
    };

    pub fn is_empty(&self, order: usize, mt: MigrateType) -> bool {
        self.lists[order][mt as usize].head == NIL
    }
}

/// The zone's free area together with what it needs to know about the zone.
///
/// Its fields are the crate's alone, as are the zone's free lists: the
/// unchecked descriptor accesses below rely on `lo..hi` lying in the map
/// and on every listed block lying in `lo..hi`, which only this crate's
/// code could break (a `Buddy` is made by `Zone::buddy` from the span
/// `Zone::set_map_span` checked).
pub struct Buddy<'a> {
    pub(crate) map: &'a MemMap,
    pub(crate) area: &'a mut FreeArea,
    /// The zone's span: buddies outside it are never merged.
    pub(crate) start_pfn: u64,
    pub(crate) end_pfn: u64,
    /// The same span as descriptor indices, `lo..hi`, inside the map.
    pub(crate) lo: u32,
    pub(crate) hi: u32,
    /// Grouping by mobility (seed 3.3.1); when off every block is Unmovable.
    pub(crate) grouping: bool,
}

impl Buddy<'_> {
    #[inline(always)]
    pub fn add(&mut self, idx: u32, order: usize, mt: MigrateType, tail: bool) {
        // SAFETY: under the zone lock (see the module doc).
        let p = unsafe { self.map.at(idx) };
        self.add_page(idx, p, order, mt, tail);
    }

    /// [`Self::add`] with the descriptor of `idx` already in hand.
    #[inline(always)]
    fn add_page(
        &mut self,
        idx: u32,
        p: &mut crate::page::Page,
        order: usize,
        mt: MigrateType,
        tail: bool,
    ) {
        // A block being freed is never reserved; whatever else it was
        // (allocated, cached) it is now a free head and nothing more.
        debug_assert!(p.flags & PG_RESERVED == 0);
        p.flags = PG_BUDDY;
        p.order = order as u8;
        p.mt = mt as u8;
        let l = &mut self.area.lists[order][mt as usize];
        let head = l.head;
        if head == NIL {
            p.next = NIL;
            p.prev = NIL;
            l.head = idx;
            l.tail = idx;
        } else if tail {
            p.next = NIL;
            p.prev = l.tail;
            // SAFETY: as above; the tail is another free block.
            unsafe { self.map.at(l.tail) }.next = idx;
            l.tail = idx;
        } else {
            p.prev = NIL;
            p.next = head;
            // SAFETY: as above; the head is another free block.
            unsafe { self.map.at(head) }.prev = idx;
            l.head = idx;
        }
        l.count += 1;
        self.area.nr_free[order] += 1;
    }

    /// Takes a free block off its list. Its links are left stale: only
    /// pages on a buddy list have meaningful ones.
    #[inline(always)]
    pub fn del(&mut self, idx: u32) {
        // SAFETY: under the zone lock (see the module doc).
        let p = unsafe { self.map.at(idx) };
        debug_assert!(p.flags & PG_BUDDY != 0);
        self.unlink(p);
    }

    /// Takes `idx`, the head of list (`order`, `mt`), off it: [`Self::del`]
    /// when the caller already knows the list, sparing the lookups.
    #[inline(always)]
    fn take_head(&mut self, idx: u32, order: usize, mt: MigrateType) {
        // SAFETY: under the zone lock (see the module doc).
        let p = unsafe { self.map.at(idx) };
        debug_assert!(p.flags & PG_BUDDY != 0 && p.order as usize == order && p.mt == mt as u8);
        let next = p.next;
        let l = &mut self.area.lists[order][mt as usize];
        debug_assert_eq!(l.head, idx);
        l.head = next;
        if next == NIL {
            l.tail = NIL;
        } else {
            // SAFETY: as above; the next block on the same list.
            unsafe { self.map.at(next) }.prev = NIL;
        }
        l.count -= 1;
        self.area.nr_free[order] -= 1;
        p.flags &= !(PG_BUDDY | PG_REPORTED);
    }

    #[inline(always)]
    fn unlink(&mut self, p: &mut crate::page::Page) {
        let (next, prev, order) = (p.next, p.prev, p.order as usize);
        let l = &mut self.area.lists[order][p.mt as usize];
        if prev == NIL {
            l.head = next;
        } else {
            // SAFETY: under the zone lock; a neighbour on the same list.
            unsafe { self.map.at(prev) }.next = next;
        }
        if next == NIL {
            l.tail = prev;
        } else {
            // SAFETY: as above.
            unsafe { self.map.at(next) }.prev = prev;
        }
        l.count -= 1;
        self.area.nr_free[order] -= 1;
        p.flags &= !(PG_BUDDY | PG_REPORTED);
    }

    fn move_to(&mut self, idx: u32, mt: MigrateType) {
        // SAFETY: under the zone lock (see the module doc).
        let order = unsafe { self.map.at(idx) }.order as usize;
        self.del(idx);
        self.add(idx, order, mt, false);
    }

    pub fn pageblock_mt(&self, pfn: u64) -> MigrateType {
        let start = pfn & !(PAGEBLOCK_NR_PAGES - 1);
        let idx = self.map.idx(start.max(self.map.start_pfn()));
        // SAFETY: pageblock types change only under the zone lock, held.
        MigrateType::from_index(unsafe { self.map.at(idx) }.pageblock_mt as usize)
    }

    /// [`Self::pageblock_mt`] of the block at descriptor index `idx`,
    /// which must lie in the zone (checked in debug builds).
    #[inline(always)]
    fn pageblock_mt_in_zone(&self, idx: u32) -> MigrateType {
        debug_assert!(idx.wrapping_sub(self.lo) < self.hi - self.lo);
        let head = idx & !(PAGEBLOCK_NR_PAGES as u32 - 1);
        // SAFETY: head <= idx < hi, inside the map; the callers pass blocks
        // of this zone (a merged block's head, or a buddy checked against
        // the span).
        MigrateType::from_index(unsafe { self.map.at_unchecked(head) }.pageblock_mt as usize)
    }

    pub fn set_pageblock_mt(&mut self, pfn: u64, mt: MigrateType) {
        let mt = if self.grouping || mt == MigrateType::Isolate {
            mt
        } else {
            MigrateType::Unmovable
        };
        let start = pfn & !(PAGEBLOCK_NR_PAGES - 1);
        let idx = self.map.idx(start.max(self.map.start_pfn()));
        // SAFETY: under the zone lock (see the module doc).
        let head = unsafe { self.map.at(idx) };
        let was_isolated = head.pageblock_mt == MigrateType::Isolate as u8;
        if was_isolated != (mt == MigrateType::Isolate) {
            if was_isolated {
                self.area.nr_isolate_pageblock -= 1;
            } else {
                self.area.nr_isolate_pageblock += 1;
            }
        }
        head.pageblock_mt = mt as u8;
    }

    /// Splits a block of order `high` at `idx` down to `low`, giving the
    /// upper halves back to the free lists (expand()).
    #[inline(always)]
    fn expand(&mut self, idx: u32, low: usize, mut high: usize, mt: MigrateType) {
        debug_assert!(idx >= self.lo && idx + (1u32 << high) <= self.hi);
        while high > low {
            high -= 1;
            self.add_split_piece(idx + (1u32 << high), high, mt);
        }
    }

    /// Puts a piece of a block being split at the head of its list.
    #[inline(always)]
    fn add_split_piece(&mut self, idx: u32, order: usize, mt: MigrateType) {
        debug_assert!(idx >= self.lo && idx + (1u32 << order) <= self.hi);
        // SAFETY: inside the block being split, which is inside the zone
        // and so inside the map.
        let p = unsafe { self.map.at_unchecked(idx) };
        // Inside a free block every descriptor is clear of flags.
        debug_assert_eq!(p.flags, 0);
        p.flags = PG_BUDDY;
        p.order = order as u8;
        p.mt = mt as u8;
        p.prev = NIL;
        let l = &mut self.area.lists[order][mt as usize];
        p.next = l.head;
        if l.head == NIL {
            l.tail = idx;
        } else {
            // SAFETY: under the zone lock; the head is another free block.
            unsafe { self.map.at(l.head) }.prev = idx;
        }
        l.head = idx;
        l.count += 1;
        self.area.nr_free[order] += 1;
    }

    /// Up to `n` blocks of `order` from `mt`'s own lists, handed to `take`
    /// in the order `n` calls of [`Self::rmqueue_smallest`] would return
    /// them, leaving the same free blocks behind; returns how many (fewer
    /// when the type's lists run dry: the caller falls back per block).
    ///
    /// Why it is the same: the smallest block of at least `order` has no
    /// smaller blocks of the type beside it, so the repeated calls would
    /// split it and take its pieces in address order until it is used up
    /// or `n` is reached, and what they leave of it is the aligned blocks
    /// covering the rest, which is what is put back here, without splitting
    /// level by level per block (rmqueue_bulk's batch, seed 2.2.5).
    #[inline]
    pub fn rmqueue_bulk(
        &mut self,
        order: usize,
        mt: MigrateType,
        n: u32,
        mut take: impl FnMut(u32, &mut crate::page::Page),
    ) -> u32 {
        let mut got = 0;
        while got < n {
            let Some(cur) = (order..NR_ORDERS).find(|&o| !self.area.is_empty(o, mt)) else {
                break;
            };
            let idx = self.area.lists[cur][mt as usize].head;
            self.take_head(idx, cur, mt);
            let pieces = 1u32 << (cur - order);
            let m = pieces.min(n - got);
            for i in 0..m {
                let piece = idx + (i << order);
                // SAFETY: inside the block just taken, inside the zone and
                // so inside the map.
                take(piece, unsafe { self.map.at_unchecked(piece) });
            }
            got += m;
            let (mut at, end) = (m << order, 1u32 << cur);
            while at < end {
                let o = at.trailing_zeros() as usize;
                self.add_split_piece(idx + at, o, mt);
                at += 1 << o;
            }
        }
        got
    }

    /// Takes the smallest free block of `mt` of at least `order`
    /// (__rmqueue_smallest).
    #[inline(always)]
    pub fn rmqueue_smallest(&mut self, order: usize, mt: MigrateType) -> Option<u32> {
        for cur in order..NR_ORDERS {
            let idx = self.area.lists[cur][mt as usize].head;
            if idx == NIL {
                continue;
            }
            self.take_head(idx, cur, mt);
            self.expand(idx, order, cur, mt);
            return Some(idx);
        }
        None
    }

    /// A free block of order `order` from `mt`, stealing from other types
    /// when its lists are empty (__rmqueue).
    pub fn rmqueue(
        &mut self,
        order: usize,
        mt: MigrateType,
        flags: AllocFlags,
    ) -> (Option<u32>, StealOutcome) {
        if let Some(i) = self.rmqueue_smallest(order, mt) {
            return (Some(i), StealOutcome::default());
        }
        if flags.has(AllocFlags::HIGHATOMIC) {
            if let Some(i) = self.rmqueue_smallest(order, MigrateType::HighAtomic) {
                return (Some(i), StealOutcome::default());
            }
        }
        let outcome = self.rmqueue_fallback(order, mt, flags);
        if !outcome.fallback {
            return (None, outcome);
        }
        (self.rmqueue_smallest(order, mt), outcome)
    }

    /// Whether a fallback block of `order` may be claimed, pageblock and
    /// all, for a `start` request: always for a pageblock or more (seed
    /// 3.3.2: whole pageblocks are retyped); the rest is [NOT IN SEED] — the
    /// seed says only that RECLAIMABLE steals more aggressively — and
    /// follows Linux's can_steal_fallback: a block of half a pageblock or
    /// more, any Unmovable or Reclaimable request (the types that pollute a
    /// pageblock anyway), and everything when grouping is off.
    fn can_steal(&self, order: usize, start: MigrateType) -> bool {
        order >= PAGEBLOCK_ORDER
            || order >= PAGEBLOCK_ORDER / 2
            || start == MigrateType::Reclaimable
            || start == MigrateType::Unmovable
            || !self.grouping
    }

    /// First fallback type with a free block of `order` (find_suitable_fallback).
    fn suitable_fallback(&self, order: usize, start: MigrateType) -> Option<(MigrateType, bool)> {
        start
            .fallbacks()
            .iter()
            .find(|&&f| !self.area.is_empty(order, f))
            .map(|&f| (f, self.can_steal(order, start)))
    }

    /// Steals from another type (seed 2.2.7, 3.3.2): search the fallback
    /// types from the highest order down, since the biggest block most likely
    /// has free neighbours worth claiming; but when the block could not be
    /// claimed whole for a movable request, take the smallest sufficient
    /// block instead of breaking up a large one for nothing. With
    /// ALLOC_NOFRAGMENT a small request only takes whole pageblocks.
    fn rmqueue_fallback(
        &mut self,
        order: usize,
        start: MigrateType,
        flags: AllocFlags,
    ) -> StealOutcome {
        let min_order = if order < PAGEBLOCK_ORDER && flags.has(AllocFlags::NOFRAGMENT) {
            PAGEBLOCK_ORDER
        } else {
            order
        };
        let mut found = None;
        let mut cur = MAX_ORDER as isize;
        while cur >= min_order as isize {
            let c = cur as usize;
            if let Some((f, can_steal)) = self.suitable_fallback(c, start) {
                if !can_steal && start == MigrateType::Movable && c > order {
                    // find_smallest
                    found = (order..NR_ORDERS)
                        .find_map(|o| self.suitable_fallback(o, start).map(|(f, s)| (o, f, s)));
                } else {
                    found = Some((c, f, can_steal));
                }
                break;
            }
            cur -= 1;
        }
        let Some((cur, fallback_mt, can_steal)) = found else {
            return StealOutcome::default();
        };
        let idx = self.area.lists[cur][fallback_mt as usize].head;
        let mut out = StealOutcome {
            fallback: true,
            ..Default::default()
        };
        self.steal_suitable_fallback(idx, cur, start, can_steal, &mut out);
        self.area.fallbacks += 1;
        if out.whole_block {
            self.area.steals_whole_block += 1;
        }
        self.area.retypes += out.retyped as u64;
        out
    }

    /// steal_suitable_fallback: a block of a pageblock or more retypes every
    /// pageblock it covers; otherwise, if allowed, move the pageblock's free
    /// pages to the new type and retype it when at least half of it is free
    /// or already used by the new type (Linux counts "alike" pages too; the
    /// seed's summary says "more than half of it is free").
    fn steal_suitable_fallback(
        &mut self,
        idx: u32,
        order: usize,
        start: MigrateType,
        whole: bool,
        out: &mut StealOutcome,
    ) {
        let pfn = self.map.pfn(idx);
        let old = self.pageblock_mt(pfn);
        if old == MigrateType::HighAtomic {
            self.move_to(idx, start);
            return;
        }
        if order >= PAGEBLOCK_ORDER {
            let blocks = 1u64 << (order - PAGEBLOCK_ORDER);
            for b in 0..blocks {
                self.set_pageblock_mt(pfn + b * PAGEBLOCK_NR_PAGES, start);
            }
            out.retyped += blocks as u32;
            out.whole_block = true;
            self.move_to(idx, start);
            return;
        }
        if !whole {
            self.move_to(idx, start);
            return;
        }
        let (free, alike) = self.move_freepages_block(pfn, start);
        if free + alike >= PAGEBLOCK_NR_PAGES / 2 || !self.grouping {
            self.set_pageblock_mt(pfn, start);
            out.retyped += 1;
        }
        // The block we found was moved with the rest of its pageblock.
        // SAFETY: under the zone lock (see the module doc).
        if unsafe { self.map.at(idx) }.mt != start as u8 {
            self.move_to(idx, start);
        }
    }

    /// Moves every free block of the pageblock holding `pfn` to `mt`'s
    /// lists; returns (free pages moved, allocated pages already of `mt`).
    pub fn move_freepages_block(&mut self, pfn: u64, mt: MigrateType) -> (u64, u64) {
        let start = (pfn & !(PAGEBLOCK_NR_PAGES - 1)).max(self.start_pfn);
        let end = ((pfn & !(PAGEBLOCK_NR_PAGES - 1)) + PAGEBLOCK_NR_PAGES).min(self.end_pfn);
        let (mut free, mut alike) = (0, 0);
        let mut p = start;
        while p < end {
            let idx = self.map.idx(p);
            // SAFETY: under the zone lock; an allocated page's descriptor
            // is only read (its owner may be writing `refcount`, which this
            // does not use).
            let page = *unsafe { self.map.at(idx) };
            let span = 1u64 << page.order;
            if page.flags & PG_BUDDY != 0 {
                if page.mt != mt as u8 {
                    self.move_to(idx, mt);
                }
                free += span;
                p += span;
            } else if page.flags & PG_ALLOC != 0 {
                if page.mt == mt as u8 {
                    alike += span;
                }
                p += span;
            } else {
                p += 1;
            }
        }
        (free, alike)
    }

    /// reserve_highatomic_pageblock: after a high-order atomic allocation
    /// succeeded, keep its pageblock for later ones, up to about 1% of the
    /// zone ([NOT IN SEED]: the seed names MIGRATE_HIGHATOMIC only; the rule
    /// is Linux's).
    pub fn reserve_highatomic(&mut self, pfn: u64, managed: u64) -> bool {
        let max = managed / 100 + PAGEBLOCK_NR_PAGES;
        if self.area.nr_reserved_highatomic >= max {
            return false;
        }
        let mt = self.pageblock_mt(pfn);
        if mt == MigrateType::HighAtomic || mt == MigrateType::Isolate {
            return false;
        }
        self.area.nr_reserved_highatomic += PAGEBLOCK_NR_PAGES;
        self.set_pageblock_mt(pfn, MigrateType::HighAtomic);
        self.move_freepages_block(pfn, MigrateType::HighAtomic);
        true
    }

    /// unreserve_highatomic_pageblock: hands a reserved pageblock to `mt`
    /// when memory runs short; keeps the last one unless `force` (just
    /// before giving up on an allocation).
    pub fn unreserve_highatomic(&mut self, mt: MigrateType, force: bool) -> bool {
        if !force && self.area.nr_reserved_highatomic <= PAGEBLOCK_NR_PAGES {
            return false;
        }
        for order in 0..NR_ORDERS {
            let idx = self.area.lists[order][MigrateType::HighAtomic as usize].head;
            if idx == NIL {
                continue;
            }
            let pfn = self.map.pfn(idx);
            if self.pageblock_mt(pfn) == MigrateType::HighAtomic {
                self.area.nr_reserved_highatomic = self
                    .area
                    .nr_reserved_highatomic
                    .saturating_sub(PAGEBLOCK_NR_PAGES);
                self.set_pageblock_mt(pfn, mt);
            }
            self.move_freepages_block(pfn, mt);
            return true;
        }
        false
    }

    /// Frees a block, merging with its buddy while the buddy is free and of
    /// the same order (seed 2.2.1: pfn ^ (1 << order)). Works on descriptor
    /// indices, which are pfns less the map's MAX_ORDER-aligned start, so
    /// the buddy is the same one bit away.
    #[inline(always)]
    pub fn free_one(&mut self, idx: u32, order: usize, mt: MigrateType) {
        self.free_one_at(idx, order, mt, false);
    }

    /// [`Self::free_one`], the block queued at the tail of its free list
    /// when `to_tail` (Linux's FPI_TO_TAIL: allocations take the head, so
    /// it is handed out last).
    #[inline(always)]
    pub fn free_one_at(&mut self, idx: u32, order: usize, mt: MigrateType, to_tail: bool) {
        assert!(order <= MAX_ORDER, "free of order {order}");
        let (lo, span) = (self.lo, self.hi - self.lo);
        assert!(
            idx.wrapping_sub(lo) < span,
            "free of a block outside the zone"
        );
        // Whatever marked the block (allocated, cached on a per-CPU list)
        // goes: if it merges as the upper half it becomes the inside of a
        // free block, whose descriptors carry no flags.
        // SAFETY: in the zone (checked above), which lies inside the map.
        unsafe { self.map.at_unchecked(idx) }.flags = 0;
        let mut idx = idx;
        let mut order = order;
        while order < MAX_ORDER {
            let buddy = idx ^ (1u32 << order);
            if buddy.wrapping_sub(lo) >= span {
                break; // outside the zone: never merged
            }
            // SAFETY: lo <= buddy < hi, and the zone lies inside the map
            // (checked when this Buddy was made).
            let b = unsafe { self.map.at_unchecked(buddy) };
            // Exactly PG_BUDDY (reported or not): a free block head, not
            // reserved, not cached. A reported buddy merges: the merged
            // block is unreported (`unlink` clears the mark).
            if b.flags & !PG_REPORTED != PG_BUDDY || b.order as usize != order {
                break;
            }
            // Never merge an isolated pageblock into a usable one.
            if order >= PAGEBLOCK_ORDER
                && self.area.nr_isolate_pageblock != 0
                && self.isolation_differs(idx, buddy)
            {
                break;
            }
            self.unlink(b);
            idx &= !(1u32 << order);
            order += 1;
        }
        // Blocks of a pageblock or more go to the lists of their pageblock's
        // type; smaller ones to the type they were freed as.
        let mt = if order >= PAGEBLOCK_ORDER {
            self.pageblock_mt_in_zone(idx)
        } else {
            mt
        };
        // Likely to merge further soon if the next-higher buddy is free: put
        // it at the tail so it is not handed out first (buddy_merge_likely).
        let tail = to_tail
            || order < MAX_ORDER - 1 && {
                let higher = (idx & !((2u32 << order) - 1)) ^ (2u32 << order);
                // SAFETY: checked against the zone span as above.
                higher.wrapping_sub(lo) < span
                    && unsafe { self.map.at_unchecked(higher) }.flags & PG_BUDDY != 0
            };
        // SAFETY: the merged block's head is the freed block's or a buddy's
        // that was checked against the zone span.
        let p = unsafe { self.map.at_unchecked(idx) };
        self.add_page(idx, p, order, mt, tail);
        if order >= super::reporting::PAGE_REPORTING_ORDER {
            self.area.reportable_frees += 1;
        }
    }

    fn isolation_differs(&self, a: u32, b: u32) -> bool {
        let (a, b) = (self.pageblock_mt_in_zone(a), self.pageblock_mt_in_zone(b));
        (a == MigrateType::Isolate) != (b == MigrateType::Isolate)
    }
}
