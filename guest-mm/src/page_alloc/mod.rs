//! The page allocator: zones of buddy free lists with migrate types,
//! watermarks, per-CPU lists and zonelists across NUMA nodes (seed 2.2, 3.3).
//!
//! Layout of the work:
//! - `buddy`: the free lists of one zone, split/merge and stealing;
//! - `zone`: a zone, its lock and its watermarks;
//! - `crate::pcp`: per-CPU lists; `slowpath`: what happens when the fast
//!   path fails, with hooks where kswapd, compaction and reclaim plug in;
//! - `boost`: the life of a watermark boost, from the fragmentation event
//!   to kswapd's balancing pass that ends it.
//!
//! A CPU allocates through a [`CpuCache`], a guard over that CPU's per-CPU
//! lists and counters. Holding it costs one uncontended lock for a whole
//! burst of allocations instead of one per call; another CPU that needs to
//! drain those lists takes the same lock and does the work itself.
mod boost;
pub mod buddy;
pub mod reporting;
mod slowpath;
pub mod zone;

pub use boost::BoostBalance;
pub use slowpath::{CompactPriority, CompactResult, NoHooks, ReclaimHooks};
pub use zone::{Zone, WMARK_HIGH, WMARK_LOW, WMARK_MIN};

use crate::addr::{Pfn, PhysAddr, PAGE_SIZE};
use crate::gfp::{AllocFlags, Gfp};
use crate::memblock::{Memblock, MemblockError};
use crate::mempolicy::{self, InterleaveState, Policy};
use crate::mmzone::{
    MigrateType, ZoneType, MAX_NR_ZONES, MAX_NUMNODES, MAX_ORDER, MIGRATE_TYPES, NR_ORDERS,
    PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER,
};
use crate::page::{MemMap, Page, PG_ALLOC, PG_PCP, PG_RESERVED};
use crate::pcp::{self, order_to_pindex, pcp_allowed_order, PerCpuPages};
use crate::phys::PhysMemory;
use crate::sync::{SpinLock, SpinLockGuard};
use crate::vmstat::{EventCounters, FreeAreaCounts, VmEvent};
use crate::zonelist::{Distances, NodeMask, Zonelist};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub const MAX_CPUS: usize = 64;
pub const MAX_ZONES: usize = MAX_NUMNODES * MAX_NR_ZONES;
const MAX_ORDER_NR_PAGES: u64 = 1 << MAX_ORDER;

/// Which memory and CPUs belong to which node.
#[derive(Clone, Copy, Debug)]
pub struct Topology {
    pub nr_nodes: usize,
    /// Physical [start, end) of each node.
    pub node_range: [(u64, u64); MAX_NUMNODES],
    pub distances: Distances,
    pub ncpus: usize,
    pub cpu_node: [u8; MAX_CPUS],
}

impl Topology {
    /// One node holding all memory and all `ncpus` CPUs.
    pub fn single(ncpus: usize) -> Self {
        let mut node_range = [(0, 0); MAX_NUMNODES];
        node_range[0] = (0, u64::MAX);
        Topology {
            nr_nodes: 1,
            node_range,
            distances: Distances::uniform(1),
            ncpus,
            cpu_node: [0; MAX_CPUS],
        }
    }

    /// What the allocator needs of a topology that firmware described: a
    /// node count it supports, every CPU on one of the nodes, and node
    /// ranges that do not overlap (a page belongs to the first zone that
    /// spans it, so an overlap would hand one node's pages to another).
    /// Empty ranges are memoryless nodes.
    pub fn check(&self) -> Result<(), InitError> {
        if self.ncpus == 0 || self.ncpus > MAX_CPUS {
            return Err(InitError::TooManyCpus);
        }
        if self.nr_nodes == 0 || self.nr_nodes > MAX_NUMNODES {
            return Err(InitError::BadTopology);
        }
        if self.cpu_node[..self.ncpus]
            .iter()
            .any(|&n| n as usize >= self.nr_nodes)
        {
            return Err(InitError::BadTopology);
        }
        let ranges = &self.node_range[..self.nr_nodes];
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1 {
                    return Err(InitError::BadTopology);
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    NoMemory,
    TooManyCpus,
    BadTopology,
    MemMap(MemblockError),
}

/// Why a free was refused; nothing changes when one is returned, so a
/// kernel bug is reported instead of corrupting the free lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// Not a frame this allocator manages.
    Foreign(Pfn),
    /// A frame that was never handed to the allocator (reserved at boot).
    Reserved(Pfn),
    /// Not aligned to the block size of `order`.
    Misaligned { pfn: Pfn, order: u8 },
    /// Not the head of an allocated block: free already, or inside a block.
    NotAllocated(Pfn),
    /// Allocated with another order.
    WrongOrder { pfn: Pfn, allocated: u8, freed: u8 },
}

/// One CPU's per-CPU lists, indexed by zone id. The lists themselves live
/// in memory taken from memblock at init, one set per CPU for the populated
/// zones only (Linux allocates its pagesets per CPU too): a static array for
/// every possible CPU × zone would put ~320 KiB into the guest image.
/// "None" in the per-zone byte tables (no lists, no preferred zone).
const NO_SLOT: u8 = u8::MAX;

pub struct PcpSet {
    /// Each zone's lists, null for zones without pages.
    ptr: [*mut PerCpuPages; MAX_ZONES],
}

// SAFETY: a PcpSet is reached only through its CPU's SpinLock<CpuPages>.
unsafe impl Send for PcpSet {}

impl PcpSet {
    const EMPTY: PcpSet = PcpSet {
        ptr: [core::ptr::null_mut(); MAX_ZONES],
    };

    /// The lists of every populated zone.
    pub fn iter(&self) -> impl Iterator<Item = &PerCpuPages> {
        // SAFETY: non-null entries point to this CPU's initialised lists.
        self.ptr
            .iter()
            .filter(|p| !p.is_null())
            .map(|&p| unsafe { &*p })
    }
    fn has(&self, z: usize) -> bool {
        !self.ptr[z].is_null()
    }

    /// The lists of zone `z`, without the check that it has any.
    ///
    /// # Safety
    /// Zone `z` has lists: it has present pages (every populated zone
    /// does).
    #[inline(always)]
    unsafe fn get_unchecked_mut(&mut self, z: usize) -> &mut PerCpuPages {
        debug_assert!(self.has(z));
        // SAFETY: non-null (the caller's contract) and set up in init;
        // `&mut self` is exclusive through the CPU lock.
        unsafe { &mut *self.ptr[z] }
    }
}

impl core::ops::Index<usize> for PcpSet {
    type Output = PerCpuPages;
    #[inline(always)]
    fn index(&self, z: usize) -> &PerCpuPages {
        let p = self.ptr[z];
        assert!(!p.is_null(), "no per-CPU lists for unpopulated zone {z}");
        // SAFETY: non-null entries point to lists set up in init.
        unsafe { &*p }
    }
}

impl core::ops::IndexMut<usize> for PcpSet {
    #[inline(always)]
    fn index_mut(&mut self, z: usize) -> &mut PerCpuPages {
        let p = self.ptr[z];
        assert!(!p.is_null(), "no per-CPU lists for unpopulated zone {z}");
        // SAFETY: as above; `&mut self` is exclusive through the CPU lock.
        unsafe { &mut *p }
    }
}

/// One CPU's per-CPU lists for every zone, and its event counters.
pub struct CpuPages {
    pub pcp: PcpSet,
    /// Every event except those the order-0 fast paths count below; read
    /// the whole set with [`CpuPages::event_counts`].
    pub(crate) events: EventCounters,
    /// Order-0 allocations served by the per-CPU fast path. Each is one
    /// `PgAlloc`, one `PcpAllocHit` and one `NumaHit`: counting it once
    /// here and adding it to those three when they are read keeps two
    /// increments off every allocation, with the same totals for readers.
    fast_allocs: u64,
    /// Order-0 frees the fast path put on a per-CPU list: one `PgFree` and
    /// one `PcpFreeHit` each, added the same way.
    fast_frees: u64,
}

impl CpuPages {
    const EMPTY: CpuPages = CpuPages {
        pcp: PcpSet::EMPTY,
        events: EventCounters::new(),
        fast_allocs: 0,
        fast_frees: 0,
    };

