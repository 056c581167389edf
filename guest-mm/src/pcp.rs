//! Per-CPU page lists (seed 2.2.5): order ≤ 3 allocations and frees go
//! through a small per-CPU cache per zone, so the zone lock is taken once per
//! `batch` pages instead of once per page.
//!
//! Lists are kept per (order, migrate type) as Linux 5.14 does, allocated
//! from and freed to the head (hot), bulk-freed from the tail (cold). A
//! CPU's lists are guarded by one lock per CPU that its owner holds while it
//! allocates (see `page_alloc::CpuPages`), which lets another CPU drain them
//! without any work from the owner, even when that vCPU is halted.
use crate::mmzone::{MigrateType, MIGRATE_PCPTYPES, PAGE_ALLOC_COSTLY_ORDER};
use crate::page::{MemMap, PG_PCP};

pub const NR_PCP_LISTS: usize = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER + 1);
/// [seed 2.2.5.5] batch never exceeds PAGE_SHIFT · 8.
pub const PCP_BATCH_CAP: u32 = 12 * 8;
/// Adaptive freeing doubles at most this many times in a row.
const MAX_FREE_FACTOR: u32 = 5;

/// Orders that use the per-CPU lists (pcp_allowed_order).
#[inline(always)]
pub const fn pcp_allowed_order(order: usize) -> bool {
    order <= PAGE_ALLOC_COSTLY_ORDER
}

#[inline(always)]
pub const fn order_to_pindex(mt: MigrateType, order: usize) -> usize {
    order * MIGRATE_PCPTYPES + mt as usize
}

/// Batch size, static per zone. The seed (2.2.5.5) gives the default, 31,
/// and the cap, PAGE_SHIFT · 8; the formula is [NOT IN SEED] and follows
/// Linux's zone_batchsize: about a quarter of a thousandth of the zone, at
/// most 1 MiB's worth before the quarter, made 2^n - 1 to spread cache
/// colours, capped at PAGE_SHIFT · 8. It gives the seed's 31 for a 512 MiB
/// zone and 63 (the 1 MiB cap) from 1 GiB.
pub fn zone_batchsize(managed_pages: u64) -> u32 {
    let mut b = managed_pages / 1024;
    if b > 256 {
        b = 256; // 1 MiB of 4 KiB pages
    }
    b /= 4;
    if b < 1 {
        b = 1;
    }
    let b = b + b / 2;
    let pow2 = 1u64 << (63 - b.leading_zeros());
    ((pow2 - 1).max(1) as u32).min(PCP_BATCH_CAP)
}

/// High mark. The seed (2.2.5.5) says only that since 5.14 it scales with
/// the zone's size and its local CPUs (its default of 6 · batch = 186
/// predates that); the formula is [NOT IN SEED] and follows Linux 5.14's
/// zone_highsize: the low watermark split among the node's CPUs, at least
/// four batches. Grows with the zone, shrinks with the number of CPUs
/// sharing it.
pub fn zone_highsize(low_wmark: u64, batch: u32, local_cpus: u32) -> u32 {
    let per_cpu = low_wmark / local_cpus.max(1) as u64;
    (per_cpu.min(u32::MAX as u64) as u32).max(batch * 4)
}

/// One list: a ring of descriptor indices, newest (hot) at the top. A ring
/// rather than Linux's intrusive list so that pushing and popping touch only
/// the page's own descriptor and this ring, the shape of the `Vec` bound the
/// benchmark compares against; the bottom still holds the coldest page for
/// bulk freeing. `top` and `bottom` run freely (wrapping) and are masked
/// only to index, so the length is their difference and a pop or push
/// moves one of them.
#[derive(Clone, Copy)]
pub struct PcpList {
    /// This list's ring (null: no storage).
    ring: *mut u32,
    /// Ring size less one (the size is a power of two); unused without
    /// storage.
    mask: u32,
    /// One past the hottest entry.
    top: u32,
    /// The coldest entry.
    bottom: u32,
    /// `bottom` plus the ring size: `top` reaching it means full (a list
    /// without storage is always full), so a push tests one pair.
    end: u32,
}

