//! Page-table update bench (issue 10): map 4096 4 KiB pages one by one,
//! then unmap them all in one `MmuGather`, in an address space with 1, 2
//! and 4 Mitosis replicas (one per node), over simulated RAM on the host.
//! Criterion's iteration is one round (4096 maps + 4096 unmaps + the
//! gather's finish); after criterion, `main` prints the update rate (maps
//! plus unmaps per second) per replica count from criterion's own medians,
//! and the goal: the rate with 2 replicas at least half the rate
//! with 1.
//!
//! Run with `cargo bench -p guest-mm --bench pgtable`. This times the
//! page-table code alone: no TLB (the flush is a counter), no trapping of
//! page-table writes (on PVM each write to a live table may exit; the
//! guest's `ptrepl_update` records measure that).

mod estimates;

use criterion::Criterion;
use guest_mm::pgtable::{AddressSpace, Levels, MmuGather, PageSize, Prot, PtAlloc, TlbFlush};
use guest_mm::phys::sim::SimMemory;
use guest_mm::{PhysAddr, PhysMemory, PAGE_SIZE};
use std::cell::RefCell;
use std::time::{Duration, Instant, SystemTime};

const GROUP: &str = "pgtable map+unmap 4096 pages";
const PAGES: u64 = 4096;
const REPLICAS: [usize; 3] = [1, 2, 4];
/// Frames of page tables per node: a round needs 11 per replica (root,
/// PDPT, PD, 8 PTE tables).
const FRAMES_PER_NODE: u64 = 64;
const BASE: u64 = 1 << 20;

/// Page-table frames per node over one simulated RAM, free lists as stacks.
struct Pool {
    mem: SimMemory,
    free: RefCell<Vec<Vec<u64>>>,
}

impl Pool {
    fn new(nodes: usize) -> Pool {
        let span = FRAMES_PER_NODE * PAGE_SIZE;
        let free = (0..nodes as u64)
            .map(|n| {
                (0..FRAMES_PER_NODE)
                    .rev()
                    .map(|i| BASE + n * span + i * PAGE_SIZE)
                    .collect()
            })
            .collect();
        Pool {
            mem: SimMemory::new(PhysAddr(BASE), span * nodes as u64),
            free: RefCell::new(free),
        }
    }
}

impl PtAlloc for Pool {
    fn alloc_pt(&self, node: usize) -> Option<PhysAddr> {
        let pa = self.free.borrow_mut().get_mut(node)?.pop()?;
        // SAFETY: the frame lies inside the simulated RAM, 8-aligned; one
        // thread.
        unsafe {
            self.mem
                .phys_to_ptr(PhysAddr(pa))
                .cast::<u64>()
                .write_bytes(0, 512)
        };
        Some(PhysAddr(pa))
    }
    fn free_pt(&self, pa: PhysAddr) {
        let node = self.node_of(pa).expect("a frame of the pool");
        self.free.borrow_mut()[node].push(pa.0);
    }
    fn node_of(&self, pa: PhysAddr) -> Option<usize> {
        let n = ((pa.0.checked_sub(BASE)?) / (FRAMES_PER_NODE * PAGE_SIZE)) as usize;
        (n < self.free.borrow().len()).then_some(n)
    }
}

/// Counts flushes; the bench checks there is one per round.
#[derive(Default)]
struct Tlb(u64);

impl TlbFlush for Tlb {
    fn flush_range(&mut self, _: u64, _: u64) {
        self.0 += 1;
    }
    fn flush_all(&mut self) {
        self.0 += 1;
    }
}

const RW: Prot = Prot {
    write: true,
    user: true,
    exec: false,
    uncached: false,
};
const VA: u64 = 0x7f00_0000_0000;

/// One round: map PAGES pages, unmap them in one gather, finish.
fn round(s: &mut AddressSpace<&SimMemory>, pool: &Pool, tlb: &mut Tlb) {
    for i in 0..PAGES {
        let va = VA + i * PAGE_SIZE;
        s.map(
            pool,
            va,
            PhysAddr((1 << 32) + i * PAGE_SIZE),
            PageSize::Size4K,
            RW,
        )
        .unwrap();
    }
    let mut g = MmuGather::new();
    for i in 0..PAGES {
        s.unmap(&mut g, VA + i * PAGE_SIZE, PageSize::Size4K)
            .unwrap();
    }
    g.finish(pool, tlb);
}

fn name(replicas: usize) -> String {
    format!("{replicas} replica{}", if replicas == 1 { "" } else { "s" })
}

fn main() {
    let started = SystemTime::now();
    let mut crit = Criterion::default().configure_from_args();
    let mut group = crit.benchmark_group(GROUP);
    for replicas in REPLICAS {
        let pool = Pool::new(replicas);
        let mut s = AddressSpace::new(&pool.mem, &pool, Levels::Four, 0).unwrap();
        for n in 1..replicas {
            s.replicate(&pool, n).unwrap();
        }
        let mut tlb = Tlb::default();
        group.bench_function(name(replicas), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    round(&mut s, &pool, &mut tlb);
                }
                t.elapsed()
            })
        });
        // Every round flushed once and left only the roots behind.
        assert!(tlb.0 > 0);
        assert_eq!(s.check_replicas(&pool), Ok(0));
        for n in 0..replicas {
            assert_eq!(s.pt_pages(n), 1, "replica {n}: tables left after unmap");
        }
    }
    group.finish();
    crit.final_summary();
    summary(started);
}

fn summary(since: SystemTime) {
    let dir = estimates::criterion_dir();
    println!();
    println!("== guest-mm page tables: map {PAGES} 4 KiB pages, unmap them in one MmuGather ==");
    println!(
        "   (host, simulated RAM; criterion median per round, from {})",
        dir.display()
    );
    let mut rates = Vec::new();
    for replicas in REPLICAS {
        let Some(e) = estimates::estimate(&dir, GROUP, &name(replicas), since) else {
            println!("{replicas} replicas: not measured");
            continue;
        };
        let per_round = Duration::from_nanos(e.median as u64);
        let rate = 2.0 * PAGES as f64 / per_round.as_secs_f64();
        println!(
            "{:>11}: {:8.1} us per round (mean {:.1}), {:6.2} M updates/s ({:.0} ns per map or unmap){}",
            name(replicas),
            e.median / 1e3,
            e.mean / 1e3,
            rate / 1e6,
            e.median / (2 * PAGES) as f64,
            if e.fresh {
                ""
            } else {
                " (from an earlier run)"
            },
        );
        rates.push((replicas, rate));
    }
    if let (Some(&(_, one)), Some(&(_, two))) = (
        rates.iter().find(|r| r.0 == 1),
        rates.iter().find(|r| r.0 == 2),
    ) {
        let ratio = two / one;
        println!(
            "goal: rate with 2 replicas >= half the rate with 1: {ratio:.2} of it, {}",
            if ratio >= 0.5 { "MET" } else { "MISSED" }
        );
    }
}
