//! Rows 3, 4, 12 and 23: which watermark each kind of request must pass
//! (seed 2.2.4), the life of a watermark boost (seed 2.2.6), and the slow
//! path's choice between compaction and reclaim (seed 3.4.1).
use super::tests::{fixture, record, Fixture};
use super::*;
use crate::mmzone::PAGEBLOCK_NR_PAGES;

const MIB: u64 = 1 << 20;

#[test]
fn fast_path_allocates_down_to_the_low_watermark_seed_2_2_4() {
    // Row 3: the fast path takes pages while free > low (not high): the
    // first trip into the slow path happens with free at low, for order 0
    // (the per-CPU shortcut and the zonelist walk) and order 1 alike.
    for order in [0, 1] {
        let f = fixture(64 * MIB, 1);
        let z = f.a.zone(0, ZoneType::Dma);
        let [min, low, high] = z.watermark;
        assert!(high - low > 4, "bands too narrow to tell apart");
        let mut c = f.a.cpu(0);
        let g = Gfp::NOWAIT.union(Gfp::DMA).union(Gfp::MOVABLE);
        let entered_at = loop {
            let free = z.free_pages();
            let slow = c.events().get(VmEvent::AllocSlowpath);
            c.alloc(g, order).unwrap();
            if c.events().get(VmEvent::AllocSlowpath) > slow {
                break free;
            }
        };
        assert!(
            entered_at <= low + (1 << order) && entered_at > min,
            "order {order}: slow path entered at {entered_at}, low {low}, high {high}"
        );
    }
}

#[test]
fn gfp_high_may_use_half_the_min_reserve_seed_2_2_4() {
    // Row 4: `__GFP_HIGH` alone (not atomic) may go halfway below min; a
    // plain request stops at min; atomic requests go a quarter further.
    let f = fixture(64 * MIB, 1);
    let z = f.a.zone(0, ZoneType::Dma32);
    let area = z.free.lock();
    let min = z.watermark[WMARK_MIN];
    assert!(min >= 16);
    let ok = |gfp: Gfp, free: u64| {
        let flags = AllocFlags::from_gfp_slowpath(gfp);
        zone::watermark_ok(z, &area, 0, min, ZoneType::Dma32, flags, free)
    };
    let plain = Gfp::NOWAIT;
    let high = Gfp::NOWAIT.union(Gfp::HIGH);
    let half = min - min / 2;
    assert!(ok(plain, min + 1) && !ok(plain, min));
    assert!(ok(high, half + 1), "__GFP_HIGH may use half the reserve");
    assert!(!ok(high, half), "but not more than half");
    let atomic = half - half / 4;
    assert!(ok(Gfp::ATOMIC, atomic + 1) && !ok(Gfp::ATOMIC, atomic));
}

#[test]
fn gfp_high_and_memalloc_reserves_in_a_real_zone_seed_2_2_4() {
    // Row 4 through the allocator: below min a plain request fails, a
    // `__GFP_HIGH` one succeeds down to half of min and stops there, and a
    // reclaimer (PF_MEMALLOC) ignores watermarks altogether, down to the
    // last free page.
    let f = fixture(32 * MIB, 1);
    let z = f.a.zone(0, ZoneType::Dma);
    let min = z.watermark[WMARK_MIN];
    assert!(min >= 16);
    let mut c = f.a.cpu(0);
    let g = Gfp::NOWAIT.union(Gfp::DMA).union(Gfp::MOVABLE);
    let memalloc = g.union(Gfp::MEMALLOC);
    while z.free_pages() > min - min / 4 {
        c.alloc(memalloc, 0).unwrap();
    }
    assert!(c.alloc(g, 0).is_none(), "below min: a plain request fails");
    while c.alloc(g.union(Gfp::HIGH), 0).is_some() {}
    let left = z.free_pages();
    assert!(
        left <= min - min / 2 + 1 && left + 1 >= min - min / 2,
        "__GFP_HIGH stops at half of min ({left} left, min {min})"
    );
    while c.alloc(memalloc, 0).is_some() {}
    assert_eq!(z.free_pages(), 0, "PF_MEMALLOC takes the last page");
    assert_eq!(c.pcp(0, ZoneType::Dma).count, 0);
}

