//! Scenario tests of the page tables, each naming the checklist row
//! (SEED_SPEC) whose rule it shows. The property test (row 50) is in
//! `replica_tests.rs`.
use super::test_support::*;
use super::*;
use crate::phys::sim::SimMemory;

const LEVELS: [Levels; 2] = [Levels::Four, Levels::Five];
const GIB: u64 = 1 << 30;

fn space(pool: &SimPool, levels: Levels) -> AddressSpace<&SimMemory> {
    AddressSpace::new(&pool.mem, pool, levels, 0).unwrap()
}

/// `va` sign-extended from the mode's top bit.
fn canon(va: u64, levels: Levels) -> u64 {
    let s = 64 - levels.va_bits();
    (((va << s) as i64) >> s) as u64
}

/// Addresses at every level boundary for leaves of `size`: the first,
/// second, second-to-last and last entry of each level at or above the
/// leaf's (the rest of the address zero), the top and bottom of each half,
/// and the very top of the address space.
fn boundary_vas(levels: Levels, size: PageSize) -> Vec<u64> {
    let mut v = Vec::new();
    for level in size.level()..levels.count() {
        for i in [0u64, 1, 510, 511] {
            v.push(canon(i << (12 + 9 * level), levels));
        }
    }
    let b = size.bytes();
    v.push(levels.user_top() + 1 - b); // top of the user half
    v.push(!levels.user_top()); // bottom of the kernel half
    v.push(0u64.wrapping_sub(b)); // top of the address space
    v.sort();
    v.dedup();
    v
}

#[test]
fn row47_map_unmap_at_every_level_boundary_and_top_of_va() {
    for levels in LEVELS {
        for size in PageSize::ALL {
            let pool = SimPool::new(1, 64);
            let mut s = space(&pool, levels);
            let mut g = MmuGather::new();
            let mut tlb = CountingTlb::new(&pool);
            let pa = PhysAddr(7 * GIB);
            for va in boundary_vas(levels, size) {
                assert!(is_canonical(va, levels), "{va:#x}");
                s.map(&pool, va, pa, size, RW)
                    .unwrap_or_else(|e| panic!("{levels:?} {size:?} {va:#x}: {e:?}"));
                // One table per level below the root, nothing shared yet.
                let want_tables = 1 + (levels.count() - 1 - size.level()) as u64;
                assert_eq!(s.pt_pages(0), want_tables, "{levels:?} {size:?} {va:#x}");
                // The hardware finds it where the CPU looks.
                let (e, level) = hw_walk(&pool.mem, s.root(0), levels, va + 0x123, false).unwrap();
                assert_eq!(
                    (level, e & 0x000f_ffff_ffff_f000 & !(size.bytes() - 1)),
                    (size.level(), pa.0)
                );
                assert_eq!(e & PTE_PS != 0, size != PageSize::Size4K);
                let t = s.translate(va + (size.bytes() - 8)).unwrap();
                assert_eq!((t.pa.0, t.size), (pa.0 + size.bytes() - 8, size));
                // The neighbours on either side are not mapped.
                assert!(s.translate(va.wrapping_sub(size.bytes())).is_none());
                assert!(s.translate(va.wrapping_add(size.bytes())).is_none());
                assert_eq!(s.check_replicas(&pool), Ok(1));
                assert_eq!(s.unmap(&mut g, va, size), Ok(pa));
                assert!(s.translate(va).is_none());
                g.finish(&pool, &mut tlb);
                assert_eq!(
                    (s.pt_pages(0), pool.out(0)),
                    (1, 1),
                    "{levels:?} {size:?} {va:#x}: tables not freed"
                );
            }
        }
    }
}

