//! Row 14 (seed 2.2.5): the per-CPU lists hand out the hottest page (the
//! one freed last) and give the coldest back to the buddy lists.
use super::tests::fixture;
use super::*;
use crate::page::PG_PCP;

const MIB: u64 = 1 << 20;

#[test]
fn pcp_allocation_takes_the_most_recently_freed_page_seed_2_2_5() {
    // Freed last, allocated first: its cache lines are the likeliest to be
    // warm. Order 0 (the per-CPU shortcut) and order 1 (the zonelist walk).
    let f = fixture(64 * MIB, 1);
    let mut c = f.a.cpu(0);
    for order in [0, 1] {
        let a = c.alloc(Gfp::KERNEL, order).unwrap();
        let b = c.alloc(Gfp::KERNEL, order).unwrap();
        c.free(a, order).unwrap();
        c.free(b, order).unwrap();
        assert_eq!(c.alloc(Gfp::KERNEL, order), Some(b), "order {order}");
        assert_eq!(c.alloc(Gfp::KERNEL, order), Some(a), "order {order}");
    }
}

#[test]
fn pcp_bulk_free_returns_the_coldest_pages_seed_2_2_5() {
    // When a free takes the list to `high`, the pages that go back to the
    // buddy lists are the ones freed longest ago; the hot ones stay.
    let f = fixture(256 * MIB, 1);
    let mut c = f.a.cpu(0);
    let (batch, high) = {
        let p = c.pcp(0, ZoneType::Dma32);
        (p.batch as usize, p.high as usize)
    };
    let held: Vec<Pfn> = (0..high + batch)
        .map(|_| c.alloc(Gfp::USER_MOVABLE, 0).unwrap())
        .collect();
    assert_eq!(c.drain_all(None), 1, "one CPU held pages");
    assert_eq!(c.pcp(0, ZoneType::Dma32).count, 0);
    assert_eq!(c.drain_all(None), 0);
    let mut last = 0;
    let mut freed_at = None;
    for (i, &p) in held.iter().enumerate() {
        c.free(p, 0).unwrap();
        let now = c.pcp(0, ZoneType::Dma32).count;
        if now < last + 1 {
            freed_at = Some(i);
            break;
        }
        last = now;
    }
    let i = freed_at.expect("the list reached high");
    let on_pcp = |p: Pfn| {
        // SAFETY: single-threaded test holding the only CPU's lock; the
        // descriptor is copied out at once.
        let d = *unsafe { f.a.map.at(f.a.map.idx(p.0)) };
        d.flags & PG_PCP != 0
    };
    let back = i + 1 - c.pcp(0, ZoneType::Dma32).count as usize;
    assert_eq!(back, batch, "the first bulk free returns one batch");
    assert!(
        held[..back].iter().all(|&p| !on_pcp(p)),
        "coldest went back"
    );
    assert!(held[back..=i].iter().all(|&p| on_pcp(p)), "hottest stayed");
}