/// Fragments DMA32: every movable page allocated, then all but the first
/// page of each pageblock freed, so every pageblock is mostly free but none
/// is wholly free. Returns the pages kept.
fn fragment_dma32(c: &mut CpuCache<'_>) -> Vec<Pfn> {
    let g = Gfp::USER_MOVABLE.union(Gfp::DMA32);
    let mut all = Vec::new();
    while let Some(p) = c.alloc_direct(g, 0) {
        all.push(p);
    }
    all.sort();
    let mut kept = Vec::new();
    let mut last_block = u64::MAX;
    for p in all {
        let block = p.0 / PAGEBLOCK_NR_PAGES;
        if block != last_block {
            last_block = block;
            kept.push(p);
        } else {
            c.free_direct(p, 0).unwrap();
        }
    }
    kept
}

/// A 64 MiB fixture with hooks, DMA32 fragmented and one unmovable
/// allocation that had to claim part of a movable pageblock.
fn boosted() -> (Fixture, &'static super::tests::Recorder) {
    let mut f = fixture(64 * MIB, 1);
    let r = record(&mut f);
    {
        let mut c = f.a.cpu(0);
        fragment_dma32(&mut c);
        let e0 = c.events();
        c.alloc_direct(Gfp::KERNEL.union(Gfp::DMA32), 0).unwrap();
        let e = c.events();
        assert_eq!(
            e.get(VmEvent::PgAllocFallback) - e0.get(VmEvent::PgAllocFallback),
            1
        );
        assert_eq!(
            e.get(VmEvent::PgStealWholeBlock),
            e0.get(VmEvent::PgStealWholeBlock),
            "a fragmentation event, not a whole-pageblock steal"
        );
    }
    (f, r)
}

#[test]
fn boost_is_raised_by_a_fragmentation_event_seed_2_2_6() {
    // Row 12: a fallback that could not take a whole pageblock raises the
    // zone's watermarks by a pageblock.
    let (f, _) = boosted();
    let z = f.a.zone(0, ZoneType::Dma32);
    assert_eq!(z.boost.load(Ordering::Relaxed), PAGEBLOCK_NR_PAGES);
    assert_eq!(f.a.events().get(VmEvent::WatermarkBoost), 1);
    assert_eq!(
        z.wmark(WMARK_LOW),
        z.watermark[WMARK_LOW] + PAGEBLOCK_NR_PAGES
    );
}

#[test]
fn boost_wakes_kswapd_on_the_next_allocation_seed_2_2_6() {
    // Row 12: with free pages far above low, the next allocation from the
    // boosted zone still wakes kswapd, once.
    let (f, r) = boosted();
    let z = f.a.zone(0, ZoneType::Dma32);
    assert!(z.free_pages() > 4 * z.wmark(WMARK_HIGH));
    assert_eq!(r.kswapd.load(Ordering::Relaxed), 0);
    let mut c = f.a.cpu(0);
    for _ in 0..3 {
        c.alloc(Gfp::USER_MOVABLE.union(Gfp::DMA32), 0).unwrap();
    }
    assert_eq!(r.kswapd.load(Ordering::Relaxed), 1, "woken once");
    assert_eq!(c.events().get(VmEvent::KswapdWake), 1);
    assert_eq!(c.events().get(VmEvent::AllocSlowpath), 0);
}

#[test]
fn boost_reclaims_a_little_wakes_kcompactd_and_ends_seed_2_2_6() {
    // Row 12 / row 26: kswapd's balancing pass reclaims at most the boost,
    // wakes kcompactd (counted), and takes the boost back to zero; with no
    // boost left, a second pass does none of it. It needs no per-CPU lock,
    // so kswapd may run it while this CPU is inside an allocation.
    let (f, r) = boosted();
    let z = f.a.zone(0, ZoneType::Dma32);
    let c = f.a.cpu(0);
    let b = f.a.kswapd_balance(0, ZoneType::Normal);
    assert_eq!(
        b,
        BoostBalance {
            boost: PAGEBLOCK_NR_PAGES,
            reclaimed: PAGEBLOCK_NR_PAGES / 2,
            kcompactd_woken: true
        }
    );
    assert_eq!(r.boost_asked.load(Ordering::Relaxed), PAGEBLOCK_NR_PAGES);
    assert_eq!(r.kcompactd.load(Ordering::Relaxed), 1);
    assert_eq!(z.boost.load(Ordering::Relaxed), 0, "the boost is over");
    assert_eq!(z.wmark(WMARK_LOW), z.watermark[WMARK_LOW]);
    assert_eq!(
        f.a.kswapd_balance(0, ZoneType::Normal),
        BoostBalance::default()
    );
    assert_eq!(r.kcompactd.load(Ordering::Relaxed), 1);
    drop(c);
    assert_eq!(f.a.events().get(VmEvent::KcompactdWake), 1);
}

