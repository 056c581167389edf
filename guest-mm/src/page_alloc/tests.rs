//! Scenario and property tests of the page allocator, each naming the seed
//! section (or checklist row) whose rule it shows.
use super::buddy::FreeArea;
use super::*;
use crate::phys::sim::SimMemory;
use proptest::prelude::*;
use std::collections::BTreeSet;

const MIB: u64 = 1 << 20;

pub(crate) use super::test_support::{check_free_lists, record, Call, Recorder};

pub(crate) struct Fixture {
    pub a: Box<PageAllocator>,
    // Keeps the simulated RAM alive as long as the allocator points into it.
    pub(crate) _mem: Box<SimMemory>,
}

/// RAM [0, size) with the first MiB reserved, one node, `ncpus` CPUs.
pub(crate) fn fixture(size: u64, ncpus: usize) -> Fixture {
    fixture_topo(size, Topology::single(ncpus))
}

pub(crate) fn fixture_topo(size: u64, topo: Topology) -> Fixture {
    let mem = Box::new(SimMemory::new(PhysAddr(0), size));
    let mut mb = Memblock::new();
    mb.reserve(&*mem, PhysAddr(0), MIB).unwrap();
    // SAFETY: simulated RAM, its first MiB reserved before it is added.
    unsafe { mb.add(&*mem, PhysAddr(0), size).unwrap() };
    let mut a = Box::new(PageAllocator::EMPTY);
    a.init(&mut mb, &*mem, topo).unwrap();
    Fixture { a, _mem: mem }
}

impl Fixture {
    pub(crate) fn managed(&self) -> u64 {
        self.a.total_managed_pages()
    }
    /// Free blocks (pfn, order, list type) of every zone.
    pub(crate) fn free_blocks(&self) -> Vec<(u64, usize, MigrateType)> {
        let mut v = Vec::new();
        for z in self.a.zones() {
            let area = z.free.lock();
            for o in 0..NR_ORDERS {
                for mt in MigrateType::ALL {
                    let mut i = area.lists[o][mt as usize].head;
                    while i != crate::page::NIL {
                        v.push((self.a.map.pfn(i), o, mt));
                        // SAFETY: the zone lock is held.
                        i = unsafe { self.a.map.at(i) }.next;
                    }
                }
            }
        }
        v
    }
}

#[test]
fn init_hands_all_free_memory_to_buddy_in_maximal_blocks() {
    let f = fixture(64 * MIB, 1);
    let managed = f.managed();
    // RAM minus the reserved first MiB, the descriptor array and a few
    // pages of per-CPU lists and their rings.
    let upper = (64 - 1) * 256 - MemMap::bytes_for(64 * 256) / PAGE_SIZE;
    assert!(
        managed < upper && managed + 16 > upper,
        "{managed} vs {upper}"
    );
    assert_eq!(f.a.free_pages_buddy(), managed);
    // Zones: DMA below 16 MiB, DMA32 above.
    assert!(f.a.zone(0, ZoneType::Dma).populated() && f.a.zone(0, ZoneType::Dma32).populated());
    assert!(!f.a.zone(0, ZoneType::Normal).populated());
    // Row 1: every aligned 1,024-page region wholly free is one order-10 block.
    let blocks = f.free_blocks();
    let order10 = blocks.iter().filter(|b| b.1 == MAX_ORDER).count() as u64;
    assert!(order10 >= (64 - 16) / 4 - 1, "{order10}");
    for (pfn, o, _) in &blocks {
        assert_eq!(pfn % (1 << o), 0, "block at {pfn} misaligned for order {o}");
    }
}

#[test]
fn memblock_plus_buddy_accounts_for_every_page() {
    // Row 55: buddy free + reserved == total.
    let mem = SimMemory::new(PhysAddr(0), 32 * MIB);
    let mut mb = Memblock::new();
    mb.reserve(&mem, PhysAddr(0), MIB).unwrap();
    // SAFETY: simulated RAM with its live part reserved first.
    unsafe { mb.add(&mem, PhysAddr(0), 32 * MIB).unwrap() };
    let mut a = Box::new(PageAllocator::EMPTY);
    a.init(&mut mb, &mem, Topology::single(1)).unwrap();
    let reserved: u64 = mb.total_pages() - mb.free_pages();
    assert_eq!(a.free_pages_buddy() + reserved, mb.total_pages());
}

#[test]
fn alloc_free_round_trip_restores_maximal_blocks() {
    let f = fixture(64 * MIB, 2);
    let before = f.free_blocks().len();
    let mut held = Vec::new();
    {
        let mut c = f.a.cpu(0);
        for o in [0, 1, 3, 5, 9, 10, 0, 2] {
            held.push((c.alloc(Gfp::KERNEL, o).unwrap(), o));
        }
        for &(p, o) in &held {
            c.free(p, o).unwrap();
        }
    }
    f.a.drain_all_pages(None);
    assert_eq!(f.a.free_pages_buddy(), f.managed());
    assert_eq!(f.free_blocks().len(), before);
}

#[test]
fn bad_frees_are_reported_and_change_nothing() {
    let f = fixture(32 * MIB, 1);
    let mut c = f.a.cpu(0);
    let p = c.alloc(Gfp::KERNEL, 2).unwrap();
    let free_before = f.a.zones().map(|z| z.free_pages()).sum::<u64>();
    assert_eq!(
        c.free(Pfn(p.0 + 1), 0),
        Err(FreeError::NotAllocated(Pfn(p.0 + 1))),
        "tail page"
    );
    assert_eq!(
        c.free(Pfn(p.0 + 1), 2),
        Err(FreeError::Misaligned {
            pfn: Pfn(p.0 + 1),
            order: 2
        })
    );
    assert_eq!(
        c.free(p, 1),
        Err(FreeError::WrongOrder {
            pfn: p,
            allocated: 2,
            freed: 1
        })
    );
    assert_eq!(
        c.free(Pfn(10), 0),
        Err(FreeError::Reserved(Pfn(10))),
        "first MiB is reserved"
    );
    assert_eq!(
        c.free(Pfn(1 << 40), 0),
        Err(FreeError::Foreign(Pfn(1 << 40)))
    );
    assert_eq!(
        f.a.zones().map(|z| z.free_pages()).sum::<u64>(),
        free_before
    );
    c.free(p, 2).unwrap();
    assert_eq!(c.free(p, 2), Err(FreeError::NotAllocated(p)), "double free");
    let q = c.alloc(Gfp::KERNEL, 0).unwrap();
    c.free(q, 0).unwrap();
    assert_eq!(
        c.free(q, 0),
        Err(FreeError::NotAllocated(q)),
        "double free of a per-CPU page"
    );
}

