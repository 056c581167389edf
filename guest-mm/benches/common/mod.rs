//! The page-allocator benchmark cases, shared by the criterion bench
//! (`benches/page_alloc.rs`) and the callgrind runner
//! (`examples/alloc_instructions.rs`) so both time the same code.
//!
//! Three contenders, each over 1 GiB of 4 KiB frames:
//! - guest-mm's [`PageAllocator`] over simulated RAM, all accounting on;
//! - `buddy_system_allocator` 0.13's `FrameAllocator` (BTreeSet free lists)
//!   in its fairest configuration for the same job: the same largest order
//!   as guest-mm (`FrameAllocator<11>`, order 10) and its memory added as
//!   the same maximal blocks guest-mm's zone holds (order-10, aligned). A
//!   peer with a larger top order would split more levels per pair than
//!   guest-mm does, and the ratio would measure that handicap;
//! - a bare `Vec<u64>` used as a LIFO list of frame numbers: the upper bound
//!   for any per-CPU list.
//!
//! guest-mm allocates with [`Gfp::USER_MOVABLE`] throughout: every pageblock
//! of a fresh zone starts Movable, so movable requests are served from their
//! own lists. A `Gfp::KERNEL` (unmovable) request would find its lists empty
//! and fall back, stealing and retyping a movable pageblock (and possibly
//! boosting the watermark), so the benchmark would time the fragmentation
//! machinery, and the zone would no longer be all maximal movable blocks.
//! [`check_no_fallback`] asserts that no fallback happened.
#![allow(dead_code)] // each user takes the parts it needs

use buddy_system_allocator::FrameAllocator;
use guest_mm::gfp::Gfp;
use guest_mm::mmzone::{MigrateType, ZoneType, MAX_ORDER, MIGRATE_TYPES};
use guest_mm::page_alloc::{CpuCache, PageAllocator, Topology};
use guest_mm::phys::sim::SimMemory;
use guest_mm::vmstat::{FreeAreaCounts, VmEvent};
use guest_mm::{Memblock, Pfn, PhysAddr, PAGE_SIZE};
use std::hint::black_box;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Frames in 1 GiB: what the peer and the Vec bound manage.
pub const FRAMES: usize = (GIB / PAGE_SIZE) as usize;
/// Pages per round of `order-0 batch`: that many allocations, then as many
/// frees. Well above the per-CPU high mark of the 1 GiB zone (~1,260), so
/// every round refills from and bulk-frees to the buddy lists;
/// [`check_batch_crosses_high`] asserts it.
pub const BATCH: usize = 4096;
/// Pages per round of `order-0 batch per-CPU only`: below the high mark,
/// so after the first round the per-CPU list serves everything and the
/// buddy lists are never touched ([`check_batch_crosses_high`] asserts that
/// too). What it measures is the per-CPU list, not the allocator behind it.
pub const BATCH_PCP: usize = 1000;
/// The one allocation type of every guest-mm case (see the module doc).
pub const GFP: Gfp = Gfp::USER_MOVABLE;
/// Order of the high-order case.
pub const HIGH_ORDER: usize = 9;

/// Case names: criterion group names and the runner's first argument.
pub const CASES: [&str; 5] = [
    "order-0 steady",
    "order-0 batch",
    "order-0 batch per-CPU only",
    "order-0 buddy",
    "order-9",
];

/// Pages per round of a batch case; `None` for the one-pair cases.
pub fn batch_pages(case: &str) -> Option<usize> {
    match case {
        "order-0 batch" => Some(BATCH),
        "order-0 batch per-CPU only" => Some(BATCH_PCP),
        _ => None,
    }
}
/// Contender names: criterion function names and the runner's second argument.
pub const CONTENDERS: [&str; 3] = ["guest-mm", "buddy_system_allocator", "vec-bound"];

// ------------------------------------------------------------------ guest-mm

/// One allocator over `size` bytes of simulated RAM, first MiB reserved,
/// one node, one CPU (as the unit tests' `fixture`).
pub struct GuestMm {
    // Declared first so it is dropped before the RAM it points into.
    pub a: Box<PageAllocator>,
    _mem: Box<SimMemory>,
}

impl GuestMm {
    pub fn new(size: u64) -> Self {
        let mem = Box::new(SimMemory::new(PhysAddr(0), size));
        let mut mb = Memblock::new();
        mb.reserve(&*mem, PhysAddr(0), MIB).unwrap();
        // SAFETY: simulated RAM, its first MiB reserved before it is added.
        unsafe { mb.add(&*mem, PhysAddr(0), size).unwrap() };
        let mut a = Box::new(PageAllocator::EMPTY);
        a.init(&mut mb, &*mem, Topology::single(1)).unwrap();
        GuestMm { a, _mem: mem }
    }
}

