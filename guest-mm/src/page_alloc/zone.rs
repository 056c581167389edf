//! A zone: its span, its free area under the zone lock, and its watermarks
//! (seed 2.2.4, 2.2.6).
use super::buddy::{Buddy, FreeArea};
use crate::gfp::AllocFlags;
use crate::mmzone::{
    MigrateType, ZoneType, MAX_NR_ZONES, MIGRATE_PCPTYPES, NR_ORDERS, PAGEBLOCK_NR_PAGES,
};
use crate::page::MemMap;
use crate::sync::{SpinLock, SpinLockGuard};
use crate::vmstat::ZoneCounter;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub const WMARK_MIN: usize = 0;
pub const WMARK_LOW: usize = 1;
pub const WMARK_HIGH: usize = 2;

/// [NOT IN SEED] Linux's watermark_scale_factor default: the low/high gap is
/// 0.1% of the zone.
pub const WATERMARK_SCALE_FACTOR: u64 = 10;
/// [NOT IN SEED] Linux's watermark_boost_factor default: a boost may reach
/// 150% of the high watermark.
pub const WATERMARK_BOOST_FACTOR: u64 = 15_000;
/// [NOT IN SEED] Linux's lowmem_reserve_ratio for DMA and DMA32 (Normal has
/// no zone above it to protect against).
pub const LOWMEM_RESERVE_RATIO: [u64; MAX_NR_ZONES] = [256, 256, 32];

pub struct Zone {
    pub node: usize,
    pub kind: ZoneType,
    pub start_pfn: u64,
    pub end_pfn: u64,
    pub present_pages: u64,
    pub managed_pages: u64,
    pub watermark: [u64; 3],
    /// Temporary raise after a fragmentation event (seed 2.2.6).
    pub boost: AtomicU64,
    /// Set when a boost happened: the next allocation wakes kswapd.
    pub boosted: AtomicBool,
    /// Pages this zone keeps from allocations that could have used a higher
    /// zone, indexed by that allocation's highest zone.
    pub lowmem_reserve: [u64; MAX_NR_ZONES],
    /// Free pages in the buddy lists (NR_FREE_PAGES; pages on per-CPU
    /// lists are not free, as in Linux). Changed only under the zone lock,
    /// through per-CPU differentials (see [`ZoneCounter`] for why, and why
    /// watermark decisions on it stay exact).
    pub vm_free: ZoneCounter<{ super::MAX_CPUS }>,
    /// For each highest zone of a request: the low watermark plus the
    /// lowmem reserve plus the free count's largest drift. A folded free
    /// count above this plus the boost passes the order-0 low-watermark
    /// check whatever the per-CPU differentials hold, so the allocation
    /// fast path compares once; anything closer takes the full path, which
    /// decides from the exact count. Set with the watermarks
    /// (`set_fast_low_mark`): whatever changes the low watermark, the
    /// reserves or the fold threshold must set it again.
    /// (Four entries, the last never passing, so a masked index needs no
    /// bounds check.)
    pub fast_low_mark: [i64; 4],
    pub pcp_batch: u32,
    pub pcp_high: u32,
    /// `start_pfn..end_pfn` as descriptor indices (see `set_map_span`);
    /// private so nothing can widen it past the map.
    idx_span: (u32, u32),
    /// Crate-private: the free lists' invariants are what the buddy's
    /// unchecked descriptor accesses rely on (see `Buddy`).
    pub(crate) free: SpinLock<FreeArea>,
}

impl Zone {
    /// Array initialiser; each copy gets its own atomics and lock.
    #[allow(clippy::declare_interior_mutable_const)]
    pub const EMPTY: Zone = Zone {
        node: 0,
        kind: ZoneType::Normal,
        start_pfn: 0,
        end_pfn: 0,
        present_pages: 0,
        managed_pages: 0,
        watermark: [0; 3],
        boost: AtomicU64::new(0),
        boosted: AtomicBool::new(false),
        lowmem_reserve: [0; MAX_NR_ZONES],
        vm_free: ZoneCounter::new(),
        fast_low_mark: [i64::MAX; 4],
        pcp_batch: 1,
        pcp_high: 0,
        idx_span: (0, 0),
        free: SpinLock::new(FreeArea::EMPTY),
    };

