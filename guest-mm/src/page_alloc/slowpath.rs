//! The slow path (seed 2.2.1, 3.4.2, 4.1.2): what `__alloc_pages_slowpath`
//! does when no zone passes its low watermark. The sequence is Linux's (4.9
//! and later); kswapd, reclaim, compaction and the OOM killer are hooks,
//! filled in by the reclaim and compaction work, so that every step already
//! happens, in order, and is counted.
use super::{CpuCache, MAX_ZONES};
use crate::gfp::{AllocFlags, Gfp};
use crate::mmzone::{ZoneType, MAX_NR_ZONES, PAGE_ALLOC_COSTLY_ORDER};
use crate::vmstat::{suggest_action, FragAction, VmEvent, EXTFRAG_THRESHOLD_DEFAULT};
use crate::zonelist::NodeMask;

/// No-progress reclaim rounds before giving up (MAX_RECLAIM_RETRIES, row 21).
pub const MAX_RECLAIM_RETRIES: u32 = 16;
/// Compaction retries at the highest priority (MAX_COMPACT_RETRIES).
pub const MAX_COMPACT_RETRIES: u32 = 16;

/// Compaction effort, lowest first (compact_priority, seed 3.4.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CompactPriority {
    /// Full scan, ignores skip hints and deferral.
    Full = 0,
    SyncLight = 1,
    Async = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactResult {
    /// Not attempted (no compaction, or deferred).
    Skipped,
    /// Ran and did not free a block of the order.
    Failed,
    /// Ran and freed a block of the order (or the order is now available).
    Success,
}

/// Where the rest of memory management plugs into the allocator. Every
/// method has a do-nothing default, which is what the allocator does until
/// kswapd, reclaim and compaction exist.
pub trait ReclaimHooks: Sync {
    /// kswapd should balance `node`. Its balancing pass ends with
    /// [`super::PageAllocator::kswapd_balance`], which is what undoes a
    /// watermark boost (seed 2.2.6).
    fn wake_kswapd(&self, _node: usize, _order: usize, _highest: ZoneType) {}
    /// kswapd's reclaim for a watermark boost: a little, at most
    /// `nr_pages`, without swapping or writeback (Linux's boost reclaim;
    /// [NOT IN SEED] beyond "kswapd reclaims a little"). Returns pages freed.
    fn reclaim_boost(&self, _node: usize, _nr_pages: u64) -> u64 {
        0
    }
    /// kcompactd should compact `node` toward `order` (seed 2.2.6, 3.4.3:
    /// woken by kswapd after a boost, or by kswapd's balancing).
    fn wake_kcompactd(&self, _node: usize, _order: usize, _highest: ZoneType) {}
    /// Direct reclaim; returns pages reclaimed.
    fn direct_reclaim(&self, _node: usize, _order: usize, _gfp: Gfp) -> u64 {
        0
    }
    fn direct_compact(
        &self,
        _node: usize,
        _order: usize,
        _gfp: Gfp,
        _prio: CompactPriority,
    ) -> CompactResult {
        CompactResult::Skipped
    }
    /// Pages reclaim could still free in a zone (for should_reclaim_retry).
    fn reclaimable_pages(&self, _node: usize, _zone: ZoneType) -> u64 {
        0
    }
    /// Picks a victim and frees its memory; true if anything was freed.
    fn out_of_memory(&self, _node: usize, _order: usize) -> bool {
        false
    }
}

pub struct NoHooks;
impl ReclaimHooks for NoHooks {}

