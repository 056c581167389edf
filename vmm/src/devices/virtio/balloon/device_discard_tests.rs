//! Discards the device asks for where guest NUMA nodes' regions meet, and
//! on hugetlb RAM (whole huge pages only).
use super::*;

/// Two guest NUMA nodes' regions follow each other: a run of pages across
/// the cut is RAM, and is given back, not counted as a discard error.
#[test]
fn an_inflate_across_two_nodes_is_discarded_whole() {
    let node = |size| crate::memory::numa::NodeRam {
        size,
        host_node: None,
    };
    let nodes = [node(8 * MIB), node(8 * MIB)];
    let ram = GuestRam::with_nodes(&nodes, Default::default(), false).unwrap();
    let mut f = fixture_on(ram, BalloonConfig::default(), true, 4096);
    f.activate(0, false);
    touch(&f, 6 * MIB, 10 * MIB);
    f.pfns(0, &pfn_range(6 * MIB, 10 * MIB)[..1024]);
    assert_eq!(f.dev.process_queue(0), 1);
    let m = f.m();
    assert_eq!(m.discard_errors, 0, "{m:?}");
    assert_eq!((m.discarded_bytes, m.whole_2m_freed), (4 * MIB, 2), "{m:?}");
    for at in [6 * MIB, 8 * MIB] {
        assert_eq!(
            f.host.ram.resident_pages(at, 2 * MIB).unwrap(),
            0,
            "{at:#x}"
        );
    }
}

/// Linux's driver sends at most 256 PFNs (1 MiB) a chain and waits for
/// each: on a hugetlb backing no pass alone covers a huge page, so the
/// balloon's page map must tell when the last page of one comes in.
#[test]
fn hugetlb_blocks_inflated_over_several_passes_are_freed_when_whole() {
    let ram = GuestRam::new(16 * MIB).unwrap();
    let mut f = fixture_on(ram, BalloonConfig::default(), true, 2 * MIB);
    f.activate(0, false);
    // 4M..6M in four passes of 128 pages, the middle ones out of order.
    let block = pfn_range(4 * MIB, 6 * MIB);
    for i in [0, 2, 1, 3] {
        f.pfns(0, &block[128 * i..128 * (i + 1)]);
        assert_eq!(f.dev.process_queue(0), 1);
        let freed = if i == 3 {
            vec![(4 * MIB, 2 * MIB)]
        } else {
            vec![]
        };
        assert_eq!(f.discards(), freed, "after chunk {i}");
    }
    // Half a block, then the page before it: never whole, never freed.
    f.pfns(0, &pfn_range(9 * MIB, 10 * MIB));
    f.pfns(0, &pfn_range(8 * MIB - 4096, 8 * MIB));
    f.dev.process_queue(0);
    let m = f.m();
    assert_eq!(f.discards(), [(4 * MIB, 2 * MIB)]);
    assert_eq!(
        (m.discards, m.discarded_bytes, m.discard_errors),
        (1, 2 * MIB, 0)
    );
    // Two pages of the freed block sent again in one pass: freed once.
    f.pfns(0, &[block[1], block[300]]);
    f.dev.process_queue(0);
    assert_eq!(f.discards(), [(4 * MIB, 2 * MIB); 2]);
}