#[test]
fn row47_non_canonical_and_misaligned_refused() {
    for levels in LEVELS {
        let pool = SimPool::new(1, 64);
        let mut s = space(&pool, levels);
        let mut g = MmuGather::new();
        let bits = levels.va_bits();
        let bad = [
            1u64 << (bits - 1),          // first address of the hole
            !levels.user_top() - 0x1000, // last page of the hole
            1 << 63,                     // bit 63 alone
            (1 << (bits - 1)) | (1 << 62),
        ];
        let before = pool.mem.snapshot();
        for va in bad {
            assert!(!is_canonical(va, levels), "{va:#x}");
            for size in PageSize::ALL {
                let va = va & !(size.bytes() - 1);
                assert_eq!(
                    s.map(&pool, va, PhysAddr(0), size, RW),
                    Err(PtError::NonCanonical(va))
                );
                assert_eq!(s.unmap(&mut g, va, size), Err(PtError::NonCanonical(va)));
                assert_eq!(
                    s.protect(&mut g, va, size, RO),
                    Err(PtError::NonCanonical(va))
                );
                assert_eq!(s.harvest(&mut g, va, size), Err(PtError::NonCanonical(va)));
            }
            assert_eq!(
                s.map_ptes(&pool, va, PhysAddr(0), 2, RW),
                Err(PtError::NonCanonical(va))
            );
            assert!(s.translate(va).is_none());
        }
        // Canonical only with 5 levels.
        let five_only = 1u64 << 47;
        assert_eq!(is_canonical(five_only, levels), levels == Levels::Five);
        for size in [PageSize::Size2M, PageSize::Size1G] {
            let (va, pa) = (size.bytes(), PhysAddr(size.bytes()));
            for (va, pa) in [(va + 0x1000, pa), (va, PhysAddr(pa.0 + 0x1000))] {
                assert_eq!(
                    s.map(&pool, va, pa, size, RW),
                    Err(PtError::Misaligned { va, pa, size })
                );
            }
        }
        // A frame above MAXPHYADDR (52 bits) cannot be named by an entry.
        let far = PhysAddr(1 << 52);
        assert_eq!(
            s.map(&pool, 0, far, PageSize::Size4K, RW),
            Err(PtError::Misaligned {
                va: 0,
                pa: far,
                size: PageSize::Size4K
            })
        );
        assert_eq!(
            s.unmap(&mut g, 0x1234, PageSize::Size4K),
            Err(PtError::Misaligned {
                va: 0x1234,
                pa: PhysAddr(0),
                size: PageSize::Size4K
            })
        );
        assert!(
            pool.mem.snapshot() == before,
            "{levels:?}: a refused call wrote"
        );
        assert_eq!(pool.out(0), 1);
        assert_eq!(g.pending_pages(), 0);
    }
}

/// Maps `n` 4 KiB pages from `va` one by one, frame i at `pa + i*4K`.
fn map_4k(s: &mut AddressSpace<&SimMemory>, pool: &SimPool, va: u64, n: u64) {
    for i in 0..n {
        s.map(
            pool,
            va + i * PAGE_SIZE,
            PhysAddr(GIB + i * PAGE_SIZE),
            PageSize::Size4K,
            RW,
        )
        .unwrap();
    }
}

#[test]
fn row48_unmapping_512_pages_in_one_gather_flushes_once_and_frees_after() {
    for replicas in [1, 2] {
        let pool = SimPool::new(2, 64);
        let mut s = space(&pool, Levels::Four);
        if replicas == 2 {
            s.replicate(&pool, 1).unwrap();
        }
        // 512 pages straddling a PTE-table boundary: two tables to free.
        let va = 0x4000_0000 - 256 * PAGE_SIZE;
        map_4k(&mut s, &pool, va, 512);
        let mut g = MmuGather::new();
        let mut tlb = CountingTlb::new(&pool);
        for i in 0..512 {
            assert_eq!(
                s.unmap(&mut g, va + i * PAGE_SIZE, PageSize::Size4K),
                Ok(PhysAddr(GIB + i * PAGE_SIZE))
            );
        }
        // Unlinked, but nothing given back before the flush.
        assert_eq!(pool.frees.get(), 0);
        assert_eq!(
            pool.out(0),
            6,
            "root, PDPT, 2 PDs and 2 PTs (the run crosses 1 GiB): unlinked, not freed"
        );
        assert_eq!(s.pt_pages(0), 1);
        g.finish(&pool, &mut tlb);
        assert_eq!(tlb.flushes(), 1, "replicas {replicas}: {:?}", tlb.ranges);
        assert_eq!(g.flushes(), 1);
        assert_eq!(tlb.ranges, [(va, va + 512 * PAGE_SIZE)]);
        assert_eq!(
            tlb.frees_at_flush,
            [0],
            "a page-table page went back before the flush"
        );
        assert_eq!(pool.frees.get(), 5 * replicas);
        for n in 0..replicas as usize {
            assert_eq!(pool.out(n), 1);
        }
        // A finish with nothing pending does not flush.
        g.finish(&pool, &mut tlb);
        assert_eq!(tlb.flushes(), 1);
    }
}

