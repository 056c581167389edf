//! Address spaces on guest-mm's page tables: the kernel's own identity map,
//! and workload spaces that add regions of their own.
//!
//! The VMM enters every vCPU on an identity map it built (2 MiB pages, all
//! user-accessible, the device hole uncached). Right after `mm::init` the
//! BSP builds the kernel's map with `pgtable` to the same effect (planned
//! by `guest_mm::ident_map`; 2 MiB pages, see [`KmapMode`]) and
//! every CPU loads it, so from then on the kernel owns every table it runs
//! on and the VMM's map is only for entry. A workload [`VmSpace`] starts
//! as a copy of that map (its own tables, so its replicas can be local
//! too) and adds regions at [`REGION_BASE`] and up, mapped with 4 KiB or
//! 2 MiB pages from a chosen node, optionally replicated per node
//! (Mitosis). Teardown gives back every data page and page-table page.
//!
//! Rules that keep this safe without IPIs (see `arch::mmu`): a space is
//! changed by one CPU at a time; before a change that removes or alters a
//! mapping, every other CPU has left the space (loaded the kernel root); a
//! space is torn down only when no CPU has any of its roots loaded, which
//! [`VmSpace::teardown`] checks against the per-CPU record [`load`] keeps.
//!
//! All leaves are executable: the VMM leaves EFER.NXE clear, so an NX bit
//! would be a reserved-bit fault.
use crate::arch::mmu;
use crate::bootinfo::{BootInfo, E820_RAM};
use crate::{mm, syscall, MAX_CPUS};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_mm::gfp::Gfp;
use guest_mm::ident_map::{IdentPlan, SIZE_1G};
use guest_mm::mmzone::MAX_NUMNODES;
use guest_mm::pgtable::TlbFlush;
use guest_mm::pgtable::{AddressSpace, Levels, MmuGather, PageSize, Prot, PtAlloc, PtError};
use guest_mm::{IdentityMap, Pfn, PhysAddr, SpinLock, PAGE_SIZE};

/// Where workload regions start: PML4 slot 32, far above any RAM the
/// identity map covers and below the fault workload's unmapped probe.
pub const REGION_BASE: u64 = 0x1000_0000_0000;
/// Regions one space holds at most (one per CPU, and a few more).
pub const MAX_REGIONS: usize = MAX_CPUS + 4;
/// The paging mode: the VMM enters in 4-level mode and we keep it.
pub const LEVELS: Levels = Levels::Four;
/// Data pages freed per TLB flush when a region is unmapped (Linux's
/// mmu_gather batches pages the same way).
const UNMAP_BATCH: usize = 512;
/// RAM ranges remembered for the plan (e820 has at most this many).
const MAX_RAM: usize = 128;

/// Identity map and workload data: writable, user (our kernel is at CPL3).
pub const PROT_RW: Prot = Prot {
    write: true,
    user: true,
    exec: true,
    uncached: false,
};

/// Page-table pages and data frames from the page allocator, on the node
/// asked for (THISNODE: a replica exists to be local), zeroed.
#[derive(Clone, Copy)]
pub struct NodePtAlloc {
    /// Whose per-CPU lists serve the requests.
    pub cpu: usize,
}

/// Frees the allocator refused (a bug); reported by the workloads.
pub static FREE_ERRORS: AtomicU64 = AtomicU64::new(0);

impl NodePtAlloc {
    /// 2^order zeroed-or-not frames on `node` only.
    pub fn alloc_frames(&self, node: usize, order: usize) -> Option<PhysAddr> {
        let gfp = Gfp::KERNEL.union(Gfp::THISNODE);
        let pfn = mm::allocator()
            .cpu(self.cpu)
            .alloc_node(gfp, order, node, None)?;
        Some(PhysAddr(pfn.0 * PAGE_SIZE))
    }

