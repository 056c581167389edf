//! Test helpers shared by the page allocator's test files: a free-list
//! checker and hooks that record what the allocator asks of kswapd,
//! kcompactd, reclaim, compaction and the OOM killer.
use super::tests::Fixture;
use super::*;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;

/// Checks every zone's free lists against their counters (row 1): each
/// list is properly linked, holds free blocks of its order and type,
/// aligned and inside the zone, as many as its count; the per-order and
/// total counts and the lock-free mirror agree; and no two free buddies of
/// the same order are left unmerged.
pub(crate) fn check_free_lists(a: &PageAllocator) {
    use crate::page::{NIL, PG_BUDDY, PG_REPORTED};
    for z in a.zones() {
        let area = z.free.lock();
        let mut total = 0;
        let mut blocks = BTreeSet::new();
        for o in 0..NR_ORDERS {
            let mut in_order = 0;
            for mt in MigrateType::ALL {
                let l = &area.lists[o][mt as usize];
                let (mut i, mut prev, mut n) = (l.head, NIL, 0);
                while i != NIL {
                    // SAFETY: the zone lock is held; the copy is read only.
                    let p = *unsafe { a.map.at(i) };
                    let pfn = a.map.pfn(i);
                    assert_eq!(
                        p.flags & !PG_REPORTED,
                        PG_BUDDY,
                        "pfn {pfn}: flags of a free block"
                    );
                    assert_eq!((p.order as usize, p.mt), (o, mt as u8), "pfn {pfn}");
                    assert_eq!(p.prev, prev, "pfn {pfn}: broken back link");
                    assert!(z.contains(pfn) && pfn.is_multiple_of(1 << o), "pfn {pfn}");
                    assert!(
                        pfn + (1 << o) <= z.end_pfn,
                        "block {pfn} order {o} leaves its zone"
                    );
                    blocks.insert((pfn, o));
                    prev = i;
                    i = p.next;
                    n += 1;
                }
                assert_eq!(l.tail, prev, "order {o} {mt:?}: tail");
                assert_eq!(l.count, n, "order {o} {mt:?}: count");
                in_order += n;
            }
            assert_eq!(area.nr_free[o], in_order, "order {o}: nr_free");
            total += in_order << o;
        }
        // The free count: exact under the zone lock (the shared count plus
        // every CPU's differential), each differential within the fold
        // threshold.
        assert_eq!(z.free_pages(), total, "free count");
        let t = z.vm_free.threshold();
        for cpu in 0..a.topo.ncpus {
            let d = z.vm_free.diff(cpu);
            assert!(d.abs() <= t, "cpu {cpu}: differential {d} past {t}");
        }
        for &(pfn, o) in &blocks {
            assert!(
                o == MAX_ORDER || !blocks.contains(&(pfn ^ (1 << o), o)),
                "free buddies {pfn} and {} of order {o} not merged",
                pfn ^ (1 << o)
            );
        }
    }
}

/// One call the allocator made into its hooks, in a [`Recorder`]'s trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Kswapd,
    Reclaim,
    Compact(CompactPriority),
    Oom,
}

/// Hooks that count what the allocator asked of kswapd, kcompactd,
/// reclaim and compaction, and trace the slow path's calls in order;
/// `reclaim_boost` reports half the request freed, direct reclaim
/// `reclaim_gives` pages, and every zone (or only zone `reclaimable_in` - 1
/// when that is not 0) `reclaimable` reclaimable pages.
#[derive(Default)]
pub(crate) struct Recorder {
    pub kswapd: AtomicU64,
    pub kcompactd: AtomicU64,
    pub boost_asked: AtomicU64,
    pub compact: AtomicU64,
    pub reclaim: AtomicU64,
    pub reclaim_gives: AtomicU64,
    pub reclaimable: AtomicU64,
    pub reclaimable_in: AtomicU64,
    pub trace: std::sync::Mutex<Vec<Call>>,
}

impl Recorder {
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.trace.lock().unwrap().clone()
    }
    fn log(&self, c: Call) {
        self.trace.lock().unwrap().push(c);
    }
}

impl ReclaimHooks for Recorder {
    fn wake_kswapd(&self, _node: usize, _order: usize, _highest: ZoneType) {
        self.kswapd.fetch_add(1, Ordering::Relaxed);
        self.log(Call::Kswapd);
    }
    fn reclaim_boost(&self, _node: usize, nr_pages: u64) -> u64 {
        self.boost_asked.fetch_add(nr_pages, Ordering::Relaxed);
        nr_pages / 2
    }
    fn wake_kcompactd(&self, _node: usize, order: usize, _highest: ZoneType) {
        assert_eq!(order, crate::mmzone::PAGEBLOCK_ORDER);
        self.kcompactd.fetch_add(1, Ordering::Relaxed);
    }
    fn direct_reclaim(&self, _node: usize, _order: usize, _gfp: Gfp) -> u64 {
        self.reclaim.fetch_add(1, Ordering::Relaxed);
        self.log(Call::Reclaim);
        self.reclaim_gives.load(Ordering::Relaxed)
    }
    fn reclaimable_pages(&self, _node: usize, zone: ZoneType) -> u64 {
        match self.reclaimable_in.load(Ordering::Relaxed) {
            0 => self.reclaimable.load(Ordering::Relaxed),
            z if z == zone as u64 + 1 => self.reclaimable.load(Ordering::Relaxed),
            _ => 0,
        }
    }
    fn out_of_memory(&self, _node: usize, _order: usize) -> bool {
        self.log(Call::Oom);
        false
    }
    fn direct_compact(
        &self,
        _node: usize,
        _order: usize,
        _gfp: Gfp,
        prio: CompactPriority,
    ) -> CompactResult {
        self.compact.fetch_add(1, Ordering::Relaxed);
        self.log(Call::Compact(prio));
        CompactResult::Failed
    }
}

/// A [`Recorder`] installed in `f`'s allocator.
pub(crate) fn record(f: &mut Fixture) -> &'static Recorder {
    let r: &'static Recorder = Box::leak(Box::default());
    f.a.set_hooks(r);
    r
}