    /// This CPU's event counts, the fast paths' included.
    pub fn event_counts(&self) -> EventCounters {
        let mut e = self.events;
        for ev in [VmEvent::PgAlloc, VmEvent::PcpAllocHit, VmEvent::NumaHit] {
            e.add(ev, self.fast_allocs);
        }
        for ev in [VmEvent::PgFree, VmEvent::PcpFreeHit] {
            e.add(ev, self.fast_frees);
        }
        e
    }
}

pub struct PageAllocator {
    map: MemMap,
    zones: [Zone; MAX_ZONES],
    fallback: [Zonelist; MAX_NUMNODES],
    thisnode: [Zonelist; MAX_NUMNODES],
    topo: Topology,
    grouping: bool,
    cpus: [SpinLock<CpuPages>; MAX_CPUS],
    /// Set for a CPU whose lists could not be drained because it was busy
    /// allocating; it drains itself when it drops its [`CpuCache`].
    drain_requested: [AtomicBool; MAX_CPUS],
    /// First zone of each node's fallback zonelist for each highest zone:
    /// where an allocation without a node mask looks first.
    preferred: [[u8; MAX_NR_ZONES]; MAX_NUMNODES],
    hooks: &'static dyn ReclaimHooks,
    total_managed: u64,
    /// [`PageAllocator::migratetype`] by the request's mobility bits, with
    /// the grouping switch applied once at init instead of per allocation.
    mt_of: [MigrateType; 4],
    /// The highest zone type any node has memory in: node-restricting
    /// policies apply only to requests that may use it (policy_zone).
    policy_zone: ZoneType,
    /// kcompactd wake-ups from kswapd context, which has no per-CPU
    /// counters of its own (added to [`VmEvent::KcompactdWake`]).
    kcompactd_wakes: AtomicU64,
    /// Pages freed by [`PageAllocator::free_from_hook`], which has no
    /// per-CPU counters to use (added to [`VmEvent::PgFree`]).
    hook_frees: AtomicU64,
}

static NO_HOOKS: NoHooks = NoHooks;

#[inline(always)]
const fn zid(node: usize, zone: ZoneType) -> usize {
    node * MAX_NR_ZONES + zone as usize
}

impl PageAllocator {
    /// An allocator with no memory; [`PageAllocator::init`] fills it in
    /// place (it is large: a guest keeps it in a static).
    #[allow(clippy::declare_interior_mutable_const)]
    pub const EMPTY: PageAllocator = PageAllocator {
        // SAFETY: an empty map is never dereferenced (nr = 0).
        map: unsafe { MemMap::new(core::ptr::null_mut(), 0, 0) },
        zones: [Zone::EMPTY; MAX_ZONES],
        fallback: [Zonelist::new(); MAX_NUMNODES],
        thisnode: [Zonelist::new(); MAX_NUMNODES],
        topo: Topology {
            nr_nodes: 0,
            node_range: [(0, 0); MAX_NUMNODES],
            distances: Distances::uniform(1),
            ncpus: 0,
            cpu_node: [0; MAX_CPUS],
        },
        grouping: true,
        cpus: [const { SpinLock::new(CpuPages::EMPTY) }; MAX_CPUS],
        drain_requested: [const { AtomicBool::new(false) }; MAX_CPUS],
        preferred: [[NO_SLOT; MAX_NR_ZONES]; MAX_NUMNODES],
        hooks: &NO_HOOKS,
        total_managed: 0,
        mt_of: [MigrateType::Unmovable; 4],
        policy_zone: ZoneType::Dma,
        kcompactd_wakes: AtomicU64::new(0),
        hook_frees: AtomicU64::new(0),
    };

    /// Takes over all free memory from memblock (memblock_free_all): the
    /// descriptor array comes from memblock first, every page starts
    /// reserved, and each free range is handed to the buddy lists in maximal
    /// aligned blocks. All pageblocks start Movable (seed 3.3).
    pub fn init(
        &mut self,
        mb: &mut Memblock,
        mem: &dyn PhysMemory,
        topo: Topology,
    ) -> Result<(), InitError> {
        self.init_with(mb, mem, topo, None)
    }

    /// [`PageAllocator::init`] with grouping by mobility forced on or off
    /// (`None`: the seed's size cutoff decides), for experiments.
    pub fn init_with(
        &mut self,
        mb: &mut Memblock,
        mem: &dyn PhysMemory,
        topo: Topology,
        grouping: Option<bool>,
    ) -> Result<(), InitError> {
        topo.check()?;
        let (min_pfn, max_pfn) = {
            let regions = mb.memory();
            let (Some(first), Some(last)) = (regions.first(), regions.last()) else {
                return Err(InitError::NoMemory);
            };
            (
                first.base.0 / PAGE_SIZE / MAX_ORDER_NR_PAGES * MAX_ORDER_NR_PAGES,
                (last.base.0 + last.size)
                    .div_ceil(PAGE_SIZE)
                    .div_ceil(MAX_ORDER_NR_PAGES)
                    * MAX_ORDER_NR_PAGES,
            )
        };
        let nr = max_pfn - min_pfn;
        let bytes = MemMap::bytes_for(nr);
        // Keep the descriptors out of the DMA zone when there is room.
        let at = mb
            .alloc(mem, bytes, PAGE_SIZE, PhysAddr(ZoneType::Dma.limit()))
            .or_else(|_| mb.alloc(mem, bytes, PAGE_SIZE, PhysAddr(0)))
            .map_err(InitError::MemMap)?;
        let base = mem.phys_to_ptr(at) as *mut Page;
        // SAFETY: memblock just reserved `bytes` ≥ nr descriptors at `at`,
        // and nothing else refers to that memory.
        unsafe { core::slice::from_raw_parts_mut(base, nr as usize) }.fill(Page::RESERVED);
        // SAFETY: as above; the allocator owns the array from now on.
        self.map = unsafe { MemMap::new(base, min_pfn, nr) };
        self.topo = topo;

        // Zone spans: each node's range cut at the zone limits.
        let regions = mb.memory();
        for node in 0..topo.nr_nodes {
            let (ns, ne) = topo.node_range[node];
            let mut lo = 0u64;
            for kind in ZoneType::ALL {
                let hi = kind.limit();
                let s = (ns.max(lo) / PAGE_SIZE).max(min_pfn);
                let e = (ne.min(hi) / PAGE_SIZE).min(max_pfn);
                let z = &mut self.zones[zid(node, kind)];
                z.node = node;
                z.kind = kind;
                if s < e {
                    z.start_pfn = s;
                    z.end_pfn = e;
                    z.present_pages = regions
                        .iter()
                        .map(|r| {
                            let (rs, re) = (r.base.0 / PAGE_SIZE, (r.base.0 + r.size) / PAGE_SIZE);
                            re.min(e).saturating_sub(rs.max(s))
                        })
                        .sum();
                }
                lo = hi;
            }
        }
        for z in self.zones.iter_mut() {
            z.set_map_span(&self.map);
        }

        // Per-CPU lists for zones that will have pages, from memblock before
        // the rest of memory goes to the buddy lists.
        let mut slot = [NO_SLOT; MAX_ZONES];
        let mut nslots = 0u8;
        for (i, z) in self.zones.iter().enumerate() {
            if z.present_pages > 0 {
                slot[i] = nslots;
                nslots += 1;
            }
        }
        let per_cpu = nslots as usize;
        // Ring sizes from upper bounds of each zone's high and batch: the
        // present pages bound the managed ones, and the min watermark never
        // exceeds min_free_pages of the whole machine.
        let total_present: u64 = self.zones.iter().map(|z| z.present_pages).sum();
        let mut caps = [[0u32; pcp::NR_PCP_LISTS]; MAX_ZONES];
        let mut ring_words = 0usize;
        for (i, z) in self.zones.iter().enumerate() {
            if slot[i] == NO_SLOT {
                continue;
            }
            let batch_max = pcp::zone_batchsize(z.present_pages);
            let low_max = zone::min_free_pages(total_present) * 5 / 4 + z.present_pages / 1000 + 1;
            let high_max = pcp::zone_highsize(low_max, batch_max, 1);
            caps[i] = pcp::ring_caps(high_max, batch_max);
            ring_words += caps[i].iter().sum::<u32>() as usize;
        }
        let bytes = (topo.ncpus * per_cpu * core::mem::size_of::<PerCpuPages>()) as u64;
        let at = mb
            .alloc(mem, bytes.max(1), 64, PhysAddr(0))
            .map_err(InitError::MemMap)?;
        let pcp_base = mem.phys_to_ptr(at) as *mut PerCpuPages;
        let ring_bytes = (topo.ncpus * ring_words * 4) as u64;
        let at = mb
            .alloc(mem, ring_bytes.max(4), 64, PhysAddr(0))
            .map_err(InitError::MemMap)?;
        let mut ring = mem.phys_to_ptr(at) as *mut u32;
        for c in 0..topo.ncpus {
            // SAFETY: memblock reserved ncpus × per_cpu lists at pcp_base.
            let base = unsafe { pcp_base.add(c * per_cpu) };
            let mut set = PcpSet::EMPTY;
            for (i, &sl) in slot.iter().enumerate() {
                if sl == NO_SLOT {
                    continue;
                }
                // SAFETY: the rings of this CPU and zone: caps[i] words,
                // carved in order out of the ncpus × ring_words reserved.
                unsafe {
                    set.ptr[i] = base.add(sl as usize);
                    set.ptr[i].write(PerCpuPages::with_rings(ring, &caps[i]));
                    ring = ring.add(caps[i].iter().sum::<u32>() as usize);
                }
            }
            self.cpus[c].get_mut().pcp = set;
        }

        let total_free = mb.free_pages();
        self.grouping = grouping.unwrap_or(total_free >= MAX_ORDER_NR_PAGES * MIGRATE_TYPES as u64);
        self.mt_of = core::array::from_fn(|bits| {
            if self.grouping {
                Gfp((bits as u32) << Gfp::MOBILITY_SHIFT).migratetype()
            } else {
                MigrateType::Unmovable
            }
        });
        let initial_mt = if self.grouping {
            MigrateType::Movable
        } else {
            MigrateType::Unmovable
        };
        let mut pb = min_pfn;
        while pb < max_pfn {
            let idx = self.map.idx(pb);
            // SAFETY: `&mut self`: init owns every descriptor.
            unsafe { self.map.at(idx) }.pageblock_mt = initial_mt as u8;
            pb += PAGEBLOCK_NR_PAGES;
        }

        // Hand every free page to its zone's buddy lists.
        for (s, e) in mb.free_ranges() {
            let (mut pfn, end) = (s.0 / PAGE_SIZE, e.0 / PAGE_SIZE);
            while pfn < end {
                let Some(z) = self.zone_index_of(pfn) else {
                    pfn += 1;
                    continue;
                };
                let zend = end.min(self.zones[z].end_pfn);
                let mut order = (pfn.trailing_zeros() as usize).min(MAX_ORDER);
                while order > 0 && pfn + (1 << order) > zend {
                    order -= 1;
                }
                // Only the flags: a pageblock's first descriptor also holds
                // the pageblock's migrate type, set above.
                self.map.clear_flags(self.map.idx(pfn), 1 << order);
                let zone = &self.zones[z];
                let mut area = zone.free.lock();
                let mut b = zone.buddy(&self.map, &mut area, self.grouping);
                let mt = b.pageblock_mt(pfn);
                b.free_one(self.map.idx(pfn), order, mt);
                drop(area);
                zone.vm_free.add_global(1 << order);
                self.zones[z].managed_pages += 1 << order;
                pfn += 1 << order;
            }
        }
        self.total_managed = self.zones.iter().map(|z| z.managed_pages).sum();
        if self.total_managed == 0 {
            return Err(InitError::NoMemory);
        }
        self.setup_watermarks();
        self.setup_pcp();
        self.build_zonelists();
        Ok(())
    }

