use super::*;
use crate::mmzone::MAX_ORDER;
use proptest::prelude::*;

/// Free blocks per order from `(order, count)` pairs.
fn counts(pairs: &[(usize, u64)]) -> [u64; NR_ORDERS] {
    let mut c = [0; NR_ORDERS];
    for &(o, n) in pairs {
        c[o] += n;
    }
    c
}

#[test]
fn events_are_indexed_and_named_uniquely() {
    for (i, e) in VmEvent::ALL.iter().enumerate() {
        assert_eq!(*e as usize, i);
        assert_eq!(VmEvent::from_index(i), Some(*e));
        let name = e.name();
        assert!(!name.is_empty());
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
        for other in &VmEvent::ALL[i + 1..] {
            assert_ne!(name, other.name());
        }
    }
    assert_eq!(VmEvent::from_index(NR_VM_EVENTS), None);
    assert_eq!(VmEvent::DirectReclaim.name(), "allocstall");
}

#[test]
fn counters_inc_add_merge_iter() {
    let mut a = EventCounters::new();
    a.inc(VmEvent::PgAlloc);
    a.add(VmEvent::PgAlloc, 7);
    a.inc(VmEvent::KswapdWake);
    let mut b = EventCounters::default();
    b.add(VmEvent::PgAlloc, 2);
    b.inc(VmEvent::PcpDrain);
    a.merge(&b);
    assert_eq!(a.get(VmEvent::PgAlloc), 10);
    assert_eq!(a.get(VmEvent::KswapdWake), 1);
    assert_eq!(a.get(VmEvent::PcpDrain), 1);
    assert_eq!(a.get(VmEvent::PgFree), 0);

    let listed: Vec<_> = a.iter().collect();
    assert_eq!(listed.len(), NR_VM_EVENTS);
    assert_eq!(listed[VmEvent::PgAlloc as usize], ("pgalloc", 10));
    assert_eq!(listed.iter().map(|&(_, v)| v).sum::<u64>(), 12);

    a.clear();
    assert_eq!(a, EventCounters::new());
}

#[test]
fn counters_wrap_instead_of_panicking() {
    let mut a = EventCounters::new();
    a.add(VmEvent::PgFree, u64::MAX);
    a.inc(VmEvent::PgFree);
    assert_eq!(a.get(VmEvent::PgFree), 0);
}

#[test]
fn free_area_counts_helpers() {
    let mut f = FreeAreaCounts::new();
    f.blocks[0][MigrateType::Movable as usize] = 3;
    f.blocks[0][MigrateType::Unmovable as usize] = 1;
    f.blocks[2][MigrateType::Reclaimable as usize] = 2;
    f.blocks[MAX_ORDER][MigrateType::Movable as usize] = 1;
    assert_eq!(f.blocks_of_order(0), 4);
    assert_eq!(f.blocks_of_order(2), 2);
    assert_eq!(f.blocks_of_order(NR_ORDERS), 0);
    let per = f.blocks_per_order();
    assert_eq!(per[0], 4);
    assert_eq!(per[1], 0);
    assert_eq!(per[MAX_ORDER], 1);
    assert_eq!(f.free_pages(), 4 + 8 + 1024);
    assert_eq!(f.free_pages_of_type(MigrateType::Movable), 3 + 1024);
    assert_eq!(f.free_pages_of_type(MigrateType::Reclaimable), 8);
    assert_eq!(f.free_pages_of_type(MigrateType::Isolate), 0);
    assert_eq!(f.contig_info(1), fill_contig_page_info(&per, 1));
}

#[test]
fn contig_info_counts_splittable_pieces() {
    // 3×order-0, 2×order-1, 1×order-2; asking for order 1.
    let info = fill_contig_page_info(&counts(&[(0, 3), (1, 2), (2, 1)]), 1);
    assert_eq!(
        info,
        ContigPageInfo {
            free_pages: 3 + 4 + 4,
            free_blocks_total: 6,
            free_blocks_suitable: 2 + 2,
        }
    );
    // Orders beyond MAX_ORDER have nothing suitable.
    let info = fill_contig_page_info(&counts(&[(MAX_ORDER, 5)]), MAX_ORDER + 1);
    assert_eq!(info.free_blocks_suitable, 0);
    assert_eq!(info.free_pages, 5 * 1024);
}