impl PcpList {
    /// Where this list's ring lies: its first entry and its size (for the
    /// tests that check the allocator's own memory).
    #[cfg(test)]
    pub(crate) fn ring_span(&self) -> (*const u32, usize) {
        let n = if self.ring.is_null() {
            0
        } else {
            self.mask as usize + 1
        };
        (self.ring, n)
    }

    const EMPTY: PcpList = PcpList {
        ring: core::ptr::null_mut(),
        mask: 0,
        top: 0,
        bottom: 0,
        end: 0,
    };
    #[inline(always)]
    pub fn len(&self) -> u32 {
        self.top.wrapping_sub(self.bottom)
    }
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.top == self.bottom
    }
    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.top == self.end
    }
    /// How many more entries fit.
    #[inline(always)]
    pub fn room(&self) -> u32 {
        self.end.wrapping_sub(self.top)
    }
    #[inline(always)]
    fn slot(&self, pos: u32) -> *mut u32 {
        // SAFETY: only called on a list with storage (callers checked it is
        // not full for a push, not empty for a pop, which a list without
        // storage always is), and the position is masked into its ring.
        unsafe { self.ring.add((pos & self.mask) as usize) }
    }
}

#[derive(Clone, Copy)]
pub struct PerCpuPages {
    /// Pages on all lists (counted in base pages).
    pub count: u32,
    pub high: u32,
    pub batch: u32,
    /// log2 of the next bulk-free multiplier (adaptive free, 5.14).
    pub free_factor: u32,
    pub lists: [PcpList; NR_PCP_LISTS],
}

// SAFETY: reached only through the owning CPU's lock (see page_alloc).
unsafe impl Send for PerCpuPages {}

/// Ring sizes for a zone whose `high` and `batch` are at most these: the
/// whole of `high` plus a refill fits in any one list, so a push only finds
/// a list full when the lists are far past `high` (handled by the caller).
pub fn ring_caps(high_max: u32, batch_max: u32) -> [u32; NR_PCP_LISTS] {
    core::array::from_fn(|pindex| {
        let order = pindex / MIGRATE_PCPTYPES;
        ((high_max >> order) + batch_max.max(2)).next_power_of_two()
    })
}

impl PerCpuPages {
    pub const EMPTY: PerCpuPages = PerCpuPages {
        count: 0,
        high: 0,
        batch: 1,
        free_factor: 0,
        lists: [PcpList::EMPTY; NR_PCP_LISTS],
    };

    /// Lists with rings of `caps` entries at `buf`.
    ///
    /// # Safety
    /// `buf` holds `caps.iter().sum()` u32 entries owned by this set alone.
    pub unsafe fn with_rings(buf: *mut u32, caps: &[u32; NR_PCP_LISTS]) -> PerCpuPages {
        let mut p = PerCpuPages::EMPTY;
        let mut off = 0usize;
        for (l, &cap) in p.lists.iter_mut().zip(caps) {
            assert!(cap.is_power_of_two());
            *l = PcpList {
                // SAFETY: within the caller's `buf`, one run per list.
                ring: unsafe { buf.add(off) },
                mask: cap - 1,
                top: 0,
                bottom: 0,
                end: cap,
            };
            off += cap as usize;
        }
        p
    }

    /// Marks a page as cached on a list: `order` and the list's type `mt`.
    #[inline(always)]
    fn mark(map: &MemMap, idx: u32, order: usize, mt: MigrateType) {
        // SAFETY: the page is entering this CPU's lists, whose lock the
        // caller holds (`&mut PerCpuPages`); nobody else holds it.
        let p = unsafe { map.at(idx) };
        // Neither reserved, allocated nor free any more: cached is all it is.
        p.flags = PG_PCP;
        p.order = order as u8;
        p.mt = mt as u8;
    }

    /// Pushes a freed (hot) page of `order` on top of list `pindex` and
    /// marks its descriptor; false when the ring is full.
    #[inline(always)]
    pub fn push_head(
        &mut self,
        map: &MemMap,
        pindex: usize,
        idx: u32,
        order: usize,
        mt: MigrateType,
    ) -> bool {
        let l = &mut self.lists[pindex];
        if l.is_full() {
            return false;
        }
        Self::mark(map, idx, order, mt);
        // SAFETY: not full, so the ring has storage; slot() masks.
        unsafe { l.slot(l.top).write(idx) };
        l.top = l.top.wrapping_add(1);
        self.count += 1 << order;
        true
    }