    pub fn free_frames(&self, pa: PhysAddr, order: usize) {
        if mm::allocator()
            .cpu(self.cpu)
            .free(Pfn(pa.0 / PAGE_SIZE), order)
            .is_err()
        {
            FREE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl PtAlloc for NodePtAlloc {
    fn alloc_pt(&self, node: usize) -> Option<PhysAddr> {
        let pa = self.alloc_frames(node, 0)?;
        // SAFETY: a frame we own, identity mapped.
        unsafe { core::ptr::write_bytes(pa.0 as *mut u8, 0, PAGE_SIZE as usize) };
        Some(pa)
    }

    fn free_pt(&self, pa: PhysAddr) {
        self.free_frames(pa, 0)
    }

    fn node_of(&self, pa: PhysAddr) -> Option<usize> {
        mm::allocator().node_of(Pfn(pa.0 / PAGE_SIZE))
    }
}

/// TLB flushes through the system-call gate: this CPU only.
#[derive(Default)]
pub struct SyscallTlb {
    pub calls: u64,
}

impl TlbFlush for SyscallTlb {
    fn flush_range(&mut self, start: u64, end: u64) {
        self.calls += 1;
        syscall::call2(syscall::SYS_FLUSH_TLB, start, end);
    }

    fn flush_all(&mut self) {
        self.calls += 1;
        syscall::call0(syscall::SYS_FLUSH_TLB_ALL);
    }
}

/// The root each CPU last loaded through [`load`] (0: the VMM's map).
static CURRENT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Loads `root` (registered) on this CPU; false if the gate refused it.
pub fn load(cpu: usize, root: u64) -> bool {
    if syscall::call1(syscall::SYS_LOAD_CR3, root) != 0 {
        return false;
    }
    CURRENT[cpu].store(root, Ordering::Release);
    true
}

/// The root `cpu` last loaded (0: none since entry, still the VMM's map).
pub fn current_root(cpu: usize) -> u64 {
    CURRENT[cpu].load(Ordering::Acquire)
}

/// Whether any CPU has `root` loaded.
fn in_use(root: u64) -> bool {
    CURRENT.iter().any(|c| c.load(Ordering::Acquire) == root)
}

/// How the identity map is built (`kmap=` on the command line).
///
/// 2 MiB pages by default, like the VMM's map. 1 GiB pages only when
/// asked: this host's KVM (PVM, shadow paging) advertises PDPE1GB in
/// CPUID but triple-faults as soon as the CPU runs through a guest 1 GiB
/// leaf (measured: `kmap=1g` with 1 GiB of RAM, the kernel inside a
/// 1 GiB page, dies on the instruction after the CR3 load; with 2 MiB
/// pages there it runs), so CPUID cannot be trusted to choose.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KmapMode {
    TwoMib,
    /// 1 GiB pages where a whole GiB is RAM or none of it.
    Gib,
    /// Stay on the VMM's map (for comparison): nothing is built.
    Boot,
}

impl KmapMode {
    pub fn name(self) -> &'static str {
        match self {
            KmapMode::TwoMib => "2m",
            KmapMode::Gib => "1g",
            KmapMode::Boot => "boot",
        }
    }

    pub fn parse(v: &str) -> Option<KmapMode> {
        match v {
            "2m" => Some(KmapMode::TwoMib),
            "1g" => Some(KmapMode::Gib),
            "boot" => Some(KmapMode::Boot),
            _ => None,
        }
    }
}

/// CPUID.80000001H:EDX.PDPE1GB: the CPU says it walks 1 GiB leaves. The
/// leaf exists on every CPU that runs long mode (its LM bit is in it).
pub fn cpu_has_gib_pages() -> bool {
    let r = core::arch::x86_64::__cpuid(0x8000_0001);
    r.edx & (1 << 26) != 0
}

/// The kernel's map, its RAM list (for workload spaces' copies) and root.
struct Kernel {
    space: Option<AddressSpace<IdentityMap>>,
    ram: [(u64, u64); MAX_RAM],
    nr_ram: usize,
    gib_pages: bool,
    mode: KmapMode,
    /// Table pages set aside in memblock for the map: base, count.
    pool: (u64, u64),
}

static KERNEL: SpinLock<Kernel> = SpinLock::new(Kernel {
    space: None,
    ram: [(0, 0); MAX_RAM],
    nr_ram: 0,
    gib_pages: false,
    mode: KmapMode::Boot,
    pool: (0, 0),
});

/// The kernel map's table pages come from memblock, before the page
/// allocator exists (as Linux's early page tables do): the map lives for
/// the whole run, so its pages never count as allocated and freed, and the
/// allocator's books start clean. A bump allocator over the reserved run.
struct BootPool {
    next: core::cell::Cell<u64>,
    end: u64,
}

impl PtAlloc for BootPool {
    fn alloc_pt(&self, node: usize) -> Option<PhysAddr> {
        let pa = self.next.get();
        if node != 0 || pa >= self.end {
            return None;
        }
        self.next.set(pa + PAGE_SIZE);
        // SAFETY: reserved for this map, identity mapped.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE_SIZE as usize) };
        Some(PhysAddr(pa))
    }

