//! Free page reporting's rules (Linux's mm/page_reporting.c): what a pass
//! takes, what it marks, what undoes the mark, and the hook free.
use super::super::tests::{check_free_lists, fixture, Fixture};
use super::*;
use crate::gfp::Gfp;
use crate::page_alloc::ReclaimHooks;
use crate::vmstat::VmEvent;
use std::collections::BTreeSet;

const MIB: u64 = 1 << 20;
/// Allocates whatever the watermarks allow (a reclaimer's rights).
const ALL: Gfp = Gfp::NOWAIT.union(Gfp::MEMALLOC);

fn isolate_all(f: &Fixture) -> Vec<Isolated> {
    let mut v = vec![Isolated::EMPTY; 4096];
    let n = f.a.report_isolate(PAGE_REPORTING_ORDER, &mut v);
    v.truncate(n);
    v
}

#[test]
fn a_pass_isolates_unreported_big_blocks_and_the_putback_marks_them() {
    let f = fixture(64 * MIB, 1);
    let free0 = f.a.free_pages_buddy();
    let mut first = [Isolated::EMPTY; 4];
    assert_eq!(f.a.report_isolate(PAGE_REPORTING_ORDER, &mut first), 4);
    let taken: u64 = first.iter().map(|b| 1u64 << b.order).sum();
    for b in &first {
        assert!(b.order as usize >= PAGE_REPORTING_ORDER);
        assert!(b.pfn.0.is_multiple_of(1 << b.order));
        assert!(!f.a.is_reported(b.pfn));
    }
    // Isolated: out of the free count and off every list.
    assert_eq!(f.a.free_pages_buddy(), free0 - taken);
    check_free_lists(&f.a);
    let listed: BTreeSet<u64> = f.free_blocks().iter().map(|b| b.0).collect();
    assert!(first.iter().all(|b| !listed.contains(&b.pfn.0)));

    assert_eq!(f.a.report_putback(&first), 4);
    assert_eq!(f.a.free_pages_buddy(), free0);
    check_free_lists(&f.a);
    assert!(first.iter().all(|b| f.a.is_reported(b.pfn)));
    // The next pass takes only what is not reported yet.
    let mut second = [Isolated::EMPTY; 4];
    let n = f.a.report_isolate(PAGE_REPORTING_ORDER, &mut second);
    assert!(n > 0);
    assert!(second[..n].iter().all(|b| !first.contains(b)));
    f.a.report_putback(&second[..n]);
}

#[test]
fn every_free_big_block_is_reported_once() {
    let f = fixture(64 * MIB, 1);
    let mut seen = BTreeSet::new();
    for pass in 0.. {
        let got = isolate_all(&f);
        if got.is_empty() {
            break;
        }
        assert!(pass < 64, "passes never run out of unreported blocks");
        for b in &got {
            assert!(seen.insert(b.pfn.0), "block {} reported twice", b.pfn.0);
        }
        f.a.report_putback(&got);
    }
    check_free_lists(&f.a);
    // What stays unreported is the low watermark's share, nothing more
    // than that plus one block of each order.
    let unreported: u64 = f
        .free_blocks()
        .iter()
        .filter(|b| b.1 >= PAGE_REPORTING_ORDER && !f.a.is_reported(Pfn(b.0)))
        .map(|b| 1u64 << b.1)
        .sum();
    let z = f.a.zones().next().unwrap();
    assert!(
        unreported <= z.wmark(WMARK_LOW) + (4 << MAX_ORDER),
        "{unreported}"
    );
    assert!(!seen.is_empty());
}