    /// Pushes a freed page of `order` on top of list `pindex` without
    /// touching its descriptor: the caller marks it cached (`PG_PCP`, its
    /// order and the list's type), as [`Self::push_head`] would. False when
    /// the ring is full.
    #[inline(always)]
    pub fn put_head(&mut self, pindex: usize, idx: u32, order: usize) -> bool {
        let l = &mut self.lists[pindex];
        if l.is_full() {
            return false;
        }
        // SAFETY: not full, so the ring has storage; slot() masks.
        unsafe { l.slot(l.top).write(idx) };
        l.top = l.top.wrapping_add(1);
        self.count += 1 << order;
        true
    }

    /// Takes the hottest page of list `pindex` (pages of `order`) without
    /// touching its descriptor: the caller replaces the cached mark, as
    /// the allocation fast path does when it marks the page allocated.
    #[inline(always)]
    pub fn take_head(&mut self, pindex: usize, order: usize) -> Option<u32> {
        let l = &mut self.lists[pindex];
        if l.is_empty() {
            return None;
        }
        l.top = l.top.wrapping_sub(1);
        // SAFETY: not empty, so the ring has storage; slot() masks.
        let idx = unsafe { l.slot(l.top).read() };
        self.count -= 1 << order;
        Some(idx)
    }

    /// Adds a page at the bottom without touching its descriptor (the
    /// caller marks it cached, as [`Self::push_tail`] would); false when
    /// the ring is full.
    #[inline(always)]
    pub fn put_tail(&mut self, pindex: usize, idx: u32, order: usize) -> bool {
        let l = &mut self.lists[pindex];
        if l.is_full() {
            return false;
        }
        l.bottom = l.bottom.wrapping_sub(1);
        l.end = l.end.wrapping_sub(1);
        // SAFETY: as in push_head.
        unsafe { l.slot(l.bottom).write(idx) };
        self.count += 1 << order;
        true
    }

    /// Adds a page at the bottom (refills keep the buddy order below the
    /// hot pages); false when the ring is full.
    pub fn push_tail(
        &mut self,
        map: &MemMap,
        pindex: usize,
        idx: u32,
        order: usize,
        mt: MigrateType,
    ) -> bool {
        let l = &mut self.lists[pindex];
        if l.is_full() {
            return false;
        }
        Self::mark(map, idx, order, mt);
        l.bottom = l.bottom.wrapping_sub(1);
        l.end = l.end.wrapping_sub(1);
        // SAFETY: as in push_head.
        unsafe { l.slot(l.bottom).write(idx) };
        self.count += 1 << order;
        true
    }

    /// Takes the hottest page of list `pindex`, whose pages are of `order`,
    /// and clears its cached mark.
    #[inline(always)]
    pub fn pop_head(&mut self, map: &MemMap, pindex: usize, order: usize) -> Option<u32> {
        let l = &mut self.lists[pindex];
        if l.is_empty() {
            return None;
        }
        l.top = l.top.wrapping_sub(1);
        // SAFETY: not empty, so the ring has storage; slot() masks.
        let idx = unsafe { l.slot(l.top).read() };
        self.count -= 1 << order;
        // SAFETY: the page was on this CPU's list, owned by its lock
        // (`&mut self`), and is now off it; no other reference is kept.
        unsafe { map.at(idx) }.flags &= !PG_PCP;
        Some(idx)
    }

    /// How many pages to give back once `count` reached `high` (nr_pcp_free):
    /// `batch` doubled for every free since the last allocation, keeping at
    /// least `batch` pages on the lists.
    pub fn nr_to_free(&mut self) -> u32 {
        let (high, batch) = (self.high, self.batch);
        if high < batch {
            return 1;
        }
        let min_nr = batch;
        let max_nr = high - batch;
        let n = batch << self.free_factor;
        if n < max_nr && self.free_factor < MAX_FREE_FACTOR {
            self.free_factor += 1;
        }
        n.clamp(min_nr, max_nr.max(min_nr))
    }

