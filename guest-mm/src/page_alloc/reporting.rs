//! Free page reporting, the allocator's half ([NOT IN SEED]: the seed does
//! not describe ballooning; this follows Linux's mm/page_reporting.c).
//!
//! A hypervisor can take back guest memory that is free, if the guest tells
//! it which. Reporting a block hands it to the host, which discards the
//! backing; the guest must not touch the block until the host says it is
//! done. Linux's rules, kept here:
//!
//! - Only blocks of at least [`PAGE_REPORTING_ORDER`] (a pageblock, one
//!   2 MiB huge page on x86-64) are reported: smaller ones cost as many
//!   host calls for little memory and would split the host's huge pages.
//! - A reported block carries `PG_REPORTED` while it stays free and
//!   unmerged, so each pass reports only what is new. Taking a block off
//!   its free list clears the mark (the buddy code does it in one place),
//!   so an allocation or a merge makes the memory unreported again.
//! - While the host works on them the blocks are *isolated*: off the free
//!   lists and out of the free count, so nobody can allocate them
//!   ([`PageAllocator::report_isolate`]). Afterwards they go back through
//!   the ordinary free, which may merge them; a block that came back at
//!   its own order is marked reported, a merged one is not (the merge took
//!   unreported memory in), as `page_reporting_drain` does
//!   ([`PageAllocator::report_putback`]).
//! - They go back to the *tail* of their free list (Linux's
//!   `__putback_isolated_page` frees with FPI_TO_TAIL): allocations take
//!   the head, so free memory the host still backs is used first. A
//!   reported block has no host memory behind it; the first write to it
//!   costs a host fault, and on a THP host a whole 2 MiB page of Rss, even
//!   for one 4 KiB allocation out of it.
//! - A pass isolates at most a budget of blocks and leaves each zone's low
//!   watermark plus the budget's worth of free memory alone, so reporting
//!   never pushes a zone into reclaim.
//! - Passes are triggered by frees that left a reportable block on the
//!   lists ([`PageAllocator::reportable_frees`]), after a delay the caller
//!   keeps: in Linux a timer, in our guest the driver's service loop.
//!
//! Also here: [`PageAllocator::free_from_hook`], how a hook the allocator
//! calls with the calling CPU's per-CPU lists locked (the OOM hook of a
//! balloon driver deflating) gives pages back.
use super::{FreeError, PageAllocator, WMARK_LOW};
use crate::addr::Pfn;
use crate::mmzone::{MigrateType, MAX_ORDER, MIGRATE_TYPES, PAGEBLOCK_ORDER};
use crate::page::{NIL, PG_BUDDY, PG_REPORTED};
use core::sync::atomic::Ordering;

/// Smallest order reported (Linux's `page_reporting_order`, pageblock_order
/// by default).
pub const PAGE_REPORTING_ORDER: usize = PAGEBLOCK_ORDER;

/// A block taken off the free lists for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isolated {
    pub pfn: Pfn,
    pub order: u8,
    /// The free list it came from, where it goes back.
    pub mt: u8,
}

impl Isolated {
    pub const EMPTY: Isolated = Isolated {
        pfn: Pfn(0),
        order: 0,
        mt: 0,
    };
}

impl PageAllocator {
    /// Frees so far that left a block of at least [`PAGE_REPORTING_ORDER`]
    /// on a free list, all zones: a reporting pass is due when this moved.
    pub fn reportable_frees(&self) -> u64 {
        self.zones().map(|z| z.free.lock().reportable_frees).sum()
    }

