//! Allocator event counters and fragmentation metrics (the ideas of Linux's
//! mm/vmstat.c: /proc/vmstat, /proc/pagetypeinfo, extfrag_index and
//! unusable_index).
//!
//! Everything here is pure arithmetic over snapshots the page allocator
//! takes, so the policy decisions built on it (seed 3.4.1: "≈0 → reclaim,
//! ≈1000 → compact") are unit-testable without a zone. Integer arithmetic
//! only, because the guest kernel does not use the FPU.

use crate::mmzone::{MigrateType, MIGRATE_TYPES, NR_ORDERS};
use core::sync::atomic::{AtomicI32, AtomicI64, Ordering};

/// Things a page allocator with zones, per-CPU lists, watermarks, migrate
/// type fallback, reclaim and compaction counts.
///
/// The seed names the mechanisms but no counter set; the names follow the
/// lower-case style of Linux's /proc/vmstat and reuse its exact name where
/// Linux has the same counter ([NOT IN SEED]: `allocstall`, `compact_stall`,
/// `compact_fail`, `compact_success`, `compact_daemon_wake`, `numa_hit`,
/// `numa_miss`, `numa_foreign`, `oom_kill` are Linux's). Linux keeps some of
/// these per zone (`pgalloc_normal`); callers wanting that keep one
/// [`EventCounters`] per zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(usize)]
pub enum VmEvent {
    /// Pages allocated (2^order per allocation), as Linux's `pgalloc_*`.
    PgAlloc,
    /// Pages freed (2^order per free), as Linux's `pgfree`.
    PgFree,
    /// Allocations of order > 0, to see high-order demand at a glance.
    PgAllocHighOrder,
    /// Allocations that had to take a block of another migrate type: the
    /// external-fragmentation event of seed 2.2.6 (Linux traces it as
    /// `mm_page_alloc_extfrag`).
    PgAllocFallback,
    /// Fallbacks that took a whole pageblock (seed 2.2.7, 3.3.2).
    PgStealWholeBlock,
    /// Pageblocks whose migrate type changed on a fallback (seed 3.3.2:
    /// whole block stolen or more than half of it free).
    PgRetypeBlock,
    /// Retries of the fast path without ALLOC_NOFRAGMENT after it refused to
    /// split a foreign pageblock (seed 2.2.6).
    NoFragmentRetry,
    /// Allocations served from a zone other than the first eligible one of
    /// the zonelist (lower zone or remote node).
    ZoneFallback,
    /// Allocations the per-CPU lists satisfied without the zone lock.
    PcpAllocHit,
    /// Frees that went to a per-CPU list instead of the buddy lists.
    PcpFreeHit,
    /// Per-CPU list refills from the buddy lists (`rmqueue_bulk`, seed 2.2.5).
    PcpRefill,
    /// Batched returns of per-CPU pages to the buddy lists when count ≥ high
    /// (`free_pcppages_bulk`, seed 2.2.5).
    PcpFreeBatch,
    /// Per-CPU list drains (after a high-order failure, by kcompactd, on
    /// isolation; seed 2.2.5.2).
    PcpDrain,
    /// Zone lock acquisitions, the cost the per-CPU lists exist to cut
    /// (row 19: at most ceil(n/batch) per bulk allocation).
    ZoneLockAcquire,
    /// Allocations refused by a zone's watermark check.
    WatermarkFail,
    /// Watermark boosts after a fragmentation event (seed 2.2.6).
    WatermarkBoost,
    /// Allocations allowed below the min watermark (`__GFP_HIGH`,
    /// PF_MEMALLOC, ALLOC_NO_WATERMARKS; seed 2.2.4).
    AllocReserve,
    /// kswapd wake-ups (seed 2.2.4: free fell below low).
    KswapdWake,
    /// kcompactd wake-ups (Linux's `compact_daemon_wake`).
    KcompactdWake,
    /// Entries to `__alloc_pages_slowpath`.
    AllocSlowpath,
    /// Direct reclaim stalls (Linux's `allocstall`).
    DirectReclaim,
    /// Direct compaction stalls (Linux's `compact_stall`).
    DirectCompact,
    /// Direct compactions after which the allocation succeeded.
    CompactSuccess,
    /// Direct compactions after which the allocation still failed.
    CompactFail,
    /// Allocations that returned no page.
    AllocFail,
    /// OOM kills (seed 2.2.1's may_oom step).
    OomKill,
    /// Allocations placed on the node the zonelist preferred.
    NumaHit,
    /// Allocations placed on a node other than the preferred one.
    NumaMiss,
    /// Allocations meant for this node that landed elsewhere.
    NumaForeign,
    /// Pageblocks set aside for high-order atomic allocations.
    HighAtomicReserve,
    /// Reserved pageblocks given back under memory pressure.
    HighAtomicUnreserve,
    /// Allocations of a pageblock or more (a huge page's worth): what a
    /// guest reports as hugetlb allocations (Linux's
    /// `htlb_buddy_alloc_success`; virtio-balloon's HTLB_PGALLOC stat).
    PgAllocHuge,
    /// Such allocations that returned no page (`htlb_buddy_alloc_fail`).
    PgAllocHugeFail,
}

