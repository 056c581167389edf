//! Row 10 (seed 2.2.7, 3.3.2): stealing between migrate types, on
//! synthetic free lists laid out page by page, so each rule's outcome
//! (which block is taken, which pageblocks change type, which lists the
//! free pages end up on) is exact.
use super::buddy::{Buddy, FreeArea, StealOutcome};
use super::tests::{fixture, Fixture};
use super::*;
use crate::mmzone::{PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER};

const MIB: u64 = 1 << 20;
const U: MigrateType = MigrateType::Unmovable;
const M: MigrateType = MigrateType::Movable;
const R: MigrateType = MigrateType::Reclaimable;

/// A buddy of its own over one order-10 block (two pageblocks) taken from
/// a fixture's zone. The zone never sees those pages again, so the test
/// owns their descriptors.
struct Synth {
    f: Fixture,
    area: FreeArea,
    base: u64,
}

impl Synth {
    /// Pageblock types `types`; the pages at the offsets `held` says are
    /// allocated (as that type), every other page is freed, merging as the
    /// buddy allocator merges.
    fn new(types: [MigrateType; 2], held: impl Fn(u64) -> Option<MigrateType>) -> Synth {
        let f = fixture(64 * MIB, 1);
        let base =
            f.a.cpu(0)
                .alloc_direct(Gfp::USER_MOVABLE.union(Gfp::DMA32), MAX_ORDER)
                .unwrap()
                .0;
        let mut s = Synth {
            f,
            area: FreeArea::EMPTY,
            base,
        };
        let map = &s.f.a.map;
        for off in 0..1u64 << MAX_ORDER {
            let idx = map.idx(base + off);
            // SAFETY: the block is allocated to this test, single-threaded,
            // and no reference to the descriptor outlives the statement.
            let d = unsafe { map.at(idx) };
            *d = Page {
                pageblock_mt: d.pageblock_mt,
                ..Page::FREE
            };
            if let Some(mt) = held(off) {
                d.flags = crate::page::PG_ALLOC;
                d.mt = mt as u8;
                d.refcount = 1;
            }
        }
        let mut b = s.buddy();
        for (i, &t) in types.iter().enumerate() {
            b.set_pageblock_mt(base + i as u64 * PAGEBLOCK_NR_PAGES, t);
        }
        for off in 0..1u64 << MAX_ORDER {
            if held(off).is_none() {
                let t = types[(off / PAGEBLOCK_NR_PAGES) as usize];
                b.free_one(b.map.idx(base + off), 0, t);
            }
        }
        s
    }

    fn buddy(&mut self) -> Buddy<'_> {
        let map = &self.f.a.map;
        let lo = map.idx(self.base);
        let end = self.base + (1 << MAX_ORDER);
        assert!(end <= map.end_pfn(), "the block lies in the map");
        Buddy {
            map,
            area: &mut self.area,
            start_pfn: self.base,
            end_pfn: end,
            lo,
            hi: lo + (1 << MAX_ORDER),
            grouping: true,
        }
    }

    /// rmqueue as the allocator calls it; the offset of the block returned.
    fn rmqueue(&mut self, order: usize, mt: MigrateType) -> (Option<u64>, StealOutcome) {
        let base = self.base;
        let mut b = self.buddy();
        let (idx, out) = b.rmqueue(order, mt, AllocFlags::default());
        (idx.map(|i| b.map.pfn(i) - base), out)
    }

    fn pageblock(&mut self, i: u64) -> MigrateType {
        let pfn = self.base + i * PAGEBLOCK_NR_PAGES;
        self.buddy().pageblock_mt(pfn)
    }

    /// Free pages on `mt`'s lists.
    fn free_of(&self, mt: MigrateType) -> u64 {
        (0..NR_ORDERS)
            .map(|o| self.area.lists[o][mt as usize].count << o)
            .sum()
    }
}

/// Everything in pageblock 1 held, so only pageblock 0 offers free pages.
fn second_full(off: u64) -> bool {
    off >= PAGEBLOCK_NR_PAGES
}

#[test]
fn steal_retypes_pageblock_when_more_than_half_free_seed_3_3_2() {
    // One page of a movable pageblock allocated: 511 of 512 free, in blocks
    // of orders 0..=8. An unmovable request claims the pageblock.
    let mut s = Synth::new([M, M], |o| (o == 0 || second_full(o)).then_some(M));
    let (got, out) = s.rmqueue(0, U);
    assert_eq!(
        out,
        StealOutcome {
            fallback: true,
            retyped: 1,
            whole_block: false
        }
    );
    assert_eq!(got, Some(1), "the smallest block of the claimed pageblock");
    assert_eq!(s.pageblock(0), U);
    assert_eq!(s.pageblock(1), M);
}

