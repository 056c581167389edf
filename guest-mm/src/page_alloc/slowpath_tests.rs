//! Rows 13, 20, 21, 22 (seed 3.4.2, 4.1.2): the order of the slow path's
//! steps, traced through recording hooks that never free anything.
use super::slowpath::{MAX_COMPACT_RETRIES, MAX_RECLAIM_RETRIES};
use super::tests::{fixture, record, Call, Fixture, Recorder};
use super::*;
use Call::*;
use CompactPriority::*;

const MIB: u64 = 1 << 20;

/// A 32 MiB guest (grouping by mobility on) with recording hooks, every
/// page allocated with a reclaimer's rights and then every other one freed:
/// half of memory free, all of it in order-0 blocks, so high orders fail
/// and compaction is what could help; order 0 is at its watermarks' mercy.
fn scattered() -> (Fixture, &'static Recorder) {
    let mut f = fixture(32 * MIB, 1);
    assert!(f.a.grouping_by_mobility());
    let r = record(&mut f);
    {
        let mut c = f.a.cpu(0);
        let mut all = Vec::new();
        while let Some(p) = c.alloc(Gfp::NOWAIT.union(Gfp::MEMALLOC), 0) {
            all.push(p);
        }
        all.sort();
        for p in all.iter().filter(|p| p.0 % 2 == 0) {
            c.free_direct(*p, 0).unwrap();
        }
        c.drain_all(None);
    }
    r.trace.lock().unwrap().clear();
    (f, r)
}

#[test]
fn costly_order_compacts_before_reclaim_and_never_ooms_seed_3_4_2_7() {
    // Rows 13/20: order 4 (costly): async compaction before any reclaim,
    // then one round of kswapd → reclaim → compaction, and a costly
    // request gives up there rather than kill anything.
    let (f, r) = scattered();
    let mut c = f.a.cpu(0);
    assert!(c.alloc(Gfp::KERNEL, 4).is_none());
    assert_eq!(
        r.calls(),
        [Kswapd, Compact(Async), Kswapd, Reclaim, Compact(Async)]
    );
    assert_eq!(c.events().get(VmEvent::OomKill), 0);
}

#[test]
fn movable_order_2_reclaims_before_compacting_then_ooms_seed_4_1_2() {
    // Rows 13/20: order 2 movable (not costly): no compaction before
    // reclaim; kswapd → reclaim → compaction; with no progress and no zone
    // that reclaim could lift over min, the OOM step comes next.
    let (f, r) = scattered();
    let mut c = f.a.cpu(0);
    let g = Gfp::KERNEL.union(Gfp::MOVABLE);
    assert!(c.alloc(g, 2).is_none());
    assert_eq!(r.calls(), [Kswapd, Kswapd, Reclaim, Compact(Async), Oom]);
    assert_eq!(c.events().get(VmEvent::OomKill), 1);
}

#[test]
fn unmovable_high_order_tries_async_compaction_first_seed_3_4_2_7() {
    // Seed 3.4.2.7: unmovable high-order requests, like costly ones, try
    // cheap async compaction before reclaiming anything.
    let (f, r) = scattered();
    let mut c = f.a.cpu(0);
    assert!(c.alloc(Gfp::KERNEL, 2).is_none());
    assert_eq!(r.calls()[..2], [Kswapd, Compact(Async)]);
    assert_eq!(r.calls().last(), Some(&Oom));
}