/// Number of [`VmEvent`] variants; the length of an [`EventCounters`].
pub const NR_VM_EVENTS: usize = VmEvent::PgAllocHugeFail as usize + 1;

impl VmEvent {
    /// Every event, in discriminant order (`ALL[e as usize] == e`).
    pub const ALL: [VmEvent; NR_VM_EVENTS] = [
        VmEvent::PgAlloc,
        VmEvent::PgFree,
        VmEvent::PgAllocHighOrder,
        VmEvent::PgAllocFallback,
        VmEvent::PgStealWholeBlock,
        VmEvent::PgRetypeBlock,
        VmEvent::NoFragmentRetry,
        VmEvent::ZoneFallback,
        VmEvent::PcpAllocHit,
        VmEvent::PcpFreeHit,
        VmEvent::PcpRefill,
        VmEvent::PcpFreeBatch,
        VmEvent::PcpDrain,
        VmEvent::ZoneLockAcquire,
        VmEvent::WatermarkFail,
        VmEvent::WatermarkBoost,
        VmEvent::AllocReserve,
        VmEvent::KswapdWake,
        VmEvent::KcompactdWake,
        VmEvent::AllocSlowpath,
        VmEvent::DirectReclaim,
        VmEvent::DirectCompact,
        VmEvent::CompactSuccess,
        VmEvent::CompactFail,
        VmEvent::AllocFail,
        VmEvent::OomKill,
        VmEvent::NumaHit,
        VmEvent::NumaMiss,
        VmEvent::NumaForeign,
        VmEvent::HighAtomicReserve,
        VmEvent::HighAtomicUnreserve,
        VmEvent::PgAllocHuge,
        VmEvent::PgAllocHugeFail,
    ];

    /// The /proc/vmstat-style name.
    pub const fn name(self) -> &'static str {
        match self {
            VmEvent::PgAlloc => "pgalloc",
            VmEvent::PgFree => "pgfree",
            VmEvent::PgAllocHighOrder => "pgalloc_high_order",
            VmEvent::PgAllocFallback => "pgalloc_fallback",
            VmEvent::PgStealWholeBlock => "pgalloc_steal_block",
            VmEvent::PgRetypeBlock => "pageblock_retype",
            VmEvent::NoFragmentRetry => "nofragment_retry",
            VmEvent::ZoneFallback => "zone_fallback",
            VmEvent::PcpAllocHit => "pcp_alloc_hit",
            VmEvent::PcpFreeHit => "pcp_free_hit",
            VmEvent::PcpRefill => "pcp_refill",
            VmEvent::PcpFreeBatch => "pcp_free_batch",
            VmEvent::PcpDrain => "pcp_drain",
            VmEvent::ZoneLockAcquire => "zone_lock_acquire",
            VmEvent::WatermarkFail => "watermark_fail",
            VmEvent::WatermarkBoost => "watermark_boost",
            VmEvent::AllocReserve => "pgalloc_reserve",
            VmEvent::KswapdWake => "kswapd_wake",
            VmEvent::KcompactdWake => "compact_daemon_wake",
            VmEvent::AllocSlowpath => "pgalloc_slowpath",
            VmEvent::DirectReclaim => "allocstall",
            VmEvent::DirectCompact => "compact_stall",
            VmEvent::CompactSuccess => "compact_success",
            VmEvent::CompactFail => "compact_fail",
            VmEvent::AllocFail => "pgalloc_fail",
            VmEvent::OomKill => "oom_kill",
            VmEvent::NumaHit => "numa_hit",
            VmEvent::NumaMiss => "numa_miss",
            VmEvent::NumaForeign => "numa_foreign",
            VmEvent::HighAtomicReserve => "highatomic_reserve",
            VmEvent::HighAtomicUnreserve => "highatomic_unreserve",
            VmEvent::PgAllocHuge => "htlb_buddy_alloc_success",
            VmEvent::PgAllocHugeFail => "htlb_buddy_alloc_fail",
        }
    }

    /// The event with discriminant `i`, if any.
    pub const fn from_index(i: usize) -> Option<VmEvent> {
        if i < NR_VM_EVENTS {
            Some(VmEvent::ALL[i])
        } else {
            None
        }
    }
}

