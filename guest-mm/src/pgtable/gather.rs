//! mmu_gather: one TLB flush per batch of unmaps (seed 1.3).
//!
//! Unmapping a page must invalidate the TLB before the page (or the
//! page-table page that held its entry) is reused, but one invalidation per
//! page is what makes batch unmaps slow: on this host each is a system
//! call, natively an IPI per CPU. Like Linux's `struct mmu_gather`, the
//! gather accumulates the virtual range touched and the page-table pages
//! freed, then [`MmuGather::finish`] flushes once and only after that gives
//! the page-table pages back. The table of freed pages is bounded (no
//! heap): a gather made with [`MmuGather::attached`] flushes early when it
//! fills, as `tlb_flush_mmu` does; one made with [`MmuGather::new`] cannot
//! flush on its own, so operations refuse with
//! [`PtError::GatherFull`](super::PtError::GatherFull) instead of overflowing.

use super::{PtAlloc, TlbFlush};
use crate::addr::PhysAddr;

/// Freed page-table pages one gather holds before it must flush: the most
/// one unmap can free (4 levels × 8 replicas) many times over, so a batch
/// of unmaps of a large region usually flushes once.
pub const GATHER_PT_PAGES: usize = 256;

/// A batch of TLB invalidations and deferred page-table frees.
pub struct MmuGather<'a> {
    /// Lowest and highest virtual address touched (inclusive, so the top
    /// page of the address space fits); `start > last` when nothing is
    /// pending.
    start: u64,
    last: u64,
    /// A whole table went away (a dropped replica): only a full flush
    /// covers every address it mapped.
    all: bool,
    freed: [PhysAddr; GATHER_PT_PAGES],
    nr_freed: usize,
    flushes: u64,
    sink: Option<(&'a dyn PtAlloc, &'a mut dyn TlbFlush)>,
}

impl Default for MmuGather<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> MmuGather<'a> {
    /// An empty gather that the caller finishes with [`MmuGather::finish`].
    pub fn new() -> Self {
        MmuGather {
            start: u64::MAX,
            last: 0,
            all: false,
            freed: [PhysAddr(0); GATHER_PT_PAGES],
            nr_freed: 0,
            flushes: 0,
            sink: None,
        }
    }

    /// A gather that holds the allocator and TLB itself, so it can flush
    /// early when its table of freed pages fills, and finishes on
    /// [`MmuGather::finish_attached`] or when dropped.
    pub fn attached(alloc: &'a dyn PtAlloc, tlb: &'a mut dyn TlbFlush) -> Self {
        let mut g = Self::new();
        g.sink = Some((alloc, tlb));
        g
    }

    /// Flushes what is pending (once), then returns the freed page-table
    /// pages to `alloc`. Nothing pending: no flush.
    pub fn finish(&mut self, alloc: &dyn PtAlloc, tlb: &mut dyn TlbFlush) {
        if self.all {
            tlb.flush_all();
            self.flushes += 1;
        } else if self.start <= self.last {
            tlb.flush_range(self.start, self.last.saturating_add(1));
            self.flushes += 1;
        }
        // Only now, with no TLB or paging-structure cache able to reach
        // them, may the freed tables be reused.
        for &pa in &self.freed[..self.nr_freed] {
            alloc.free_pt(pa);
        }
        self.nr_freed = 0;
        self.start = u64::MAX;
        self.last = 0;
        self.all = false;
    }

    /// [`MmuGather::finish`] with the allocator and TLB the gather was
    /// attached to; does nothing for a gather made with [`MmuGather::new`].
    pub fn finish_attached(&mut self) {
        if let Some((alloc, tlb)) = self.sink.take() {
            self.finish(alloc, tlb);
            self.sink = Some((alloc, tlb));
        }
    }

    /// TLB flushes this gather has issued.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    /// Freed page-table pages waiting for the flush.
    pub fn pending_pages(&self) -> usize {
        self.nr_freed
    }

    /// Whether `pages` more freed pages fit without an early flush the
    /// gather cannot do.
    pub(super) fn has_room(&self, pages: usize) -> bool {
        self.sink.is_some() || GATHER_PT_PAGES - self.nr_freed >= pages
    }

    /// Records that translations of `[va, va + bytes)` changed.
    pub(super) fn add_range(&mut self, va: u64, bytes: u64) {
        self.start = self.start.min(va);
        self.last = self.last.max(va + (bytes - 1));
    }

    /// Records that every translation of some table changed.
    pub(super) fn add_all(&mut self) {
        self.all = true;
    }

    /// Defers freeing a page-table page until after the flush, flushing
    /// early if the table is full. Callers check [`MmuGather::has_room`]
    /// first, so a full gather without a sink is a bug in this module.
    pub(super) fn free_pt(&mut self, pa: PhysAddr) {
        if self.nr_freed == GATHER_PT_PAGES {
            self.finish_attached();
        }
        assert!(
            self.nr_freed < GATHER_PT_PAGES,
            "MmuGather full: the caller did not check has_room"
        );
        self.freed[self.nr_freed] = pa;
        self.nr_freed += 1;
    }
}

impl Drop for MmuGather<'_> {
    /// An attached gather finishes itself; a plain one that still holds
    /// pages leaks them rather than return them unflushed.
    fn drop(&mut self) {
        self.finish_attached();
    }
}
