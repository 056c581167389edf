//! alloc: stress the page and slab allocators from every CPU, then fragment
//! memory on purpose and measure what grouping by mobility saves.
//!
//! Stress: each CPU makes `alloc_iters=N` requests (default 200,000) of
//! mixed orders (mostly order 0, some up to 10) and migrate types, plus slab
//! objects of 8 B..4 KiB; most die young (a ring of 64), some live long (a
//! table of 1,024 that is itself kmalloc'ed). Everything is freed at the
//! end and the free page count must be exactly what it was.
//!
//! Fragmentation (CPU 0): fill memory with order-0 pages, one unmovable in
//! ten, free the movable ones, and count the free order-9 blocks against
//! the most that many free pages could form. Boot once with
//! `mobility_grouping=off` to compare (seed 3.3).
use crate::arch::cpu;
use crate::hostio::{self, LINE};
use crate::json::Line;
use crate::smp::Barrier;
use crate::{abi, cmdline, mm, MAX_CPUS};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use guest_mm::gfp::Gfp;
use guest_mm::mmzone::{MigrateType, MIGRATE_TYPES, NR_ORDERS};
use guest_mm::slab::Kmalloc;
use guest_mm::vmstat::{fragmentation_index, unusable_free_index};
use guest_mm::{IdentityMap, Pfn, PhysAddr, PAGE_SIZE};

/// Slab objects of the guest kernel (this workload is its only user yet).
static KMALLOC: Kmalloc = Kmalloc::new();
static BARRIER: Barrier = Barrier::new();
static FREE_BEFORE: AtomicU64 = AtomicU64::new(0);
static ITERS: AtomicU64 = AtomicU64::new(200_000);

const RING: usize = 64;
const LONG: usize = 1024;
const KIND_PAGES: u64 = 0;
const KIND_SLAB: u64 = 1;

struct Stats {
    allocs: [AtomicU64; NR_ORDERS],
    slab_allocs: AtomicU64,
    failures: AtomicU64,
    free_errors: AtomicU64,
    cycles: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const STATS0: Stats = Stats {
    allocs: [const { AtomicU64::new(0) }; NR_ORDERS],
    slab_allocs: AtomicU64::new(0),
    failures: AtomicU64::new(0),
    free_errors: AtomicU64::new(0),
    cycles: AtomicU64::new(0),
};
static STATS: [Stats; MAX_CPUS] = [STATS0; MAX_CPUS];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Order distribution: 70% 0, 20% 1..=3, 8% 4..=8, 2% 9..=10.
fn pick_order(r: u64) -> usize {
    match r % 100 {
        0..70 => 0,
        70..90 => 1 + (r >> 8) as usize % 3,
        90..98 => 4 + (r >> 8) as usize % 5,
        _ => 9 + (r >> 8) as usize % 2,
    }
}

fn pick_gfp(r: u64) -> Gfp {
    // No direct reclaim: nothing is reclaimable yet, so waiting is useless.
    match r % 20 {
        0..12 => Gfp::NOWAIT.union(Gfp::MOVABLE),
        12..17 => Gfp::NOWAIT,
        _ => Gfp::NOWAIT.union(Gfp::RECLAIMABLE),
    }
}

/// A live allocation: (address, kind << 8 | order); address 0 = empty.
type Slot = (u64, u64);

fn release(cpu: usize, s: Slot) {
    let (addr, tag) = s;
    if addr == 0 {
        return;
    }
    let ok = if tag >> 8 == KIND_SLAB {
        KMALLOC
            .kfree(&IdentityMap, mm::allocator(), cpu, PhysAddr(addr))
            .is_ok()
    } else {
        mm::allocator()
            .free_pages(cpu, Pfn(addr / PAGE_SIZE), (tag & 0xff) as usize)
            .is_ok()
    };
    if !ok {
        STATS[cpu].free_errors.fetch_add(1, Relaxed);
    }
}

fn one(cpu: usize, rng: &mut Rng) -> Slot {
    let r = rng.next();
    let a = mm::allocator();
    let st = &STATS[cpu];
    if r.is_multiple_of(8) {
        let size = 8usize << ((r >> 8) % 10);
        let rcl = (r >> 16) & 1 == 1;
        return match KMALLOC.kmalloc(&IdentityMap, a, cpu, size, rcl) {
            Ok(p) => {
                // SAFETY: a fresh object of at least 8 bytes, identity mapped.
                unsafe { (p.0 as *mut u64).write(p.0) };
                st.slab_allocs.fetch_add(1, Relaxed);
                (p.0, KIND_SLAB << 8)
            }
            Err(_) => {
                st.failures.fetch_add(1, Relaxed);
                (0, 0)
            }
        };
    }
    let order = pick_order(r >> 4);
    match a.alloc_pages(cpu, pick_gfp(r >> 24), order) {
        Some(p) => {
            // Touch it, as a user would.
            // SAFETY: a fresh block, identity mapped.
            unsafe { ((p.0 * PAGE_SIZE) as *mut u64).write(p.0) };
            st.allocs[order].fetch_add(1, Relaxed);
            (p.0 * PAGE_SIZE, (KIND_PAGES << 8) | order as u64)
        }
        None => {
            st.failures.fetch_add(1, Relaxed);
            (0, 0)
        }
    }
}

pub fn run(cpu: usize, ncpus: usize) -> bool {
    if cpu == 0 {
        // Validated at boot (cmdline::check): a bad value never gets here.
        if let Some(n) =
            cmdline::get(crate::user::cmdline(), "alloc_iters").and_then(cmdline::parse_alloc_iters)
        {
            ITERS.store(n, Relaxed);
        }
        FREE_BEFORE.store(mm::free_pages_drained(), Relaxed);
    }
    BARRIER.wait(ncpus);
    stress(cpu);
    BARRIER.wait(ncpus);
    if cpu != 0 {
        return true;
    }
    let after = mm::free_pages_drained();
    let frag = fragment();
    report(ncpus, after, frag)
}

fn stress(cpu: usize) {
    let a = mm::allocator();
    let t0 = cpu::rdtsc();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((cpu as u64 + 1) * 0x1234_5678_9abc));
    let mut ring: [Slot; RING] = [(0, 0); RING];
    // The long-lived table is itself a kernel object.
    let table_addr = KMALLOC.kmalloc(&IdentityMap, a, cpu, LONG * 16, false).ok();
    let mut fallback_table = [(0u64, 0u64); 0];
    let long: &mut [Slot] = match table_addr {
        // SAFETY: LONG × 16 bytes just allocated for this CPU alone.
        Some(t) => unsafe { core::slice::from_raw_parts_mut(t.0 as *mut Slot, LONG) },
        None => &mut fallback_table,
    };
    long.fill((0, 0));
    let iters = ITERS.load(Relaxed);
    for i in 0..iters as usize {
        let s = one(cpu, &mut rng);
        let r = rng.next();
        if r.is_multiple_of(16) && !long.is_empty() && (s.1 >> 8 == KIND_SLAB || s.1 & 0xff <= 3) {
            let k = (r >> 8) as usize % long.len();
            release(cpu, core::mem::replace(&mut long[k], s));
        } else {
            release(cpu, core::mem::replace(&mut ring[i % RING], s));
        }
    }
    for s in ring.iter().chain(long.iter()) {
        release(cpu, *s);
    }
    if let Some(t) = table_addr {
        if KMALLOC.kfree(&IdentityMap, a, cpu, t).is_err() {
            STATS[cpu].free_errors.fetch_add(1, Relaxed);
        }
    }
    let _ = KMALLOC.shrink(&IdentityMap, a, cpu);
    STATS[cpu].cycles.store(cpu::rdtsc() - t0, Relaxed);
}