#[test]
fn steal_keeps_the_type_when_less_than_half_is_free_seed_3_3_2() {
    // 300 of 512 pages allocated (movable): 212 free is under half, so the
    // unmovable request takes its pages without retyping the pageblock.
    let mut s = Synth::new([M, M], |o| (o < 300 || second_full(o)).then_some(M));
    let (got, out) = s.rmqueue(0, U);
    assert!(got.is_some() && out.fallback);
    assert_eq!(out.retyped, 0);
    assert_eq!(s.pageblock(0), M);
}

#[test]
fn steal_counts_pages_already_of_the_new_type_toward_half_seed_3_3_2() {
    // 300 of 512 pages allocated, 100 of them as unmovable: 212 free is
    // under half, but with the 100 alike pages ([NOT IN SEED]: Linux's
    // steal_suitable_fallback counts them) it is over, so the unmovable
    // request claims the pageblock.
    let mut s = Synth::new([M, M], |o| {
        if second_full(o) || o < 200 {
            Some(M)
        } else {
            (o < 300).then_some(U)
        }
    });
    let (got, out) = s.rmqueue(0, U);
    assert!(got.is_some() && out.fallback);
    assert_eq!(out.retyped, 1);
    assert_eq!(s.pageblock(0), U);
}

#[test]
fn steal_moves_claimed_pageblocks_free_pages_to_new_type_seed_2_2_7() {
    // Claiming a pageblock moves every free block in it to the new type's
    // lists, not only the one taken.
    let mut s = Synth::new([M, M], |o| (o == 0 || second_full(o)).then_some(M));
    assert_eq!(s.free_of(M), 511);
    s.rmqueue(0, U);
    assert_eq!(s.free_of(M), 0, "no free page left on the movable lists");
    assert_eq!(s.free_of(U), 510);
}

#[test]
fn steal_of_a_block_above_pageblock_order_retypes_every_pageblock_seed_3_3_2() {
    // A whole free order-10 block spans two pageblocks: both are retyped.
    let mut s = Synth::new([M, M], |_| None);
    let (got, out) = s.rmqueue(0, U);
    assert_eq!(got, Some(0));
    assert_eq!(
        out,
        StealOutcome {
            fallback: true,
            retyped: 2,
            whole_block: true
        }
    );
    assert_eq!((s.pageblock(0), s.pageblock(1)), (U, U));
}

#[test]
fn steal_searches_from_the_highest_order_down_seed_2_2_7() {
    // Pageblock 0 has one free order-8 block (half free), pageblock 1 only
    // an order-0 block: the search starts at the top, so pageblock 0 is
    // claimed and retyped, pageblock 1 untouched.
    let mut s = Synth::new([M, M], |o| {
        (o < 256 || (o >= PAGEBLOCK_NR_PAGES && o != PAGEBLOCK_NR_PAGES + 1)).then_some(M)
    });
    let (got, out) = s.rmqueue(0, U);
    assert_eq!(got, Some(256));
    assert_eq!(out.retyped, 1);
    assert_eq!((s.pageblock(0), s.pageblock(1)), (U, M));
}

/// Pageblock 0 (unmovable) with free blocks of orders 0..=`top` only (at
/// offsets 1, 2, 4, …), pageblock 1 full.
fn small_free_blocks(top: u32) -> impl Fn(u64) -> Option<MigrateType> {
    move |o| (o == 0 || o >= 2u64 << top).then_some(U)
}

#[test]
fn movable_steal_that_cannot_claim_splits_the_smallest_block_seed_2_2_7() {
    // Highest foreign free block of order 3 (< pageblock_order / 2): an
    // order-0 movable request may not claim the pageblock, so it takes the
    // smallest sufficient block, the order-0 one at offset 1, and leaves
    // the order-3 block whole.
    let mut s = Synth::new([U, U], small_free_blocks(3));
    let (got, out) = s.rmqueue(0, M);
    assert_eq!(got, Some(1));
    assert_eq!(out.retyped, 0);
    assert!(out.fallback && !out.whole_block);
    assert_eq!(s.area.lists[3][U as usize].count, 1, "order-3 block kept");
    assert_eq!(s.free_of(U), 14, "only the block taken left the lists");
    assert_eq!(s.pageblock(0), U);
}

#[test]
fn steal_eligibility_follows_can_steal_fallback_not_in_seed() {
    // [NOT IN SEED] Linux's can_steal_fallback: a fallback block of at
    // least pageblock_order / 2 may be claimed by any request; unmovable
    // and reclaimable requests may claim from any block.
    assert_eq!(PAGEBLOCK_ORDER / 2, 4);
    // Movable, block of order 4: claims, so every free block of the
    // pageblock moves to the movable lists (31 pages: too few to retype).
    let mut s = Synth::new([U, U], small_free_blocks(4));
    let (got, out) = s.rmqueue(0, M);
    assert_eq!(got, Some(1));
    assert_eq!(s.free_of(U), 0, "claimed: all free pages moved");
    assert_eq!(s.free_of(M), 30);
    assert_eq!(out.retyped, 0);
    // Reclaimable, order 0, from a mostly free movable pageblock: claims
    // and retypes, as an unmovable request would.
    let mut s = Synth::new([M, M], |o| (o == 0 || second_full(o)).then_some(M));
    let (_, out) = s.rmqueue(0, R);
    assert_eq!(out.retyped, 1);
    assert_eq!(s.pageblock(0), R);
    // Unmovable, order 0, from a foreign block of order 3: still claims.
    let mut s = Synth::new([M, M], |o| (o == 0 || o >= 16).then_some(M));
    s.rmqueue(0, U);
    assert_eq!(s.free_of(M), 0, "claimed: all free pages moved");
}