#[test]
fn row48_full_gather_refuses_or_flushes_early() {
    // 612 PTE tables' worth of 2 MiB blocks with one page each: every unmap
    // frees a table, more than a gather holds.
    let blocks = 2 * GATHER_PT_PAGES as u64 + 100;
    let pool = SimPool::new(1, 2 * blocks);
    let mut s = space(&pool, Levels::Four);
    for b in 0..blocks {
        s.map(&pool, b << 21, PhysAddr(b << 12), PageSize::Size4K, RW)
            .unwrap();
    }
    // A plain gather refuses once it could overflow, changing nothing.
    let mut g = MmuGather::new();
    let mut done = 0;
    let err = loop {
        match s.unmap(&mut g, done << 21, PageSize::Size4K) {
            Ok(_) => done += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, PtError::GatherFull);
    assert!(
        s.translate(done << 21).is_some(),
        "a refused unmap unmapped"
    );
    assert!(g.pending_pages() <= GATHER_PT_PAGES && g.pending_pages() + 4 > GATHER_PT_PAGES);
    let mut tlb = CountingTlb::new(&pool);
    g.finish(&pool, &mut tlb);
    // An attached one flushes early, each time before it frees.
    let mut tlb = CountingTlb::new(&pool);
    let frees0 = pool.frees.get();
    {
        let mut g = MmuGather::attached(&pool, &mut tlb);
        for b in done..blocks {
            s.unmap(&mut g, b << 21, PageSize::Size4K).unwrap();
        }
        g.finish_attached();
        assert_eq!(g.flushes(), 2);
    }
    assert_eq!(tlb.flushes(), 2);
    assert_eq!(
        tlb.frees_at_flush[0], frees0,
        "freed before the early flush"
    );
    assert!(tlb.frees_at_flush[1] - frees0 <= GATHER_PT_PAGES as u64);
    assert_eq!(s.pt_pages(0), 1);
    assert_eq!(pool.out(0), 1);
}

#[test]
fn row49_touch_1gib_then_unmap_returns_to_baseline() {
    for replicas in [1usize, 2] {
        let pool = SimPool::new(2, 1100);
        let mut s = space(&pool, Levels::Four);
        for n in 1..replicas {
            s.replicate(&pool, n).unwrap();
        }
        let base: Vec<u64> = (0..replicas).map(|n| s.pt_pages(n)).collect();
        let va = 0x7f00_0000_0000;
        map_4k(&mut s, &pool, va, GIB / PAGE_SIZE);
        assert_eq!(
            s.pt_pages(0),
            base[0] + 512 + 2,
            "512 PTE tables, a PD, a PDPT"
        );
        let mut tlb = CountingTlb::new(&pool);
        {
            let mut g = MmuGather::attached(&pool, &mut tlb);
            for i in 0..GIB / PAGE_SIZE {
                s.unmap(&mut g, va + i * PAGE_SIZE, PageSize::Size4K)
                    .unwrap();
            }
        }
        for (n, &b) in base.iter().enumerate() {
            assert!(
                s.pt_pages(n).abs_diff(b) <= 1,
                "replica {n}: {} vs {b}",
                s.pt_pages(n)
            );
            assert_eq!(pool.out(n), s.pt_pages(n), "replica {n}: pool");
        }
        assert_eq!(s.check_replicas(&pool), Ok(0));
    }
}

#[test]
fn row52_mapping_over_a_present_entry_is_refused_and_changes_nothing() {
    let pool = SimPool::new(2, 64);
    let mut s = space(&pool, Levels::Four);
    s.replicate(&pool, 1).unwrap();
    let (m2, m1g, m4k) = (2u64 << 21, 3 * GIB, 5 * GIB + (7 << 21) + 16 * PAGE_SIZE);
    s.map(&pool, m2, PhysAddr(0), PageSize::Size2M, RW).unwrap();
    s.map(&pool, m1g, PhysAddr(0), PageSize::Size1G, RW)
        .unwrap();
    s.map(&pool, m4k, PhysAddr(0), PageSize::Size4K, RW)
        .unwrap();
    let before = pool.mem.snapshot();
    let out = (pool.out(0), pool.out(1));
    let refused = [
        (m2, PageSize::Size2M),          // 2M over 2M
        (m2 + 0x1000, PageSize::Size4K), // 4K inside a 2M
        (m2 + (1 << 21) - 0x1000, PageSize::Size4K),
        (m2 & !(GIB - 1), PageSize::Size1G), // 1G over a table holding a 2M
        (m1g, PageSize::Size1G),             // 1G over 1G
        (m1g + (5 << 21), PageSize::Size2M), // 2M inside a 1G
        (m1g + GIB - 0x1000, PageSize::Size4K), // 4K inside a 1G
        (m4k, PageSize::Size4K),             // 4K over 4K
        (m4k & !((1 << 21) - 1), PageSize::Size2M), // 2M over a table with a 4K
        (m4k & !(GIB - 1), PageSize::Size1G),
    ];
    for (va, size) in refused {
        assert_eq!(
            s.map(&pool, va, PhysAddr(GIB), size, RW),
            Err(PtError::AlreadyMapped(va)),
            "{va:#x} {size:?}"
        );
    }
    // A run of PTEs with one present entry in the middle: all or nothing.
    let run = m4k - 3 * PAGE_SIZE;
    assert_eq!(
        s.map_ptes(&pool, run, PhysAddr(0), 8, RW),
        Err(PtError::AlreadyMapped(m4k))
    );
    assert!(pool.mem.snapshot() == before, "a refused map wrote");
    assert_eq!(
        (pool.out(0), pool.out(1)),
        out,
        "a refused map leaked tables"
    );
    // Nor does an unmap of the wrong size or of nothing (a count cannot go
    // below zero).
    let mut g = MmuGather::new();
    let mism = |expected, found, va| {
        Err(PtError::SizeMismatch {
            va,
            expected,
            found,
        })
    };
    assert_eq!(
        s.unmap(&mut g, m2, PageSize::Size4K),
        mism(PageSize::Size4K, PageSize::Size2M, m2)
    );
    assert_eq!(
        s.unmap(&mut g, m4k & !((1 << 21) - 1), PageSize::Size2M),
        mism(PageSize::Size2M, PageSize::Size4K, m4k & !((1 << 21) - 1))
    );
    assert_eq!(
        s.unmap(&mut g, m4k + 0x1000, PageSize::Size4K),
        Err(PtError::NotMapped(m4k + 0x1000))
    );
    assert_eq!(
        s.protect(&mut g, 9 * GIB, PageSize::Size1G, RO),
        Err(PtError::NotMapped(9 * GIB))
    );
    assert_eq!(
        s.harvest(&mut g, m1g, PageSize::Size2M).unwrap_err(),
        mism(PageSize::Size2M, PageSize::Size1G, m1g).unwrap_err()
    );
    assert!(pool.mem.snapshot() == before, "a refused unmap wrote");
    assert_eq!(g.pending_pages(), 0);
    assert_eq!(s.check_replicas(&pool), Ok(3));
}

#[test]
fn out_of_memory_changes_nothing() {
    let pool = SimPool::new(3, 64);
    let mut s = space(&pool, Levels::Five);
    s.replicate(&pool, 1).unwrap();
    let before = pool.mem.snapshot();
    // A 4K map in an empty 5-level space needs 4 tables per replica.
    for ok in 0..8 {
        pool.fail_after.set(Some(ok));
        assert_eq!(
            s.map(&pool, 0x1000, PhysAddr(0), PageSize::Size4K, RW),
            Err(PtError::NoMemory)
        );
        assert!(pool.mem.snapshot() == before);
        assert_eq!((pool.out(0), pool.out(1)), (1, 1));
    }
    pool.fail_after.set(None);
    map_4k(&mut s, &pool, 0x1000, 3);
    s.map(&pool, 1 << 50, PhysAddr(0), PageSize::Size2M, RW)
        .unwrap();
    // Copying 2 x 5 tables fails part way: everything given back.
    let before = pool.mem.snapshot();
    for ok in 0..7 {
        pool.fail_after.set(Some(ok));
        assert_eq!(s.replicate(&pool, 2), Err(PtError::NoMemory));
        assert_eq!(pool.out(2), 0);
        assert_eq!(s.replica_nodes().collect::<Vec<_>>(), [0, 1]);
    }
    pool.fail_after.set(None);
    // Node 2's frames held the partial copy; nodes 0 and 1 are untouched.
    let span = 2 * 64 * PAGE_SIZE;
    assert!(pool.mem.snapshot_range(PhysAddr(BASE), span) == before[..(span / 8) as usize]);
    assert_eq!(s.check_replicas(&pool), Ok(4));
}

#[test]
fn row53_map_ptes_equals_single_maps_and_stays_in_one_table() {
    for (first, n) in [(0u64, 512u64), (0, 1), (100, 37), (511, 1), (3, 509)] {
        let one = SimPool::new(2, 64);
        let many = SimPool::new(2, 64);
        let mut a = space(&one, Levels::Four);
        let mut b = space(&many, Levels::Four);
        a.replicate(&one, 1).unwrap();
        b.replicate(&many, 1).unwrap();
        let va = 0x7fff_ffe0_0000 + first * PAGE_SIZE;
        a.map_ptes(&one, va, PhysAddr(GIB), n, RO).unwrap();
        for i in 0..n {
            b.map(
                &many,
                va + i * PAGE_SIZE,
                PhysAddr(GIB + i * PAGE_SIZE),
                PageSize::Size4K,
                RO,
            )
            .unwrap();
        }
        // Same allocation order, so the same frames: memory equal word for word.
        assert!(
            one.mem.snapshot() == many.mem.snapshot(),
            "first {first} n {n}"
        );
        assert_eq!(a.check_replicas(&one), Ok(n));
    }
    let pool = SimPool::new(1, 64);
    let mut s = space(&pool, Levels::Four);
    // The last frames below MAXPHYADDR: as map() would take them one by one.
    let top = PhysAddr(ADDR_MASK - PAGE_SIZE);
    s.map_ptes(&pool, 0, top, 2, RW).unwrap();
    let far = PhysAddr(ADDR_MASK);
    let misaligned = Err(PtError::Misaligned {
        va: 0x2000,
        pa: far,
        size: PageSize::Size4K,
    });
    assert_eq!(s.map_ptes(&pool, 0x2000, far, 2, RW), misaligned);
    let mut g = MmuGather::new();
    s.unmap(&mut g, 0, PageSize::Size4K).unwrap();
    s.unmap(&mut g, 0x1000, PageSize::Size4K).unwrap();
    g.finish(&pool, &mut CountingTlb::new(&pool));
    let before = pool.mem.snapshot();
    for (first, n) in [(500u64, 13u64), (0, 513), (511, 2), (0, 0)] {
        let va = (1 << 30) + first * PAGE_SIZE;
        assert_eq!(
            s.map_ptes(&pool, va, PhysAddr(0), n, RW),
            Err(PtError::CrossesTable { va, pages: n })
        );
    }
    assert!(pool.mem.snapshot() == before);
    assert_eq!(pool.out(0), 1);
}

#[test]
fn protect_harvest_and_flags_in_hardware_format() {
    let pool = SimPool::new(2, 64);
    let mut s = space(&pool, Levels::Four);
    s.replicate(&pool, 1).unwrap();
    let va = 0x40_0000;
    let uc = Prot {
        write: true,
        user: false,
        exec: true,
        uncached: true,
    };
    s.map(&pool, va, PhysAddr(0x20_0000), PageSize::Size2M, uc)
        .unwrap();
    let (e, _) = hw_walk(&pool.mem, s.root(1), Levels::Four, va, true).unwrap();
    assert_eq!(e & 0xfff, PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_PS);
    assert_eq!(e & PTE_NX, 0);
    let t = s.translate(va + 5).unwrap();
    assert_eq!(
        (t.prot, t.accessed, t.dirty),
        (uc, true, true),
        "A/D set in replica 1 only must show"
    );
    let mut g = MmuGather::new();
    let mut tlb = CountingTlb::new(&pool);
    s.protect(&mut g, va, PageSize::Size2M, RO).unwrap();
    let t = s.translate(va).unwrap();
    assert_eq!(
        (t.prot, t.accessed, t.dirty),
        (RO, true, true),
        "protect lost A/D"
    );
    for root in [s.root(0), s.root(1)] {
        let (e, _) = hw_walk(&pool.mem, root, Levels::Four, va, false).unwrap();
        assert_eq!(e & (PTE_RW | PTE_NX | PTE_US | PTE_PCD), PTE_US);
    }
    // hw_walk above set A in replica 0 too; D only ever in replica 1.
    assert_eq!(s.harvest(&mut g, va, PageSize::Size2M), Ok((true, true)));
    assert_eq!(s.harvest(&mut g, va, PageSize::Size2M), Ok((false, false)));
    g.finish(&pool, &mut tlb);
    assert_eq!(tlb.ranges, [(va, va + (2 << 20))]);
    // A harvest that found nothing set needs no flush.
    s.harvest(&mut g, va, PageSize::Size2M).unwrap();
    g.finish(&pool, &mut tlb);
    assert_eq!(tlb.flushes(), 1);
}

#[test]
fn replicas_live_on_their_node_and_drop_frees_after_full_flush() {
    let pool = SimPool::new(3, 64);
    let mut s = AddressSpace::new(&pool.mem, &pool, Levels::Four, 1).unwrap();
    assert_eq!(s.root(0), s.root(1), "no replica: the home table");
    map_4k(&mut s, &pool, 0x1000, 3);
    s.map(&pool, GIB, PhysAddr(GIB), PageSize::Size1G, RW)
        .unwrap();
    s.replicate(&pool, 0).unwrap();
    s.replicate(&pool, 2).unwrap();
    assert_eq!(s.replica_nodes().collect::<Vec<_>>(), [0, 1, 2]);
    for n in 0..3 {
        assert_eq!(pool.node_of(s.root(n)), Some(n));
        assert_eq!((s.pt_pages(n), pool.out(n)), (4, 4));
    }
    assert_eq!(s.check_replicas(&pool), Ok(4));
    let mut g = MmuGather::new();
    let mut tlb = CountingTlb::new(&pool);
    assert_eq!(s.drop_replica(&mut g, 5), Err(PtError::NoSuchNode(5)));
    assert_eq!(s.replicate(&pool, 8), Err(PtError::NoSuchNode(8)));
    // A write through node 1's replica only: its dirty bit must survive
    // the drop of that replica.
    hw_walk(&pool.mem, s.root(1), Levels::Four, 0x1000, true).unwrap();
    s.drop_replica(&mut g, 1).unwrap();
    let t = s.translate(0x1000).unwrap();
    assert!(t.accessed && t.dirty, "A/D of the dropped replica lost");
    assert_eq!(s.home_node(), 0, "lowest remaining node became home");
    assert_eq!(s.root(1), s.root(0));
    assert_eq!(pool.out(1), 4, "freed before the flush");
    g.finish(&pool, &mut tlb);
    assert_eq!((tlb.alls, pool.out(1), s.pt_pages(1)), (1, 0, 0));
    s.drop_replica(&mut g, 2).unwrap();
    assert_eq!(s.drop_replica(&mut g, 0), Err(PtError::LastReplica(0)));
    assert_eq!(s.check_replicas(&pool), Ok(4));
    // Updates after a drop still reach every remaining replica.
    s.replicate(&pool, 2).unwrap();
    s.unmap(&mut g, 0x2000, PageSize::Size4K).unwrap();
    assert_eq!(s.check_replicas(&pool), Ok(3));
    s.destroy(&mut g);
    g.finish(&pool, &mut tlb);
    assert_eq!(pool.total_out(), 0);
}

#[test]
fn check_replicas_catches_divergence() {
    let pool = SimPool::new(2, 64);
    let mut s = space(&pool, Levels::Four);
    map_4k(&mut s, &pool, 0x1000, 2);
    s.replicate(&pool, 1).unwrap();
    assert_eq!(s.check_replicas(&pool), Ok(2));
    // Corrupt replica 1's leaf behind the address space's back.
    let (e, _) = hw_walk(&pool.mem, s.root(1), Levels::Four, 0x2000, false).unwrap();
    let leaf = s
        .mem()
        .phys_to_ptr(PhysAddr(find_pte(&pool, s.root(1), 0x2000)))
        .cast::<u64>();
    // SAFETY: the PTE lies in simulated RAM; single-threaded.
    unsafe { leaf.write(e ^ PTE_RW) };
    let m = s.check_replicas(&pool).unwrap_err();
    assert_eq!((m.node, m.va, m.level), (1, 0x2000, 0));
    assert!(matches!(m.what, Mismatch::Entry { .. }));
}

/// Physical address of the PTE for `va` under `root` (4 levels).
fn find_pte(pool: &SimPool, root: PhysAddr, va: u64) -> u64 {
    let mut t = root.0;
    for level in (1..4).rev() {
        let p = pool
            .mem
            .phys_to_ptr(PhysAddr(t + 8 * ((va >> (12 + 9 * level)) & 511)));
        // SAFETY: in simulated RAM.
        t = unsafe { p.cast::<u64>().read() } & ADDR_MASK;
    }
    t + 8 * ((va >> 12) & 511)
}

/// An attached gather that fills in the middle of an unmap flushes early,
/// between the home replica's change and the next replica's. The next
/// replica's cleared leaf (and the table freed with it) must still be
/// covered by a later flush: the final flush may not forget the range
/// just because an early one reset it.
#[test]
fn an_early_flush_mid_unmap_leaves_the_other_replicas_covered() {
    let pool = SimPool::new(2, 600);
    let mut s = space(&pool, Levels::Four);
    s.replicate(&pool, 1).unwrap();
    // One 4 KiB page per 2 MiB block: each unmap frees one PTE table per
    // replica, two pages in all.
    let per_gather = (GATHER_PT_PAGES / 2) as u64;
    let va = |b: u64| 0x4000_0000 + (b << 21);
    for b in 0..=per_gather {
        s.map(
            &pool,
            va(b),
            PhysAddr(GIB + b * PAGE_SIZE),
            PageSize::Size4K,
            RW,
        )
        .unwrap();
    }
    let mut tlb = CountingTlb::new(&pool);
    {
        let mut g = MmuGather::attached(&pool, &mut tlb);
        // Fills the gather exactly: no flush yet.
        for b in 0..per_gather {
            s.unmap(&mut g, va(b), PageSize::Size4K).unwrap();
        }
        assert_eq!(g.flushes(), 0);
        // The home replica's freed table finds the gather full: early
        // flush, then the other replica's leaf is cleared.
        let last = va(per_gather);
        s.unmap(&mut g, last, PageSize::Size4K).unwrap();
        g.finish_attached();
        assert_eq!(
            g.flushes(),
            2,
            "the early flush and one after the last change"
        );
    }
    let (start, end) = *tlb.ranges.last().unwrap();
    let last = va(per_gather);
    assert!(
        start <= last && last < end,
        "{start:#x}..{end:#x} misses {last:#x}"
    );
    assert_eq!(s.check_replicas(&pool), Ok(0));
}
