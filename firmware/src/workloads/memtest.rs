//! memtest: every free page, from every CPU, through the page allocator.
//!
//! The free pages are divided evenly: each CPU takes its share (free pages
//! / CPUs, the list pages that record its blocks included), allocating
//! blocks from the largest order down as a reclaimer may (watermarks do not
//! apply), and fills them with `address ^ PATTERN` (an address-dependent
//! pattern catches aliasing, not just stuck bits). The shares add up to the
//! free page count, so when every CPU has its share nothing is left free,
//! and a CPU that starts late still gets as much as the first one (a greedy
//! "take until empty" let early vCPUs drain everything). After a barrier
//! each CPU verifies the blocks of its neighbour, so data written on one
//! vCPU is read back on another. Then everything is freed, the per-CPU
//! lists drained, and the allocator must be back to the free page count it
//! started with.
use crate::hostio::{self, LINE};
use crate::mm;
use crate::smp::Barrier;
use crate::{abi, arch::cpu, MAX_CPUS};
use core::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use guest_mm::gfp::Gfp;
use guest_mm::mmzone::MAX_ORDER;
use guest_mm::page_alloc::CpuCache;
use guest_mm::{Pfn, PAGE_SIZE};

const PATTERN: u64 = 0x5a5a_a5a5_0f0f_f0f0;
/// A list page: [next, count, (pfn, order) × ENTRIES].
const ENTRIES: usize = (PAGE_SIZE as usize / 8 - 2) / 2;
/// Movable, no reclaim, and allowed below the watermarks: take it all.
const GFP: Gfp = Gfp::MOVABLE.union(Gfp::MEMALLOC).union(Gfp::NOWARN);

struct PerCpu {
    list: AtomicU64,
    list_pages: AtomicU64,
    written: AtomicU64,
    verified: AtomicU64,
    errors: AtomicU64,
    first_bad: AtomicU64,
    free_errors: AtomicU64,
    /// Pages this CPU is to take (its blocks plus its list pages).
    share: AtomicU64,
    /// Pages it took.
    taken: AtomicU64,
    /// Times it found nothing free before its share was complete and waited
    /// for other CPUs to hand back pages parked on their per-CPU lists.
    waits: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: PerCpu = PerCpu {
    list: AtomicU64::new(0),
    list_pages: AtomicU64::new(0),
    written: AtomicU64::new(0),
    verified: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    first_bad: AtomicU64::new(0),
    free_errors: AtomicU64::new(0),
    share: AtomicU64::new(0),
    taken: AtomicU64::new(0),
    waits: AtomicU64::new(0),
};
static PER_CPU: [PerCpu; MAX_CPUS] = [ZERO; MAX_CPUS];
static BARRIER: Barrier = Barrier::new();
static FREE_BEFORE: AtomicU64 = AtomicU64::new(0);
/// CPUs still taking their share; each drains its per-CPU lists before it
/// counts itself out.
static ACTIVE: AtomicU64 = AtomicU64::new(0);

fn words(pfn: u64, frames: u64) -> &'static mut [u64] {
    // SAFETY: the frames were handed to this CPU by the allocator and are
    // identity mapped; nothing else uses them until they are freed.
    unsafe {
        core::slice::from_raw_parts_mut(
            (pfn * PAGE_SIZE) as *mut u64,
            (frames * PAGE_SIZE / 8) as usize,
        )
    }
}

fn fill(pfn: u64, frames: u64) {
    let base = pfn * PAGE_SIZE;
    for (i, w) in words(pfn, frames).iter_mut().enumerate() {
        *w = (base + 8 * i as u64) ^ PATTERN;
    }
}

/// Returns (bad words, address of the first bad word or 0).
fn check(pfn: u64, frames: u64) -> (u64, u64) {
    let base = pfn * PAGE_SIZE;
    let mut bad = 0;
    let mut first = 0;
    for (i, w) in words(pfn, frames).iter().enumerate() {
        let addr = base + 8 * i as u64;
        if *w != addr ^ PATTERN {
            if bad == 0 {
                first = addr;
            }
            bad += 1;
        }
    }
    (bad, first)
}