#[test]
fn steal_of_exactly_a_pageblock_retypes_that_pageblock_only_seed_3_3_2() {
    // A free order-9 block is one pageblock: one retype, the neighbour
    // (whose first page is free) keeps its type and its free page its list.
    let mut s = Synth::new([M, M], |o| (o > PAGEBLOCK_NR_PAGES).then_some(M));
    let (got, out) = s.rmqueue(0, U);
    assert_eq!(got, Some(0));
    assert_eq!(out.retyped, 1);
    assert!(out.whole_block);
    assert_eq!((s.pageblock(0), s.pageblock(1)), (U, M));
    assert_eq!(
        s.area.lists[0][M as usize].count, 1,
        "neighbour's page stays"
    );
}

#[test]
fn claiming_a_pageblock_leaves_the_next_one_alone_seed_3_3_2() {
    // The claim moves the free pages of its own pageblock only, up to the
    // last page: a free block starting right after it stays where it is.
    let mut s = Synth::new([M, M], |o| {
        (o == 0 || (o > PAGEBLOCK_NR_PAGES && o < 2 * PAGEBLOCK_NR_PAGES)).then_some(M)
    });
    s.rmqueue(0, U);
    assert_eq!(s.pageblock(0), U);
    assert_eq!(s.free_of(M), 1, "the next pageblock's first page");
    assert_eq!(s.free_of(U), 510);
}

#[test]
fn highatomic_reserve_is_capped_near_one_percent_not_in_seed() {
    // [NOT IN SEED] Linux's reserve_highatomic_pageblock: at most about 1%
    // of the zone (plus a pageblock) is kept for high-order atomics.
    let mut s = Synth::new([M, M], |_| None);
    let managed = 100_000;
    let cap = managed / 100 + PAGEBLOCK_NR_PAGES;
    let base = s.base;
    let mut b = s.buddy();
    b.area.nr_reserved_highatomic = cap - PAGEBLOCK_NR_PAGES;
    assert!(b.reserve_highatomic(base, managed), "below the cap");
    assert_eq!(b.area.nr_reserved_highatomic, cap);
    assert_eq!(b.pageblock_mt(base), MigrateType::HighAtomic);
    assert!(!b.reserve_highatomic(base + PAGEBLOCK_NR_PAGES, managed));
    assert_eq!(b.pageblock_mt(base + PAGEBLOCK_NR_PAGES), M);
}

#[test]
fn claiming_the_second_pageblock_leaves_the_first_alone_seed_3_3_2() {
    // The claim works from the claimed block's own pageblock start: a free
    // page in the pageblock before it keeps its type.
    let mut s = Synth::new([M, M], |o| {
        (o < PAGEBLOCK_NR_PAGES && o != 5 || o == PAGEBLOCK_NR_PAGES).then_some(M)
    });
    let (got, out) = s.rmqueue(0, U);
    assert_eq!(out.retyped, 1);
    assert_eq!((s.pageblock(0), s.pageblock(1)), (M, U));
    assert!(got.unwrap() > PAGEBLOCK_NR_PAGES);
    assert_eq!(s.free_of(M), 1, "offset 5 stays movable");
}

#[test]
fn a_block_likely_to_merge_is_queued_at_the_tail_not_in_seed() {
    // [NOT IN SEED] Linux's buddy_merge_likely: a freed block whose
    // next-higher buddy is free goes to the tail of its list, so it is
    // handed out last and has time to merge. Page 10 (higher buddy 8 held)
    // goes to the head, page 2 (higher buddy, the block at 0, free) to the
    // tail, whichever is freed first: the next order-0 allocation takes 10.
    for first in [10, 2] {
        let mut s = Synth::new([M, M], |o: u64| (o >= 2).then_some(M));
        let base = s.base;
        let mut b = s.buddy();
        for off in [first, 12 - first] {
            let idx = b.map.idx(base + off);
            b.free_one(idx, 0, M);
        }
        assert_eq!(s.area.lists[1][M as usize].count, 1, "pages 0-1 merged");
        assert_eq!(s.rmqueue(0, M).0, Some(10), "{first} freed first");
        assert_eq!(s.rmqueue(0, M).0, Some(2));
    }
}