    /// Watermarks and lowmem reserves for every zone (seed 2.2.4).
    fn setup_watermarks(&mut self) {
        let total = self.total_managed;
        for z in self.zones.iter_mut() {
            z.watermark = zone::zone_watermarks(z.managed_pages, total);
            let threshold = crate::vmstat::stat_threshold(self.topo.ncpus, z.managed_pages);
            z.vm_free.configure(threshold, self.topo.ncpus);
        }
        // A lower zone keeps back (managed pages of the zones above it, up
        // to the allocation's highest zone) / ratio (setup_per_zone_lowmem_reserve).
        for node in 0..self.topo.nr_nodes {
            for lower in 0..MAX_NR_ZONES {
                let mut sum = 0;
                for upper in lower + 1..MAX_NR_ZONES {
                    sum += self.zones[node * MAX_NR_ZONES + upper].managed_pages;
                    let ratio = zone::LOWMEM_RESERVE_RATIO[lower];
                    self.zones[node * MAX_NR_ZONES + lower].lowmem_reserve[upper] = sum / ratio;
                }
            }
        }
        for z in self.zones.iter_mut() {
            z.set_fast_low_mark();
        }
    }

    fn setup_pcp(&mut self) {
        for (i, z) in self.zones.iter_mut().enumerate() {
            let local = (0..self.topo.ncpus)
                .filter(|&c| self.topo.cpu_node[c] as usize == z.node)
                .count();
            z.pcp_batch = pcp::zone_batchsize(z.managed_pages);
            z.pcp_high = pcp::zone_highsize(z.watermark[WMARK_LOW], z.pcp_batch, local as u32);
            for c in self.cpus.iter_mut().take(self.topo.ncpus) {
                let set = &mut c.get_mut().pcp;
                if set.has(i) {
                    set[i].batch = z.pcp_batch;
                    set[i].high = z.pcp_high;
                }
            }
        }
    }

    fn build_zonelists(&mut self) {
        let mut populated = [[false; MAX_NR_ZONES]; MAX_NUMNODES];
        for (i, z) in self.zones.iter().enumerate() {
            populated[i / MAX_NR_ZONES][i % MAX_NR_ZONES] = z.populated();
            if z.populated() {
                self.policy_zone = self.policy_zone.max(z.kind);
            }
        }
        // Shared load spreads equidistant fallbacks across nodes as Linux's
        // node_load does.
        let mut load = crate::zonelist::NodeLoad::new();
        for node in 0..self.topo.nr_nodes {
            self.fallback[node] = Zonelist::build_fallback_balanced(
                node,
                &self.topo.distances,
                &populated,
                &mut load,
            );
            self.thisnode[node] = Zonelist::build_thisnode(node, &populated);
            for highest in ZoneType::ALL {
                // Only a local zone: the fast paths serve THISNODE requests
                // too, and a node without memory sends everything the full
                // way.
                self.preferred[node][highest as usize] = self.fallback[node]
                    .zones_for(highest, None)
                    .next()
                    .filter(|zr| zr.node as usize == node)
                    .map_or(NO_SLOT, |zr| zid(zr.node as usize, zr.zone) as u8);
            }
        }
    }

    /// Plugs in kswapd, reclaim and compaction (see [`ReclaimHooks`]).
    pub fn set_hooks(&mut self, hooks: &'static dyn ReclaimHooks) {
        self.hooks = hooks;
    }

    fn zone_index_of(&self, pfn: u64) -> Option<usize> {
        self.zones
            .iter()
            .position(|z| z.contains(pfn) && z.end_pfn > z.start_pfn)
    }

    /// The node whose zone holds `pfn`, if any (Linux's `page_to_nid`).
    pub fn node_of(&self, pfn: Pfn) -> Option<usize> {
        self.zone_index_of(pfn.0).map(|z| self.zones[z].node)
    }

    pub fn zone(&self, node: usize, kind: ZoneType) -> &Zone {
        &self.zones[zid(node, kind)]
    }
    pub fn zones(&self) -> impl Iterator<Item = &Zone> {
        self.zones.iter().filter(|z| z.populated())
    }
    pub fn grouping_by_mobility(&self) -> bool {
        self.grouping
    }
    pub fn topology(&self) -> &Topology {
        &self.topo
    }
    pub fn total_managed_pages(&self) -> u64 {
        self.total_managed
    }
    pub fn mem_map(&self) -> &MemMap {
        &self.map
    }
    pub fn zonelist(&self, node: usize, thisnode: bool) -> &Zonelist {
        if thisnode {
            &self.thisnode[node]
        } else {
            &self.fallback[node]
        }
    }

    /// This CPU's allocation context: locks its per-CPU lists until dropped.
    pub fn cpu(&self, cpu: usize) -> CpuCache<'_> {
        assert!(cpu < self.topo.ncpus, "cpu {cpu} out of range");
        let node = self.topo.cpu_node[cpu] as usize;
        CpuCache {
            a: self,
            cpu,
            node,
            preferred: self.preferred[node],
            pages: self.cpus[cpu].lock(),
        }
    }

    /// One-shot allocation on `cpu`'s local node.
    pub fn alloc_pages(&self, cpu: usize, gfp: Gfp, order: usize) -> Option<Pfn> {
        self.cpu(cpu).alloc(gfp, order)
    }

    pub fn free_pages(&self, cpu: usize, pfn: Pfn, order: usize) -> Result<(), FreeError> {
        self.cpu(cpu).free(pfn, order)
    }

    /// Pages free in the buddy lists of all zones (not counting per-CPU lists).
    pub fn free_pages_buddy(&self) -> u64 {
        self.zones().map(|z| z.free_pages()).sum()
    }