    /// The kernel map is never torn down; a failed build fails the boot.
    fn free_pt(&self, _pa: PhysAddr) {}

    fn node_of(&self, _pa: PhysAddr) -> Option<usize> {
        Some(0)
    }
}

/// BSP, before `mm::init`: decides the kernel map's shape (`kmap=`) and
/// remembers the RAM it covers, so `mm::init` can set its table pages
/// aside ([`reserve_kernel_tables`]).
pub fn plan_kernel(boot: &BootInfo, mode: KmapMode) -> Result<(), &'static str> {
    let mut k = KERNEL.lock();
    let mut n = 0;
    for e in boot.e820().filter(|e| e.kind == E820_RAM) {
        if n == MAX_RAM {
            return Err("more e820 RAM ranges than the kernel map plan holds");
        }
        k.ram[n] = (e.addr, e.size);
        n += 1;
    }
    k.nr_ram = n;
    k.mode = mode;
    k.gib_pages = mode == KmapMode::Gib;
    if k.gib_pages && !cpu_has_gib_pages() {
        return Err("kmap=1g, but this CPU has no 1 GiB pages (CPUID PDPE1GB)");
    }
    Ok(())
}

/// Inside `mm::init`, with memblock complete and before the page
/// allocator takes the free memory: reserves the kernel map's table pages.
pub fn reserve_kernel_tables(
    mb: &mut guest_mm::Memblock,
    mem: &IdentityMap,
    min: u64,
) -> Result<(), &'static str> {
    let mut k = KERNEL.lock();
    if k.mode == KmapMode::Boot {
        return Ok(());
    }
    let pages = IdentPlan::new(&k.ram[..k.nr_ram], k.gib_pages).table_pages();
    let base = mb
        .alloc(mem, pages * PAGE_SIZE, PAGE_SIZE, PhysAddr(min))
        .map_err(|_| "no memory for the kernel's page tables")?;
    k.pool = (base.0, pages);
    Ok(())
}
/// The root every CPU runs on outside workload spaces (0 until built).
static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);

/// What the switch built, for the ready line.
#[derive(Clone, Copy, Default)]
pub struct KmapSummary {
    pub root: u64,
    pub leaves_1g: u64,
    pub leaves_2m: u64,
    pub pt_pages: u64,
    /// Cycles to build the tables, and to load them on the BSP.
    pub build_cycles: u64,
    pub load_cycles: u64,
}

/// Maps the identity plan into `space`; (1 GiB leaves, 2 MiB leaves).
fn map_identity(
    space: &mut AddressSpace<IdentityMap>,
    alloc: &dyn PtAlloc,
    ram: &[(u64, u64)],
    gib_pages: bool,
) -> Result<(u64, u64), PtError> {
    let (mut g, mut m) = (0, 0);
    for leaf in IdentPlan::new(ram, gib_pages) {
        let size = if leaf.size == SIZE_1G {
            g += 1;
            PageSize::Size1G
        } else {
            m += 1;
            PageSize::Size2M
        };
        let prot = Prot {
            uncached: leaf.uncached,
            ..PROT_RW
        };
        space.map(alloc, leaf.addr, PhysAddr(leaf.addr), size, prot)?;
    }
    Ok((g, m))
}

/// Spot check of the built map before anything runs on it: the LAPIC's
/// page (in the device hole) is identity-mapped uncached, the kernel image
/// (RAM) cached. Three walks; the whole plan is checked on the host
/// (`guest_mm::ident_map`'s tests).
fn hole_uncached(space: &AddressSpace<IdentityMap>) -> bool {
    let lapic = crate::arch::irq::LAPIC_BASE;
    let ram = kernel_start();
    let is = |va: u64, uncached: bool| {
        space
            .translate(va)
            .is_some_and(|t| t.pa.0 == va && t.prot.uncached == uncached && t.prot.user)
    };
    is(lapic, true) && is(lapic + 0xff0, true) && is(ram, false)
}