#[test]
fn compaction_priority_escalates_to_full_then_gives_up_seed_3_4_2_5() {
    // Row 22: while reclaim makes progress, failed compaction is retried at
    // rising priority (async → sync-light → full), MAX_COMPACT_RETRIES
    // times, then the allocation goes to OOM.
    let (f, r) = scattered();
    r.reclaim_gives.store(1, Ordering::Relaxed);
    let mut c = f.a.cpu(0);
    assert!(c.alloc(Gfp::KERNEL.union(Gfp::MOVABLE), 2).is_none());
    let prios: Vec<_> = r
        .calls()
        .into_iter()
        .filter_map(|x| match x {
            Compact(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut want = vec![Async, SyncLight];
    want.resize(MAX_COMPACT_RETRIES as usize + 1, Full);
    assert_eq!(prios, want);
    assert_eq!(r.calls().last(), Some(&Oom));
    assert_eq!(c.events().get(VmEvent::OomKill), 1);
}

#[test]
fn no_progress_reclaim_is_retried_exactly_max_retries_times_seed_4_1_2_5() {
    // Row 21: an order-0 request below min, in a zone that reclaim could
    // refill (reclaimable pages pass the watermark) but never does: one
    // reclaim, MAX_RECLAIM_RETRIES retries, then OOM, once.
    let (f, r) = scattered();
    r.reclaimable.store(1 << 20, Ordering::Relaxed);
    let mut c = f.a.cpu(0);
    while c.alloc(Gfp::NOWAIT.union(Gfp::MEMALLOC), 0).is_some() {}
    r.trace.lock().unwrap().clear();
    assert!(c.alloc(Gfp::KERNEL, 0).is_none());
    let reclaims = r.calls().iter().filter(|&&x| x == Reclaim).count();
    assert_eq!(reclaims as u32, MAX_RECLAIM_RETRIES + 1);
    assert_eq!(r.calls().iter().filter(|&&x| x == Oom).count(), 1);
    assert!(
        !r.calls().iter().any(|x| matches!(x, Compact(_))),
        "order 0"
    );
}

#[test]
fn nothing_reclaimable_goes_to_oom_after_one_round_seed_4_1_2_5() {
    // Row 21: the retry needs reclaimable + free to pass min in some zone;
    // with nothing reclaimable, one reclaim round is all before OOM.
    let (f, r) = scattered();
    let mut c = f.a.cpu(0);
    while c.alloc(Gfp::NOWAIT.union(Gfp::MEMALLOC), 0).is_some() {}
    r.trace.lock().unwrap().clear();
    assert!(c.alloc(Gfp::KERNEL, 0).is_none());
    assert_eq!(r.calls(), [Kswapd, Kswapd, Reclaim, Oom]);
}

#[test]
fn atomic_and_noretry_requests_never_reclaim_seed_2_2_4() {
    // A request that cannot sleep wakes kswapd and fails; NORETRY on a
    // costly order stops after the first async compaction.
    let (f, r) = scattered();
    let mut c = f.a.cpu(0);
    assert!(c.alloc(Gfp::NOWAIT, 4).is_none());
    assert_eq!(r.calls(), [Kswapd, Kswapd]);
    r.trace.lock().unwrap().clear();
    assert!(c.alloc(Gfp::KERNEL.union(Gfp::NORETRY), 4).is_none());
    assert_eq!(r.calls(), [Kswapd, Compact(Async)]);
}

#[test]
fn pages_on_another_cpus_list_are_drained_before_oom_seed_2_2_5_2() {
    // Seed 2.2.5.2: when reclaim made no progress, the pages parked on
    // per-CPU lists are given back before the allocation fails.
    let mut f = fixture(16 * MIB, 2);
    f.a.zones[zid(0, ZoneType::Dma)].watermark = [0; 3];
    let r = record(&mut f);
    let mut all = Vec::new();
    {
        let mut c = f.a.cpu(0);
        while let Some(p) = c.alloc_direct(Gfp::NOWAIT, 0) {
            all.push(p);
        }
    }
    {
        let mut c1 = f.a.cpu(1);
        for p in all.drain(..8) {
            c1.free(p, 0).unwrap();
        }
        assert_eq!(c1.pcp(0, ZoneType::Dma).count, 8);
    }
    assert_eq!(f.a.free_pages_buddy(), 0);
    let p = f.a.cpu(0).alloc(Gfp::KERNEL, 0);
    assert!(p.is_some(), "served from CPU 1's drained list");
    assert!(!r.calls().contains(&Oom));
    assert!(f.a.events().get(VmEvent::PcpDrain) >= 1);
}

#[test]
fn the_retry_check_weighs_each_zone_on_its_own_seed_4_1_2_5() {
    // Row 21: reclaim is retried when some zone's own free + reclaimable
    // pages would pass that zone's min mark: here only DMA32 has anything
    // reclaimable, just enough for DMA32 and not enough for DMA.
    let (f, r) = scattered();
    let mut c = f.a.cpu(0);
    while c.alloc(Gfp::NOWAIT.union(Gfp::MEMALLOC), 0).is_some() {}
    let (dma, d32) = (f.a.zone(0, ZoneType::Dma), f.a.zone(0, ZoneType::Dma32));
    for z in [dma, d32] {
        z.boost.store(0, Ordering::Relaxed);
        assert_eq!(z.free_pages(), 0);
    }
    let n = ZoneType::Normal as usize;
    let need = d32.watermark[WMARK_MIN] + d32.lowmem_reserve[n] + 1;
    assert!(need <= dma.watermark[WMARK_MIN] + dma.lowmem_reserve[n]);
    r.reclaimable.store(need, Ordering::Relaxed);
    r.reclaimable_in
        .store(ZoneType::Dma32 as u64 + 1, Ordering::Relaxed);
    r.trace.lock().unwrap().clear();
    assert!(c.alloc(Gfp::KERNEL, 0).is_none());
    let reclaims = r.calls().iter().filter(|&&x| x == Reclaim).count();
    assert_eq!(reclaims as u32, MAX_RECLAIM_RETRIES + 1);
}