struct Frag {
    unmovable: u64,
    movable: u64,
    order9_free: u64,
    order9_max: u64,
    restored: bool,
}

/// Chains pages through their first word: no bookkeeping memory needed.
fn fragment() -> Frag {
    let a = mm::allocator();
    let before = mm::free_pages_drained();
    let (mut mov_head, mut unmov_head) = (0u64, 0u64);
    let (mut movable, mut unmovable) = (0u64, 0u64);
    let mut rng = Rng(0x51a8_2f03_77c1_99d3);
    {
        let mut c = a.cpu(0);
        loop {
            let unmov = rng.next().is_multiple_of(10);
            let gfp = if unmov {
                Gfp::NOWAIT
            } else {
                Gfp::NOWAIT.union(Gfp::MOVABLE)
            };
            let Some(p) = c.alloc(gfp, 0) else { break };
            let addr = p.0 * PAGE_SIZE;
            let head = if unmov {
                &mut unmov_head
            } else {
                &mut mov_head
            };
            // SAFETY: a fresh page, identity mapped; its first word links the chain.
            unsafe { (addr as *mut u64).write(*head) };
            *head = addr;
            if unmov {
                unmovable += 1;
            } else {
                movable += 1;
            }
        }
        free_chain(&mut c, mov_head);
        c.drain_all(None);
    }
    let mut order9_free = 0;
    for z in a.zones() {
        let info = a.pagetypeinfo(z.node, z.kind);
        for o in 9..NR_ORDERS {
            order9_free += info.blocks_of_order(o) << (o - 9);
        }
    }
    let order9_max = a.free_pages_buddy() / 512;
    {
        let mut c = a.cpu(0);
        free_chain(&mut c, unmov_head);
    }
    Frag {
        unmovable,
        movable,
        order9_free,
        order9_max,
        restored: mm::free_pages_drained() == before,
    }
}

fn free_chain(c: &mut guest_mm::page_alloc::CpuCache<'_>, mut addr: u64) {
    while addr != 0 {
        // SAFETY: every page on the chain is ours and holds the next link.
        let next = unsafe { (addr as *const u64).read() };
        if c.free(Pfn(addr / PAGE_SIZE), 0).is_err() {
            STATS[0].free_errors.fetch_add(1, Relaxed);
        }
        addr = next;
    }
}

