//! Watermark boosting (seed 2.2.6, row 12): after an external-fragmentation
//! event the zone's watermarks go up for a while, kswapd reclaims a little,
//! then kcompactd is woken to rebuild whole pageblocks, and the boost goes
//! away again.
//!
//! The life of one boost:
//! 1. raise: a fallback that could not take a whole pageblock raises the
//!    zone's boost by a pageblock ([`super::Zone::boost_watermark`]) and
//!    marks the zone boosted;
//! 2. the next allocation from the zone that may wake kswapd does so, even
//!    with free pages above low (Linux's ZONE_BOOSTED_WATERMARK in rmqueue);
//! 3. kswapd's balancing pass ends in [`PageAllocator::kswapd_balance`]: it
//!    reclaims at most the boost ("a little"), takes the boost it saw back
//!    off the zones — the clearing point is Linux's balance_pgdat, [NOT IN
//!    SEED] in detail — and wakes kcompactd, since reclaim alone leaves the
//!    free pages scattered.
//!
//! The boost raises every watermark check of the zone meanwhile, so other
//! allocations leave room for kswapd and kcompactd to work in; atomic
//! order-0 requests ignore it (see `try_zone`).
use super::{zid, AllocFlags, CpuCache, PageAllocator};
use crate::mmzone::{ZoneType, MAX_NR_ZONES, PAGEBLOCK_ORDER};
use crate::vmstat::VmEvent;
use core::sync::atomic::Ordering;

/// What one [`PageAllocator::kswapd_balance`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BoostBalance {
    /// Pages of boost found on the node's zones: the reclaim target.
    pub boost: u64,
    /// Pages kswapd reclaimed for it.
    pub reclaimed: u64,
    /// Whether kcompactd was woken.
    pub kcompactd_woken: bool,
}

impl PageAllocator {
    /// The boost part of kswapd's balancing pass for `node`, zones up to
    /// `highest` (balance_pgdat): with no boost it does nothing; otherwise
    /// it asks the reclaim hook for at most the boost, lowers each zone's
    /// boost by what it saw at the start (a boost raised meanwhile stays
    /// for the next pass), and wakes kcompactd toward a pageblock. Takes no
    /// per-CPU lock, so a kswapd hook may call it from inside an allocation.
    pub fn kswapd_balance(&self, node: usize, highest: ZoneType) -> BoostBalance {
        let mut seen = [0u64; MAX_NR_ZONES];
        let mut out = BoostBalance::default();
        if node >= self.topo.nr_nodes {
            return out;
        }
        for (k, b) in seen.iter_mut().enumerate().take(highest as usize + 1) {
            *b = self.zones[zid(node, ZoneType::from_index(k))]
                .boost
                .load(Ordering::Relaxed);
            out.boost += *b;
        }
        if out.boost == 0 {
            return out;
        }
        out.reclaimed = self.hooks.reclaim_boost(node, out.boost);
        for (k, &b) in seen.iter().enumerate() {
            if b == 0 {
                continue;
            }
            let zone = &self.zones[zid(node, ZoneType::from_index(k))];
            // Atomic, as the raise is: an allocating CPU may raise it now.
            let _ = zone
                .boost
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                    Some(cur - cur.min(b))
                });
        }
        self.kcompactd_wakes.fetch_add(1, Ordering::Relaxed);
        self.hooks.wake_kcompactd(node, PAGEBLOCK_ORDER, highest);
        out.kcompactd_woken = true;
        out
    }
}

impl CpuCache<'_> {
    /// Step 2 above: an allocation from a boosted zone that may wake
    /// kswapd wakes it once and clears the mark.
    #[inline(always)]
    pub(super) fn wake_kswapd_if_boosted(&mut self, z: usize, flags: AllocFlags) {
        let zone = &self.a.zones[z];
        if flags.has(AllocFlags::KSWAPD)
            && zone.boosted.load(Ordering::Relaxed)
            && zone.boosted.swap(false, Ordering::Relaxed)
        {
            self.pages.events.inc(VmEvent::KswapdWake);
            self.a.hooks.wake_kswapd(zone.node, 0, zone.kind);
        }
    }
}