#[test]
fn allocating_a_reported_block_clears_the_mark() {
    let f = fixture(32 * MIB, 1);
    let got = isolate_all(&f);
    f.a.report_putback(&got);
    let b = got[0];
    assert!(f.a.is_reported(b.pfn));
    // Take that very block: allocate blocks of its order until it comes.
    let mut c = f.a.cpu(0);
    let mut held = Vec::new();
    while let Some(p) = c.alloc(ALL, b.order as usize) {
        held.push(p);
        if p == b.pfn {
            break;
        }
    }
    assert_eq!(
        held.last(),
        Some(&b.pfn),
        "the reported block was handed out"
    );
    for p in held {
        c.free(p, b.order as usize).unwrap();
    }
    drop(c);
    assert!(!f.a.is_reported(b.pfn), "freed again: not reported");
    check_free_lists(&f.a);
    assert!(isolate_all(&f).iter().any(|i| i.pfn == b.pfn));
}

#[test]
fn splitting_a_reported_block_leaves_its_pieces_unreported() {
    let f = fixture(32 * MIB, 1);
    let got = isolate_all(&f);
    f.a.report_putback(&got);
    let before = f.free_blocks();
    assert!(before
        .iter()
        .filter(|b| b.1 >= PAGE_REPORTING_ORDER)
        .any(|b| f.a.is_reported(Pfn(b.0))));
    // Order-0 allocations split the smallest suitable block; what is left
    // of it on the lists is unreported.
    let mut c = f.a.cpu(0);
    let p = c.alloc_direct(Gfp::MOVABLE, 0).unwrap();
    drop(c);
    for b in f.free_blocks() {
        if !before.contains(&b) {
            assert!(!f.a.is_reported(Pfn(b.0)), "piece {} of a split", b.0);
        }
    }
    check_free_lists(&f.a);
    f.a.cpu(0).free_direct(p, 0).unwrap();
}

#[test]
fn a_reported_block_merges_with_its_freed_buddy_into_an_unreported_one() {
    let f = fixture(32 * MIB, 1);
    // Everything allocated as pageblocks.
    let mut c = f.a.cpu(0);
    let mut blocks = Vec::new();
    while let Some(p) = c.alloc(ALL, PAGEBLOCK_ORDER) {
        blocks.push(p);
    }
    drop(c);
    blocks.sort();
    // A pair of buddies: free the lower, report it, free the upper.
    let lo = *blocks
        .iter()
        .find(|p| p.0 % (2 << PAGEBLOCK_ORDER) == 0 && blocks.contains(&Pfn(p.0 + 512)))
        .expect("a pair of buddy pageblocks");
    let hi = Pfn(lo.0 + 512);
    // Everything back but `hi`, then passes until nothing new is left.
    for p in blocks.iter().filter(|p| **p != hi) {
        f.a.free_pages(0, *p, PAGEBLOCK_ORDER).unwrap();
    }
    loop {
        let got = isolate_all(&f);
        if got.is_empty() {
            break;
        }
        f.a.report_putback(&got);
    }
    assert!(
        f.a.is_reported(lo),
        "{lo:?} {:?}",
        f.free_blocks()
            .iter()
            .filter(|b| b.0 == lo.0)
            .collect::<Vec<_>>()
    );
    f.a.free_pages(0, hi, PAGEBLOCK_ORDER).unwrap();
    // Merged (the lists checker refuses unmerged buddies), and the merged
    // block is new memory to the host.
    check_free_lists(&f.a);
    assert!(f
        .free_blocks()
        .iter()
        .any(|b| (b.0, b.1) == (lo.0, PAGEBLOCK_ORDER + 1)));
    assert!(!f.a.is_reported(lo));
}

#[test]
fn isolated_blocks_cannot_be_allocated_or_freed() {
    let f = fixture(32 * MIB, 1);
    let got = isolate_all(&f);
    assert!(!got.is_empty());
    let isolated: BTreeSet<u64> = got
        .iter()
        .flat_map(|b| b.pfn.0..b.pfn.0 + (1 << b.order))
        .collect();
    let mut c = f.a.cpu(0);
    let mut held = Vec::new();
    while let Some(p) = c.alloc(ALL, 0) {
        assert!(!isolated.contains(&p.0), "allocated isolated page {}", p.0);
        held.push(p);
    }
    // A free of an isolated block is refused, nothing changes.
    assert!(matches!(
        c.free(got[0].pfn, got[0].order as usize),
        Err(FreeError::NotAllocated(_))
    ));
    for p in held {
        c.free(p, 0).unwrap();
    }
    c.drain_all(None);
    drop(c);
    f.a.report_putback(&got);
    check_free_lists(&f.a);
}