fn kernel_start() -> u64 {
    extern "C" {
        static __kernel_start: u8;
    }
    &raw const __kernel_start as u64
}

/// BSP, right after `mm::init`: builds the kernel's identity map in the
/// pages [`reserve_kernel_tables`] set aside and loads it. With
/// `KmapMode::Boot` the VMM's map is registered as the kernel root instead,
/// so everything else works unchanged.
pub fn init_kernel() -> Result<KmapSummary, &'static str> {
    let t0 = crate::arch::cpu::rdtsc();
    let mut k = KERNEL.lock();
    let mut s = KmapSummary::default();
    if k.mode == KmapMode::Boot {
        s.root = syscall::call0(syscall::SYS_READ_CR3) & !0xfff;
    } else {
        let (base, pages) = k.pool;
        let pool = BootPool {
            next: core::cell::Cell::new(base),
            end: base + pages * PAGE_SIZE,
        };
        let mut space = AddressSpace::new(IdentityMap, &pool, LEVELS, 0)
            .map_err(|_| "no memory for the kernel's page tables")?;
        let ram = k.ram;
        (s.leaves_1g, s.leaves_2m) = map_identity(&mut space, &pool, &ram[..k.nr_ram], k.gib_pages)
            .map_err(|_| "building the kernel's identity map failed")?;
        if !hole_uncached(&space) {
            return Err("the kernel's identity map does not map the LAPIC uncached and RAM cached");
        }
        s.root = space.root(0).0;
        s.pt_pages = space.pt_pages(0);
        k.space = Some(space);
    }
    if !mmu::register_root(s.root) {
        return Err("the kernel root could not be registered");
    }
    let t1 = crate::arch::cpu::rdtsc();
    KERNEL_ROOT.store(s.root, Ordering::Release);
    if !load(0, s.root) {
        return Err("SYS_LOAD_CR3 refused the kernel root");
    }
    ENTERED.fetch_add(1, Ordering::Release);
    s.build_cycles = t1 - t0;
    s.load_cycles = crate::arch::cpu::rdtsc() - t1;
    Ok(s)
}

/// The kernel's root once the BSP has built it (0 before).
pub fn kernel_root() -> u64 {
    KERNEL_ROOT.load(Ordering::Acquire)
}

/// CPUs on the kernel's map (the BSP included).
static ENTERED: AtomicU64 = AtomicU64::new(0);

/// An AP: waits for the kernel's map and loads it.
pub fn enter_kernel(cpu: usize) -> bool {
    let root = loop {
        match kernel_root() {
            0 => core::hint::spin_loop(),
            r => break r,
        }
    };
    let ok = load(cpu, root);
    if ok {
        ENTERED.fetch_add(1, Ordering::Release);
    }
    ok
}

/// BSP: until `n` CPUs (itself included) run on the kernel's map.
pub fn wait_all_entered(n: usize) {
    while (ENTERED.load(Ordering::Acquire) as usize) < n {
        core::hint::spin_loop();
    }
}

/// Back onto the kernel's map (leaving any workload space).
pub fn leave(cpu: usize) -> bool {
    load(cpu, kernel_root())
}

/// Why a region could not be mapped.
#[derive(Clone, Copy, Debug)]
pub enum MapError {
    /// No room for another region.
    TooManyRegions,
    /// Not page-aligned, or zero, or overlapping REGION_BASE's rules.
    BadRegion,
    /// The node ran out of frames (data or page tables).
    NoMemory {
        node: usize,
    },
    Pt(PtError),
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::TooManyRegions => write!(f, "no room for another region or root"),
            MapError::BadRegion => write!(
                f,
                "region not aligned to its page size or below {REGION_BASE:#x}"
            ),
            MapError::NoMemory { node } => write!(f, "node {node} has no free frames left"),
            MapError::Pt(e) => write!(f, "page tables refused: {e:?}"),
        }
    }
}