/// One set of event counts.
///
/// Plain `u64`s, not atomics: like Linux's per-CPU `vm_event_states`, each
/// CPU owns one set and only it writes, so an increment is one add with no
/// bus lock; a reader sums the sets with [`EventCounters::merge`] and
/// accepts that the total is a moment's approximation. Counts wrap instead
/// of panicking, as Linux's unsigned longs do; at one event per nanosecond a
/// `u64` lasts centuries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventCounters([u64; NR_VM_EVENTS]);

impl Default for EventCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl EventCounters {
    /// All counts zero; `const` so a per-CPU set can be a `static`.
    pub const fn new() -> Self {
        EventCounters([0; NR_VM_EVENTS])
    }

    /// Counts one `event`.
    #[inline]
    pub fn inc(&mut self, event: VmEvent) {
        self.add(event, 1);
    }

    /// Counts `n` of `event` (e.g. 2^order pages for [`VmEvent::PgAlloc`]).
    #[inline]
    pub fn add(&mut self, event: VmEvent, n: u64) {
        let c = &mut self.0[event as usize];
        *c = c.wrapping_add(n);
    }

    /// The count of `event`.
    #[inline]
    pub const fn get(&self, event: VmEvent) -> u64 {
        self.0[event as usize]
    }

    /// Adds every count of `other` into `self` (summing per-CPU sets).
    pub fn merge(&mut self, other: &EventCounters) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// Zeroes every count.
    pub fn clear(&mut self) {
        self.0 = [0; NR_VM_EVENTS];
    }

    /// `(name, count)` for every event in [`VmEvent::ALL`] order, the
    /// /proc/vmstat listing.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        VmEvent::ALL.iter().map(move |&e| (e.name(), self.get(e)))
    }
}

/// A zone counter with per-CPU differentials, as Linux keeps its zone
/// vm_stat items ([NOT IN SEED]: mm/vmstat.c, `__mod_zone_page_state`,
/// `calculate_normal_threshold`, `zone_page_state_snapshot`,
/// `cpu_vm_stats_fold`).
///
/// Why: the zone's free-page count is read by every CPU's lock-free
/// order-0 watermark check on every allocation, but written at every buddy
/// operation. Writing it each time would pull its cache line away from all
/// those readers. Instead a CPU adds to its own differential and folds it
/// into the shared count only when it passes `threshold`, so the shared
/// line changes once per `threshold` pages.
///
/// The price is that [`ZoneCounter::folded`] may be off by up to
/// [`ZoneCounter::max_drift`] (`threshold` per CPU). Linux's allocator
/// accepts that in its fast path and uses the exact sum only near the
/// watermark (`zone_watermark_ok_safe` below `percpu_drift_mark`). Here
/// every decision is exact instead: [`ZoneCounter::above`] answers from the
/// folded count when it is more than the drift away from the bound, which
/// the exact count cannot cross, and from [`ZoneCounter::snapshot`]
/// otherwise. So a watermark check never gives a different answer than
/// with a single exact count; the snapshot is needed only near the mark.
///
/// Writers: the allocator changes the free count only under the zone lock,
/// so at any moment the snapshot taken under that lock is exact, and a
/// lock-free snapshot is exact as of the last release of the lock. Each
/// CPU's differential is an atomic only so other CPUs can read it; all its
/// updates are a plain load and store.
pub struct ZoneCounter<const NCPU: usize> {
    global: AtomicI64,
    diff: [AtomicI32; NCPU],
    threshold: i32,
    ncpus: usize,
    /// `threshold · ncpus`, read on every watermark check.
    max_drift: i64,
}