/// Visits every (pfn, order) entry of a CPU's block list.
fn for_each_block(head: u64, mut f: impl FnMut(u64, usize)) {
    let mut page = head;
    while page != 0 {
        let w = words(page / PAGE_SIZE, 1);
        let (next, n) = (w[0], w[1] as usize);
        for e in 0..n {
            f(w[2 + 2 * e], w[3 + 2 * e] as usize);
        }
        page = next;
    }
}

/// This CPU's share of `free` pages: an even split, the remainder spread
/// over the first CPUs, so the shares add up to `free`.
fn share_of(free: u64, cpu: usize, ncpus: usize) -> u64 {
    let n = ncpus as u64;
    free / n + u64::from((cpu as u64) < free % n)
}

/// One order-0 page, waiting if need be. The shares add up to the free page
/// count, so while this CPU's share is incomplete a page is free somewhere:
/// in the buddy lists, or on the per-CPU list of a CPU still taking its own
/// share, which hands it back when it is done. Gives up (None) only when
/// every other CPU is done and still nothing is free: then pages were lost.
fn alloc_page_or_wait(c: &mut CpuCache<'_>, me: &PerCpu) -> Option<u64> {
    if let Some(Pfn(p)) = c.alloc(GFP, 0) {
        return Some(p);
    }
    // Blocks this CPU refilled at orders it has since skipped (its share's
    // rest was smaller) sit on its own lists: back to the buddy lists. The
    // other CPUs' lists are drained now if idle, else when their holders
    // finish.
    c.drain_all(None);
    me.waits.fetch_add(1, Relaxed);
    loop {
        // Read before trying: once every other CPU has counted itself out,
        // its pages are back in the buddy lists.
        let alone = ACTIVE.load(Acquire) <= 1;
        if let Some(Pfn(p)) = c.alloc(GFP, 0) {
            return Some(p);
        }
        if alone {
            return None;
        }
        for _ in 0..256 {
            core::hint::spin_loop();
        }
    }
}

pub fn run(cpu: usize, ncpus: usize) -> bool {
    let a = mm::allocator();
    let me = &PER_CPU[cpu];
    if cpu == 0 {
        FREE_BEFORE.store(mm::free_pages_drained(), Relaxed);
        ACTIVE.store(ncpus as u64, Relaxed);
    }
    let t0 = cpu::rdtsc();
    BARRIER.wait(ncpus);

    // Phase 1: take this CPU's share, blocks largest first (never more than
    // the share's rest), and write the pattern.
    let share = share_of(FREE_BEFORE.load(Relaxed), cpu, ncpus);
    me.share.store(share, Relaxed);
    {
        let mut c = a.cpu(cpu);
        let mut taken = 0u64;
        let mut list: Option<&mut [u64]> = None;
        let mut order = MAX_ORDER;
        while taken < share {
            if list.as_ref().is_none_or(|l| l[1] as usize == ENTRIES) {
                let Some(p) = alloc_page_or_wait(&mut c, me) else {
                    break;
                };
                let page = words(p, 1);
                page[0] = me.list.load(Relaxed);
                page[1] = 0;
                me.list.store(p * PAGE_SIZE, Relaxed);
                me.list_pages.fetch_add(1, Relaxed);
                list = Some(page);
                taken += 1;
                continue;
            }
            // The largest order that still fits the rest of the share.
            order = order.min((share - taken).ilog2() as usize);
            let p = if order == 0 {
                let Some(p) = alloc_page_or_wait(&mut c, me) else {
                    break;
                };
                p
            } else {
                let Some(Pfn(p)) = c.alloc(GFP, order) else {
                    order -= 1;
                    continue;
                };
                p
            };
            let l = list.as_mut().expect("list page");
            let n = l[1] as usize;
            l[2 + 2 * n] = p;
            l[3 + 2 * n] = order as u64;
            l[1] += 1;
            fill(p, 1 << order);
            me.written.fetch_add(1 << order, Relaxed);
            taken += 1 << order;
        }
        me.taken.store(taken, Relaxed);
        // Nothing of ours stays parked on this CPU's lists while others
        // still need pages.
        c.drain_all(None);
    }
    ACTIVE.fetch_sub(1, Release);
    BARRIER.wait(ncpus);

    // Phase 2: verify the neighbour's blocks.
    let other = &PER_CPU[(cpu + 1) % ncpus];
    for_each_block(other.list.load(Relaxed), |pfn, order| {
        let (bad, first) = check(pfn, 1 << order);
        me.verified.fetch_add(1 << order, Relaxed);
        if bad > 0 && me.errors.fetch_add(bad, Relaxed) == 0 {
            me.first_bad.store(first, Relaxed);
        }
    });
    BARRIER.wait(ncpus);

    // Phase 3: give everything back, list pages last.
    {
        let mut c = a.cpu(cpu);
        let mut page = me.list.load(Relaxed);
        for_each_block(page, |pfn, order| {
            if c.free(Pfn(pfn), order).is_err() {
                me.free_errors.fetch_add(1, Relaxed);
            }
        });
        while page != 0 {
            let next = words(page / PAGE_SIZE, 1)[0];
            if c.free(Pfn(page / PAGE_SIZE), 0).is_err() {
                me.free_errors.fetch_add(1, Relaxed);
            }
            page = next;
        }
    }
    BARRIER.wait(ncpus);
    if cpu != 0 {
        return true;
    }
    report(ncpus, cpu::rdtsc() - t0)
}