#[test]
fn fragmentation_index_hand_computed() {
    // 10×order-0 + 5×order-1 = 20 pages in 15 blocks, order 2 requested:
    // 1000 - (1000 + 20*1000/4) / 15 = 1000 - 6000/15 = 600.
    let info = fill_contig_page_info(&counts(&[(0, 10), (1, 5)]), 2);
    assert_eq!(fragmentation_index(2, &info), 600);
    assert_eq!(
        suggest_action(2, &info, EXTFRAG_THRESHOLD_DEFAULT),
        FragAction::Compact
    );
    assert_eq!(suggest_action(2, &info, 600), FragAction::Reclaim);

    // 2×order-0 + 1×order-1 = 4 pages in 3 blocks, order 3 requested:
    // 1000 - (1000 + 4000/8) / 3 = 1000 - 500 = 500, exactly the threshold.
    let info = fill_contig_page_info(&counts(&[(0, 2), (1, 1)]), 3);
    assert_eq!(fragmentation_index(3, &info), 500);
    assert_eq!(
        suggest_action(3, &info, EXTFRAG_THRESHOLD_DEFAULT),
        FragAction::Reclaim
    );
}

#[test]
fn scattered_free_memory_means_compact() {
    // 10,000 single free pages and a THP-sized request:
    // 1000 - (1000 + 10_000_000/512) / 10_000 = 1000 - 20531/10000 = 998.
    let info = fill_contig_page_info(&counts(&[(0, 10_000)]), 9);
    let idx = fragmentation_index(9, &info);
    assert_eq!(idx, 998);
    assert_eq!(
        suggest_action(9, &info, EXTFRAG_THRESHOLD_DEFAULT),
        FragAction::Compact
    );
    assert_eq!(unusable_free_index(9, &info), 1000);
}

#[test]
fn little_free_memory_means_reclaim() {
    // Two half-size blocks: 1000 - (1000 + 512*1000/512) / 2 = 0.
    let info = fill_contig_page_info(&counts(&[(8, 2)]), 9);
    assert_eq!(fragmentation_index(9, &info), 0);
    assert_eq!(
        suggest_action(9, &info, EXTFRAG_THRESHOLD_DEFAULT),
        FragAction::Reclaim
    );

    // One block of half the request: Linux would say -500; we clamp to 0.
    let info = fill_contig_page_info(&counts(&[(3, 1)]), 4);
    assert_eq!(fragmentation_index(4, &info), 0);
    assert_eq!(
        suggest_action(4, &info, EXTFRAG_THRESHOLD_DEFAULT),
        FragAction::Reclaim
    );

    // A handful of free pages for an order-2 request:
    // 1000 - (1000 + 3000/4) / 3 = 1000 - 583 = 417.
    let info = fill_contig_page_info(&counts(&[(0, 3)]), 2);
    assert_eq!(fragmentation_index(2, &info), 417);
    assert_eq!(
        suggest_action(2, &info, EXTFRAG_THRESHOLD_DEFAULT),
        FragAction::Reclaim
    );
}

#[test]
fn nothing_free_is_lack_of_memory() {
    let info = fill_contig_page_info(&[0; NR_ORDERS], 0);
    assert_eq!(fragmentation_index(0, &info), 0);
    assert_eq!(unusable_free_index(0, &info), 1000);
    assert_eq!(
        suggest_action(0, &info, EXTFRAG_THRESHOLD_DEFAULT),
        FragAction::Reclaim
    );
}

#[test]
fn suitable_block_means_succeeds() {
    let info = fill_contig_page_info(&counts(&[(0, 500), (MAX_ORDER, 1)]), 9);
    assert_eq!(info.free_blocks_suitable, 2);
    assert_eq!(fragmentation_index(9, &info), FRAG_INDEX_SUCCEEDS);
    assert_eq!(
        suggest_action(9, &info, EXTFRAG_THRESHOLD_DEFAULT),
        FragAction::Succeeds
    );
    // Order 0 succeeds whenever anything is free.
    let info = fill_contig_page_info(&counts(&[(0, 1)]), 0);
    assert_eq!(fragmentation_index(0, &info), FRAG_INDEX_SUCCEEDS);
}

#[test]
fn unusable_index_values() {
    // Everything free is one max-order block: usable for every order.
    let c = counts(&[(MAX_ORDER, 1)]);
    for order in 0..=MAX_ORDER {
        assert_eq!(
            unusable_free_index(order, &fill_contig_page_info(&c, order)),
            0
        );
    }
    // 100 single pages + 10 order-3 blocks, order 2 requested: the 80 pages
    // in order-3 blocks are usable, 100 of 180 are not: 100*1000/180 = 555.
    let info = fill_contig_page_info(&counts(&[(0, 100), (3, 10)]), 2);
    assert_eq!(unusable_free_index(2, &info), 555);
    assert_eq!(
        unusable_free_index(0, &fill_contig_page_info(&counts(&[(0, 100), (3, 10)]), 0)),
        0
    );
}