impl<const NCPU: usize> Default for ZoneCounter<NCPU> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const NCPU: usize> ZoneCounter<NCPU> {
    /// Zero, with threshold 0 (every change folds at once) until
    /// [`ZoneCounter::configure`].
    pub const fn new() -> Self {
        ZoneCounter {
            global: AtomicI64::new(0),
            diff: [const { AtomicI32::new(0) }; NCPU],
            threshold: 0,
            ncpus: NCPU,
            max_drift: 0,
        }
    }

    /// Sets the fold threshold and the CPUs that may hold differentials.
    /// Folds everything first, so the count is unchanged.
    pub fn configure(&mut self, threshold: i32, ncpus: usize) {
        self.fold_all();
        self.threshold = threshold.max(0);
        self.ncpus = ncpus.min(NCPU);
        self.max_drift = self.threshold as i64 * self.ncpus as i64;
    }

    pub fn threshold(&self) -> i32 {
        self.threshold
    }

    /// Adds `delta` as `cpu` (`__mod_zone_page_state`): into the CPU's
    /// differential, folded into the shared count once it passes the
    /// threshold either way.
    #[inline]
    pub fn add(&self, cpu: usize, delta: i64) {
        if delta > self.threshold as i64 || delta < -(self.threshold as i64) {
            // Past the threshold on its own (high-order blocks, batches):
            // straight into the shared count, the differential unchanged.
            self.global.fetch_add(delta, Ordering::Relaxed);
            return;
        }
        let d = &self.diff[cpu];
        let x = d.load(Ordering::Relaxed) as i64 + delta;
        if x > self.threshold as i64 || x < -(self.threshold as i64) {
            self.global.fetch_add(x, Ordering::Relaxed);
            d.store(0, Ordering::Relaxed);
        } else {
            d.store(x as i32, Ordering::Relaxed);
        }
    }

    /// Adds straight to the shared count (boot-time set-up).
    pub fn add_global(&self, delta: i64) {
        self.global.fetch_add(delta, Ordering::Relaxed);
    }

    /// The shared count alone (`zone_page_state`): within
    /// [`ZoneCounter::max_drift`] of the exact value.
    #[inline(always)]
    pub fn folded(&self) -> i64 {
        self.global.load(Ordering::Relaxed)
    }

    /// How far [`ZoneCounter::folded`] can be from the exact count.
    #[inline(always)]
    pub fn max_drift(&self) -> i64 {
        self.max_drift
    }

    /// The shared count plus every CPU's differential
    /// (`zone_page_state_snapshot`).
    pub fn snapshot(&self) -> i64 {
        self.diff[..self.ncpus]
            .iter()
            .fold(self.folded(), |s, d| s + d.load(Ordering::Relaxed) as i64)
    }

    /// Whether the exact count is above `bound`, from the folded count when
    /// the drift cannot matter and from the snapshot otherwise.
    #[inline(always)]
    pub fn above(&self, bound: i64) -> bool {
        let approx = self.folded();
        let drift = self.max_drift();
        if approx - drift > bound {
            return true;
        }
        if approx + drift <= bound {
            return false;
        }
        self.snapshot_above(bound)
    }

    #[cold]
    #[inline(never)]
    fn snapshot_above(&self, bound: i64) -> bool {
        self.snapshot() > bound
    }

    /// Moves `cpu`'s differential into the shared count
    /// (`cpu_vm_stats_fold`); the total is unchanged.
    pub fn fold(&self, cpu: usize) {
        let x = self.diff[cpu].swap(0, Ordering::Relaxed);
        if x != 0 {
            self.global.fetch_add(x as i64, Ordering::Relaxed);
        }
    }

    /// [`ZoneCounter::fold`] for every CPU.
    pub fn fold_all(&self) {
        for cpu in 0..self.ncpus {
            self.fold(cpu);
        }
    }

    /// `cpu`'s differential (for tests and reports).
    pub fn diff(&self, cpu: usize) -> i32 {
        self.diff[cpu].load(Ordering::Relaxed)
    }
}