#[test]
fn pcp_takes_the_zone_lock_once_per_batch() {
    // Row 14: lock acquisitions per order-0 pairs ≈ ops / batch, count ≤ high.
    let f = fixture(256 * MIB, 1);
    let lock0 = f.a.zone_lock_acquisitions();
    let mut c = f.a.cpu(0);
    let batch = c.pcp(0, ZoneType::Dma32).batch as u64;
    let high = c.pcp(0, ZoneType::Dma32).high;
    let mut held = Vec::new();
    for _ in 0..10_000 {
        held.push(c.alloc(Gfp::KERNEL, 0).unwrap());
        assert!(c.pcp(0, ZoneType::Dma32).count <= high);
    }
    for p in held.drain(..) {
        c.free(p, 0).unwrap();
        assert!(c.pcp(0, ZoneType::Dma32).count < high);
    }
    for _ in 0..100_000 {
        let p = c.alloc(Gfp::KERNEL, 0).unwrap();
        c.free(p, 0).unwrap();
    }
    drop(c);
    let locks = f.a.zone_lock_acquisitions() - lock0;
    // 10,000 allocations refill every `batch`; frees return in growing
    // batches; the 100,000 steady pairs never touch the zone.
    assert!(
        locks <= 10_000 / batch + 1 + 10_000 / batch + 1,
        "{locks} locks, batch {batch}"
    );
    assert_eq!(
        f.a.events().get(VmEvent::PcpAllocHit) + f.a.events().get(VmEvent::PcpRefill),
        110_000
    );
}

#[test]
fn drain_all_empties_every_cpu_and_restores_high_orders() {
    // Row 17: after drain_all every PCP count is 0 and high-order blocks
    // appear; a CPU that is not running (no guard held) is drained too.
    let f = fixture(64 * MIB, 3);
    for cpu in 0..3 {
        let mut c = f.a.cpu(cpu);
        let v: Vec<_> = (0..200)
            .map(|_| c.alloc(Gfp::USER_MOVABLE, 0).unwrap())
            .collect();
        for p in v {
            c.free(p, 0).unwrap();
        }
    }
    assert!(f.a.pcp_pages() > 0);
    assert_eq!(f.a.drain_all_pages(None), 3);
    assert_eq!(f.a.pcp_pages(), 0);
    assert_eq!(f.a.free_pages_buddy(), f.managed());
    assert_eq!(
        f.a.drain_all_pages(None),
        0,
        "only CPUs holding pages are drained"
    );
}

#[test]
fn bulk_allocation_locks_once_per_batch() {
    // Row 19: n = 512 takes the lock at most ceil(n / batch) times.
    let f = fixture(256 * MIB, 1);
    let mut c = f.a.cpu(0);
    let batch = c.pcp(0, ZoneType::Dma32).batch as u64;
    let lock0 = f.a.zone(0, ZoneType::Dma32).free.lock().lock_acquisitions;
    let mut out = [Pfn(0); 512];
    assert_eq!(c.alloc_bulk(Gfp::KERNEL, &mut out), 512);
    let locks = f.a.zone(0, ZoneType::Dma32).free.lock().lock_acquisitions - lock0;
    assert!(
        locks <= 512u64.div_ceil(batch),
        "{locks} > ceil(512/{batch})"
    );
    let set: BTreeSet<u64> = out.iter().map(|p| p.0).collect();
    assert_eq!(set.len(), 512);
}

#[test]
fn bulk_allocation_below_the_low_watermark_still_gets_one_page_seed_2_2_5() {
    // Seed 2.2.5.4 (Linux's alloc_pages_bulk): when no zone passes the
    // bulk route's watermark, one regular allocation is made instead, which
    // may go down to the slow path's lower mark.
    let f = fixture(64 * MIB, 1);
    let mut c = f.a.cpu(0);
    // Movable: no steal, so no boost raises the marks meanwhile.
    let g = Gfp::USER_MOVABLE;
    while c.alloc_direct(g, 0).is_some() {}
    let mut out = [Pfn(0); 4];
    assert_eq!(c.alloc_bulk(g, &mut out), 1);
    assert!(c.events().get(VmEvent::AllocSlowpath) >= 1);
}

#[test]
fn a_block_freed_straight_to_the_buddy_joins_its_pageblocks_type_seed_3_3() {
    // Seed 3.3 (Linux's __free_pages_ok): a block above the per-CPU orders
    // but below a pageblock goes back to the lists of its pageblock's
    // migrate type.
    let f = fixture(64 * MIB, 1);
    let mut c = f.a.cpu(0);
    let a = c.alloc(Gfp::KERNEL, 4).unwrap();
    let b = c.alloc(Gfp::KERNEL, 4).unwrap();
    assert_eq!(a.0 ^ 16, b.0, "buddies: the first cannot merge");
    assert_eq!(f.a.pageblock_mt(a.0), MigrateType::Unmovable);
    c.free(a, 4).unwrap();
    assert!(f.free_blocks().contains(&(a.0, 4, MigrateType::Unmovable)));
}

#[test]
fn pages_of_a_highatomic_pageblock_are_cached_on_the_movable_list() {
    // Linux's free_unref_page: there is no HighAtomic per-CPU list, so a
    // page of a HighAtomic pageblock is cached on the Movable one.
    let f = fixture(64 * MIB, 1);
    let mut c = f.a.cpu(0);
    let p = c.alloc(Gfp::KERNEL, 1).unwrap();
    let z = f.a.zone_index_of(p.0).unwrap();
    let (node, kind) = (f.a.zones[z].node, f.a.zones[z].kind);
    {
        let zone = &f.a.zones[z];
        let mut area = zone.lock();
        zone.buddy(&f.a.map, &mut area, true)
            .set_pageblock_mt(p.0, MigrateType::HighAtomic);
    }
    let list = |c: &CpuCache, mt| c.pcp(node, kind).lists[order_to_pindex(mt, 1)].len();
    assert_eq!(list(&c, MigrateType::Movable), 0);
    c.free(p, 1).unwrap();
    assert_eq!(list(&c, MigrateType::Movable), 1);
}

#[test]
fn order_aware_watermark_needs_a_block_of_the_order() {
    // Row 5: free > high but no order-k block: ok(k) false, ok(0) true.
    let f = fixture(32 * MIB, 1);
    let z = f.a.zone(0, ZoneType::Dma32);
    let mut area = FreeArea::EMPTY;
    area.nr_free[0] = 10_000;
    area.lists[0][MigrateType::Movable as usize].head = 0;
    let free = z.watermark[WMARK_HIGH] * 4;
    let f0 = AllocFlags::default();
    assert!(zone::watermark_ok(
        z,
        &area,
        0,
        z.watermark[WMARK_HIGH],
        ZoneType::Dma32,
        f0,
        free
    ));
    assert!(!zone::watermark_ok(
        z,
        &area,
        3,
        z.watermark[WMARK_HIGH],
        ZoneType::Dma32,
        f0,
        free
    ));
}

#[test]
fn grouping_by_mobility_cutoff() {
    // Row 9 (seed 3.3): off below MAX_ORDER_NR_PAGES × MIGRATE_TYPES pages.
    let tiny = fixture(20 * MIB, 1); // < 1024 × 5 pages free after the reserve
    assert!(!tiny.a.grouping_by_mobility());
    let big = fixture(64 * MIB, 1);
    assert!(big.a.grouping_by_mobility());
    assert_eq!(
        big.a.pageblock_counts(0, ZoneType::Dma32)[MigrateType::Unmovable as usize],
        0,
        "all start Movable"
    );
}