#[test]
fn a_pass_leaves_the_low_watermark_and_the_budget_alone() {
    let f = fixture(32 * MIB, 1);
    let got = isolate_all(&f);
    let z = f.a.zones().next().unwrap();
    assert!(z.free_pages() >= z.wmark(WMARK_LOW) + (1 << PAGE_REPORTING_ORDER));
    f.a.report_putback(&got);
    // The budget bounds one pass.
    let mut two = [Isolated::EMPTY; 2];
    assert_eq!(f.a.report_isolate(PAGE_REPORTING_ORDER, &mut two), 2);
    f.a.report_putback(&two);
    // Orders below the reporting order are never taken, even if asked.
    let mut v = [Isolated::EMPTY; 64];
    let n = f.a.report_isolate(PAGE_REPORTING_ORDER, &mut v);
    assert!(v[..n]
        .iter()
        .all(|b| b.order as usize >= PAGE_REPORTING_ORDER));
    f.a.report_putback(&v[..n]);
}

#[test]
fn frees_of_big_blocks_ask_for_a_pass_and_putbacks_do_not() {
    let f = fixture(32 * MIB, 1);
    let n0 = f.a.reportable_frees();
    assert!(n0 > 0, "boot hands memory over in big blocks");
    let got = isolate_all(&f);
    f.a.report_putback(&got);
    assert_eq!(f.a.reportable_frees(), n0);
    let p = f.a.alloc_pages(0, ALL, PAGEBLOCK_ORDER).unwrap();
    f.a.free_pages(0, p, PAGEBLOCK_ORDER).unwrap();
    assert_eq!(f.a.reportable_frees(), n0 + 1);
    // An order-0 page that does not complete a pageblock does not count.
    let mut c = f.a.cpu(0);
    let q = c.alloc_direct(Gfp::MOVABLE, 0).unwrap();
    let r = c.alloc_direct(Gfp::MOVABLE, 0).unwrap();
    let n1 = f.a.reportable_frees();
    c.free_direct(q, 0).unwrap();
    assert_eq!(f.a.reportable_frees(), n1);
    c.free_direct(r, 0).unwrap();
    drop(c);
}

/// An OOM hook that gives back what a balloon holds, with the calling
/// CPU's per-CPU lock held, the way the guest's balloon driver deflates on
/// OOM.
struct Deflater {
    a: &'static PageAllocator,
    held: std::sync::Mutex<Vec<Pfn>>,
    calls: std::sync::atomic::AtomicU64,
}

impl ReclaimHooks for Deflater {
    fn out_of_memory(&self, _node: usize, _order: usize) -> bool {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut h = self.held.lock().unwrap();
        let mut freed = false;
        for _ in 0..16 {
            let Some(p) = h.pop() else { break };
            self.a.free_from_hook(p, 0).unwrap();
            freed = true;
        }
        freed
    }
}