fn report(ncpus: usize, cycles: u64) -> bool {
    let before = FREE_BEFORE.load(Relaxed);
    let after = mm::free_pages_drained();
    let cpus = &PER_CPU[..ncpus];
    let sum = |f: fn(&PerCpu) -> u64| cpus.iter().map(f).sum::<u64>();
    let written = sum(|c| c.written.load(Relaxed));
    let list_pages = sum(|c| c.list_pages.load(Relaxed));
    let verified = sum(|c| c.verified.load(Relaxed));
    let errors = sum(|c| c.errors.load(Relaxed) + c.free_errors.load(Relaxed));
    let waits = sum(|c| c.waits.load(Relaxed));
    // Every CPU took its whole share and wrote into it; the shares add up
    // to the free page count, so every free page was taken: written plus
    // the pages holding the lists.
    let cpu_ok = |c: &PerCpu| {
        c.written.load(Relaxed) > 0
            && c.taken.load(Relaxed) == c.share.load(Relaxed)
            && c.written.load(Relaxed) + c.list_pages.load(Relaxed) == c.taken.load(Relaxed)
            && c.errors.load(Relaxed) == 0
            && c.free_errors.load(Relaxed) == 0
    };
    let ok = errors == 0
        && written > 0
        && verified == written
        && written + list_pages == before
        && after == before
        && cpus.iter().all(cpu_ok);

    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"workload\",\"name\":\"memtest\",\"ok\":{ok},\"pattern\":\"address^{PATTERN:#x}\",\
         \"pages_written\":{written},\"list_pages\":{list_pages},\"pages_verified\":{verified},\"errors\":{errors},\
         \"free_pages_before\":{before},\"free_pages_after\":{after},\"waits\":{waits},\"tsc_cycles\":{cycles},\"per_cpu\":["
    ));
    for (i, c) in cpus.iter().enumerate() {
        l.fmt(format_args!(
            "{}{{\"cpu\":{i},\"share_pages\":{},\"pages_taken\":{},\"pages_written\":{},\"list_pages\":{},\
             \"waits\":{},\"verified_cpu\":{},\"pages_verified\":{},\"errors\":{},\"first_bad_address\":{},\
             \"free_errors\":{},\"ok\":{}}}",
            if i == 0 { "" } else { "," },
            c.share.load(Relaxed),
            c.taken.load(Relaxed),
            c.written.load(Relaxed),
            c.list_pages.load(Relaxed),
            c.waits.load(Relaxed),
            (i + 1) % ncpus,
            c.verified.load(Relaxed),
            c.errors.load(Relaxed),
            c.first_bad.load(Relaxed),
            c.free_errors.load(Relaxed),
            cpu_ok(c)
        ));
    }
    l.raw("]}");
    hostio::send(l.finish());
    ok
}