    pub fn populated(&self) -> bool {
        self.managed_pages > 0
    }

    pub fn contains(&self, pfn: u64) -> bool {
        pfn >= self.start_pfn && pfn < self.end_pfn
    }

    /// Takes the zone lock, counting the acquisition.
    pub(crate) fn lock(&self) -> SpinLockGuard<'_, FreeArea> {
        let mut g = self.free.lock();
        g.lock_acquisitions += 1;
        g
    }

    /// The zone's free lists under the held lock.
    #[inline(always)]
    pub(crate) fn buddy<'a>(
        &self,
        map: &'a MemMap,
        area: &'a mut FreeArea,
        grouping: bool,
    ) -> Buddy<'a> {
        Buddy {
            map,
            area,
            start_pfn: self.start_pfn,
            end_pfn: self.end_pfn,
            lo: self.idx_span.0,
            hi: self.idx_span.1,
            grouping,
        }
    }

    /// Records the zone's span as indices into `map`, which must hold the
    /// whole zone and start on a MAX_ORDER boundary: the merge loop then
    /// indexes buddies without a bounds check per level, and a buddy's
    /// index is the block's index with one bit flipped, as its pfn is.
    pub fn set_map_span(&mut self, map: &MemMap) {
        assert!(map
            .start_pfn()
            .is_multiple_of(1 << crate::mmzone::MAX_ORDER));
        self.idx_span = if self.start_pfn < self.end_pfn {
            assert!(
                self.start_pfn >= map.start_pfn() && self.end_pfn <= map.end_pfn(),
                "zone outside the descriptor array"
            );
            (
                (self.start_pfn - map.start_pfn()) as u32,
                (self.end_pfn - map.start_pfn()) as u32,
            )
        } else {
            (0, 0)
        };
    }

    /// A watermark plus the current boost (wmark_pages()).
    pub fn wmark(&self, which: usize) -> u64 {
        self.watermark[which] + self.boost.load(Ordering::Relaxed)
    }

    /// Recomputes [`Zone::fast_low_mark`] from the low watermark, the
    /// reserves and the fold threshold.
    pub fn set_fast_low_mark(&mut self) {
        let drift = self.vm_free.max_drift();
        for (m, &r) in self.fast_low_mark.iter_mut().zip(&self.lowmem_reserve) {
            *m = (self.watermark[WMARK_LOW] + r) as i64 + drift;
        }
    }

    /// Free pages in the buddy lists: exact as of the last release of the
    /// zone lock (exact while holding it).
    pub fn free_pages(&self) -> u64 {
        self.vm_free.snapshot().max(0) as u64
    }

    /// The free count to give [`watermark_ok`] for a check against `mark`
    /// with `order`, `highest` and the zone's HighAtomic reserve: the folded
    /// count when it is so far above everything the check subtracts and
    /// compares with that the per-CPU drift cannot change the answer, the
    /// exact snapshot otherwise (Linux uses the snapshot below
    /// `percpu_drift_mark`, i.e. near the high watermark; here the margin
    /// is computed for the check at hand, so the answer is always exact).
    pub fn free_for_check(
        &self,
        area: &FreeArea,
        order: usize,
        mark: u64,
        highest: ZoneType,
    ) -> u64 {
        let needed = mark
            + self.lowmem_reserve[highest as usize]
            + (1u64 << order)
            + area.nr_reserved_highatomic;
        let approx = self.vm_free.folded();
        if approx - self.vm_free.max_drift() > needed as i64 {
            approx as u64
        } else {
            self.free_pages()
        }
    }

    /// Raises the watermarks by a pageblock after a fragmentation event
    /// (seed 2.2.6), up to WATERMARK_BOOST_FACTOR of high; not at all on
    /// zones so small that four pageblocks are a large share of them (the
    /// seed's "boost is limited on small zones"; the amounts are Linux's
    /// boost_watermark(), [NOT IN SEED]). See `boost.rs` for how it ends.
    pub fn boost_watermark(&self) -> bool {
        if PAGEBLOCK_NR_PAGES * 4 > self.managed_pages {
            return false;
        }
        let max =
            (self.watermark[WMARK_HIGH] * WATERMARK_BOOST_FACTOR / 10_000).max(PAGEBLOCK_NR_PAGES);
        // Atomic: CPUs raise it outside the zone lock, kswapd lowers it.
        let _ = self
            .boost
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                Some((cur + PAGEBLOCK_NR_PAGES).min(max))
            });
        self.boosted.store(true, Ordering::Relaxed);
        true
    }
}