/// Fills every free list of `mt`'s own type in zone `z` by allocating them
/// (so the next request must fall back), returning what was taken.
fn exhaust(c: &mut CpuCache<'_>, gfp: Gfp, order: usize, n: usize) -> Vec<Pfn> {
    (0..n).map_while(|_| c.alloc_direct(gfp, order)).collect()
}

#[test]
fn stealing_retypes_a_pageblock_for_unmovable_requests() {
    // Row 10 (seed 2.2.7, 3.3.2): the first unmovable request in an
    // all-movable zone steals from the highest order and, since unmovable
    // requests may take a whole pageblock and it is more than half free,
    // retypes that pageblock.
    let f = fixture(64 * MIB, 1);
    let counts0 = f.a.pageblock_counts(0, ZoneType::Dma32);
    let mut c = f.a.cpu(0);
    let p = c.alloc_direct(Gfp::KERNEL.union(Gfp::DMA32), 0).unwrap();
    let ev = c.events();
    drop(c);
    assert_eq!(ev.get(VmEvent::PgAllocFallback), 1);
    let counts = f.a.pageblock_counts(0, ZoneType::Dma32);
    assert_eq!(
        counts[MigrateType::Unmovable as usize],
        counts0[MigrateType::Unmovable as usize] + 2,
        "order-10 block covers 2 pageblocks"
    );
    assert_eq!(f.a.pageblock_mt(p.0), MigrateType::Unmovable);
    assert!(
        ev.get(VmEvent::PgStealWholeBlock) == 1,
        "an order-10 block was taken whole"
    );
}

#[test]
fn movable_fallback_takes_the_smallest_block_when_it_cannot_claim() {
    // Seed 2.2.7 (4.13): a movable request that may not steal a whole
    // pageblock splits the smallest sufficient foreign block instead.
    let mut f = fixture(64 * MIB, 1);
    // No watermarks in DMA32, so the lists can be emptied by hand.
    f.a.zones[zid(0, ZoneType::Dma32)].watermark = [0; 3];
    let mut c = f.a.cpu(0);
    let dma32 = Gfp::DMA32;
    // An unmovable pageblock: the first unmovable page claims an order-10
    // block, leaving free unmovable blocks of orders 0..=9 beside it; 63
    // order-4 allocations then take every one of order 4 and up, so only
    // orders 0..=3 stay free there, too small for a movable claim.
    let u = exhaust(&mut c, Gfp::KERNEL.union(dma32), 0, 1)[0];
    let big = exhaust(&mut c, Gfp::KERNEL.union(dma32), 4, 63);
    assert_eq!(big.len(), 63);
    assert!(big.iter().all(|p| p.0 >> MAX_ORDER == u.0 >> MAX_ORDER));
    // Use up every movable block; the first movable allocation that has to
    // fall back is the one under test.
    let before = c.events().get(VmEvent::PgAllocFallback);
    let mut taken = 0;
    let p = loop {
        let p = c.alloc_direct(Gfp::USER_MOVABLE.union(dma32), 0).unwrap();
        if c.events().get(VmEvent::PgAllocFallback) > before {
            break p;
        }
        taken += 1;
    };
    assert!(taken > 1000, "movable lists were used first ({taken})");
    assert_eq!(p.0, u.0 + 1, "the order-0 block, not a split of order 3");
    assert_eq!(
        f.a.pageblock_mt(p.0),
        MigrateType::Unmovable,
        "not retyped: an order-0 movable request cannot claim"
    );
}

fn two_zone_fixture() -> Fixture {
    // DMA32 [1 MiB, 4 GiB) would need 4 GiB of simulated RAM; instead put
    // a small Normal zone above a DMA32 zone by moving the zone limit with
    // a memory map that starts just below 4 GiB.
    let base = (4u64 << 30) - 32 * MIB;
    let size = 64 * MIB;
    let mem = Box::new(SimMemory::new(PhysAddr(base), size));
    let mut mb = Memblock::new();
    // SAFETY: simulated RAM [base, base + size), nothing live in it.
    unsafe { mb.add(&*mem, PhysAddr(base), size).unwrap() };
    let mut a = Box::new(PageAllocator::EMPTY);
    a.init(&mut mb, &*mem, Topology::single(1)).unwrap();
    Fixture { a, _mem: mem }
}

#[test]
fn nofragment_prefers_the_lower_zone_over_fragmenting() {
    // Row 11 (seed 2.2.6): a small unmovable request whose Normal zone has
    // no free whole pageblock of its type is served from DMA32 (never DMA)
    // rather than by splitting a foreign pageblock; no fallback happens.
    let f = two_zone_fixture();
    let normal = f.a.zone(0, ZoneType::Normal);
    let dma32 = f.a.zone(0, ZoneType::Dma32);
    assert!(normal.populated() && dma32.populated());
    let mut c = f.a.cpu(0);
    // Fragment Normal: fill it with movable pages, free every other one.
    let mut m = Vec::new();
    while let Some(p) = c.alloc_direct(Gfp::USER_MOVABLE, 0) {
        if !normal.contains(p.0) {
            c.free_direct(p, 0).unwrap();
            break;
        }
        m.push(p);
    }
    for p in m.iter().step_by(2) {
        c.free_direct(*p, 0).unwrap();
    }
    // DMA32 gets an unmovable pageblock to serve from.
    c.alloc_direct(Gfp::KERNEL.union(Gfp::DMA32), 0).unwrap();
    let fallbacks = c.events().get(VmEvent::PgAllocFallback);
    let p = c.alloc(Gfp::KERNEL, 0).unwrap();
    assert!(
        dma32.contains(p.0),
        "served from DMA32, not by fragmenting Normal (pfn {:#x})",
        p.0
    );
    assert_eq!(
        c.events().get(VmEvent::PgAllocFallback),
        fallbacks,
        "no fallback event"
    );
    assert!(c.events().get(VmEvent::ZoneFallback) >= 1);
    drop(c);
    assert_eq!(
        f.a.pageblock_counts(0, ZoneType::Normal)[MigrateType::Unmovable as usize],
        0
    );
}

#[test]
fn watermark_bands_wake_kswapd_and_block_below_min() {
    // Rows 3/4 (seed 2.2.4): the fast path stops at low; between min and
    // low the slow path still succeeds and wakes kswapd; at min a normal
    // allocation fails (nothing to reclaim) while __GFP_HIGH and a
    // reclaimer (PF_MEMALLOC) may go below.
    let f = fixture(64 * MIB, 1);
    let z = f.a.zone(0, ZoneType::Dma32);
    let [min, low, _] = z.watermark;
    let mut c = f.a.cpu(0);
    let gfp = Gfp::NOWAIT.union(Gfp::DMA32).union(Gfp::MOVABLE);
    while c.alloc_direct(gfp, 0).is_some() {}
    assert!(
        z.free_pages() <= low + 1 && z.free_pages() > min,
        "fast path stops at low"
    );
    let wakes = c.events().get(VmEvent::KswapdWake);
    let slow = c.events().get(VmEvent::AllocSlowpath);
    assert!(c.alloc(gfp, 0).is_some(), "between min and low: succeeds");
    assert!(
        c.events().get(VmEvent::KswapdWake) > wakes
            && c.events().get(VmEvent::AllocSlowpath) > slow
    );
    while c.alloc(gfp, 0).is_some() {}
    let batch = c.pcp(0, ZoneType::Dma32).batch as u64;
    assert!(
        z.free_pages() <= min + batch,
        "stops at min: {} vs {min}",
        z.free_pages()
    );
    assert!(c.alloc(gfp, 0).is_none());
    // Below min a request that may reclaim enters direct reclaim (and, with
    // nothing reclaimable yet, fails after its retries).
    let stalls = c.events().get(VmEvent::DirectReclaim);
    assert!(c
        .alloc(Gfp::KERNEL.union(Gfp::DMA32).union(Gfp::MOVABLE), 0)
        .is_none());
    assert!(c.events().get(VmEvent::DirectReclaim) > stalls);
    assert!(
        c.alloc(Gfp::ATOMIC.union(Gfp::DMA32), 0).is_some(),
        "__GFP_HIGH may use the reserve"
    );
    assert!(
        c.alloc(gfp.union(Gfp::MEMALLOC), 0).is_some(),
        "reclaimers ignore watermarks"
    );
}