/// Fold threshold of a zone's counters ([NOT IN SEED]: Linux's
/// `calculate_normal_threshold`): `2·fls(cpus)·(1 + fls(managed / 128 MiB))`,
/// at most 125. It grows with the CPUs (more of them share the line) and
/// with the zone (a few pages of drift matter less), and stays far below
/// the watermarks, which grow with the square root of memory.
pub fn stat_threshold(ncpus: usize, managed_pages: u64) -> i32 {
    let fls = |x: u64| 64 - x.leading_zeros() as i32;
    let mem = managed_pages >> (27 - crate::addr::PAGE_SHIFT);
    (2 * fls(ncpus as u64) * (1 + fls(mem))).min(125)
}

/// Free blocks of one zone by order and migrate type: the /proc/pagetypeinfo
/// view. `blocks[order][type]` counts free buddy blocks of 2^order pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeAreaCounts {
    pub blocks: [[u64; MIGRATE_TYPES]; NR_ORDERS],
}

impl Default for FreeAreaCounts {
    fn default() -> Self {
        Self::new()
    }
}

impl FreeAreaCounts {
    /// No free blocks.
    pub const fn new() -> Self {
        FreeAreaCounts {
            blocks: [[0; MIGRATE_TYPES]; NR_ORDERS],
        }
    }

    /// Free blocks of `order` summed over migrate types (`free_area[order]
    /// .nr_free` in Linux); 0 for orders above MAX_ORDER.
    pub fn blocks_of_order(&self, order: usize) -> u64 {
        match self.blocks.get(order) {
            Some(row) => row.iter().fold(0u64, |s, &n| s.saturating_add(n)),
            None => 0,
        }
    }

    /// [`Self::blocks_of_order`] for every order: the input of
    /// [`fill_contig_page_info`].
    pub fn blocks_per_order(&self) -> [u64; NR_ORDERS] {
        let mut out = [0; NR_ORDERS];
        for (o, slot) in out.iter_mut().enumerate() {
            *slot = self.blocks_of_order(o);
        }
        out
    }

    /// Free pages in all blocks of every order and type.
    pub fn free_pages(&self) -> u64 {
        self.blocks_per_order()
            .iter()
            .enumerate()
            .fold(0u64, |s, (o, &n)| s.saturating_add(pages(n, o)))
    }

    /// Free pages held in blocks of migrate type `mt`.
    pub fn free_pages_of_type(&self, mt: MigrateType) -> u64 {
        self.blocks.iter().enumerate().fold(0u64, |s, (o, row)| {
            s.saturating_add(pages(row[mt as usize], o))
        })
    }

    /// Free-memory summary for an allocation of `order`.
    pub fn contig_info(&self, order: usize) -> ContigPageInfo {
        fill_contig_page_info(&self.blocks_per_order(), order)
    }
}

/// `n` blocks of `order` in pages, saturating instead of overflowing.
fn pages(n: u64, order: usize) -> u64 {
    match u32::try_from(order).ok().and_then(|o| 1u64.checked_shl(o)) {
        Some(per) => n.saturating_mul(per),
        None if n == 0 => 0,
        None => u64::MAX,
    }
}

/// What a zone's free lists offer an allocation of a given order (Linux's
/// `struct contig_page_info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContigPageInfo {
    /// Free pages in all blocks.
    pub free_pages: u64,
    /// Free blocks of any order.
    pub free_blocks_total: u64,
    /// How many naturally aligned 2^order pieces the free blocks of order
    /// ≥ `order` could be split into (a block of order+1 counts 2): the
    /// allocations of this order that would succeed right now.
    pub free_blocks_suitable: u64,
}

/// Summarises free blocks per order (`counts[o]` = free blocks of order `o`)
/// for an allocation of `order`.
///
/// An `order` above MAX_ORDER has no suitable block ([NOT IN SEED]: Linux
/// forbids such orders outright; we answer instead of panicking).
pub fn fill_contig_page_info(counts: &[u64; NR_ORDERS], order: usize) -> ContigPageInfo {
    let mut info = ContigPageInfo::default();
    for (o, &n) in counts.iter().enumerate() {
        info.free_blocks_total = info.free_blocks_total.saturating_add(n);
        info.free_pages = info.free_pages.saturating_add(pages(n, o));
        if o >= order {
            info.free_blocks_suitable = info
                .free_blocks_suitable
                .saturating_add(pages(n, o - order));
        }
    }
    info
}