/// The reserve an allocation may not dip into, before the order check
/// (the first half of __zone_watermark_ok).
fn reserve_after_flags(mark: u64, flags: AllocFlags) -> u64 {
    let mut min = mark;
    if flags.has(AllocFlags::HIGH) {
        min -= min / 2;
    }
    if flags.has(AllocFlags::HARDER) {
        min -= min / 4;
    }
    min
}

/// __zone_watermark_ok (seed 2.2.4): enough free pages above `mark` (less
/// what `flags` may use, plus the lowmem reserve for `highest`), and for
/// order > 0 a free block of at least that order in a usable type.
pub fn watermark_ok(
    z: &Zone,
    area: &FreeArea,
    order: usize,
    mark: u64,
    highest: ZoneType,
    flags: AllocFlags,
    free_pages: u64,
) -> bool {
    if !watermark_free_ok(z, area, order, mark, highest, flags, free_pages) {
        return false;
    }
    if order == 0 {
        return true;
    }
    for o in order..NR_ORDERS {
        if area.nr_free[o] == 0 {
            continue;
        }
        for mt in 0..MIGRATE_PCPTYPES {
            if !area.is_empty(o, MigrateType::from_index(mt)) {
                return true;
            }
        }
        if flags.has(AllocFlags::HARDER) && !area.is_empty(o, MigrateType::HighAtomic) {
            return true;
        }
    }
    false
}

/// The first half of [`watermark_ok`]: enough free pages above the mark,
/// whatever their block sizes. A caller that then takes a block of at
/// least `order` from a mobility class's own lists has shown the second
/// half (such a block exists) by taking it.
#[inline]
pub fn watermark_free_ok(
    z: &Zone,
    area: &FreeArea,
    order: usize,
    mark: u64,
    highest: ZoneType,
    flags: AllocFlags,
    free_pages: u64,
) -> bool {
    let mut free = free_pages as i64 - ((1i64 << order) - 1);
    if !flags.has(AllocFlags::HARDER) {
        // Non-atomic requests may not count the HighAtomic reserve.
        free -= area.nr_reserved_highatomic as i64;
    }
    let min = reserve_after_flags(mark, flags) as i64;
    free > min + z.lowmem_reserve[highest as usize] as i64
}

/// The order-0 shortcut (zone_watermark_fast): no lock, only the counter,
/// decided exactly (see [`ZoneCounter::above`]).
pub fn watermark_fast_order0(z: &Zone, mark: u64, highest: ZoneType, flags: AllocFlags) -> bool {
    let min = reserve_after_flags(mark, flags);
    z.vm_free
        .above((min + z.lowmem_reserve[highest as usize]) as i64)
}

/// [NOT IN SEED] Linux's min_free_kbytes = sqrt(lowmem_kbytes × 16), clamped
/// to [128 KiB, 256 MiB]; returned in pages.
pub fn min_free_pages(total_managed_pages: u64) -> u64 {
    let kbytes = total_managed_pages * 4;
    let v = isqrt(kbytes * 16).clamp(128, 262_144);
    v / 4
}

pub fn isqrt(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let mut x = n;
    let mut y = x.div_ceil(2);
    while y < x {
        x = y;
        y = (x + n / x) / 2;
    }
    x
}