/// A teardown refused because a CPU still had the space loaded.
#[derive(Debug)]
pub struct InUse;

#[derive(Clone, Copy)]
struct Region {
    va: u64,
    bytes: u64,
    size: PageSize,
}

/// A workload address space; see the module doc.
pub struct VmSpace {
    space: AddressSpace<IdentityMap>,
    alloc: NodePtAlloc,
    regions: [Option<Region>; MAX_REGIONS],
}

impl VmSpace {
    /// The kernel's identity mappings in tables of its own on `home`,
    /// allocated through `cpu`'s lists.
    pub fn new(cpu: usize, home: usize) -> Result<VmSpace, MapError> {
        let alloc = NodePtAlloc { cpu };
        let (ram, nr, gib) = {
            let k = KERNEL.lock();
            (k.ram, k.nr_ram, k.gib_pages)
        };
        let mut space = AddressSpace::new(IdentityMap, &alloc, LEVELS, home)
            .map_err(|_| MapError::NoMemory { node: home })?;
        if let Err(e) = map_identity(&mut space, &alloc, &ram[..nr], gib) {
            let mut tlb = SyscallTlb::default();
            space.destroy(&mut MmuGather::attached(&alloc, &mut tlb));
            return Err(MapError::Pt(e));
        }
        let root = space.root(home).0;
        let s = VmSpace {
            space,
            alloc,
            regions: [None; MAX_REGIONS],
        };
        if !mmu::register_root(root) {
            let _ = s.teardown();
            return Err(MapError::TooManyRegions);
        }
        Ok(s)
    }

    pub fn space(&self) -> &AddressSpace<IdentityMap> {
        &self.space
    }

    pub fn alloc(&self) -> &NodePtAlloc {
        &self.alloc
    }

    /// What a CPU on `node` loads.
    pub fn root(&self, node: usize) -> u64 {
        self.space.root(node).0
    }

    /// Maps `[va, va + bytes)` with pages of `size` (4 KiB or 2 MiB) from
    /// `node`. All or nothing: on failure what was mapped is given back.
    pub fn map_region(
        &mut self,
        va: u64,
        bytes: u64,
        size: PageSize,
        node: usize,
    ) -> Result<(), MapError> {
        let step = size.bytes();
        if size == PageSize::Size1G
            || bytes == 0
            || !va.is_multiple_of(step)
            || !bytes.is_multiple_of(step)
        {
            return Err(MapError::BadRegion);
        }
        if va < REGION_BASE || va.checked_add(bytes).is_none() {
            return Err(MapError::BadRegion);
        }
        let slot = self
            .regions
            .iter()
            .position(Option::is_none)
            .ok_or(MapError::TooManyRegions)?;
        let order = (size.shift() - 12) as usize;
        let mut done = 0;
        let mut err = None;
        while done < bytes {
            let Some(pa) = self.alloc.alloc_frames(node, order) else {
                err = Some(MapError::NoMemory { node });
                break;
            };
            if let Err(e) = self.space.map(&self.alloc, va + done, pa, size, PROT_RW) {
                self.alloc.free_frames(pa, order);
                err = Some(MapError::Pt(e));
                break;
            }
            done += step;
        }
        if let Some(e) = err {
            if done > 0 {
                self.unmap_pages(va, done, size);
            }
            return Err(e);
        }
        self.regions[slot] = Some(Region { va, bytes, size });
        Ok(())
    }

    /// Unmaps and frees `[va, va + bytes)`, one flush per batch, data pages
    /// freed only after their batch's flush.
    fn unmap_pages(&mut self, va: u64, bytes: u64, size: PageSize) {
        let step = size.bytes();
        let order = (size.shift() - 12) as usize;
        let mut tlb = SyscallTlb::default();
        let mut batch = [PhysAddr(0); UNMAP_BATCH];
        let mut off = 0;
        while off < bytes {
            let mut g = MmuGather::attached(&self.alloc, &mut tlb);
            let mut n = 0;
            while n < UNMAP_BATCH && off < bytes {
                match self.space.unmap(&mut g, va + off, size) {
                    Ok(pa) => {
                        batch[n] = pa;
                        n += 1;
                    }
                    Err(_) => {
                        FREE_ERRORS.fetch_add(1, Ordering::Relaxed);
                    }
                }
                off += step;
            }
            g.finish_attached();
            drop(g);
            for &pa in &batch[..n] {
                self.alloc.free_frames(pa, order);
            }
        }
    }

