//! Fixtures for the page-table tests: a page-table page pool over simulated
//! RAM that knows each frame's node and counts what is out, a TLB that
//! counts flushes and notes how many pages had been freed at each, and a
//! "hardware walker" that sets accessed/dirty bits the way the CPU does,
//! written independently of the code under test.
use super::*;
use crate::phys::sim::SimMemory;
use std::cell::{Cell, RefCell};

/// Where simulated RAM starts: not 0, so a zero address is never valid.
pub(crate) const BASE: u64 = 0x10_0000;

/// Frames of `nodes` nodes, node n owning `[BASE + n*span, BASE + (n+1)*span)`.
pub(crate) struct SimPool {
    pub mem: SimMemory,
    span: u64,
    nodes: usize,
    free: RefCell<Vec<Vec<u64>>>,
    out: RefCell<Vec<u64>>,
    /// Frames given back so far.
    pub frees: Cell<u64>,
    /// Allocations to refuse from now on: `Some(0)` fails the next one.
    pub fail_after: Cell<Option<u64>>,
}

impl SimPool {
    pub(crate) fn new(nodes: usize, frames_per_node: u64) -> SimPool {
        let span = frames_per_node * PAGE_SIZE;
        let mem = SimMemory::new(PhysAddr(BASE), span * nodes as u64);
        let free = (0..nodes)
            .map(|n| {
                let start = BASE + n as u64 * span;
                // Reversed so frames come out in rising order.
                (0..frames_per_node)
                    .rev()
                    .map(|i| start + i * PAGE_SIZE)
                    .collect()
            })
            .collect();
        SimPool {
            mem,
            span,
            nodes,
            free: RefCell::new(free),
            out: RefCell::new(vec![0; nodes]),
            frees: Cell::new(0),
            fail_after: Cell::new(None),
        }
    }

    /// Frames handed out and not yet returned, per node.
    pub(crate) fn out(&self, node: usize) -> u64 {
        self.out.borrow()[node]
    }

    pub(crate) fn total_out(&self) -> u64 {
        self.out.borrow().iter().sum()
    }
}

impl PtAlloc for SimPool {
    fn alloc_pt(&self, node: usize) -> Option<PhysAddr> {
        if let Some(n) = self.fail_after.get() {
            if n == 0 {
                return None;
            }
            self.fail_after.set(Some(n - 1));
        }
        let pa = self.free.borrow_mut().get_mut(node)?.pop()?;
        // SAFETY: the frame lies in the simulated RAM, which is contiguous
        // and 8-aligned; tests are single-threaded.
        unsafe {
            self.mem
                .phys_to_ptr(PhysAddr(pa))
                .cast::<u64>()
                .write_bytes(0, ENTRIES)
        };
        self.out.borrow_mut()[node] += 1;
        Some(PhysAddr(pa))
    }

    fn free_pt(&self, pa: PhysAddr) {
        let node = self
            .node_of(pa)
            .expect("free_pt of a frame the pool never had");
        assert!(
            pa.0.is_multiple_of(PAGE_SIZE),
            "free_pt of unaligned {pa:?}"
        );
        let mut free = self.free.borrow_mut();
        assert!(!free[node].contains(&pa.0), "double free_pt of {pa:?}");
        free[node].push(pa.0);
        self.out.borrow_mut()[node] -= 1;
        self.frees.set(self.frees.get() + 1);
    }

    fn node_of(&self, pa: PhysAddr) -> Option<usize> {
        let n = pa.0.checked_sub(BASE)? / self.span;
        (n < self.nodes as u64).then_some(n as usize)
    }
}

/// Counts flushes, and for each the pool's `frees` when it happened.
pub(crate) struct CountingTlb<'a> {
    pool: &'a SimPool,
    pub ranges: Vec<(u64, u64)>,
    pub alls: u64,
    pub frees_at_flush: Vec<u64>,
}

impl<'a> CountingTlb<'a> {
    pub(crate) fn new(pool: &'a SimPool) -> Self {
        CountingTlb {
            pool,
            ranges: Vec::new(),
            alls: 0,
            frees_at_flush: Vec::new(),
        }
    }
    pub(crate) fn flushes(&self) -> u64 {
        self.ranges.len() as u64 + self.alls
    }
}

impl TlbFlush for CountingTlb<'_> {
    fn flush_range(&mut self, start: u64, end: u64) {
        assert!(start < end, "empty flush range {start:#x}..{end:#x}");
        self.ranges.push((start, end));
        self.frees_at_flush.push(self.pool.frees.get());
    }
    fn flush_all(&mut self) {
        self.alls += 1;
        self.frees_at_flush.push(self.pool.frees.get());
    }
}

/// What the CPU does on a TLB miss: walk from `root`, setting A in every
/// entry it uses and D in the leaf for a write, with locked ORs. Returns the
/// leaf entry (as it was before) and its level, or `None` if not mapped.
pub(crate) fn hw_walk(
    mem: &SimMemory,
    root: PhysAddr,
    levels: Levels,
    va: u64,
    write: bool,
) -> Option<(u64, usize)> {
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let mut table = root.0;
    for level in (0..levels.count()).rev() {
        let slot = mem.phys_to_ptr(PhysAddr(table + 8 * ((va >> (12 + 9 * level)) & 511)));
        // SAFETY: page-table frames lie in the simulated RAM, 8-aligned.
        let slot = unsafe { AtomicU64::from_ptr(slot.cast()) };
        let e = slot.load(Relaxed);
        if e & 1 == 0 {
            return None;
        }
        let leaf = level == 0 || e & 0x80 != 0;
        slot.fetch_or(if leaf && write { 0x60 } else { 0x20 }, Relaxed);
        if leaf {
            return Some((e, level));
        }
        table = e & 0x000f_ffff_ffff_f000;
    }
    unreachable!()
}

pub(crate) const RW: Prot = Prot {
    write: true,
    user: true,
    exec: false,
    uncached: false,
};
pub(crate) const RO: Prot = Prot {
    write: false,
    user: true,
    exec: true,
    uncached: false,
};

pub(crate) use crate::addr::{PhysAddr, PAGE_SIZE};
pub(crate) use crate::phys::PhysMemory;