#[test]
fn fast_path_never_enters_the_slow_path_above_low() {
    // Row 2: with free > low, 10^5 allocations cause no slow path, reclaim
    // or compaction.
    let f = fixture(256 * MIB, 1);
    let mut c = f.a.cpu(0);
    for i in 0..100_000 {
        let p = c.alloc(Gfp::KERNEL, i % 2).unwrap();
        c.free(p, i % 2).unwrap();
    }
    let e = c.events();
    assert_eq!(
        e.get(VmEvent::AllocSlowpath)
            + e.get(VmEvent::DirectReclaim)
            + e.get(VmEvent::DirectCompact),
        0
    );
}

/// Operations for the property test.
#[derive(Clone, Debug)]
enum Op {
    Alloc {
        cpu: usize,
        order: usize,
        mt: u8,
        direct: bool,
    },
    Free {
        which: usize,
    },
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, prop_oneof![5 => 0..4usize, 1 => 0..=MAX_ORDER], 0..3u8, any::<bool>())
            .prop_map(|(cpu, order, mt, direct)| Op::Alloc { cpu, order, mt, direct }),
        5 => any::<usize>().prop_map(|which| Op::Free { which }),
        1 => Just(Op::Drain),
    ]
}

proptest! {
    // 256 cases of 1..800 operations: over 10^5 operations per run.
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random alloc/free/drain: no frame handed out twice, counts add up,
    /// and after freeing everything only maximal merged blocks remain, each
    /// large block on its pageblock's list.
    #[test]
    fn allocator_matches_model(ops in proptest::collection::vec(op(), 1..800)) {
        let f = fixture(48 * MIB, 2);
        let managed = f.managed();
        let blocks0: BTreeSet<_> = f.free_blocks().into_iter().map(|b| (b.0, b.1)).collect();
        let mut live: Vec<(u64, usize)> = Vec::new();
        let mut taken: BTreeSet<u64> = BTreeSet::new();
        for o in ops {
            match o {
                Op::Alloc { cpu, order, mt, direct } => {
                    let gfp = [Gfp::KERNEL, Gfp::USER_MOVABLE, Gfp::KERNEL_RECLAIMABLE][mt as usize];
                    let mut c = f.a.cpu(cpu);
                    let p = if direct { c.alloc_direct(gfp, order) } else { c.alloc(gfp, order) };
                    if let Some(p) = p {
                        prop_assert_eq!(p.0 % (1 << order), 0);
                        for q in p.0..p.0 + (1 << order) {
                            prop_assert!(taken.insert(q), "frame {} handed out twice", q);
                        }
                        live.push((p.0, order));
                    }
                }
                Op::Free { which } if !live.is_empty() => {
                    let (p, order) = live.swap_remove(which % live.len());
                    f.a.free_pages(which % 2, Pfn(p), order).unwrap();
                    for q in p..p + (1 << order) {
                        taken.remove(&q);
                    }
                }
                Op::Free { .. } => {}
                Op::Drain => { f.a.drain_all_pages(None); }
            }
            check_free_lists(&f.a);
            prop_assert_eq!(f.a.free_pages_buddy() + f.a.pcp_pages() + taken.len() as u64, managed);
            let e = f.a.events();
            prop_assert_eq!(e.get(VmEvent::PgAlloc) - e.get(VmEvent::PgFree), taken.len() as u64);
        }
        for (p, order) in live.drain(..) {
            f.a.free_pages(0, Pfn(p), order).unwrap();
        }
        f.a.drain_all_pages(None);
        prop_assert_eq!(f.a.free_pages_buddy(), managed);
        let blocks: BTreeSet<_> = f.free_blocks().into_iter().map(|b| (b.0, b.1)).collect();
        prop_assert_eq!(&blocks, &blocks0, "not merged back to the initial maximal blocks");
        for (pfn, order, mt) in f.free_blocks() {
            if order >= crate::mmzone::PAGEBLOCK_ORDER {
                prop_assert_eq!(mt, f.a.pageblock_mt(pfn), "block {} order {} on the wrong list", pfn, order);
            }
        }
        let mut pbs = 0;
        for z in [ZoneType::Dma, ZoneType::Dma32] {
            pbs += f.a.pageblock_counts(0, z).iter().sum::<u64>();
        }
        prop_assert!(pbs > 0);
    }
}

#[test]
fn drain_of_a_busy_cpu_is_deferred_to_the_end_of_its_burst() {
    // Row 17: remote drain needs no work from a halted target; a busy one
    // is not waited for (no deadlock) and drains itself when it stops.
    let f = fixture(64 * MIB, 2);
    let mut busy = f.a.cpu(1);
    let p = busy.alloc(Gfp::KERNEL, 0).unwrap();
    busy.free(p, 0).unwrap();
    assert!(busy.pcp(0, ZoneType::Dma32).count > 0);
    assert_eq!(
        f.a.drain_all_pages(None),
        0,
        "CPU 1 is busy: asked, not waited for"
    );
    drop(busy);
    assert_eq!(f.a.pcp_pages(), 0, "it drained itself when the burst ended");
}

#[test]
fn grouping_by_mobility_keeps_huge_blocks_free_after_mixed_churn() {
    // Row 8 (seed 3.3): interleave unmovable and movable allocations, free
    // the movable ones: with grouping, far fewer pageblocks are polluted and
    // far more order-9 blocks come back than without.
    fn run(grouping: bool) -> (u64, u64) {
        let size = 128 * MIB;
        let mem = Box::new(SimMemory::new(PhysAddr(0), size));
        let mut mb = Memblock::new();
        mb.reserve(&*mem, PhysAddr(0), MIB).unwrap();
        // SAFETY: simulated RAM, live part reserved first.
        unsafe { mb.add(&*mem, PhysAddr(0), size).unwrap() };
        let mut a = Box::new(PageAllocator::EMPTY);
        a.init_with(&mut mb, &*mem, Topology::single(1), Some(grouping))
            .unwrap();
        let mut c = a.cpu(0);
        let mut movable = Vec::new();
        let mut unmovable = Vec::new();
        let mut x = 12345u64;
        loop {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let gfp = if x.is_multiple_of(10) {
                Gfp::NOWAIT
            } else {
                Gfp::NOWAIT.union(Gfp::MOVABLE)
            };
            match c.alloc(gfp, 0) {
                Some(p) if gfp.contains(Gfp::MOVABLE) => movable.push(p),
                Some(p) => unmovable.push(p),
                None => break,
            }
        }
        for p in movable {
            c.free(p, 0).unwrap();
        }
        c.drain_all(None);
        drop(c);
        let mut order9 = 0;
        for z in [ZoneType::Dma, ZoneType::Dma32] {
            let info = a.pagetypeinfo(0, z);
            for o in 9..NR_ORDERS {
                order9 += info.blocks_of_order(o) << (o - 9);
            }
        }
        let theoretical = a.free_pages_buddy() / 512;
        (order9, theoretical)
    }
    let (on, max_on) = run(true);
    let (off, max_off) = run(false);
    eprintln!("free order-9 blocks after churn: grouping on {on}/{max_on}, off {off}/{max_off}");
    assert!(
        on > 2 * off.max(1),
        "grouping on: {on}/{max_on} order-9 blocks free, off: {off}/{max_off}"
    );
}