    /// Takes up to `out.len()` free blocks of order `min_order` or more that
    /// are not yet reported off the free lists (largest orders first, as
    /// they are worth most to the host); returns how many. Each zone keeps
    /// at least its low watermark plus the blocks' size free. The caller
    /// reports them and must hand every one back with
    /// [`Self::report_putback`].
    pub fn report_isolate(&self, min_order: usize, out: &mut [Isolated]) -> usize {
        let mut n = 0;
        for zone in self.zones() {
            let mut area = zone.lock();
            for order in (min_order.min(MAX_ORDER)..=MAX_ORDER).rev() {
                for mt in 0..MIGRATE_TYPES {
                    if mt == MigrateType::Isolate as usize {
                        continue;
                    }
                    let mut i = area.lists[order][mt].head;
                    while i != NIL && n < out.len() {
                        // SAFETY: the zone lock is held; a copy is read.
                        let p = *unsafe { self.map.at(i) };
                        let next = p.next;
                        let keep = zone.wmark(WMARK_LOW) as i64 + (1i64 << order);
                        if p.flags & PG_REPORTED == 0
                            && zone.vm_free.snapshot() >= keep + (1 << order)
                        {
                            let mut b = zone.buddy(&self.map, &mut area, self.grouping);
                            b.del(i);
                            // Off every list, neither free nor allocated:
                            // no merge takes it, no free accepts it.
                            // SAFETY: the zone lock is held; just unlinked.
                            unsafe { self.map.at(i) }.flags = 0;
                            zone.vm_free.add_global(-(1i64 << order));
                            out[n] = Isolated {
                                pfn: self.map.to_pfn(i),
                                order: order as u8,
                                mt: mt as u8,
                            };
                            n += 1;
                        }
                        i = next;
                    }
                }
            }
            if n == out.len() {
                break;
            }
        }
        n
    }

    /// Returns blocks [`Self::report_isolate`] took, after the host is done
    /// with them: freed again, and marked reported when they did not merge.
    /// Returns how many were marked. The putback is not a new reportable
    /// free.
    pub fn report_putback(&self, blocks: &[Isolated]) -> usize {
        let mut marked = 0;
        for b in blocks {
            let idx = self.map.idx(b.pfn.0);
            let z = self
                .zone_index_of(b.pfn.0)
                .expect("an isolated block lies in a zone");
            let zone = &self.zones[z];
            let mut area = zone.lock();
            let order = b.order as usize;
            let mut buddy = zone.buddy(&self.map, &mut area, self.grouping);
            buddy.free_one_at(idx, order, MigrateType::from_index(b.mt as usize), true);
            area.reportable_frees -= 1;
            zone.vm_free.add_global(1i64 << order);
            // SAFETY: the zone lock is held.
            let p = unsafe { self.map.at(idx) };
            if p.flags == PG_BUDDY && p.order as usize == order {
                p.flags |= PG_REPORTED;
                marked += 1;
            }
        }
        marked
    }

    /// Whether `pfn` heads a free block marked reported.
    pub fn is_reported(&self, pfn: Pfn) -> bool {
        let Some(z) = self.zone_index_of(pfn.0) else {
            return false;
        };
        let _area = self.zones[z].free.lock();
        // SAFETY: the zone lock is held; a copy is read.
        let p = *unsafe { self.map.at(self.map.idx(pfn.0)) };
        p.flags == PG_BUDDY | PG_REPORTED
    }

    /// Frees a block without the per-CPU lists or the calling CPU's
    /// counters: for hooks the allocator calls from its slow path (the OOM
    /// hook), where that CPU's per-CPU lock is held and [`Self::cpu`] would
    /// deadlock. Checked like any free; counted in `pgfree` all the same.
    pub fn free_from_hook(&self, pfn: Pfn, order: usize) -> Result<(), FreeError> {
        let (idx, z) = self.check_free(pfn, order)?;
        // SAFETY: check_free vouched for an allocated head, which the
        // caller is handing back.
        unsafe { self.map.at(idx) }.refcount = 0;
        let mt = if order >= PAGEBLOCK_ORDER {
            MigrateType::Movable
        } else {
            self.pageblock_mt(pfn.0)
        };
        let zone = &self.zones[z];
        let mut area = zone.lock();
        zone.buddy(&self.map, &mut area, self.grouping)
            .free_one(idx, order, mt);
        zone.vm_free.add_global(1i64 << order);
        drop(area);
        self.hook_frees.fetch_add(1 << order, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