fn report(ncpus: usize, after: u64, frag: Frag) -> bool {
    let a = mm::allocator();
    let before = FREE_BEFORE.load(Relaxed);
    let cpus = &STATS[..ncpus];
    let free_errors: u64 = cpus.iter().map(|s| s.free_errors.load(Relaxed)).sum();
    let ok = free_errors == 0 && after == before && frag.restored && frag.order9_max > 0;
    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"workload\",\"name\":\"alloc\",\"ok\":{ok},\"iterations_per_cpu\":{},\
         \"free_pages_before\":{before},\"free_pages_after\":{after},\"free_errors\":{free_errors},\"per_cpu\":[",
        ITERS.load(Relaxed)
    ));
    for (i, s) in cpus.iter().enumerate() {
        l.fmt(format_args!(
            "{}{{\"cpu\":{i},\"allocs_per_order\":[",
            if i == 0 { "" } else { "," }
        ));
        list(&mut l, s.allocs.iter().map(|x| x.load(Relaxed)));
        l.fmt(format_args!(
            "],\"slab_allocs\":{},\"failures\":{},\"tsc_cycles\":{}}}",
            s.slab_allocs.load(Relaxed),
            s.failures.load(Relaxed),
            s.cycles.load(Relaxed)
        ));
    }
    l.fmt(format_args!(
        "],\"fragmentation\":{{\"grouping_by_mobility\":{},\"unmovable_pages\":{},\"movable_pages\":{},\
         \"free_order9_blocks\":{},\"max_order9_blocks\":{},\"restored\":{}}},\"vmstat\":{{",
        a.grouping_by_mobility(),
        frag.unmovable,
        frag.movable,
        frag.order9_free,
        frag.order9_max,
        frag.restored
    ));
    for (i, (name, v)) in a.events().iter().enumerate() {
        l.fmt(format_args!(
            "{}\"{name}\":{v}",
            if i == 0 { "" } else { "," }
        ));
    }
    l.raw("},\"slab\":[");
    let mut first = true;
    for c in KMALLOC.caches() {
        let s = c.stats();
        if s.allocs == 0 {
            continue;
        }
        l.fmt(format_args!(
            "{}{{\"cache\":\"{}\",\"allocs\":{},\"in_use\":{},\"slabs_created\":{},\"waste_bytes\":{}}}",
            if first { "" } else { "," },
            c.name(),
            s.allocs,
            s.objects_in_use,
            s.slabs_created,
            s.waste()
        ));
        first = false;
    }
    l.raw("],\"zones\":[");
    for (zi, z) in a.zones().enumerate() {
        let info = a.pagetypeinfo(z.node, z.kind);
        l.fmt(format_args!(
            "{}{{\"node\":{},\"zone\":\"{}\",\"managed_pages\":{},\"free_pages\":{},\"watermarks\":[{},{},{}],\
             \"boost\":{},\"pcp_batch\":{},\"pcp_high\":{},\"pagetypeinfo\":{{",
            if zi == 0 { "" } else { "," },
            z.node,
            z.kind.name(),
            z.managed_pages,
            z.free_pages(),
            z.watermark[0],
            z.watermark[1],
            z.watermark[2],
            z.boost.load(Relaxed),
            z.pcp_batch,
            z.pcp_high
        ));
        for (mi, mt) in MigrateType::ALL.iter().enumerate() {
            l.fmt(format_args!(
                "{}\"{}\":[",
                if mi == 0 { "" } else { "," },
                mt.name()
            ));
            list(&mut l, (0..NR_ORDERS).map(|o| info.blocks[o][*mt as usize]));
            l.raw("]");
        }
        l.raw("},\"pageblocks\":{");
        let pb = a.pageblock_counts(z.node, z.kind);
        for (i, n) in pb.iter().enumerate().take(MIGRATE_TYPES) {
            l.fmt(format_args!(
                "{}\"{}\":{n}",
                if i == 0 { "" } else { "," },
                MigrateType::from_index(i).name()
            ));
        }
        l.raw("},\"fragmentation_index\":[");
        list_i(
            &mut l,
            (0..NR_ORDERS).map(|o| fragmentation_index(o, &info.contig_info(o)) as i64),
        );
        l.raw("],\"unusable_index\":[");
        list(
            &mut l,
            (0..NR_ORDERS).map(|o| unusable_free_index(o, &info.contig_info(o)) as u64),
        );
        l.raw("]}");
    }
    l.raw("]}");
    hostio::send(l.finish());
    ok
}

fn list(l: &mut Line, it: impl Iterator<Item = u64>) {
    list_i(l, it.map(|v| v as i64));
}

fn list_i(l: &mut Line, it: impl Iterator<Item = i64>) {
    for (i, v) in it.enumerate() {
        l.fmt(format_args!("{}{v}", if i == 0 { "" } else { "," }));
    }
}