/// A 16 MiB guest (one zone, DMA) with no watermarks and every page
/// allocated; `give_back` picks, from the pages in address order, those to
/// free again.
fn full_dma(give_back: impl Fn(&[Pfn]) -> Vec<Pfn>) -> (Fixture, &'static super::tests::Recorder) {
    let mut f = fixture(16 * MIB, 1);
    f.a.zones[zid(0, ZoneType::Dma)].watermark = [0; 3];
    let r = record(&mut f);
    {
        let mut c = f.a.cpu(0);
        let mut all = Vec::new();
        while let Some(p) = c.alloc_direct(Gfp::NOWAIT, 0) {
            all.push(p);
        }
        assert_eq!(f.a.free_pages_buddy(), 0);
        all.sort();
        for p in give_back(&all) {
            c.free_direct(p, 0).unwrap();
        }
    }
    (f, r)
}

#[test]
fn slow_path_compacts_when_free_memory_is_scattered_seed_3_4_1() {
    // Row 23: half the zone free, all of it in order-0 blocks: the
    // fragmentation index for order 4 is near 1000, so the slow path
    // compacts.
    let (f, r) = full_dma(|all| all.iter().copied().filter(|p| p.0 % 2 == 0).collect());
    let mut c = f.a.cpu(0);
    assert!(c.alloc(Gfp::KERNEL, 4).is_none());
    assert!(
        r.compact.load(Ordering::Relaxed) >= 1,
        "compaction was tried"
    );
    assert!(c.events().get(VmEvent::DirectCompact) >= 1);
}

#[test]
fn slow_path_reclaims_instead_of_compacting_when_memory_is_short_seed_3_4_1() {
    // Row 23: one free order-3 block and nothing else: the index for order
    // 4 is 0 (lack of memory), so the slow path reclaims and never calls
    // compaction.
    let (f, r) = full_dma(|all| {
        let w = all
            .windows(8)
            .find(|w| w[0].0 % 8 == 0 && w[7].0 == w[0].0 + 7)
            .unwrap();
        w.to_vec()
    });
    let mut c = f.a.cpu(0);
    assert_eq!(f.a.pagetypeinfo(0, ZoneType::Dma).blocks_of_order(3), 1);
    assert_eq!(f.a.free_pages_buddy(), 8);
    assert!(c.alloc(Gfp::KERNEL, 4).is_none());
    assert!(r.reclaim.load(Ordering::Relaxed) >= 1, "reclaim was tried");
    assert_eq!(r.compact.load(Ordering::Relaxed), 0, "compaction was not");
    assert_eq!(c.events().get(VmEvent::DirectCompact), 0);
}

#[test]
fn atomic_order0_requests_ignore_the_boost_seed_2_2_4() {
    // Seed 2.2.4: a boost exists to make kswapd work ahead, not to fail
    // interrupt-time allocations, so atomic order-0 requests check the min
    // mark without it; an atomic order-1 request still sees it.
    let (f, _) = boosted();
    let z = f.a.zone(0, ZoneType::Dma32);
    let min = z.watermark[WMARK_MIN];
    let boost = z.boost.load(Ordering::Relaxed);
    // What HIGH + HARDER leave of a mark: 3/8 of it.
    let eff = |m: u64| m - m / 2 - (m - m / 2) / 4;
    let target = (eff(min) + eff(min + boost)) / 2;
    let mut c = f.a.cpu(0);
    let g = Gfp::NOWAIT.union(Gfp::DMA32).union(Gfp::MOVABLE);
    while z.free_pages() > target {
        c.alloc(g.union(Gfp::MEMALLOC), 0).unwrap();
    }
    let atomic = Gfp::ATOMIC.union(Gfp::DMA32);
    let p = c.alloc(atomic, 0).unwrap();
    assert!(z.contains(p.0), "order 0: served by the boosted zone");
    let q = c.alloc(atomic, 1).unwrap();
    assert!(
        !z.contains(q.0),
        "order 1: the boost applies, DMA serves it"
    );
}