    /// Maps one 4 KiB page per frame from `va` on (the caller owns the
    /// frames and unmaps them with [`VmSpace::unmap_frames`]).
    pub fn map_frames(&mut self, va: u64, frames: &[PhysAddr]) -> Result<(), PtError> {
        for (i, &pa) in frames.iter().enumerate() {
            let at = va + i as u64 * PAGE_SIZE;
            self.space
                .map(&self.alloc, at, pa, PageSize::Size4K, PROT_RW)?;
        }
        Ok(())
    }

    /// Unmaps `n` 4 KiB pages from `va` in one mmu_gather batch (the
    /// frames stay the caller's); returns the TLB flushes it took.
    pub fn unmap_frames(&mut self, va: u64, n: u64) -> Result<u64, PtError> {
        let mut tlb = SyscallTlb::default();
        let mut g = MmuGather::attached(&self.alloc, &mut tlb);
        for i in 0..n {
            self.space
                .unmap(&mut g, va + i * PAGE_SIZE, PageSize::Size4K)?;
        }
        g.finish_attached();
        Ok(g.flushes())
    }

    /// Points the 4 KiB page at `va` to `pa` instead: unmap, map, one
    /// flush (the order Linux's `ptep_clear_flush` + `set_pte_at` keeps:
    /// no CPU may use the old frame after this returns). Returns the old
    /// frame, the caller's again.
    pub fn replace_frame(&mut self, va: u64, pa: PhysAddr) -> Result<PhysAddr, PtError> {
        let mut tlb = SyscallTlb::default();
        let mut g = MmuGather::attached(&self.alloc, &mut tlb);
        let old = self.space.unmap(&mut g, va, PageSize::Size4K)?;
        let r = self
            .space
            .map(&self.alloc, va, pa, PageSize::Size4K, PROT_RW);
        g.finish_attached();
        r.map(|()| old)
    }

    /// Replicas on exactly the nodes of `nodes` (the home table always
    /// stays): adds the missing ones, drops the others. Every CPU must
    /// have left the space when one is dropped.
    pub fn set_replicas(&mut self, nodes: &[usize]) -> Result<(), MapError> {
        let home = self.space.home_node();
        for node in 0..MAX_NUMNODES {
            let want = node == home || nodes.contains(&node);
            let has = self.space.replica_nodes().any(|n| n == node);
            if want && !has {
                self.space
                    .replicate(&self.alloc, node)
                    .map_err(MapError::Pt)?;
                if !mmu::register_root(self.root(node)) {
                    return Err(MapError::TooManyRegions);
                }
            } else if !want && has {
                let root = self.root(node);
                mmu::unregister_root(root);
                let mut tlb = SyscallTlb::default();
                let mut g = MmuGather::attached(&self.alloc, &mut tlb);
                self.space
                    .drop_replica(&mut g, node)
                    .map_err(MapError::Pt)?;
            }
        }
        Ok(())
    }

    /// Gives back every data page and page-table page. While any CPU still
    /// has one of its roots loaded nothing is freed (that CPU could walk
    /// reused pages): the space is leaked and the caller told.
    pub fn teardown(mut self) -> Result<(), InUse> {
        let mut roots = [0u64; MAX_NUMNODES];
        let mut nr = 0;
        for n in self.space.replica_nodes() {
            roots[nr] = self.space.root(n).0;
            nr += 1;
        }
        if roots[..nr].iter().any(|&r| in_use(r)) {
            // Dropping frees nothing: the pages stay out of the allocator.
            return Err(InUse);
        }
        for &r in &roots[..nr] {
            mmu::unregister_root(r);
        }
        for i in 0..MAX_REGIONS {
            if let Some(r) = self.regions[i].take() {
                self.unmap_pages(r.va, r.bytes, r.size);
            }
        }
        let alloc = self.alloc;
        let mut tlb = SyscallTlb::default();
        self.space
            .destroy(&mut MmuGather::attached(&alloc, &mut tlb));
        Ok(())
    }
}