#[test]
fn reclaimable_slab_caches_live_in_reclaimable_pageblocks() {
    // Row 57 with the real page allocator underneath: kmalloc-rcl slabs come
    // from RECLAIMABLE pageblocks, ordinary kmalloc slabs never do.
    use crate::slab::Kmalloc;
    let f = fixture(64 * MIB, 1);
    let mem = &*f._mem;
    let k = Box::new(Kmalloc::new());
    let mut rcl = Vec::new();
    let mut plain = Vec::new();
    for i in 0..2000 {
        let size = 8 << (i % 8);
        rcl.push(k.kmalloc(mem, &*f.a, 0, size, true).unwrap());
        plain.push(k.kmalloc(mem, &*f.a, 0, size, false).unwrap());
    }
    for p in &rcl {
        assert_eq!(f.a.pageblock_mt(p.pfn().0), MigrateType::Reclaimable);
    }
    for p in &plain {
        assert_eq!(f.a.pageblock_mt(p.pfn().0), MigrateType::Unmovable);
    }
    for p in rcl.into_iter().chain(plain) {
        k.kfree(mem, &*f.a, 0, p).unwrap();
    }
    let _ = k.shrink(mem, &*f.a, 0);
    f.a.drain_all_pages(None);
    assert_eq!(
        f.a.free_pages_buddy(),
        f.managed(),
        "every slab page came back"
    );
}

#[test]
fn high_order_atomic_allocations_reserve_a_pageblock_given_back_before_failing() {
    // Seed 2.2.4 (ALLOC_HARDER) with Linux's HighAtomic reserve: a
    // high-order atomic request in the slow path sets its pageblock aside;
    // ordinary requests cannot use it, until memory runs out and the slow
    // path gives it back rather than fail.
    let f = fixture(64 * MIB, 1);
    let z = f.a.zone(0, ZoneType::Dma32);
    let mut c = f.a.cpu(0);
    let movable = Gfp::NOWAIT.union(Gfp::DMA32).union(Gfp::MOVABLE);
    while c.alloc_direct(movable, 0).is_some() {}
    // Below low: the fast path refuses, the atomic slow path succeeds.
    let p = c.alloc(Gfp::ATOMIC.union(Gfp::DMA32), 2).unwrap();
    assert_eq!(c.events().get(VmEvent::HighAtomicReserve), 1);
    assert_eq!(f.a.pageblock_mt(p.0), MigrateType::HighAtomic);
    assert_eq!(
        z.free.lock().nr_reserved_highatomic,
        crate::mmzone::PAGEBLOCK_NR_PAGES
    );
    // Ordinary requests cannot take pages from the reserved pageblock.
    let block = p.0 & !(crate::mmzone::PAGEBLOCK_NR_PAGES - 1);
    while let Some(q) = c.alloc(
        Gfp::NOWAIT
            .union(Gfp::DMA32)
            .union(Gfp::MOVABLE)
            .union(Gfp::MEMALLOC),
        0,
    ) {
        assert_ne!(
            q.0 & !(crate::mmzone::PAGEBLOCK_NR_PAGES - 1),
            block,
            "reserve used by an ordinary request"
        );
    }
    // Another atomic request still gets served from it (an order-0 one,
    // which also ignores any watermark boost).
    let q = c.alloc(Gfp::ATOMIC.union(Gfp::DMA32), 0).unwrap();
    assert_eq!(q.0 & !(crate::mmzone::PAGEBLOCK_NR_PAGES - 1), block);
    // Under pressure the reserve is given back, the last one only when the
    // slow path is about to fail (force).
    let g = Gfp::KERNEL.union(Gfp::DMA32);
    assert!(
        !c.unreserve_highatomic(0, g, false),
        "the last reserved pageblock is kept"
    );
    assert!(c.unreserve_highatomic(0, g, true));
    assert_eq!(z.free.lock().nr_reserved_highatomic, 0);
    assert_eq!(f.a.pageblock_mt(p.0), MigrateType::Unmovable);
}

#[test]
fn adaptive_bulk_free_doubles_and_keeps_a_batch() {
    // Row 16 (seed 2.2.5.3): consecutive frees past high return batch,
    // 2·batch, 4·batch…; an allocation halves the factor; at least `batch`
    // pages stay on the list after every bulk free.
    let f = fixture(256 * MIB, 1);
    let mut c = f.a.cpu(0);
    let (batch, high) = {
        let p = c.pcp(0, ZoneType::Dma32);
        (p.batch, p.high)
    };
    let held: Vec<_> = (0..(high as usize * 3))
        .map(|_| c.alloc(Gfp::USER_MOVABLE, 0).unwrap())
        .collect();
    let mut freed_sizes = Vec::new();
    let mut last = c.pcp(0, ZoneType::Dma32).count;
    for p in held {
        c.free(p, 0).unwrap();
        let now = c.pcp(0, ZoneType::Dma32).count;
        if now < last {
            freed_sizes.push(last + 1 - now);
            assert!(now >= batch, "list kept at least a batch: {now} < {batch}");
        }
        last = now;
    }
    assert!(freed_sizes.len() >= 3, "{freed_sizes:?}");
    assert_eq!(freed_sizes[0], batch);
    assert_eq!(freed_sizes[1], 2 * batch);
    assert_eq!(freed_sizes[2], 4 * batch);
    let factor = c.pcp(0, ZoneType::Dma32).free_factor;
    c.alloc(Gfp::USER_MOVABLE, 0).unwrap();
    assert_eq!(
        c.pcp(0, ZoneType::Dma32).free_factor,
        factor >> 1,
        "an allocation halves it"
    );
}