/// One order-0 alloc+free through the per-CPU lists.
#[inline(always)]
pub fn gm_pair(c: &mut CpuCache, order: usize) {
    let order = black_box(order);
    let p = c.alloc(black_box(GFP), order).unwrap();
    c.free(black_box(p), order).unwrap();
}

/// One alloc+free that bypasses the per-CPU lists.
#[inline(always)]
pub fn gm_direct_pair(c: &mut CpuCache, order: usize) {
    let order = black_box(order);
    let p = c.alloc_direct(black_box(GFP), order).unwrap();
    c.free_direct(black_box(p), order).unwrap();
}

/// `buf.len()` order-0 allocations, then as many frees (in allocation order).
#[inline(always)]
pub fn gm_batch_round(c: &mut CpuCache, buf: &mut [Pfn]) {
    for slot in buf.iter_mut() {
        *slot = c.alloc(black_box(GFP), black_box(0)).unwrap();
    }
    for &p in buf.iter() {
        c.free(black_box(p), black_box(0)).unwrap();
    }
}

/// The (node, zone) whose free lists serve [`GFP`] on this CPU.
fn serving_zone(a: &PageAllocator, c: &mut CpuCache) -> (usize, ZoneType) {
    let probe = c.alloc_direct(GFP, 0).unwrap();
    let z = a.zones().find(|z| z.contains(probe.0)).unwrap();
    let at = (z.node, z.kind);
    c.free_direct(probe, 0).unwrap();
    at
}

/// Makes the zone that serves [`GFP`] hold only maximal (order-MAX_ORDER)
/// free blocks: drains the per-CPU lists back to the buddy lists, then
/// allocates every smaller free block (boot leaves some around the memmap
/// and the reserved first MiB) and returns them, to be held while the
/// `order-0 buddy` and `order-9` cases run. Then checks that one direct
/// order-0 pair and one order-9 pair split an order-10 block and merge the
/// zone back to exactly the same free lists.
pub fn make_maximal(a: &PageAllocator, c: &mut CpuCache) -> Vec<(Pfn, usize)> {
    c.drain_all(None);
    let (node, kind) = serving_zone(a, c);
    let before = a.pagetypeinfo(node, kind);
    let mut held = Vec::new();
    for order in 0..MAX_ORDER {
        for mt in 0..MIGRATE_TYPES {
            let n = before.blocks[order][mt];
            assert!(
                n == 0 || mt == MigrateType::Movable as usize,
                "{n} free order-{order} blocks of type {mt}: the zone is not all movable"
            );
            for _ in 0..n {
                // Orders below are empty by now, so this takes exactly one
                // of these blocks without splitting anything.
                held.push((c.alloc_direct(GFP, order).unwrap(), order));
            }
        }
    }
    let maximal = a.pagetypeinfo(node, kind);
    assert_only_maximal(&maximal);
    assert!(maximal.blocks[MAX_ORDER][MigrateType::Movable as usize] > 0);

    let p = c.alloc_direct(GFP, 0).unwrap();
    assert_eq!(
        p.0 % (1 << MAX_ORDER),
        0,
        "order-0 pair did not split an order-{MAX_ORDER} block"
    );
    c.free_direct(p, 0).unwrap();
    assert_eq!(
        a.pagetypeinfo(node, kind),
        maximal,
        "order-0 pair did not merge back"
    );

    let p = c.alloc(GFP, HIGH_ORDER).unwrap();
    assert_eq!(
        p.0 % (1 << MAX_ORDER),
        0,
        "order-9 pair did not split an order-{MAX_ORDER} block"
    );
    c.free(p, HIGH_ORDER).unwrap();
    assert_eq!(
        a.pagetypeinfo(node, kind),
        maximal,
        "order-9 pair did not merge back"
    );
    check_no_fallback(c);
    held
}

/// After a direct or order-9 run: the zone is still all maximal blocks.
pub fn check_still_maximal(a: &PageAllocator, c: &mut CpuCache) {
    let (node, kind) = serving_zone(a, c);
    assert_only_maximal(&a.pagetypeinfo(node, kind));
}

fn assert_only_maximal(counts: &FreeAreaCounts) {
    for order in 0..MAX_ORDER {
        assert!(
            counts.blocks[order].iter().all(|&n| n == 0),
            "free order-{order} blocks left: {:?}",
            counts.blocks[order]
        );
    }
}

/// Gives the blocks [`make_maximal`] took back.
pub fn release(c: &mut CpuCache, held: Vec<(Pfn, usize)>) {
    for (p, order) in held {
        c.free_direct(p, order).unwrap();
    }
}