#[test]
fn a_steal_on_the_per_cpu_refill_counts_and_boosts_seed_2_2_6() {
    // Row 12 on the common path: a per-CPU refill that has to fall back is
    // an external-fragmentation event like any other, and the allocation
    // that boosted wakes kswapd itself (Linux's rmqueue checks
    // ZONE_BOOSTED_WATERMARK after taking the page), whichever path
    // refilled the list.
    let mut f = fixture(64 * MIB, 1);
    let r = record(&mut f);
    let mut c = f.a.cpu(0);
    fragment_dma32(&mut c);
    c.alloc(Gfp::KERNEL.union(Gfp::DMA32), 0).unwrap();
    assert!(c.events().get(VmEvent::PgAllocFallback) >= 1);
    assert!(c.events().get(VmEvent::WatermarkBoost) >= 1);
    assert!(f.a.zone(0, ZoneType::Dma32).boost.load(Ordering::Relaxed) > 0);
    assert_eq!(
        r.kswapd.load(Ordering::Relaxed),
        1,
        "woken by the same allocation"
    );
    c.alloc(Gfp::KERNEL.union(Gfp::DMA32), 0).unwrap();
    assert_eq!(r.kswapd.load(Ordering::Relaxed), 1);
}

#[test]
fn without_a_reclaimer_kswapd_balance_still_ends_the_boost_seed_2_2_6() {
    // The default hooks reclaim nothing; the boost still ends and kcompactd
    // is still woken (counted).
    let f = fixture(64 * MIB, 1);
    let z = f.a.zone(0, ZoneType::Dma32);
    assert!(z.boost_watermark());
    let b = f.a.kswapd_balance(0, ZoneType::Dma32);
    assert_eq!(b.boost, PAGEBLOCK_NR_PAGES);
    assert_eq!(b.reclaimed, 0);
    assert!(b.kcompactd_woken);
    assert_eq!(z.boost.load(Ordering::Relaxed), 0);
    assert_eq!(f.a.events().get(VmEvent::KcompactdWake), 1);
    // A node or zones the pass does not cover are left alone.
    assert!(z.boost_watermark());
    assert_eq!(f.a.kswapd_balance(0, ZoneType::Dma).boost, 0);
    assert_eq!(f.a.kswapd_balance(1, ZoneType::Normal).boost, 0);
    assert_eq!(z.boost.load(Ordering::Relaxed), PAGEBLOCK_NR_PAGES);
}

#[test]
fn every_steal_of_a_per_cpu_refill_counts_and_boosts_seed_2_2_6() {
    // Row 12: a refill that has to steal block after block (one free page
    // in each of many movable pageblocks, none worth retyping) counts every
    // steal as a fallback and boosts for each, however many one refill
    // makes.
    let f = fixture(512 * MIB, 1);
    let z = f.a.zone(0, ZoneType::Dma32);
    assert!(z.pcp_batch >= 8, "a batch that needs many steals");
    let mut c = f.a.cpu(0);
    let all = Gfp::USER_MOVABLE.union(Gfp::DMA32).union(Gfp::MEMALLOC);
    // Everything DMA32 and DMA hold, down to the last page (so no zone has
    // a free pageblock, nor a per-CPU list a page).
    let mut held = Vec::new();
    while let Some(p) = c.alloc_direct(all, 0) {
        held.push(p);
    }
    while let Some(p) = c.alloc(all, 0) {
        held.push(p);
    }
    held.retain(|p| z.contains(p.0));
    held.sort();
    let one_per_block: Vec<Pfn> = held
        .chunk_by(|a, b| a.0 / PAGEBLOCK_NR_PAGES == b.0 / PAGEBLOCK_NR_PAGES)
        .map(|block| block[block.len() / 2])
        .take(2 * z.pcp_batch as usize)
        .collect();
    for &p in &one_per_block {
        c.free_direct(p, 0).unwrap();
    }
    let fallbacks = || z.free.lock().fallbacks;
    let (e0, f0) = (c.events(), fallbacks());
    let p = c
        .alloc(Gfp::KERNEL.union(Gfp::DMA32).union(Gfp::MEMALLOC), 0)
        .unwrap();
    assert!(z.contains(p.0));
    let (e, stolen) = (c.events(), fallbacks() - f0);
    let d = |ev| e.get(ev) - e0.get(ev);
    assert!(stolen >= 8, "{stolen} steals in the refill");
    assert_eq!(d(VmEvent::PgAllocFallback), stolen);
    assert_eq!(d(VmEvent::PgRetypeBlock), 0);
    assert_eq!(d(VmEvent::WatermarkBoost), stolen, "each steal boosts");
}