#[test]
fn a_million_random_operations_never_hand_out_a_frame_twice() {
    // Row 1 (seed 2.2.1): 10^6 alloc/free of random orders and types from
    // two CPUs: no overlap, and after freeing everything each aligned
    // 1,024-page region is one order-10 block again.
    let f = fixture(64 * MIB, 2);
    let blocks0: BTreeSet<_> = f.free_blocks().into_iter().map(|b| (b.0, b.1)).collect();
    let mut owner = vec![false; (64 * MIB / PAGE_SIZE) as usize];
    let mut live: Vec<(u64, usize)> = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let gfps = [
        Gfp::NOWAIT,
        Gfp::NOWAIT.union(Gfp::MOVABLE),
        Gfp::NOWAIT.union(Gfp::RECLAIMABLE),
    ];
    let mut cpus = [f.a.cpu(0), f.a.cpu(1)];
    for i in 0..1_000_000u32 {
        if i % 50_000 == 0 {
            check_free_lists(&f.a);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let c = &mut cpus[(x >> 60) as usize & 1];
        if live.len() < 64 || (!x.is_multiple_of(3) && live.len() < 4096) {
            let order = [0, 0, 0, 0, 1, 2, 3, 5, 9, 10][(x >> 8) as usize % 10];
            if let Some(p) = c.alloc(gfps[(x >> 20) as usize % 3], order) {
                for q in p.0..p.0 + (1 << order) {
                    assert!(
                        !std::mem::replace(&mut owner[q as usize], true),
                        "frame {q} handed out twice"
                    );
                }
                live.push((p.0, order));
            }
        } else {
            let (p, order) = live.swap_remove((x >> 16) as usize % live.len());
            c.free(Pfn(p), order).unwrap();
            for q in p..p + (1 << order) {
                owner[q as usize] = false;
            }
        }
    }
    for (p, order) in live {
        cpus[0].free(Pfn(p), order).unwrap();
    }
    cpus[0].drain_all(None);
    drop(cpus);
    f.a.drain_all_pages(None);
    assert_eq!(f.a.free_pages_buddy(), f.managed());
    let blocks: BTreeSet<_> = f.free_blocks().into_iter().map(|b| (b.0, b.1)).collect();
    assert_eq!(blocks, blocks0);
}

/// Every populated zone: (free pages on its buddy lists, its free count).
fn free_counts(f: &Fixture) -> Vec<(u64, u64)> {
    f.a.zones()
        .map(|z| {
            (
                f.a.pagetypeinfo(z.node, z.kind).free_pages(),
                z.free_pages(),
            )
        })
        .collect()
}

#[test]
fn zone_free_count_stays_exact_through_per_cpu_differentials() {
    // [NOT IN SEED] Linux's vm_stat_diff / __mod_zone_page_state: the zone's
    // free count is a shared part plus per-CPU differentials. Their sum must
    // equal the pages on the buddy lists after every operation, and after a
    // drain, which folds, the shared part alone must.
    let f = fixture(64 * MIB, 2);
    let z = f.a.zone(0, ZoneType::Dma32);
    assert!(z.vm_free.threshold() > 0, "differentials in use");
    let mut live = Vec::new();
    let mut held = 0u64;
    let mut saw_diff = false;
    for i in 0..3000usize {
        let cpu = i % 2;
        let order = [0, 0, 1, 3, 9, 0, 4][i % 7];
        let mut c = f.a.cpu(cpu);
        if (i % 5 < 3 && held < f.managed() / 2) || live.is_empty() {
            held += 1 << order;
            let p = if i % 3 == 0 {
                c.alloc_direct(Gfp::USER_MOVABLE, order)
            } else {
                c.alloc(Gfp::USER_MOVABLE, order)
            };
            live.push((p.unwrap(), order));
        } else {
            let (p, order) = live.swap_remove(i * 7 % live.len());
            held -= 1 << order;
            if i % 3 == 0 {
                c.free_direct(p, order).unwrap();
            } else {
                c.free(p, order).unwrap();
            }
        }
        drop(c);
        saw_diff |= (0..2).any(|cpu| z.vm_free.diff(cpu) != 0);
        for (on_lists, counted) in free_counts(&f) {
            assert_eq!(on_lists, counted, "after operation {i}");
        }
    }
    assert!(saw_diff, "the churn never left a differential unfolded");
    f.a.drain_all_pages(None);
    for z in f.a.zones() {
        assert_eq!((z.vm_free.diff(0), z.vm_free.diff(1)), (0, 0));
        assert_eq!(
            z.vm_free.folded() as u64,
            z.free_pages(),
            "folded after the drain"
        );
    }
    for (on_lists, counted) in free_counts(&f) {
        assert_eq!(on_lists, counted);
    }
    let mut c = f.a.cpu(0);
    for (p, order) in live {
        c.free(p, order).unwrap();
    }
    drop(c);
    f.a.drain_all_pages(None);
    assert_eq!(
        f.a.free_pages_buddy(),
        f.managed(),
        "everything back, exactly"
    );
}

#[test]
fn watermark_decisions_near_the_mark_use_the_exact_count() {
    // With per-CPU differentials the folded count can sit on the wrong side
    // of a watermark; the order-0 check must still answer as the exact
    // count does (zone_page_state_snapshot near the mark).
    let f = fixture(64 * MIB, 2);
    let z = f.a.zone(0, ZoneType::Dma32);
    let exact = z.free_pages() as i64;
    let drift = z.vm_free.max_drift();
    assert!(drift > 0);
    // Leave a differential on CPU 1 that the folded count does not show.
    let d = z.vm_free.threshold() as i64;
    z.vm_free.add(1, -d);
    assert_eq!(z.vm_free.folded(), exact, "not folded yet");
    for bound in exact - 2 * d..exact + d {
        assert_eq!(z.vm_free.above(bound), exact - d > bound, "bound {bound}");
    }
    z.vm_free.add(1, d);
}

#[test]
fn bulk_refill_takes_what_repeated_smallest_takes() {
    // Row 14's refill takes `batch` blocks with one lock; rmqueue_bulk must
    // hand out the same blocks in the same order as that many
    // __rmqueue_smallest calls and leave the same free lists behind, from
    // any state of the lists (here: a zone with scattered holes).
    for (n, order) in [
        (63u32, 0usize),
        (1, 0),
        (200, 0),
        (31, 1),
        (7, 3),
        (5000, 0),
    ] {
        let states: Vec<Fixture> = (0..2).map(|_| fixture(32 * MIB, 1)).collect();
        for f in &states {
            let mut c = f.a.cpu(0);
            let held: Vec<_> = (0..300)
                .map(|i| (c.alloc_direct(Gfp::USER_MOVABLE, i % 3).unwrap(), i % 3))
                .collect();
            for (i, &(p, o)) in held.iter().enumerate() {
                if i % 3 != 1 {
                    c.free_direct(p, o).unwrap();
                }
            }
        }
        fn z(f: &Fixture) -> &Zone {
            f.a.zone(0, ZoneType::Dma32)
        }
        let mt = MigrateType::Movable;
        let one_by_one: Vec<u32> = {
            let f = &states[0];
            let mut area = z(f).lock();
            let mut b = z(f).buddy(&f.a.map, &mut area, true);
            (0..n)
                .map_while(|_| b.rmqueue_smallest(order, mt))
                .collect()
        };
        let mut bulk = Vec::new();
        {
            let f = &states[1];
            let mut area = z(f).lock();
            let mut b = z(f).buddy(&f.a.map, &mut area, true);
            let got = b.rmqueue_bulk(order, mt, n, |i, _| bulk.push(i));
            assert_eq!(got as usize, bulk.len());
        }
        assert_eq!(bulk, one_by_one, "n={n} order={order}");
        assert_eq!(
            states[0].free_blocks(),
            states[1].free_blocks(),
            "free lists differ, n={n} order={order}"
        );
    }
}

#[test]
fn isolated_pageblock_never_merges_with_a_usable_one() {
    // A pageblock taken out of use (MIGRATE_ISOLATE, row 17's drain during
    // isolation) must not be merged into a usable order-10 block, even
    // though the merge loop skips the check while no pageblock is isolated.
    let f = fixture(32 * MIB, 1);
    let z = f.a.zone(0, ZoneType::Dma32);
    let mut c = f.a.cpu(0);
    // Two buddy pageblocks, both allocated.
    let got: Vec<Pfn> = (0..8)
        .map(|_| c.alloc(Gfp::USER_MOVABLE, PAGEBLOCK_ORDER).unwrap())
        .collect();
    let a = *got
        .iter()
        .find(|p| p.0 & PAGEBLOCK_NR_PAGES == 0 && got.contains(&Pfn(p.0 ^ PAGEBLOCK_NR_PAGES)))
        .expect("a buddy pair among eight order-9 blocks");
    let b = Pfn(a.0 ^ PAGEBLOCK_NR_PAGES);
    for &p in got.iter().filter(|&&p| p != a && p != b) {
        c.free(p, PAGEBLOCK_ORDER).unwrap();
    }
    {
        let mut area = z.lock();
        let mut bd = z.buddy(&f.a.map, &mut area, true);
        bd.set_pageblock_mt(b.0, MigrateType::Isolate);
        assert_eq!(area.nr_isolate_pageblock, 1);
    }
    c.free(b, PAGEBLOCK_ORDER).unwrap();
    c.free(a, PAGEBLOCK_ORDER).unwrap();
    drop(c);
    let head = a.0 & !(PAGEBLOCK_NR_PAGES * 2 - 1);
    let blocks = f.free_blocks();
    assert!(
        !blocks.iter().any(|&(p, o, _)| p == head && o == MAX_ORDER),
        "isolated pageblock merged"
    );
    assert!(blocks.contains(&(b.0, PAGEBLOCK_ORDER, MigrateType::Isolate)));
    // Released again, the next free of a neighbour merges as usual.
    {
        let mut area = z.lock();
        let mut bd = z.buddy(&f.a.map, &mut area, true);
        bd.set_pageblock_mt(b.0, MigrateType::Movable);
        assert_eq!(area.nr_isolate_pageblock, 0);
    }
}

#[test]
fn thisnode_on_a_node_without_memory_never_takes_the_fast_path_elsewhere() {
    // Row 7 on a memoryless node: its CPU's order-0 and order-9 fast paths
    // must not serve a THISNODE request from another node's zone (they
    // start only at a local zone); a plain request spills as row 6 says.
    let mut topo = Topology::single(2);
    topo.nr_nodes = 2;
    topo.distances = Distances::uniform(2);
    topo.node_range[0] = (0, 64 * MIB);
    topo.node_range[1] = (64 * MIB, 64 * MIB);
    topo.cpu_node[1] = 1;
    let f = fixture_topo(64 * MIB, topo);
    let mut c = f.a.cpu(1);
    let thisnode = Gfp::NOWAIT.union(Gfp::THISNODE);
    for order in [0, 0, 9] {
        assert_eq!(c.alloc(thisnode, order), None, "order {order}");
    }
    let p = c.alloc(Gfp::NOWAIT, 0).expect("spills to node 0");
    c.free(p, 0).unwrap();
    assert!(c.events().get(VmEvent::NumaMiss) >= 1);
}

#[test]
fn bulk_free_joins_consecutive_pages_of_one_type_into_a_run() {
    // The bulk free's runs (free_pcp_bulk): consecutive pages, rising or
    // falling, of one migrate type join one run; a gap, a turn or another
    // type starts a new one. (That the result equals page-by-page freeing
    // is the property test below; this pins that runs do form.)
    let m = MigrateType::Movable;
    let run_of = |pages: &[(u32, MigrateType)]| {
        let mut r = PageRun::start(pages[0].0, pages[0].1);
        let joined = pages[1..]
            .iter()
            .take_while(|&&(i, t)| r.extend(i, t))
            .count();
        (joined + 1, r.len, r.dir)
    };
    assert_eq!(run_of(&[(8, m), (9, m), (10, m), (11, m)]), (4, 4, 1));
    assert_eq!(run_of(&[(11, m), (10, m), (9, m), (8, m)]), (4, 4, -1));
    assert_eq!(run_of(&[(8, m), (9, m), (11, m)]).0, 2, "a gap");
    assert_eq!(run_of(&[(8, m), (9, m), (8, m)]).0, 2, "a turn");
    assert_eq!(run_of(&[(8, m), (7, m), (6, m), (7, m)]).0, 3, "a turn");
    let u = MigrateType::Unmovable;
    assert_eq!(run_of(&[(8, m), (9, m), (10, u)]).0, 2, "another type");
    assert_eq!(run_of(&[(8, u), (9, m)]).0, 1, "another type");
    let mut empty = PageRun::EMPTY;
    assert!(
        !empty.extend(0, m) && !empty.extend(1, m),
        "an empty run takes nothing"
    );
}

proptest! {
    // 48 cases of ~2,600 allocator operations each: over 10^5 per run.
    #![proptest_config(ProptestConfig::with_cases(48))]
    // The bulk free frees runs of consecutive pages as aligned blocks; the
    // free lists, in order, must end exactly as freeing the pages one at a
    // time in the same order does (free_pcppages_bulk → __free_one_page),
    // whatever mix of rising, falling and scattered pages comes, and of
    // migrate types (each page goes to its own type's list, so a run never
    // spans two types).
    #[test]
    fn bulk_free_of_runs_ends_as_page_by_page(
        chunks in proptest::collection::vec((1usize..80, 0u8..4, any::<bool>()), 1..40),
        rotate in 0usize..1000,
    ) {
        let states: Vec<Fixture> = (0..2).map(|_| fixture(32 * MIB, 1)).collect();
        let mut pages = Vec::new();
        for (k, f) in states.iter().enumerate() {
            let mut c = f.a.cpu(0);
            // Some holes first, so merges meet free and busy neighbours.
            let held: Vec<_> = (0..200).map(|_| c.alloc_direct(Gfp::USER_MOVABLE, 0).unwrap()).collect();
            for (i, &p) in held.iter().enumerate() {
                if i % 5 == 2 {
                    c.free_direct(p, 0).unwrap();
                }
            }
            let got: Vec<u32> = (0..700)
                .map(|_| f.a.map.idx(c.alloc_direct(Gfp::USER_MOVABLE, 0).unwrap().0))
                .collect();
            if k == 0 {
                pages = got;
            } else {
                prop_assert_eq!(&pages, &got);
            }
        }
        pages.sort_unstable();
        let n = pages.len();
        pages.rotate_left(rotate % n);
        // The order the bulk free meets them: chunks kept, reversed,
        // interleaved, or left allocated (so some blocks stay apart and the
        // order of the lists shows).
        let mut seq = Vec::new();
        let mut rest = &pages[..];
        for (len, how, movable) in chunks {
            let (chunk, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            let mt = if movable { MigrateType::Movable } else { MigrateType::Unmovable };
            let typed = |it: &mut dyn Iterator<Item = &u32>| it.map(|&i| (i, mt)).collect::<Vec<_>>();
            match how {
                0 => seq.extend(typed(&mut chunk.iter())),
                1 => seq.extend(typed(&mut chunk.iter().rev())),
                3 => {}
                _ => {
                    seq.extend(typed(&mut chunk.iter().step_by(2)));
                    seq.extend(typed(&mut chunk.iter().skip(1).step_by(2)));
                }
            }
        }
        seq.extend(rest.iter().rev().map(|&i| (i, MigrateType::Movable)));
        let z = |_: &Fixture| zid(0, ZoneType::Dma32);
        {
            let f = &states[0];
            let zone = &f.a.zones[z(f)];
            let mut area = zone.lock();
            let mut b = zone.buddy(&f.a.map, &mut area, true);
            let mut run = PageRun::EMPTY;
            for &(idx, mt) in &seq {
                run.add(&mut b, idx, 0, mt);
            }
            run.free(&mut b);
        }
        {
            let f = &states[1];
            let zone = &f.a.zones[z(f)];
            let mut area = zone.lock();
            let mut b = zone.buddy(&f.a.map, &mut area, true);
            for &(idx, mt) in &seq {
                b.free_one(idx, 0, mt);
            }
        }
        prop_assert_eq!(states[0].free_blocks(), states[1].free_blocks());
    }
}

#[test]
fn slab_page_provider_reports_a_bad_free_in_every_build() {
    // Row 57: the slab's page provider hands a refused free back as an
    // error (release builds included) instead of dropping it.
    use crate::slab::{BadPageFree, PageProvider};
    let f = fixture(32 * MIB, 1);
    let p = PageProvider::alloc_pages(&*f.a, 0, 1, false).unwrap();
    let bad = |order| Err(BadPageFree { addr: p, order });
    assert_eq!(PageProvider::free_pages(&*f.a, 0, p, 0), bad(0));
    assert_eq!(PageProvider::free_pages(&*f.a, 0, p, 1), Ok(()));
    assert_eq!(PageProvider::free_pages(&*f.a, 0, p, 1), bad(1));
}

#[test]
fn the_allocators_own_memory_is_never_free_memory_seed_2_2_1() {
    // Row 1: the descriptors, every CPU's per-CPU list heads and their
    // rings lie in memory memblock reserved for the allocator, apart from
    // each other: no free block the allocator could hand out overlaps any
    // of them.
    let f = fixture(64 * MIB, 3);
    let base = f._mem.phys_to_ptr(PhysAddr(0)) as usize;
    let map = f.a.mem_map();
    let mut own: Vec<(usize, usize, String)> = Vec::new();
    // SAFETY: the descriptor of the map's first frame; only its address is used.
    let desc = unsafe { map.at(0) } as *const Page as usize;
    let desc_len = ((map.end_pfn() - map.start_pfn()) * crate::page::PAGE_DESC_SIZE) as usize;
    own.push((desc - base, desc_len, "descriptors".into()));
    for cpu in 0..f.a.topo.ncpus {
        let pages = f.a.cpus[cpu].lock();
        for z in 0..MAX_ZONES {
            if !pages.pcp.has(z) {
                continue;
            }
            let set = pages.pcp.ptr[z] as usize;
            own.push((
                set - base,
                core::mem::size_of::<PerCpuPages>(),
                format!("cpu {cpu} zone {z} lists"),
            ));
            for (i, l) in pages.pcp[z].lists.iter().enumerate() {
                let (ring, n) = l.ring_span();
                assert!(n > 0, "cpu {cpu} zone {z} list {i}: no ring");
                own.push((
                    ring as usize - base,
                    n * 4,
                    format!("cpu {cpu} zone {z} ring {i}"),
                ));
            }
        }
    }
    own.sort();
    for w in own.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "{} overlaps {}", w[0].2, w[1].2);
    }
    for (pfn, order, _) in f.free_blocks() {
        let (s, e) = (
            (pfn * PAGE_SIZE) as usize,
            ((pfn + (1 << order)) * PAGE_SIZE) as usize,
        );
        for (at, len, what) in &own {
            assert!(
                at + len <= s || e <= *at,
                "{what} lies in free block {pfn} order {order}"
            );
        }
    }
}