impl CpuCache<'_> {
    pub(super) fn slowpath(
        &mut self,
        gfp: Gfp,
        order: usize,
        node: usize,
        mask: Option<NodeMask>,
    ) -> Option<u32> {
        let a = self.a;
        let hooks = a.hooks;
        self.pages.events.inc(VmEvent::AllocSlowpath);
        let costly = order > PAGE_ALLOC_COSTLY_ORDER;
        let can_reclaim = gfp.can_direct_reclaim();
        let mut flags = AllocFlags::from_gfp_slowpath(gfp);
        let highest = gfp.highest_zone();

        if flags.has(AllocFlags::KSWAPD) {
            self.pages.events.inc(VmEvent::KswapdWake);
            hooks.wake_kswapd(node, order, highest);
        }
        if let Some(i) = self.get_page_from_freelist(gfp, order, flags, node, mask) {
            return Some(i);
        }
        // Costly orders (and unmovable high orders) try cheap async
        // compaction before reclaiming anything.
        if can_reclaim
            && (costly
                || order > 0 && self.a.migratetype(gfp) != crate::mmzone::MigrateType::Movable)
            && !gfp.contains(Gfp::MEMALLOC)
        {
            if let Ok(i) =
                self.compact_result(gfp, order, node, mask, flags, CompactPriority::Async)
            {
                return Some(i);
            }
            if costly && gfp.contains(Gfp::NORETRY) {
                return None;
            }
        }

        let mut no_progress_loops = 0u32;
        let mut compact_retries = 0u32;
        let mut prio = CompactPriority::Async;
        let mut drained = false;
        loop {
            if flags.has(AllocFlags::KSWAPD) {
                hooks.wake_kswapd(node, order, highest);
            }
            if gfp.contains(Gfp::MEMALLOC) {
                flags = flags.with(AllocFlags::NO_WATERMARKS);
                self.pages.events.inc(VmEvent::AllocReserve);
            }
            if let Some(i) = self.get_page_from_freelist(gfp, order, flags, node, mask) {
                return Some(i);
            }
            if !can_reclaim {
                return None;
            }
            // Direct reclaim; if it got nothing, pages parked on per-CPU
            // lists may be what is missing (seed 2.2.5.2).
            self.pages.events.inc(VmEvent::DirectReclaim);
            let progress = hooks.direct_reclaim(node, order, gfp);
            if let Some(i) = self.get_page_from_freelist(gfp, order, flags, node, mask) {
                return Some(i);
            }
            if progress == 0 && !drained {
                drained = true;
                self.unreserve_highatomic(node, gfp, false);
                self.drain_all(None);
                if let Some(i) = self.get_page_from_freelist(gfp, order, flags, node, mask) {
                    return Some(i);
                }
            }
            let compact = self.compact_result(gfp, order, node, mask, flags, prio);
            if let Ok(i) = compact {
                return Some(i);
            }
            if gfp.contains(Gfp::NORETRY) || costly {
                return None;
            }
            if self.should_reclaim_retry(
                order,
                flags,
                progress,
                &mut no_progress_loops,
                node,
                mask,
                highest,
            ) {
                continue;
            }
            // Before failing, the last HighAtomic reserve goes too.
            if no_progress_loops > MAX_RECLAIM_RETRIES && self.unreserve_highatomic(node, gfp, true)
            {
                no_progress_loops = 0;
                continue;
            }
            if progress > 0 && should_compact_retry(compact.err(), &mut prio, &mut compact_retries)
            {
                continue;
            }
            self.pages.events.inc(VmEvent::OomKill);
            if hooks.out_of_memory(node, order) {
                no_progress_loops = 0;
                continue;
            }
            return None;
        }
    }

    fn compact_result(
        &mut self,
        gfp: Gfp,
        order: usize,
        node: usize,
        mask: Option<NodeMask>,
        flags: AllocFlags,
        prio: CompactPriority,
    ) -> Result<u32, CompactResult> {
        if order == 0 || !self.compaction_suitable(gfp, order, node, mask) {
            return Err(CompactResult::Skipped);
        }
        self.pages.events.inc(VmEvent::DirectCompact);
        let r = self.a.hooks.direct_compact(node, order, gfp, prio);
        if r == CompactResult::Skipped {
            return Err(r);
        }
        // Compaction leaves its pages on this CPU's lists; give them back
        // so they can merge (seed: direct compaction drains the local PCP).
        let a = self.a;
        for z in 0..MAX_ZONES {
            if !self.pages.pcp.has(z) {
                continue;
            }
            let n = self.pages.pcp[z].count;
            if n > 0 {
                a.free_pcp_bulk(self.cpu, &mut self.pages.pcp[z], z, n, 0);
            }
        }
        match self.get_page_from_freelist(gfp, order, flags, node, mask) {
            Some(i) => {
                self.pages.events.inc(VmEvent::CompactSuccess);
                Ok(i)
            }
            None => {
                self.pages.events.inc(VmEvent::CompactFail);
                Err(r)
            }
        }
    }

    /// Whether compaction can help (seed 3.4.1, row 23): some eligible zone
    /// has enough free memory, only too scattered ([`suggest_action`] says
    /// Compact). When every zone is short of memory instead (index near 0)
    /// reclaim is the remedy and compaction would only burn time; when a
    /// block of the order exists, what failed was a watermark, which
    /// compaction does not fix either. The threshold is Linux's
    /// extfrag_threshold ([NOT IN SEED]), and Linux applies the test to
    /// costly orders only; the seed states it for every order, as here.
    fn compaction_suitable(
        &self,
        gfp: Gfp,
        order: usize,
        node: usize,
        mask: Option<NodeMask>,
    ) -> bool {
        let a = self.a;
        a.zonelist(node, gfp.contains(Gfp::THISNODE))
            .zones_for(gfp.highest_zone(), mask)
            .any(|zr| {
                let info = a.pagetypeinfo(zr.node as usize, zr.zone).contig_info(order);
                suggest_action(order, &info, EXTFRAG_THRESHOLD_DEFAULT) == FragAction::Compact
            })
    }

    /// should_reclaim_retry (seed 4.1.2.5, row 21): progress resets the
    /// count; after MAX_RECLAIM_RETRIES rounds without it, stop; otherwise
    /// retry only if some zone would pass its min watermark were everything
    /// reclaimable reclaimed.
    #[allow(clippy::too_many_arguments)]
    fn should_reclaim_retry(
        &mut self,
        order: usize,
        flags: AllocFlags,
        progress: u64,
        loops: &mut u32,
        node: usize,
        mask: Option<NodeMask>,
        highest: ZoneType,
    ) -> bool {
        if progress > 0 && order <= PAGE_ALLOC_COSTLY_ORDER {
            *loops = 0;
        } else {
            *loops += 1;
        }
        if *loops > MAX_RECLAIM_RETRIES {
            return false;
        }
        let a = self.a;
        let zl = a.zonelist(node, false);
        zl.zones_for(highest, mask).any(|zr| {
            let z = &a.zones[zr.node as usize * MAX_NR_ZONES + zr.zone as usize];
            let available = z.free_pages() + a.hooks.reclaimable_pages(zr.node as usize, zr.zone);
            let area = z.free.lock();
            super::zone::watermark_ok(
                z,
                &area,
                order,
                z.wmark(super::WMARK_MIN),
                highest,
                flags,
                available,
            )
        })
    }
}

/// should_compact_retry: escalate the priority when compaction ran and
/// failed, up to a full scan; give up after MAX_COMPACT_RETRIES there.
fn should_compact_retry(
    result: Option<CompactResult>,
    prio: &mut CompactPriority,
    retries: &mut u32,
) -> bool {
    match result {
        None | Some(CompactResult::Skipped) => false,
        Some(_) => {
            *prio = match *prio {
                CompactPriority::Async => CompactPriority::SyncLight,
                _ => CompactPriority::Full,
            };
            *retries += 1;
            *retries <= MAX_COMPACT_RETRIES
        }
    }
}