#[test]
fn hand_built_info_cannot_overflow_or_underflow() {
    let info = ContigPageInfo {
        free_pages: u64::MAX,
        free_blocks_total: 1,
        free_blocks_suitable: u64::MAX,
    };
    assert_eq!(unusable_free_index(3, &info), 0);
    let info = ContigPageInfo {
        free_pages: u64::MAX,
        free_blocks_total: 1,
        free_blocks_suitable: 0,
    };
    assert_eq!(fragmentation_index(63, &info), 0);
    assert_eq!(fragmentation_index(200, &info), 0);
    assert_eq!(unusable_free_index(200, &info), 1000);
}

proptest! {
    #[test]
    fn indices_stay_in_range(
        c in prop::array::uniform11(prop_oneof![Just(0u64), 0u64..4, 0u64..100_000]),
        order in 0usize..=MAX_ORDER + 2,
    ) {
        let info = fill_contig_page_info(&c, order);
        let idx = fragmentation_index(order, &info);
        prop_assert!(idx == FRAG_INDEX_SUCCEEDS || (0..=1000).contains(&idx), "{idx}");
        prop_assert_eq!(idx == FRAG_INDEX_SUCCEEDS, info.free_blocks_suitable > 0);
        let unusable = unusable_free_index(order, &info);
        prop_assert!(unusable <= 1000);
        prop_assert_eq!(unusable == 1000, info.free_blocks_suitable == 0);
        let action = suggest_action(order, &info, EXTFRAG_THRESHOLD_DEFAULT);
        prop_assert_eq!(action == FragAction::Succeeds, info.free_blocks_suitable > 0);
        // The per-type view agrees with the per-order one.
        let mut f = FreeAreaCounts::new();
        for (o, &n) in c.iter().enumerate() {
            f.blocks[o][o % MIGRATE_TYPES] = n;
        }
        prop_assert_eq!(f.contig_info(order), info);
        prop_assert_eq!(f.free_pages(), info.free_pages);
    }
}

#[test]
fn stat_threshold_follows_linux() {
    // 2·fls(cpus)·(1 + fls(managed / 128 MiB)), capped at 125.
    assert_eq!(
        stat_threshold(1, 262_144),
        2 * (1 + 4),
        "1 GiB, 1 CPU: fls(1) = 1"
    );
    assert_eq!(stat_threshold(4, 262_144), 2 * 3 * (1 + 4), "1 GiB, 4 CPUs");
    assert_eq!(stat_threshold(1, 1000), 2, "tiny zone: no 128 MiB unit");
    assert_eq!(stat_threshold(64, 1 << 30), 125, "capped");
}

#[test]
fn counter_folds_past_the_threshold_and_keeps_the_sum() {
    let mut c = ZoneCounter::<4>::new();
    c.configure(10, 4);
    c.add_global(1000);
    c.add(1, -10);
    assert_eq!(
        (c.folded(), c.diff(1)),
        (1000, -10),
        "at the threshold: kept"
    );
    c.add(1, -1);
    assert_eq!((c.folded(), c.diff(1)), (989, 0), "past it: folded");
    c.add(2, 7);
    c.add(3, -3);
    assert_eq!(c.snapshot(), 993);
    assert_ne!(c.folded(), c.snapshot());
    c.fold_all();
    assert_eq!(c.folded(), 993, "exact after a fold");
    assert_eq!((0..4).map(|i| c.diff(i)).sum::<i32>(), 0);
    c.add(0, 512);
    assert_eq!(
        (c.folded(), c.diff(0)),
        (1505, 0),
        "large changes fold at once"
    );
}

proptest! {
    // Whatever the CPUs do: the snapshot is the exact sum, the folded count
    // is within max_drift of it, `above` agrees with the exact sum for any
    // bound, and a fold makes the folded count exact.
    // 256 cases of 1..800 operations: about 10^5 per run.
    #[test]
    fn counter_snapshot_is_exact_and_above_decides_exactly(
        threshold in 0i32..40,
        ops in proptest::collection::vec((0usize..4, -600i64..600), 1..800),
        bounds in proptest::collection::vec(-200i64..2200, 1..20),
    ) {
        let mut c = ZoneCounter::<4>::new();
        c.configure(threshold, 4);
        c.add_global(1000);
        let mut exact = 1000i64;
        for (cpu, delta) in ops {
            c.add(cpu, delta);
            exact += delta;
            prop_assert_eq!(c.snapshot(), exact);
            prop_assert!((c.folded() - exact).abs() <= c.max_drift());
            for &b in &bounds {
                prop_assert_eq!(c.above(b), exact > b, "bound {}", b);
            }
        }
        c.fold_all();
        prop_assert_eq!(c.folded(), exact);
    }
}