#[test]
fn the_descriptor_array_covers_the_memory_not_everything_below_it_seed_0_1() {
    // Seed 0.1: one descriptor per frame of RAM, from the first region's
    // MAX_ORDER-aligned start to the last one's aligned end (a guest whose
    // RAM starts high does not pay for descriptors of the hole below).
    let start = 1 << 30;
    let size = 64 * MIB;
    let mem = Box::new(SimMemory::new(PhysAddr(start), size));
    let mut mb = Memblock::new();
    // SAFETY: simulated RAM.
    unsafe { mb.add(&*mem, PhysAddr(start), size).unwrap() };
    let mut a = Box::new(PageAllocator::EMPTY);
    a.init(&mut mb, &*mem, Topology::single(1)).unwrap();
    let pfn = start / PAGE_SIZE;
    assert_eq!(
        (a.mem_map().start_pfn(), a.mem_map().end_pfn()),
        (pfn, pfn + size / PAGE_SIZE)
    );
}

#[test]
fn the_allocator_never_writes_into_pages_it_handed_out_seed_2_2_1() {
    // Row 1: the allocator's own data (descriptors, per-CPU lists and
    // their rings) lives in memory memblock reserved for it, never in a
    // page it handed out: every held page keeps its contents while the
    // per-CPU lists and the buddy lists churn.
    let f = fixture(32 * MIB, 2);
    let mem = &*f._mem;
    let mut c = f.a.cpu(0);
    let mut held = Vec::new();
    while let Some(p) = c.alloc(Gfp::NOWAIT.union(Gfp::MEMALLOC), 0) {
        held.push(p);
    }
    let fill = |p: Pfn| {
        // SAFETY: the page is allocated to this test; simulated RAM.
        let page =
            unsafe { core::slice::from_raw_parts_mut(mem.phys_to_ptr(p.addr()) as *mut u64, 512) };
        page.fill(p.0.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    };
    let intact = |p: Pfn| {
        // SAFETY: as above; read only.
        let page =
            unsafe { core::slice::from_raw_parts(mem.phys_to_ptr(p.addr()) as *const u64, 512) };
        page.iter()
            .all(|&w| w == p.0.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    };
    held.iter().copied().for_each(fill);
    let (kept, churn): (Vec<Pfn>, Vec<Pfn>) = held.iter().partition(|p| p.0 % 3 == 0);
    for round in 0..3 {
        for &p in &churn {
            c.free(p, 0).unwrap();
        }
        c.drain_all(None);
        for _ in 0..churn.len() {
            let p = c.alloc(Gfp::NOWAIT.union(Gfp::MEMALLOC), 0).unwrap();
            assert!(!kept.contains(&p), "round {round}: a held page handed out");
        }
    }
    assert!(kept.iter().all(|&p| intact(p)), "a held page was written");
}