#[test]
fn an_oom_hook_frees_with_the_cpu_lock_held_and_the_allocation_succeeds() {
    let mut f = fixture(32 * MIB, 1);
    // SAFETY (of the leak): the fixture outlives every use in this test.
    let a: &'static PageAllocator = unsafe { &*(&*f.a as *const PageAllocator) };
    let d: &'static Deflater = Box::leak(Box::new(Deflater {
        a,
        held: Default::default(),
        calls: Default::default(),
    }));
    f.a.set_hooks(d);
    // A "balloon" takes everything it may.
    let mut c = f.a.cpu(0);
    let mut balloon = Vec::new();
    while let Some(p) = c.alloc(ALL, 0) {
        balloon.push(p);
    }
    c.drain_all(None);
    *d.held.lock().unwrap() = balloon;
    let free_before = f.a.free_pages_buddy();
    // An ordinary request now reaches the OOM step, which deflates.
    let p = c.alloc(Gfp::KERNEL, 0).expect("the OOM hook made room");
    assert!(d.calls.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        c.events().get(VmEvent::OomKill),
        d.calls.load(Ordering::Relaxed)
    );
    c.free(p, 0).unwrap();
    c.drain_all(None);
    drop(c);
    assert!(f.a.free_pages_buddy() > free_before);
    assert!(f.a.events().get(VmEvent::PgFree) >= 16);
    check_free_lists(&f.a);
    // A bad free through the hook path is refused like any other.
    assert!(matches!(
        f.a.free_from_hook(Pfn(0), 0),
        Err(FreeError::Reserved(_))
    ));
    let held = std::mem::take(&mut *d.held.lock().unwrap());
    let page = held[0];
    f.a.free_from_hook(page, 0).unwrap();
    assert!(matches!(
        f.a.free_from_hook(page, 0),
        Err(FreeError::NotAllocated(_))
    ));
    let mut c = f.a.cpu(0);
    for p in &held[1..] {
        c.free(*p, 0).unwrap();
    }
    c.drain_all(None);
    drop(c);
    check_free_lists(&f.a);
}

#[test]
fn huge_allocations_and_their_failures_are_counted() {
    // What the balloon's stats queue reports as hugetlb allocations and
    // failures: order >= pageblock requests, and only those.
    let f = fixture(32 * MIB, 1);
    let mut c = f.a.cpu(0);
    let small = c.alloc(ALL, PAGEBLOCK_ORDER - 1).unwrap();
    assert_eq!(c.events().get(VmEvent::PgAllocHuge), 0);
    let mut held = Vec::new();
    while let Some(p) = c.alloc(ALL, PAGEBLOCK_ORDER) {
        held.push(p);
    }
    let e = c.events();
    assert_eq!(e.get(VmEvent::PgAllocHuge), held.len() as u64);
    assert_eq!(e.get(VmEvent::PgAllocHugeFail), 1);
    assert!(c.alloc(ALL, MAX_ORDER).is_none());
    assert_eq!(c.events().get(VmEvent::PgAllocHugeFail), 2);
    for p in held {
        c.free(p, PAGEBLOCK_ORDER).unwrap();
    }
    c.free(small, PAGEBLOCK_ORDER - 1).unwrap();
    assert_eq!(c.events().get(VmEvent::PgAllocHugeFail), 2);
}

#[test]
fn a_block_that_merges_on_putback_is_not_marked_reported() {
    // Linux's page_reporting_drain marks a block only if it came back at
    // its own order: merged, it holds memory the host never saw.
    let f = fixture(32 * MIB, 1);
    let mut c = f.a.cpu(0);
    let mut blocks = Vec::new();
    while let Some(p) = c.alloc(ALL, PAGEBLOCK_ORDER) {
        blocks.push(p);
    }
    drop(c);
    let lo = *blocks
        .iter()
        .find(|p| p.0 % (2 << PAGEBLOCK_ORDER) == 0 && blocks.contains(&Pfn(p.0 + 512)))
        .unwrap();
    let hi = Pfn(lo.0 + 512);
    for p in blocks.iter().filter(|p| **p != hi) {
        f.a.free_pages(0, *p, PAGEBLOCK_ORDER).unwrap();
    }
    // Isolate until `lo` is among the blocks taken.
    let out = loop {
        let got = isolate_all(&f);
        assert!(!got.is_empty(), "lo never isolated");
        if got.iter().any(|b| b.pfn == lo) {
            break got;
        }
        f.a.report_putback(&got);
    };
    // Its buddy comes free while it is away, and cannot merge with it.
    f.a.free_pages(0, hi, PAGEBLOCK_ORDER).unwrap();
    check_free_lists(&f.a);
    let marked = f.a.report_putback(&out);
    assert_eq!(marked, out.len() - 1, "all but the merged one marked");
    check_free_lists(&f.a);
    assert!(!f.a.is_reported(lo));
    assert!(f
        .free_blocks()
        .iter()
        .any(|b| (b.0, b.1) == (lo.0, PAGEBLOCK_ORDER + 1)));
}