/// [`fragmentation_index`]'s value when an allocation of the order would
/// succeed now. The seed (3.4.1) writes "−1 = should succeed"; Linux returns
/// −1000, which keeps the sentinel out of the 0..=1000 scale at the same
/// ×1000 resolution. We follow Linux.
pub const FRAG_INDEX_SUCCEEDS: i32 = -1000;

/// Default boundary between "lack of memory" and "fragmentation"
/// ([NOT IN SEED]: Linux's `vm.extfrag_threshold` defaults to 500).
pub const EXTFRAG_THRESHOLD_DEFAULT: i32 = 500;

/// Why an allocation of `order` would fail, on a 0..=1000 scale (seed 3.4.1,
/// Linux's `__fragmentation_index`):
///
/// * [`FRAG_INDEX_SUCCEEDS`] (−1000) — a suitable block exists, so the
///   failure (if any) is a watermark question, not a shortage;
/// * near 0 — there is little free memory: reclaim, compaction cannot help;
/// * near 1000 — plenty of free memory, all in blocks too small: compact.
///
/// No free blocks at all gives 0. Otherwise the value is
/// `1000 − (1000 + free_pages·1000/2^order) / free_blocks_total` in integer
/// arithmetic: the larger the average free block relative to the request,
/// the less fragmentation is to blame.
///
/// [NOT IN SEED] Linux leaves the value unclamped, so with very few blocks
/// each nearly as big as the request it can go negative (one free block of
/// half the requested size gives −500); its `compaction_suitable` then
/// treats those like −1000. Those states are the purest "lack of memory", so
/// we clamp them to 0: the result is always −1000 or within 0..=1000, as
/// the seed's scale says.
pub fn fragmentation_index(order: usize, info: &ContigPageInfo) -> i32 {
    if info.free_blocks_total == 0 {
        return 0;
    }
    if info.free_blocks_suitable > 0 {
        return FRAG_INDEX_SUCCEEDS;
    }
    let requested = pages(1, order);
    let avg_ratio = info.free_pages.saturating_mul(1000) / requested;
    let lack = (1000u64.saturating_add(avg_ratio) / info.free_blocks_total).min(1000);
    // `lack` is at most 1000, so this fits and is within 0..=1000.
    1000 - lack as i32
}

/// Share of free memory, ×1000, that sits in blocks too small for an
/// allocation of `order` (Linux's `unusable_free_index`): 0 when every free
/// page could serve it, 1000 when none could. No free memory counts as
/// entirely unusable (1000), as in Linux.
pub fn unusable_free_index(order: usize, info: &ContigPageInfo) -> u32 {
    if info.free_pages == 0 {
        return 1000;
    }
    let usable = pages(info.free_blocks_suitable, order).min(info.free_pages);
    let unusable = info.free_pages - usable;
    // u128 so free_pages near u64::MAX cannot overflow the ×1000.
    ((unusable as u128 * 1000) / info.free_pages as u128) as u32
}

/// What the slow path should do about an allocation of some order (row 23).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragAction {
    /// A suitable free block exists; retrying (with watermarks) should do.
    Succeeds,
    /// Too little free memory: reclaim first, compaction cannot help.
    Reclaim,
    /// Enough free memory but too fragmented: compact.
    Compact,
}

/// Picks the slow-path remedy from [`fragmentation_index`]: an index at or
/// below `extfrag_threshold` ([`EXTFRAG_THRESHOLD_DEFAULT`] = 500) blames
/// lack of memory, above it fragmentation. This is the test Linux's
/// `compaction_suitable` applies before compacting ([NOT IN SEED]: the seed
/// gives the scale's ends, not the threshold).
pub fn suggest_action(order: usize, info: &ContigPageInfo, extfrag_threshold: i32) -> FragAction {
    let idx = fragmentation_index(order, info);
    if idx == FRAG_INDEX_SUCCEEDS {
        FragAction::Succeeds
    } else if idx <= extfrag_threshold {
        FragAction::Reclaim
    } else {
        FragAction::Compact
    }
}

#[cfg(test)]
mod tests;