    /// Picks the lists to free from, `first` first, then round-robin over
    /// the others (free_pcppages_bulk's order); calls `free` with each page
    /// until `count` pages went back. Returns pages freed. The descriptors
    /// still say cached: `free` must rewrite them (the buddy free does).
    pub fn bulk_take(
        &mut self,
        count: u32,
        first: usize,
        mut free: impl FnMut(u32, usize, MigrateType),
    ) -> u32 {
        let mut left = count.min(self.count) as i64;
        let mut freed = 0;
        let mut pindex = first;
        let mut tried_empty = 0;
        while left > 0 && tried_empty < NR_PCP_LISTS {
            if self.lists[pindex].is_empty() {
                tried_empty += 1;
                pindex = (pindex + 1) % NR_PCP_LISTS;
                continue;
            }
            tried_empty = 0;
            let order = pindex / MIGRATE_PCPTYPES;
            // The list says the type: the fast free path does not write it
            // into the descriptor.
            let mt = MigrateType::from_index(pindex % MIGRATE_PCPTYPES);
            // As many coldest blocks as popping one at a time until `left`
            // pages went would take, then the bookkeeping once.
            let l = self.lists[pindex];
            let want = ((left as u64 + (1 << order) - 1) >> order) as u32;
            let n = want.min(l.len());
            for k in 0..n {
                // SAFETY: k < len, so the list has storage; slot() masks.
                let idx = unsafe { l.slot(l.bottom.wrapping_add(k)).read() };
                free(idx, order, mt);
            }
            let m = &mut self.lists[pindex];
            m.bottom = m.bottom.wrapping_add(n);
            m.end = m.end.wrapping_add(n);
            self.count -= n << order;
            left -= (n as i64) << order;
            freed += n << order;
            pindex = (pindex + 1) % NR_PCP_LISTS;
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_defaults_match_the_seed() {
        assert_eq!(zone_batchsize(131_072), 31, "512 MiB zone");
        assert_eq!(zone_batchsize(262_144), 63, "1 GiB zone: 1 MiB cap");
        assert_eq!(zone_batchsize(1 << 22), 63, "16 GiB zone: 1 MiB cap");
        assert_eq!(zone_batchsize(100), 1);
        assert!(zone_batchsize(u64::MAX / 2) <= PCP_BATCH_CAP);
    }

    #[test]
    fn high_is_monotonic_in_zone_size_and_at_least_four_batches() {
        let mut last = 0;
        for managed in [4096u64, 65_536, 262_144, 1 << 20, 1 << 22] {
            let [_, low, _] = crate::page_alloc::zone::zone_watermarks(managed, managed);
            let b = zone_batchsize(managed);
            let h = zone_highsize(low, b, 2);
            assert!(h >= last, "{managed}: {h} < {last}");
            assert!(h >= 4 * b);
            last = h;
        }
        assert!(zone_highsize(10_000, 31, 1) > zone_highsize(10_000, 31, 8));
        assert_eq!(zone_highsize(100, 31, 1), 4 * 31, "at least four batches");
        assert_eq!(
            zone_highsize(10_000, 31, 4),
            2_500,
            "low split among the CPUs"
        );
    }

    #[test]
    fn lists_give_hot_pages_from_the_top_cold_ones_from_the_bottom_and_refuse_when_full() {
        // Seed 2.2.5: allocations and frees use the hot end, the bulk free
        // the cold end, each page back with its list's order and type; a
        // ring never overwrites.
        use crate::page::Page;
        let mut descs = vec![Page::FREE; 64];
        // SAFETY: 64 descriptors this test owns for the map's life, reached
        // only through the map from here on.
        let map = unsafe { MemMap::new(descs.as_mut_ptr(), 0, 64) };
        let mut buf = vec![0u32; 4 * NR_PCP_LISTS];
        // SAFETY: `buf` holds the rings' 4 · NR_PCP_LISTS entries.
        let mut p = unsafe { PerCpuPages::with_rings(buf.as_mut_ptr(), &[4; NR_PCP_LISTS]) };
        let desc = |i: u32| {
            // SAFETY: single-threaded; a copy.
            let d = unsafe { *map.at(i) };
            (d.flags, d.order, d.mt)
        };
        let (m, r) = (MigrateType::Movable, MigrateType::Reclaimable);
        let pi = order_to_pindex(m, 0);
        assert!(p.push_head(&map, pi, 1, 0, m));
        assert!(p.put_head(pi, 2, 0));
        assert!(p.push_tail(&map, pi, 3, 0, m));
        assert!(p.put_tail(pi, 4, 0));
        assert_eq!(desc(1), (PG_PCP, 0, m as u8));
        assert_eq!(desc(3), (PG_PCP, 0, m as u8));
        assert!(p.lists[pi].is_full() && p.lists[pi].room() == 0);
        assert!(!p.push_head(&map, pi, 5, 0, m) && !p.put_head(pi, 5, 0));
        assert!(!p.push_tail(&map, pi, 5, 0, m) && !p.put_tail(pi, 5, 0));
        assert_eq!(desc(5), (0, 0, 0), "a refused page is left alone");
        let ri = order_to_pindex(r, 1);
        assert!(p.push_head(&map, ri, 8, 1, r));
        assert!(p.put_head(ri, 10, 1));
        assert_eq!(p.count, 4 + 2 + 2, "counted in base pages");
        assert_eq!(p.take_head(pi, 0), Some(2), "the hottest");
        assert_eq!(p.pop_head(&map, pi, 0), Some(1));
        assert_eq!(desc(1).0, 0, "no longer cached");
        let mut cold = Vec::new();
        assert_eq!(p.bulk_take(4, pi, |i, o, t| cold.push((i, o, t))), 4);
        assert_eq!(
            cold,
            [(4, 0, m), (3, 0, m), (8, 1, r)],
            "coldest first, then the next list, until `count` pages went"
        );
        assert_eq!(p.count, 2);
        cold.clear();
        assert_eq!(p.bulk_take(99, pi, |i, o, t| cold.push((i, o, t))), 2);
        assert_eq!(cold, [(10, 1, r)]);
        assert_eq!(p.count, 0);
        assert_eq!((p.take_head(pi, 0), p.pop_head(&map, pi, 0)), (None, None));
    }

    #[test]
    fn free_factor_doubles_then_clamps() {
        let mut p = PerCpuPages {
            high: 1000,
            batch: 31,
            ..PerCpuPages::EMPTY
        };
        let seq: [u32; 6] = core::array::from_fn(|_| p.nr_to_free());
        assert_eq!(seq, [31, 62, 124, 248, 496, 969]);
        p.free_factor >>= 1; // an allocation halves it
        assert_eq!(p.nr_to_free(), 31 << 2);
    }

    #[test]
    fn free_factor_stops_growing_once_the_count_reaches_the_clamp() {
        // Seed 2.2.5.3 (Linux's nr_pcp_free): the factor grows only while
        // the doubled count is below high - batch, so after an allocation
        // halves it the count restarts from what was really freed.
        let mut p = PerCpuPages {
            high: 31 + (31 << 3),
            batch: 31,
            ..PerCpuPages::EMPTY
        };
        let seq: [u32; 5] = core::array::from_fn(|_| p.nr_to_free());
        assert_eq!(seq, [31, 62, 124, 248, 248]);
        assert_eq!(p.free_factor, 3);
        p.free_factor >>= 1;
        assert_eq!(p.nr_to_free(), 62);
    }

    #[test]
    fn free_count_edges_follow_nr_pcp_free() {
        // Seed 2.2.5.3 keeps at least `batch` on the list; when high is
        // below batch (Linux's nr_pcp_free, [NOT IN SEED]) one page goes,
        // and with high equal to batch a whole batch still does.
        let mut p = PerCpuPages {
            high: 30,
            batch: 31,
            ..PerCpuPages::EMPTY
        };
        assert_eq!(p.nr_to_free(), 1);
        p.high = 31;
        assert_eq!(p.nr_to_free(), 31);
        assert_eq!(p.free_factor, 0, "no doubling past the clamp");
    }
}