#[test]
fn a_reported_upper_half_leaves_no_mark_inside_the_merged_block() {
    let f = fixture(32 * MIB, 1);
    let mut c = f.a.cpu(0);
    let mut blocks = Vec::new();
    while let Some(p) = c.alloc(ALL, PAGEBLOCK_ORDER) {
        blocks.push(p);
    }
    drop(c);
    let lo = *blocks
        .iter()
        .find(|p| p.0 % (2 << PAGEBLOCK_ORDER) == 0 && blocks.contains(&Pfn(p.0 + 512)))
        .unwrap();
    let hi = Pfn(lo.0 + 512);
    for p in blocks.iter().filter(|p| **p != lo) {
        f.a.free_pages(0, *p, PAGEBLOCK_ORDER).unwrap();
    }
    while !f.a.is_reported(hi) {
        let got = isolate_all(&f);
        assert!(!got.is_empty(), "hi never reported");
        f.a.report_putback(&got);
    }
    // `lo` comes free: `hi` merges into it and is an inside page now.
    f.a.free_pages(0, lo, PAGEBLOCK_ORDER).unwrap();
    // SAFETY: a read of a free block's inside page, nothing else running.
    let inside = unsafe { f.a.map.at(f.a.map.idx(hi.0)) }.flags;
    assert_eq!(inside, 0, "an inside page carries no flags");
    check_free_lists(&f.a);
    // Splitting the merged block hands `hi` out as a clean block.
    let mut c = f.a.cpu(0);
    let mut held = Vec::new();
    while let Some(p) = c.alloc(ALL, PAGEBLOCK_ORDER) {
        held.push(p);
    }
    assert!(held.contains(&hi));
    for p in held {
        c.free(p, PAGEBLOCK_ORDER).unwrap();
    }
}

/// Reported blocks go back to the tail: an allocation takes memory the
/// host still backs before one the host has discarded (each such block
/// costs the host a fault, 2 MiB of Rss on a THP host).
#[test]
fn reported_blocks_go_back_behind_unreported_ones() {
    let f = fixture(64 * MIB, 1);
    let mut blocks = [Isolated::EMPTY; 4];
    assert_eq!(f.a.report_isolate(PAGE_REPORTING_ORDER, &mut blocks), 4);
    assert_eq!(f.a.report_putback(&blocks), 4);
    // free_blocks walks each list head to tail, zone by zone, order by
    // order: a run of equal (order, type) is one list.
    let listed = f.free_blocks();
    let mut lists = 0;
    for list in listed.chunk_by(|a, b| (a.1, a.2) == (b.1, b.2)) {
        let marks: Vec<bool> = list.iter().map(|b| f.a.is_reported(Pfn(b.0))).collect();
        if marks.contains(&true) && marks.contains(&false) {
            lists += 1;
        }
        let first_reported = marks.iter().position(|&r| r).unwrap_or(marks.len());
        assert!(
            marks[first_reported..].iter().all(|&r| r),
            "a reported block ahead of unreported ones: {list:?} {marks:?}"
        );
    }
    assert!(lists > 0, "no list held both kinds: {listed:?}");
    // So the next allocation of that order is backed memory.
    let order = blocks[0].order as usize;
    let p =
        f.a.alloc_pages(0, Gfp::MOVABLE.union(Gfp::NOWAIT), order)
            .unwrap();
    assert!(
        blocks
            .iter()
            .all(|b| p.0 < b.pfn.0 || p.0 >= b.pfn.0 + (1 << b.order)),
        "took reported memory first: {p:?}"
    );
    f.a.free_pages(0, p, order).unwrap();
    check_free_lists(&f.a);
}