/// Runs one warm-up round of `pages` and then one counted round, and checks
/// the case is what its name says: a round of [`BATCH`] refills from and
/// bulk-frees to the buddy lists, a round of [`BATCH_PCP`] does neither.
pub fn check_batch_crosses_high(a: &PageAllocator, c: &mut CpuCache, pages: usize) {
    let mut buf = vec![Pfn(0); pages];
    gm_batch_round(c, &mut buf);
    let before = c.events();
    gm_batch_round(c, &mut buf);
    let after = c.events();
    let delta = |e| after.get(e) - before.get(e);
    let (refills, bulk) = (delta(VmEvent::PcpRefill), delta(VmEvent::PcpFreeBatch));
    let (node, kind) = serving_zone(a, c);
    let high = c.pcp(node, kind).high as usize;
    if pages > high {
        assert!(
            refills > 0 && bulk > 0,
            "{pages} pages per round did not cross the per-CPU high mark {high}"
        );
    } else {
        assert!(
            refills == 0 && bulk == 0,
            "{pages} pages per round left the per-CPU list (high {high})"
        );
    }
}

/// No allocation had to take another migrate type's block.
pub fn check_no_fallback(c: &CpuCache) {
    let e = c.events();
    assert_eq!(
        e.get(VmEvent::PgAllocFallback),
        0,
        "migrate-type fallback happened"
    );
    assert_eq!(e.get(VmEvent::AllocFail), 0, "an allocation failed");
}

// -------------------------------------------------- buddy_system_allocator

/// The peer with guest-mm's largest order: `FrameAllocator<ORDER>` has
/// orders 0..ORDER-1.
pub type Peer = FrameAllocator<{ MAX_ORDER + 1 }>;
/// Pages in a maximal block, the same for both allocators.
pub const MAX_BLOCK: usize = 1 << MAX_ORDER;

/// A fresh peer over frames [0, FRAMES): `add_frame` cuts the range into
/// aligned order-10 blocks, the maximal blocks guest-mm's buddy lists get
/// for the same RAM.
pub fn peer_fresh() -> Box<Peer> {
    let mut f = Box::new(Peer::new());
    f.add_frame(0, FRAMES);
    f
}

/// A peer with one frame held, so that frame's buddy stays on the order-0
/// list and every pair takes it from there and puts it back.
pub fn peer_steady() -> Box<Peer> {
    let mut f = peer_fresh();
    let held = f.alloc(1).unwrap();
    let p = f.alloc(1).unwrap();
    assert_eq!(p, held ^ 1);
    f.dealloc(p, 1);
    assert_eq!(
        f.alloc(1),
        Some(p),
        "the buddy is not the next order-0 frame"
    );
    f.dealloc(p, 1);
    f
}

/// The free lists hold only maximal blocks covering every frame: all
/// FRAMES / MAX_BLOCK of them can be allocated, and then nothing else.
pub fn peer_assert_untouched(f: &mut Peer) {
    let blocks: Vec<usize> = (0..FRAMES / MAX_BLOCK)
        .map(|_| {
            f.alloc(MAX_BLOCK)
                .expect("peer free lists are not all maximal blocks")
        })
        .collect();
    assert_eq!(
        f.alloc(1),
        None,
        "peer holds free frames outside maximal blocks"
    );
    for b in blocks {
        f.dealloc(b, MAX_BLOCK);
    }
}

#[inline(always)]
pub fn peer_pair(f: &mut Peer, frames: usize) {
    let n = black_box(frames);
    let p = f.alloc(n).unwrap();
    f.dealloc(black_box(p), n);
}

#[inline(always)]
pub fn peer_batch_round(f: &mut Peer, buf: &mut [usize]) {
    for slot in buf.iter_mut() {
        *slot = f.alloc(black_box(1)).unwrap();
    }
    for &p in buf.iter() {
        f.dealloc(black_box(p), black_box(1));
    }
}

// ------------------------------------------------------------- Vec bound

/// Every frame number, as a LIFO free list.
pub fn vec_fresh() -> Vec<u64> {
    (0..FRAMES as u64).rev().collect()
}

#[inline(always)]
pub fn vec_pair(v: &mut Vec<u64>) {
    let p = v.pop().unwrap();
    v.push(black_box(p));
}

#[inline(always)]
pub fn vec_batch_round(v: &mut Vec<u64>, buf: &mut [u64]) {
    for slot in buf.iter_mut() {
        *slot = v.pop().unwrap();
    }
    for &p in buf.iter() {
        v.push(black_box(p));
    }
}