/// Per-zone watermarks (__setup_per_zone_wmarks): min is the zone's share
/// of min_free_pages; low and high add max(min/4, 0.1% of the zone) each.
pub fn zone_watermarks(zone_managed: u64, total_managed: u64) -> [u64; 3] {
    if total_managed == 0 {
        return [0; 3];
    }
    let min = min_free_pages(total_managed) * zone_managed / total_managed;
    let gap = (min / 4).max(zone_managed * WATERMARK_SCALE_FACTOR / 10_000);
    [min, min + gap, min + 2 * gap]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_grow_with_the_zone() {
        let [min, low, high] = zone_watermarks(262_144, 262_144); // 1 GiB
        assert_eq!(min, isqrt(1 << 20 << 4) / 4); // sqrt(16 × 1 GiB in KiB) = 4096 KiB
        assert!(min < low && low < high);
        assert_eq!(high - low, low - min);
        let small = zone_watermarks(256, 256); // 1 MiB: sqrt(16 × 1024) = 128 KiB
        assert_eq!(small[0], 128 / 4);
        assert_eq!(zone_watermarks(16, 16)[0], 128 / 4, "clamped at 128 KiB");
        assert!(zone_watermarks(1 << 22, 1 << 22)[2] > zone_watermarks(1 << 20, 1 << 20)[2]);
        // The gaps: 0.1% of the zone (watermark_scale_factor) once that
        // is more than a quarter of min, as from 1 GiB on.
        assert_eq!([min, low, high], [1024, 1024 + 262, 1024 + 2 * 262]);
        assert_eq!(zone_watermarks(65_536, 65_536), [512, 512 + 128, 512 + 256]);
    }

    #[test]
    fn boost_is_a_pageblock_per_event_capped_and_off_on_small_zones_seed_2_2_6() {
        // Row 12: each event adds a pageblock, up to 150% of high
        // (Linux's watermark_boost_factor, [NOT IN SEED]); a zone of fewer
        // than four pageblocks is never boosted (seed: "limited on small zones").
        let mut z = Zone::EMPTY;
        z.managed_pages = 4 * PAGEBLOCK_NR_PAGES;
        z.watermark = [100, 200, 1000];
        let mut seen = [0; 4];
        for s in seen.iter_mut() {
            assert!(z.boost_watermark());
            *s = z.boost.load(Ordering::Relaxed);
        }
        assert_eq!(seen, [512, 1024, 1500, 1500]);
        assert!(z.boosted.load(Ordering::Relaxed));
        let mut small = Zone::EMPTY;
        small.managed_pages = 4 * PAGEBLOCK_NR_PAGES - 1;
        small.watermark = [100, 200, 1000];
        assert!(!small.boost_watermark());
        assert_eq!(small.boost.load(Ordering::Relaxed), 0);
        assert!(!small.boosted.load(Ordering::Relaxed));
        // With a tiny high mark the cap is still one pageblock.
        let mut low = Zone::EMPTY;
        low.managed_pages = 4 * PAGEBLOCK_NR_PAGES;
        low.boost_watermark();
        low.boost_watermark();
        assert_eq!(low.boost.load(Ordering::Relaxed), PAGEBLOCK_NR_PAGES);
        assert_eq!(low.wmark(WMARK_MIN), PAGEBLOCK_NR_PAGES);
    }

    /// A free area whose only free block is one of `order` on `mt`'s list.
    fn one_block(order: usize, mt: MigrateType) -> FreeArea {
        let mut a = FreeArea::EMPTY;
        a.nr_free[order] = 1;
        a.lists[order][mt as usize].head = 0;
        a
    }

    #[test]
    fn watermark_ok_counts_exactly_seed_2_2_4() {
        // Rows 4/5: the free pages left after taking the block must exceed
        // the mark plus the lowmem reserve; non-atomic requests may not
        // count the HighAtomic reserve, nor use a HighAtomic block.
        let mut z = Zone::EMPTY;
        z.lowmem_reserve = [0, 0, 100];
        let f0 = AllocFlags::default();
        let area = one_block(3, MigrateType::Movable);
        let ok = |area: &FreeArea, order, highest, flags, free| {
            watermark_ok(&z, area, order, 1000, highest, flags, free)
        };
        assert!(ok(&area, 0, ZoneType::Dma, f0, 1001) && !ok(&area, 0, ZoneType::Dma, f0, 1000));
        // Order 3 leaves 2^3 - 1 pages fewer for the others.
        assert!(ok(&area, 3, ZoneType::Dma, f0, 1008));
        assert!(!ok(&area, 3, ZoneType::Dma, f0, 1007));
        assert!(
            !ok(&area, 4, ZoneType::Dma, f0, 1 << 20),
            "no block of order 4"
        );
        // The reserve for requests that could have used a higher zone.
        assert!(!ok(&area, 0, ZoneType::Normal, f0, 1100));
        assert!(ok(&area, 0, ZoneType::Normal, f0, 1101));
        // HighAtomic: its reserve is not free to others, nor its blocks.
        let mut ha = one_block(2, MigrateType::HighAtomic);
        ha.nr_reserved_highatomic = 50;
        let harder = AllocFlags::HARDER;
        let hmin = 1000 - 1000 / 4;
        assert!(ok(&ha, 0, ZoneType::Dma, harder, hmin + 1));
        assert!(!ok(&ha, 0, ZoneType::Dma, f0, 1050));
        assert!(ok(&ha, 0, ZoneType::Dma, f0, 1051));
        assert!(!ok(&ha, 2, ZoneType::Dma, f0, 1 << 20), "HighAtomic block");
        assert!(ok(&ha, 2, ZoneType::Dma, harder, 1 << 20));
        // The lock-free order-0 form agrees, whatever part of the count
        // still sits in a CPU's differential.
        z.vm_free.configure(8, 2);
        z.vm_free.add_global(1101 - 5);
        z.vm_free.add(1, 5);
        assert_eq!(z.vm_free.diff(1), 5, "still a differential");
        assert!(watermark_fast_order0(&z, 1000, ZoneType::Normal, f0));
        z.vm_free.add(0, -1);
        assert!(!watermark_fast_order0(&z, 1000, ZoneType::Normal, f0));
        assert!(watermark_fast_order0(&z, 1000, ZoneType::Dma, f0));
    }

    #[test]
    fn free_for_check_is_the_exact_count_near_the_mark() {
        // The folded count may be off by the per-CPU drift; the count given
        // to watermark_ok is the folded one only when the drift cannot
        // change the answer, the exact one otherwise (ZoneCounter's rule).
        // The margin counts everything the check does: mark, reserve, the
        // block (order 4: more than the drift of 16) and the HighAtomic
        // reserve.
        let mut z = Zone::EMPTY;
        z.lowmem_reserve = [0, 0, 100];
        z.vm_free.configure(8, 2);
        let area = FreeArea::EMPTY;
        let needed: i64 = 1000 + 100 + (1 << 4);
        let check = |z: &Zone| z.free_for_check(&area, 4, 1000, ZoneType::Normal) as i64;
        // Near: the folded count is above what is needed, the exact one
        // below it.
        z.vm_free.add_global(needed + 3);
        z.vm_free.add(1, -5);
        assert_eq!(check(&z), needed - 2, "exact near the mark");
        // Far above: the folded count, without reading every CPU's line.
        z.vm_free.add_global(100);
        assert_eq!(check(&z), needed + 103, "folded far above");

        // The HighAtomic reserve is part of the margin: near the mark once
        // it is counted, the count must be the exact one again.
        let mut z = Zone::EMPTY;
        z.lowmem_reserve = [0, 0, 100];
        z.vm_free.configure(8, 2);
        let mut area = FreeArea::EMPTY;
        area.nr_reserved_highatomic = 50;
        let needed = needed + 50;
        z.vm_free.add_global(needed + 3);
        z.vm_free.add(1, -5);
        assert_eq!(
            z.free_for_check(&area, 4, 1000, ZoneType::Normal) as i64,
            needed - 2,
            "exact near the mark with a HighAtomic reserve"
        );
    }

    #[test]
    fn isqrt_is_exact() {
        for n in [0u64, 1, 2, 3, 4, 15, 16, 17, 1 << 40, u32::MAX as u64] {
            let r = isqrt(n);
            assert!(r * r <= n && (r + 1) * (r + 1) > n, "{n}");
        }
    }
}