    /// Pages on all per-CPU lists. Takes every CPU lock in turn.
    pub fn pcp_pages(&self) -> u64 {
        (0..self.topo.ncpus)
            .map(|c| {
                self.cpus[c]
                    .lock()
                    .pcp
                    .iter()
                    .map(|p| p.count as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Event counters summed over CPUs.
    pub fn events(&self) -> EventCounters {
        let mut e = EventCounters::new();
        for c in 0..self.topo.ncpus {
            e.merge(&self.cpus[c].lock().event_counts());
        }
        e.add(
            VmEvent::KcompactdWake,
            self.kcompactd_wakes.load(Ordering::Relaxed),
        );
        e.add(VmEvent::PgFree, self.hook_frees.load(Ordering::Relaxed));
        e
    }

    /// The /proc/pagetypeinfo view of one zone.
    pub fn pagetypeinfo(&self, node: usize, kind: ZoneType) -> FreeAreaCounts {
        let area = self.zones[zid(node, kind)].free.lock();
        let mut c = FreeAreaCounts::new();
        for o in 0..NR_ORDERS {
            for mt in 0..MIGRATE_TYPES {
                c.blocks[o][mt] = area.lists[o][mt].count;
            }
        }
        c
    }

    /// Pageblocks of each migrate type in a zone.
    pub fn pageblock_counts(&self, node: usize, kind: ZoneType) -> [u64; MIGRATE_TYPES] {
        let z = &self.zones[zid(node, kind)];
        let mut n = [0; MIGRATE_TYPES];
        if !z.populated() {
            return n;
        }
        // Pageblock types change under the zone lock only.
        let _area = z.free.lock();
        let mut pb = z.start_pfn & !(PAGEBLOCK_NR_PAGES - 1);
        while pb < z.end_pfn {
            let idx = self.map.idx(pb.max(self.map.start_pfn()));
            // SAFETY: the zone lock, held, owns the zone's pageblock types.
            n[unsafe { self.map.at(idx) }.pageblock_mt as usize] += 1;
            pb += PAGEBLOCK_NR_PAGES;
        }
        n
    }

    /// Checks that `pfn` heads a block allocated with `order`; returns its
    /// descriptor index and zone. The common case is one compare on the
    /// descriptor; the error cases are then told apart.
    #[inline(always)]
    fn check_free(&self, pfn: Pfn, order: usize) -> Result<(u32, usize), FreeError> {
        // SAFETY: the descriptor is dropped at once; only copies are kept.
        unsafe { self.check_free_page(pfn, order) }.map(|(idx, z, _)| (idx, z))
    }

    /// [`Self::check_free`], also handing out the descriptor, so the fast
    /// free path writes it without looking it up again.
    ///
    /// # Safety
    /// The caller is handing the block at `pfn` back (it owns it, so once
    /// the check passes nobody else reads or writes the head's descriptor)
    /// and keeps no other reference to that descriptor while it uses the
    /// one returned. (A bad free of a page that is on a list races with
    /// that list's lock holder here, as Linux's free checks do; that is
    /// the caller's bug this check is there to report.)
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    unsafe fn check_free_page(
        &self,
        pfn: Pfn,
        order: usize,
    ) -> Result<(u32, usize, &mut Page), FreeError> {
        let map = &self.map;
        let Some(idx) = map.try_idx(pfn.0) else {
            return Err(FreeError::Foreign(pfn));
        };
        // SAFETY: try_idx checked idx against the array's length; the
        // descriptor is the one the caller hands back (this fn's contract).
        let page = unsafe { map.at_unchecked(idx) };
        // Only the head of an allocated block carries PG_ALLOC, with the
        // block's order (at most MAX_ORDER), and blocks are aligned to their
        // order: so this one compare is also the order-range and alignment
        // check (a misaligned pfn is a tail page or a smaller block's head).
        if page.flags_order() == Page::allocated_head(order) && (page.next as usize) < MAX_ZONES {
            debug_assert!(pfn.0 & ((1 << order) - 1) == 0);
            let z = page.next as usize;
            return Ok((idx, z, page));
        }
        Err(Self::free_error(page, pfn, order))
    }

    /// Tells the bad-free cases apart (off the fast path).
    #[cold]
    #[inline(never)]
    fn free_error(page: &Page, pfn: Pfn, order: usize) -> FreeError {
        if order > MAX_ORDER {
            FreeError::Foreign(pfn)
        } else if page.flags & PG_RESERVED != 0 {
            FreeError::Reserved(pfn)
        } else if pfn.0 & ((1 << order) - 1) != 0 {
            FreeError::Misaligned {
                pfn,
                order: order as u8,
            }
        } else if page.flags & PG_ALLOC == 0 {
            FreeError::NotAllocated(pfn)
        } else if page.order as usize != order {
            FreeError::WrongOrder {
                pfn,
                allocated: page.order,
                freed: order as u8,
            }
        } else {
            FreeError::Foreign(pfn)
        }
    }

    /// The migrate type a request is served as: its mobility class, or
    /// Unmovable for everything when grouping by mobility is off (Linux's
    /// gfp_migratetype; otherwise the per-type free lists would still group).
    #[inline(always)]
    pub fn migratetype(&self, gfp: Gfp) -> MigrateType {
        self.mt_of[gfp.mobility_bits()]
    }

    /// Migrate type of the pageblock holding `pfn` (which the map covers;
    /// the map starts on a MAX_ORDER boundary, so the pageblock's first page
    /// is in it too).
    #[inline(always)]
    pub fn pageblock_mt(&self, pfn: u64) -> MigrateType {
        let idx = self.map.idx(pfn & !(PAGEBLOCK_NR_PAGES - 1));
        // SAFETY: a one-byte read without the zone lock, copied out at
        // once, as Linux's get_pageblock_migratetype does on the free path:
        // a stale type only puts a block on a sibling list (see
        // `free_checked`).
        MigrateType::from_index(unsafe { self.map.at(idx) }.pageblock_mt as usize)
    }

    /// [`Self::pageblock_mt`] by descriptor index, without a bounds check.
    ///
    /// # Safety
    /// `idx` is in the descriptor array (so is its pageblock's first
    /// descriptor, which is at or below it).
    #[inline(always)]
    unsafe fn pageblock_mt_of_idx(&self, idx: u32) -> MigrateType {
        let head = idx & !(PAGEBLOCK_NR_PAGES as u32 - 1);
        // SAFETY: head <= idx, which the caller guarantees is in the array.
        let head = unsafe { self.map.at_unchecked(head) };
        MigrateType::from_index(head.pageblock_mt as usize)
    }

    /// Zone lock acquisitions so far, all zones.
    pub fn zone_lock_acquisitions(&self) -> u64 {
        self.zones().map(|z| z.free.lock().lock_acquisitions).sum()
    }

    /// Drains every CPU's lists for `zone` (or all zones) back to the buddy
    /// lists, CPUs holding pages only (seed 2.2.5.2). The draining CPU does
    /// the work itself, so idle and halted vCPUs need not run; a CPU that is
    /// inside an allocation burst (its [`CpuCache`] held) is asked to drain
    /// itself when the burst ends instead of being waited for, which keeps
    /// two CPUs draining each other from deadlocking. Call with no
    /// [`CpuCache`] held by the caller (use [`CpuCache::drain_all`] then).
    /// Returns the number of CPUs drained now.
    pub fn drain_all_pages(&self, zone: Option<(usize, ZoneType)>) -> usize {
        (0..self.topo.ncpus)
            .filter(|&c| self.drain_remote(c, zone))
            .count()
    }

    fn drain_remote(&self, c: usize, zone: Option<(usize, ZoneType)>) -> bool {
        match self.cpus[c].try_lock() {
            Some(mut pages) => self.drain_cpu(c, &mut pages, zone),
            None => {
                self.drain_requested[c].store(true, Ordering::Release);
                false
            }
        }
    }

    /// Gives `cpu`'s per-CPU pages back and folds its free-count
    /// differentials, so after a drain the zone's folded count is exact as
    /// far as this CPU is concerned (Linux folds a CPU's vmstat
    /// differentials when it drains it for going offline).
    fn drain_cpu(&self, cpu: usize, pages: &mut CpuPages, zone: Option<(usize, ZoneType)>) -> bool {
        let mut any = false;
        for i in 0..MAX_ZONES {
            if zone.is_some_and(|(n, k)| zid(n, k) != i)
                || !pages.pcp.has(i)
                || pages.pcp[i].count == 0
            {
                continue;
            }
            any = true;
            let n = pages.pcp[i].count;
            self.free_pcp_bulk(cpu, &mut pages.pcp[i], i, n, 0);
            pages.events.inc(VmEvent::PcpDrain);
        }
        for (i, z) in self.zones.iter().enumerate() {
            if zone.is_none_or(|(n, k)| zid(n, k) == i) {
                z.vm_free.fold(cpu);
            }
        }
        any
    }

    /// Gives `count` pages of a CPU's lists for zone `z` back to the buddy
    /// lists under one zone lock (free_pcppages_bulk).
    fn free_pcp_bulk(
        &self,
        cpu: usize,
        pcp: &mut PerCpuPages,
        z: usize,
        count: u32,
        first: usize,
    ) -> u32 {
        let zone = &self.zones[z];
        let mut area = zone.lock();
        let mut b = zone.buddy(&self.map, &mut area, self.grouping);
        let mut run = PageRun::EMPTY;
        let freed = pcp.bulk_take(count, first, |idx, order, mt| {
            run.add(&mut b, idx, order, mt)
        });
        run.free(&mut b);
        zone.vm_free.add(cpu, freed as i64);
        freed
    }
}

/// Order-0 pages the bulk free met one after another at consecutive
/// addresses, rising or falling, of one migrate type.
///
/// Why: freeing the pages of an aligned block one at a time, with nothing
/// else freed in between, ends in exactly the state freeing the block at
/// its order does. Until its last page is freed no merge inside the block
/// can reach a buddy outside it (that needs the whole block free), so the
/// blocks the earlier pages form are on the lists only until the later
/// pages merge them away, and the last page's merge continues from the
/// whole block, as the block's own free does. A run of consecutive pages is
/// a sequence of aligned blocks, each freed completely before the next, so
/// freeing those blocks in the run's order is the same as freeing its
/// pages. Refills hand out and frees give back pages in address order, so
/// runs are common, and most of free_pcppages_bulk's per-page merging
/// (__free_one_page) is then done once per block. Blocks stop below a
/// pageblock so the merge of pageblocks keeps its isolation check.
struct PageRun {
    /// First page met; `len` pages from it in direction `dir`.
    start: u32,
    len: u32,
    /// +1 rising, -1 falling, 0 while a single page.
    dir: i32,
    mt: MigrateType,
}

impl PageRun {
    const EMPTY: PageRun = PageRun {
        start: 0,
        len: 0,
        dir: 0,
        mt: MigrateType::Unmovable,
    };

    fn start(idx: u32, mt: MigrateType) -> PageRun {
        PageRun {
            start: idx,
            len: 1,
            dir: 0,
            mt,
        }
    }

    /// The next block of a bulk free, in the order they come: joins the run
    /// or frees what the run held and starts another (blocks above order 0
    /// are freed at once). [`PageRun::free`] after the last one.
    #[inline(always)]
    fn add(&mut self, b: &mut buddy::Buddy, idx: u32, order: usize, mt: MigrateType) {
        if order == 0 {
            // Maybe inside a block freed whole later: no flags may stay.
            // SAFETY: just taken off this CPU's list (its lock is held) on
            // its way to the buddy lists, under the zone lock `b` holds.
            unsafe { b.map.at(idx) }.flags = 0;
            if self.extend(idx, mt) {
                return;
            }
        }
        self.free(b);
        if order == 0 {
            *self = PageRun::start(idx, mt);
        } else {
            b.free_one(idx, order, mt);
        }
    }

    /// Takes `idx` into the run if it is the next page of it.
    #[inline(always)]
    fn extend(&mut self, idx: u32, mt: MigrateType) -> bool {
        if self.len == 0 || mt != self.mt {
            return false;
        }
        let dir = if self.len == 1 {
            match idx.wrapping_sub(self.start) {
                1 => 1,
                u32::MAX => -1,
                _ => return false,
            }
        } else {
            self.dir
        };
        if idx != self.start.wrapping_add_signed(dir * self.len as i32) {
            return false;
        }
        self.dir = dir;
        self.len += 1;
        true
    }

    /// Frees the run as aligned blocks, in the order its pages came.
    fn free(&mut self, b: &mut buddy::Buddy) {
        if self.len == 0 {
            return;
        }
        let max = PAGEBLOCK_ORDER as u32 - 1;
        if self.dir >= 0 {
            let (mut at, end) = (self.start, self.start + self.len);
            while at < end {
                let o = at.trailing_zeros().min((end - at).ilog2()).min(max);
                b.free_one(at, o as usize, self.mt);
                at += 1 << o;
            }
        } else {
            let (lo, mut end) = (self.start + 1 - self.len, self.start + 1);
            while end > lo {
                let o = end.trailing_zeros().min((end - lo).ilog2()).min(max);
                end -= 1 << o;
                b.free_one(end, o as usize, self.mt);
            }
        }
        self.len = 0;
    }
}

/// What the steals made under one zone lock did, summed, for the counters
/// and the boost once the lock is dropped.
#[derive(Clone, Copy, Default)]
struct Steals {
    /// Blocks taken from another migrate type.
    fallbacks: u32,
    /// Pageblocks retyped.
    retyped: u32,
    /// Steals of less than a pageblock (each boosts the watermarks).
    partial: u32,
}

impl Steals {
    #[inline(always)]
    fn add(&mut self, s: buddy::StealOutcome) {
        if s.fallback {
            self.fallbacks += 1;
            self.retyped += s.retyped;
            self.partial += !s.whole_block as u32;
        }
    }
}

/// The slab allocator buys its pages here: RECLAIMABLE caches from
/// RECLAIMABLE pageblocks, the rest Unmovable (seed 2.3, row 57). Do not
/// call it on a CPU whose [`CpuCache`] the caller holds: the per-CPU lock is
/// not re-entrant.
impl crate::slab::PageProvider for PageAllocator {
    fn alloc_pages(&self, cpu: usize, order: u32, reclaimable: bool) -> Option<PhysAddr> {
        let gfp = if reclaimable {
            Gfp::KERNEL_RECLAIMABLE
        } else {
            Gfp::KERNEL
        };
        PageAllocator::alloc_pages(self, cpu, gfp, order as usize).map(|p| p.addr())
    }

    fn free_pages(
        &self,
        cpu: usize,
        addr: PhysAddr,
        order: u32,
    ) -> Result<(), crate::slab::BadPageFree> {
        PageAllocator::free_pages(self, cpu, addr.pfn(), order as usize)
            .map_err(|_| crate::slab::BadPageFree { addr, order })
    }
}

/// A CPU's allocation context (see the module doc).
pub struct CpuCache<'a> {
    a: &'a PageAllocator,
    cpu: usize,
    node: usize,
    /// This node's first zone for each highest zone (its row of
    /// `PageAllocator::preferred`, looked up on every allocation).
    preferred: [u8; MAX_NR_ZONES],
    pages: SpinLockGuard<'a, CpuPages>,
}

impl Drop for CpuCache<'_> {
    fn drop(&mut self) {
        if self.a.drain_requested[self.cpu].swap(false, Ordering::Acquire) {
            self.a.drain_cpu(self.cpu, &mut self.pages, None);
        }
    }
}

impl CpuCache<'_> {
    pub fn cpu(&self) -> usize {
        self.cpu
    }
    pub fn node(&self) -> usize {
        self.node
    }
    /// This CPU's event counts (a copy: the fast paths' counts are added
    /// on reading).
    pub fn events(&self) -> EventCounters {
        self.pages.event_counts()
    }
    pub fn pcp(&self, node: usize, kind: ZoneType) -> &PerCpuPages {
        &self.pages.pcp[zid(node, kind)]
    }

    /// Allocates 2^order pages on this CPU's node, falling back as the
    /// zonelist says.
    ///
    /// Inlined so the per-CPU-list hit costs no call; everything else is
    /// one call away, keeping the caller's frame small.
    #[inline(always)]
    pub fn alloc(&mut self, gfp: Gfp, order: usize) -> Option<Pfn> {
        if order == 0 {
            if let Some(p) = self.alloc_pcp_hit(gfp) {
                return Some(p);
            }
        }
        self.alloc_other(gfp, order)
    }

    #[inline(never)]
    fn alloc_other(&mut self, gfp: Gfp, order: usize) -> Option<Pfn> {
        let node = self.node;
        if !pcp_allowed_order(order) && order <= MAX_ORDER {
            if let Some(p) = self.alloc_buddy_hit(gfp, order) {
                return Some(p);
            }
        } else if order == 0 {
            if let Some(z) = self.fast_zone(gfp) {
                // The fast path missed only because its list was empty.
                if let Some(p) = self.alloc_refill(gfp, z, self.a.migratetype(gfp)) {
                    return Some(p);
                }
            }
        }
        self.alloc_node(gfp, order, node, None)
    }

    /// The common case of the fast path for orders the per-CPU lists do
    /// not cache: the preferred zone passes the order-aware low watermark
    /// and has a block of the request's own migrate type. That is exactly
    /// the block `get_page_from_freelist` would take there (its first
    /// attempt never sets ALLOC_HIGHATOMIC, and ALLOC_NOFRAGMENT only
    /// restricts fallback), found without the zonelist walk and the calls
    /// around it; a boosted zone, a failed watermark or an empty list of the
    /// type fall through to the full path, which redoes the check and counts
    /// what happened.
    #[inline]
    fn alloc_buddy_hit(&mut self, gfp: Gfp, order: usize) -> Option<Pfn> {
        let a = self.a;
        let highest = gfp.highest_zone();
        let z = self.preferred[highest as usize] as usize;
        let zone = a.zones.get(z)?;
        if zone.boosted.load(Ordering::Relaxed) {
            return None;
        }
        let mt = a.migratetype(gfp);
        let mut area = zone.lock();
        // The free-count half of __zone_watermark_ok at the low mark with no
        // ALLOC_HIGH/HARDER (so the mark is not lowered, and the HighAtomic
        // reserve does not count), decided exactly; the order half is the
        // block rmqueue_smallest finds: one of at least `order` in a
        // mobility class's lists.
        let bound = zone.wmark(WMARK_LOW)
            + zone.lowmem_reserve[highest as usize]
            + ((1u64 << order) - 1)
            + area.nr_reserved_highatomic;
        if !zone.vm_free.above(bound as i64) {
            return None;
        }
        let idx = zone
            .buddy(&a.map, &mut area, a.grouping)
            .rmqueue_smallest(order, mt)?;
        zone.vm_free.add(self.cpu, -(1 << order));
        drop(area);
        let ev = &mut self.pages.events;
        ev.inc(VmEvent::ZoneLockAcquire);
        ev.inc(VmEvent::NumaHit);
        Some(self.prep_new_page(idx, order, mt, z))
    }

    /// The common case of the fast path, without the zonelist walk: an
    /// order-0 page from this CPU's list for the preferred zone, which passes
    /// its low watermark. Exactly what `get_page_from_freelist` would pick,
    /// found in a few dozen instructions; anything else falls through to it.
    #[inline(always)]
    fn alloc_pcp_hit(&mut self, gfp: Gfp) -> Option<Pfn> {
        let a = self.a;
        let z = self.fast_zone(gfp)?;
        let mt = a.migratetype(gfp);
        let pindex = order_to_pindex(mt, 0);
        let pages = &mut *self.pages;
        // SAFETY: fast_zone returns a preferred zone, which is populated
        // and so has lists.
        let pcp = unsafe { pages.pcp.get_unchecked_mut(z) };
        let idx = pcp.take_head(pindex, 0)?;
        pcp.free_factor >>= 1;
        // SAFETY: a per-CPU list only ever holds indices of descriptors in
        // the map (a free checked them, or a refill took them off the
        // buddy lists); this one was just taken off this CPU's list, whose
        // lock is held, and is not yet handed out: this CPU alone holds it.
        let p = unsafe { a.map.at_unchecked(idx) };
        p.flags = PG_ALLOC;
        p.order = 0;
        p.mt = mt as u8;
        p.refcount = 1;
        p.next = z as u32;
        pages.fast_allocs += 1;
        Some(a.map.to_pfn(idx))
    }

    /// The zone the order-0 fast path serves `gfp` from: the preferred
    /// zone, if it passes the low watermark check (seed 2.2.4, row 2) with
    /// the folded free count clearing it by more than the per-CPU drift and
    /// is not boosted (a boosted zone goes the full way, which wakes
    /// kswapd).
    #[inline(always)]
    fn fast_zone(&self, gfp: Gfp) -> Option<usize> {
        let highest = gfp.highest_zone() as usize;
        let z = self.preferred[highest] as usize;
        let zone = self.a.zones.get(z)?;
        if zone.boosted.load(Ordering::Relaxed)
            || zone.vm_free.folded()
                <= zone.fast_low_mark[highest & 3] + zone.boost.load(Ordering::Relaxed) as i64
        {
            return None;
        }
        Some(z)
    }

    /// The fast path found its list empty: refill it from the preferred
    /// zone, which passed the low watermark, and take the first page. That
    /// is what get_page_from_freelist does for that zone (rmqueue_pcplist),
    /// with the flags alloc_node would pass (ALLOC_NOFRAGMENT exactly when
    /// alloc_flags_nofragment would set it: the preferred zone is Normal
    /// and its node has DMA32), without walking there again.
    #[inline(never)]
    fn alloc_refill(&mut self, gfp: Gfp, z: usize, mt: MigrateType) -> Option<Pfn> {
        let a = self.a;
        let zone = &a.zones[z];
        let mut flags = AllocFlags(AllocFlags::WMARK_LOW);
        if gfp.contains(Gfp::KSWAPD_RECLAIM) {
            flags = flags.with(AllocFlags::KSWAPD);
        }
        if zone.kind == ZoneType::Normal && a.zone(zone.node, ZoneType::Dma32).populated() {
            flags = flags.with(AllocFlags::NOFRAGMENT);
        }
        let idx = self.rmqueue_pcplist(z, 0, mt, flags)?;
        // The refill may have stolen and boosted the zone: as after
        // try_zone, this allocation wakes kswapd then (boost.rs, step 2).
        self.wake_kswapd_if_boosted(z, flags);
        self.pages.events.inc(VmEvent::NumaHit);
        Some(self.prep_new_page(idx, 0, mt, z))
    }

    /// `__alloc_pages`: the fast path over the zonelist of `node`, then the
    /// slow path.
    #[inline(never)]
    pub fn alloc_node(
        &mut self,
        gfp: Gfp,
        order: usize,
        node: usize,
        mask: Option<NodeMask>,
    ) -> Option<Pfn> {
        if order > MAX_ORDER || node >= self.a.topo.nr_nodes {
            return None;
        }
        let mut flags = AllocFlags(AllocFlags::WMARK_LOW);
        if gfp.contains(Gfp::KSWAPD_RECLAIM) {
            flags = flags.with(AllocFlags::KSWAPD);
        }
        flags = flags.with(self.nofragment_flags(gfp, node, mask));
        let idx = match self.get_page_from_freelist(gfp, order, flags, node, mask) {
            Some(i) => Some(i),
            None => self.slowpath(gfp, order, node, mask),
        };
        let Some(idx) = idx else {
            self.pages.events.inc(VmEvent::AllocFail);
            if order >= PAGEBLOCK_ORDER {
                self.pages.events.inc(VmEvent::PgAllocHugeFail);
            }
            return None;
        };
        let z = self
            .a
            .zone_index_of(self.a.map.pfn(idx))
            .expect("allocated page in a zone");
        Some(self.prep_new_page(idx, order, self.a.migratetype(gfp), z))
    }

    /// ALLOC_NOFRAGMENT when the preferred zone is Normal and the node has a
    /// populated DMA32 below it (alloc_flags_nofragment, seed 2.2.6).
    fn nofragment_flags(&self, gfp: Gfp, node: usize, mask: Option<NodeMask>) -> AllocFlags {
        let zl = self.a.zonelist(node, gfp.contains(Gfp::THISNODE));
        match zl.zones_for(gfp.highest_zone(), mask).next() {
            Some(zr)
                if zr.zone == ZoneType::Normal
                    && self.a.zone(zr.node as usize, ZoneType::Dma32).populated() =>
            {
                AllocFlags::NOFRAGMENT
            }
            _ => AllocFlags::default(),
        }
    }

    /// The fast path (get_page_from_freelist): walk the zonelist, take the
    /// first zone whose watermark allows it. Nothing else: no reclaim, no
    /// compaction (seed 2.2.1, row 2).
    fn get_page_from_freelist(
        &mut self,
        gfp: Gfp,
        order: usize,
        mut flags: AllocFlags,
        node: usize,
        mask: Option<NodeMask>,
    ) -> Option<u32> {
        let a = self.a;
        let highest = gfp.highest_zone();
        let mt = self.a.migratetype(gfp);
        let zl = a.zonelist(node, gfp.contains(Gfp::THISNODE));
        loop {
            let mut first = true;
            for zr in zl.zones_for(highest, mask) {
                let z = zid(zr.node as usize, zr.zone);
                // A remote zone is never worth avoiding fragmentation for:
                // retry locally without ALLOC_NOFRAGMENT first.
                if flags.has(AllocFlags::NOFRAGMENT) && zr.node as usize != node {
                    break;
                }
                if let Some(idx) = self.try_zone(z, order, mt, flags, highest) {
                    self.wake_kswapd_if_boosted(z, flags);
                    let ev = &mut self.pages.events;
                    if !first {
                        ev.inc(VmEvent::ZoneFallback);
                    }
                    ev.inc(if zr.node as usize == node {
                        VmEvent::NumaHit
                    } else {
                        VmEvent::NumaMiss
                    });
                    return Some(idx);
                }
                first = false;
            }
            if !flags.has(AllocFlags::NOFRAGMENT) {
                return None;
            }
            flags = flags.without(AllocFlags::NOFRAGMENT);
            self.pages.events.inc(VmEvent::NoFragmentRetry);
        }
    }

    /// Watermark check plus rmqueue for one zone.
    fn try_zone(
        &mut self,
        z: usize,
        order: usize,
        mt: MigrateType,
        flags: AllocFlags,
        highest: ZoneType,
    ) -> Option<u32> {
        let a = self.a;
        let zone = &a.zones[z];
        if !zone.populated() {
            return None;
        }
        let check = !flags.has(AllocFlags::NO_WATERMARKS);
        // Atomic order-0 requests at the min mark ignore the boost (seed
        // 2.2.4): a boost exists to make kswapd work ahead, not to fail
        // interrupt-time allocations.
        let mark = if order == 0 && flags.has(AllocFlags::HARDER) && flags.wmark() == WMARK_MIN {
            zone.watermark[WMARK_MIN]
        } else {
            zone.wmark(flags.wmark())
        };
        if pcp_allowed_order(order) && !flags.has(AllocFlags::HIGHATOMIC) {
            if check && order == 0 && !zone::watermark_fast_order0(zone, mark, highest, flags) {
                self.pages.events.inc(VmEvent::WatermarkFail);
                return None;
            }
            if check && order > 0 {
                let area = zone.lock();
                let free = zone.free_for_check(&area, order, mark, highest);
                if !zone::watermark_ok(zone, &area, order, mark, highest, flags, free) {
                    drop(area);
                    self.pages.events.inc(VmEvent::WatermarkFail);
                    return None;
                }
            }
            return self.rmqueue_pcplist(z, order, mt, flags);
        }
        self.rmqueue_buddy(z, order, mt, flags, check.then_some(mark), highest)
    }

    /// One block straight from a zone's buddy lists, the watermark (if
    /// any) checked under the same zone lock (rmqueue_buddy).
    fn rmqueue_buddy(
        &mut self,
        z: usize,
        order: usize,
        mt: MigrateType,
        flags: AllocFlags,
        mark: Option<u64>,
        highest: ZoneType,
    ) -> Option<u32> {
        let a = self.a;
        let zone = &a.zones[z];
        let mut area = zone.lock();
        self.pages.events.inc(VmEvent::ZoneLockAcquire);
        if mark.is_some_and(|m| {
            let free = zone.free_for_check(&area, order, m, highest);
            !zone::watermark_ok(zone, &area, order, m, highest, flags, free)
        }) {
            drop(area);
            self.pages.events.inc(VmEvent::WatermarkFail);
            return None;
        }
        let mut b = zone.buddy(&a.map, &mut area, a.grouping);
        let (idx, steal) = b.rmqueue(order, mt, flags);
        if let Some(i) = idx {
            if order > 0
                && flags.has(AllocFlags::HIGHATOMIC)
                && b.reserve_highatomic(a.map.pfn(i), zone.managed_pages)
            {
                self.pages.events.inc(VmEvent::HighAtomicReserve);
            }
            zone.vm_free.add(self.cpu, -(1 << order));
        }
        drop(area);
        self.account_steal(zone, steal);
        idx
    }

    /// Gives one HighAtomic pageblock of the zonelist's zones back to `mt`
    /// (see `Buddy::unreserve_highatomic`); true if one was.
    pub(super) fn unreserve_highatomic(&mut self, node: usize, gfp: Gfp, force: bool) -> bool {
        let a = self.a;
        let mt = a.migratetype(gfp);
        for zr in a.zonelist(node, false).zones_for(gfp.highest_zone(), None) {
            let zone = &a.zones[zid(zr.node as usize, zr.zone)];
            let mut area = zone.lock();
            if area.nr_reserved_highatomic == 0 {
                continue;
            }
            let mut b = zone.buddy(&a.map, &mut area, a.grouping);
            if b.unreserve_highatomic(mt, force) {
                drop(area);
                self.pages.events.inc(VmEvent::HighAtomicUnreserve);
                return true;
            }
        }
        false
    }

    fn account_steal(&mut self, zone: &Zone, steal: buddy::StealOutcome) {
        let mut s = Steals::default();
        s.add(steal);
        if s.fallbacks > 0 {
            self.account_steals(zone, s);
        }
    }

    /// Counts the steals made under one zone lock, every one of them, and
    /// boosts the zone once for each that took less than a pageblock (an
    /// external-fragmentation event, seed 2.2.6).
    fn account_steals(&mut self, zone: &Zone, s: Steals) {
        let ev = &mut self.pages.events;
        ev.add(VmEvent::PgAllocFallback, s.fallbacks as u64);
        ev.add(VmEvent::PgRetypeBlock, s.retyped as u64);
        ev.add(VmEvent::PgStealWholeBlock, (s.fallbacks - s.partial) as u64);
        for _ in 0..s.partial {
            if zone.boost_watermark() {
                ev.inc(VmEvent::WatermarkBoost);
            }
        }
    }

    /// Pops from this CPU's list, refilling `batch` blocks under one zone
    /// lock when it is empty (rmqueue_pcplist / rmqueue_bulk).
    #[inline]
    fn rmqueue_pcplist(
        &mut self,
        z: usize,
        order: usize,
        mt: MigrateType,
        flags: AllocFlags,
    ) -> Option<u32> {
        let a = self.a;
        let pindex = order_to_pindex(mt, order);
        let pcp = &mut self.pages.pcp[z];
        pcp.free_factor >>= 1;
        if let Some(idx) = pcp.pop_head(&a.map, pindex, order) {
            self.pages.events.inc(VmEvent::PcpAllocHit);
            return Some(idx);
        }
        let batch = if order == 0 {
            pcp.batch
        } else {
            (pcp.batch >> order).max(2)
        };
        let zone = &a.zones[z];
        let mut area = zone.lock();
        let mut b = zone.buddy(&a.map, &mut area, a.grouping);
        let mut steals = Steals::default();
        // The type's own blocks in one go; what they cannot supply block by
        // block, which may steal from other types.
        let room = pcp.lists[pindex].room();
        let mut got = b.rmqueue_bulk(order, mt, batch.min(room), |idx, p| {
            let pushed = pcp.put_tail(pindex, idx, order);
            debug_assert!(pushed);
            // Fresh from a free block: no flags to keep.
            p.flags = PG_PCP;
            p.order = order as u8;
            p.mt = mt as u8;
        }) as u64;
        while got < batch as u64 {
            let (idx, steal) = b.rmqueue(order, mt, flags);
            steals.add(steal);
            let Some(idx) = idx else { break };
            if !pcp.push_tail(&a.map, pindex, idx, order, mt) {
                // Ring full (lists far past high): the page goes back.
                b.free_one(idx, order, mt);
                break;
            }
            got += 1;
        }
        zone.vm_free.add(self.cpu, -((got as i64) << order));
        drop(area);
        let ev = &mut self.pages.events;
        ev.inc(VmEvent::PcpRefill);
        ev.inc(VmEvent::ZoneLockAcquire);
        if steals.fallbacks > 0 {
            self.account_steals(zone, steals);
        }
        self.pages.pcp[z].pop_head(&a.map, pindex, order)
    }

    /// Marks an allocated block's head; its unused list link remembers the
    /// zone so the free needs no search.
    #[inline(always)]
    fn prep_new_page(&mut self, idx: u32, order: usize, mt: MigrateType, z: usize) -> Pfn {
        // SAFETY: the block was just taken off a list under its lock and
        // is not yet handed out: this CPU alone holds it.
        let p = unsafe { self.a.map.at(idx) };
        p.flags = PG_ALLOC;
        p.order = order as u8;
        p.mt = mt as u8;
        p.refcount = 1;
        p.next = z as u32;
        let ev = &mut self.pages.events;
        ev.add(VmEvent::PgAlloc, 1 << order);
        if order > 0 {
            ev.inc(VmEvent::PgAllocHighOrder);
            if order >= PAGEBLOCK_ORDER {
                ev.inc(VmEvent::PgAllocHuge);
            }
        }
        self.a.map.to_pfn(idx)
    }

    /// Frees a block allocated with `order`, after checking it really is one
    /// (seed 2.2.1: merge with the free buddy; order ≤ 3 via the per-CPU lists).
    #[inline(always)]
    pub fn free(&mut self, pfn: Pfn, order: usize) -> Result<(), FreeError> {
        // SAFETY: this call hands the block back (a block the caller does
        // not own is a bad free, reported when it is not an allocated
        // head); `page` is used only by the fast free below.
        let (idx, z, page) = unsafe { self.a.check_free_page(pfn, order) }?;
        if order == 0 && self.free_pcp_hit(idx, page, z) {
            return Ok(());
        }
        if !pcp_allowed_order(order) {
            self.free_large(idx, order, z);
        } else {
            self.free_checked(idx, pfn, order, z);
        }
        Ok(())
    }

    /// The common free: a checked order-0 page onto this CPU's list for its
    /// pageblock's type, when there is room and the type has a list.
    #[inline(always)]
    fn free_pcp_hit(&mut self, idx: u32, page: &mut Page, z: usize) -> bool {
        let a = self.a;
        // SAFETY: check_free found idx in the array (the only caller).
        let block_mt = unsafe { a.pageblock_mt_of_idx(idx) };
        if block_mt as usize >= crate::mmzone::MIGRATE_PCPTYPES {
            return false;
        }
        let pages = &mut *self.pages;
        // SAFETY: z is the zone check_free_page read from an allocated
        // head, where the allocation wrote the zone it came from (the two
        // places that set PG_ALLOC write it): a populated zone, with lists.
        let pcp = unsafe { pages.pcp.get_unchecked_mut(z) };
        if !pcp.put_head(block_mt as usize, idx, 0) {
            return false;
        }
        // Cached, order 0 as checked; the list it is on gives its type.
        page.flags = PG_PCP;
        page.refcount = 0;
        pages.fast_frees += 1;
        if pcp.count >= pcp.high {
            self.pcp_over_high(z, block_mt as usize);
        }
        true
    }

    #[cold]
    #[inline(never)]
    fn pcp_over_high(&mut self, z: usize, pindex: usize) {
        let a = self.a;
        let pages = &mut *self.pages;
        let pcp = &mut pages.pcp[z];
        let n = pcp.nr_to_free();
        a.free_pcp_bulk(self.cpu, pcp, z, n, pindex);
        pages.events.inc(VmEvent::PcpFreeBatch);
        pages.events.inc(VmEvent::ZoneLockAcquire);
    }

    /// Every other free of a checked block.
    #[inline(never)]
    fn free_checked(&mut self, idx: u32, pfn: Pfn, order: usize, z: usize) {
        let a = self.a;
        let map = &a.map;
        self.release_head(idx, order);
        // Reading the pageblock type without the zone lock races with
        // stealing, as in Linux; the worst outcome is a block on a sibling list.
        let block_mt = a.pageblock_mt(pfn.0);
        if pcp_allowed_order(order) && block_mt != MigrateType::Isolate {
            // HighAtomic blocks are cached on the Movable list (free_unref_page).
            let mt = if (block_mt as usize) < crate::mmzone::MIGRATE_PCPTYPES {
                block_mt
            } else {
                MigrateType::Movable
            };
            let pindex = order_to_pindex(mt, order);
            let pages = &mut *self.pages;
            let pcp = &mut pages.pcp[z];
            if !pcp.push_head(map, pindex, idx, order, mt) {
                // Ring full: give the coldest half back first.
                let n = pcp.lists[pindex].len() / 2;
                a.free_pcp_bulk(self.cpu, pcp, z, n << order, pindex);
                let pushed = pcp.push_head(map, pindex, idx, order, mt);
                debug_assert!(pushed);
            }
            pages.events.inc(VmEvent::PcpFreeHit);
            if pcp.count >= pcp.high {
                self.pcp_over_high(z, pindex);
            }
            return;
        }
        self.free_to_buddy(z, idx, order, block_mt);
    }

    /// The free of a checked block the per-CPU lists do not cache: straight
    /// to the buddy lists, in one call.
    #[inline(never)]
    fn free_large(&mut self, idx: u32, order: usize, z: usize) {
        // The buddy free rewrites the flags; only the reference goes here.
        // SAFETY: check_free found idx in the array.
        unsafe { self.a.map.at_unchecked(idx) }.refcount = 0;
        self.pages.events.add(VmEvent::PgFree, 1 << order);
        // A block of a pageblock or more goes to its pageblock's type
        // whatever it is freed as (free_one looks it up after merging).
        let mt = if order >= PAGEBLOCK_ORDER {
            MigrateType::Movable
        } else {
            // SAFETY: check_free found idx in the array.
            unsafe { self.a.pageblock_mt_of_idx(idx) }
        };
        self.free_to_buddy(z, idx, order, mt);
    }

    /// Clears the allocated mark of a checked block and counts the free.
    #[inline(always)]
    fn release_head(&mut self, idx: u32, order: usize) {
        // SAFETY: `check_free` vouched for an allocated head, whose owner
        // is handing it back through this call.
        let page = unsafe { self.a.map.at(idx) };
        page.flags &= !PG_ALLOC;
        page.refcount = 0;
        self.pages.events.add(VmEvent::PgFree, 1 << order);
    }

    /// Gives a block to its zone's buddy lists under the zone lock.
    #[inline(always)]
    fn free_to_buddy(&mut self, z: usize, idx: u32, order: usize, mt: MigrateType) {
        let a = self.a;
        let zone = &a.zones[z];
        let mut area = zone.lock();
        let mut b = zone.buddy(&a.map, &mut area, a.grouping);
        b.free_one(idx, order, mt);
        zone.vm_free.add(self.cpu, 1 << order);
        drop(area);
        self.pages.events.inc(VmEvent::ZoneLockAcquire);
    }

    /// Allocates up to `out.len()` order-0 pages in one go (alloc_pages_bulk,
    /// seed 2.2.5.4): one watermark check, then the per-CPU list, refilled a
    /// batch per zone lock. Returns how many were allocated.
    pub fn alloc_bulk(&mut self, gfp: Gfp, out: &mut [Pfn]) -> usize {
        let node = self.node();
        let a = self.a;
        let highest = gfp.highest_zone();
        let mt = self.a.migratetype(gfp);
        let zl = a.zonelist(node, gfp.contains(Gfp::THISNODE));
        let mut n = 0;
        for zr in zl.zones_for(highest, None) {
            let z = zid(zr.node as usize, zr.zone);
            let zone = &a.zones[z];
            let mark = zone.wmark(WMARK_LOW) + (out.len() - n) as u64;
            if !zone.populated()
                || !zone::watermark_fast_order0(zone, mark, highest, AllocFlags::default())
            {
                continue;
            }
            while n < out.len() {
                let Some(idx) = self.rmqueue_pcplist(z, 0, mt, AllocFlags::default()) else {
                    break;
                };
                out[n] = self.prep_new_page(idx, 0, mt, z);
                n += 1;
            }
            if n == out.len() {
                break;
            }
        }
        if n == 0 && !out.is_empty() {
            // Nothing through the fast route: one regular allocation, which
            // may enter the slow path.
            if let Some(p) = self.alloc(gfp, 0) {
                out[0] = p;
                n = 1;
            }
        }
        n
    }

    /// Allocation that skips the per-CPU lists: straight from the buddy
    /// lists under the zone lock (what `order-0 buddy` benchmarks, and what
    /// Linux does for orders above PAGE_ALLOC_COSTLY_ORDER).
    pub fn alloc_direct(&mut self, gfp: Gfp, order: usize) -> Option<Pfn> {
        let a = self.a;
        let mt = a.migratetype(gfp);
        let highest = gfp.highest_zone();
        for zr in a
            .zonelist(self.node, gfp.contains(Gfp::THISNODE))
            .zones_for(highest, None)
        {
            let z = zid(zr.node as usize, zr.zone);
            let zone = &a.zones[z];
            if !zone.populated() {
                continue;
            }
            let flags = AllocFlags(AllocFlags::WMARK_LOW);
            if let Some(idx) =
                self.rmqueue_buddy(z, order, mt, flags, Some(zone.wmark(WMARK_LOW)), highest)
            {
                return Some(self.prep_new_page(idx, order, mt, z));
            }
        }
        None
    }

    /// Frees without the per-CPU lists (pairs with `alloc_direct`).
    pub fn free_direct(&mut self, pfn: Pfn, order: usize) -> Result<(), FreeError> {
        // Validation is shared with `free`; orders above the pcp limit
        // already take the direct route there.
        if pcp_allowed_order(order) {
            let (idx, z) = self.a.check_free(pfn, order)?;
            self.release_head(idx, order);
            self.free_to_buddy(z, idx, order, self.a.pageblock_mt(pfn.0));
            return Ok(());
        }
        self.free(pfn, order)
    }

    /// Allocates under a memory policy (seed 2.2.3): the attempts of
    /// `mempolicy::plan`, in order; PREFERRED_MANY's first attempt neither
    /// reclaims nor warns, its second drops the node set.
    pub fn alloc_policy(
        &mut self,
        gfp: Gfp,
        order: usize,
        policy: &Policy,
        il: &mut InterleaveState,
    ) -> Option<Pfn> {
        let plan = mempolicy::plan(policy, self.node(), il, &self.a.topo.distances);
        // A node set binds only requests that may use the policy zone: a
        // DMA32-limited request ignores it, since the set's nodes may have
        // no low memory at all ([NOT IN SEED]: Linux's apply_policy_zone).
        let bound = mempolicy::policy_applies_to_zone(gfp.highest_zone(), self.a.policy_zone);
        for att in plan.iter() {
            let mask = if bound { att.nodemask } else { None };
            let g = if att.no_reclaim_nowarn {
                gfp.without(Gfp::DIRECT_RECLAIM).union(Gfp::NOWARN)
            } else {
                gfp
            };
            if let Some(p) = self.alloc_node(g, order, att.zonelist_node, mask) {
                return Some(p);
            }
        }
        None
    }

    /// Drains all CPUs' lists (this one through the held guard).
    pub fn drain_all(&mut self, zone: Option<(usize, ZoneType)>) -> usize {
        let a = self.a;
        let mut drained = 0;
        for c in 0..a.topo.ncpus {
            let ok = if c == self.cpu {
                a.drain_cpu(self.cpu, &mut self.pages, zone)
            } else {
                a.drain_remote(c, zone)
            };
            drained += ok as usize;
        }
        drained
    }
}

#[cfg(test)]
mod pcp_tests;
#[cfg(test)]
mod slowpath_tests;
#[cfg(test)]
mod steal_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod topology_tests;
#[cfg(test)]
mod watermark_tests;
