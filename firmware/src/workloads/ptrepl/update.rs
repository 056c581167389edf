//! The cost of a page-table update with 1 and with N replicas
//! (`ptrepl_update` records): map [`PAGES`] 4 KiB pages in a live address
//! space, read each once through it, then unmap them in one mmu_gather
//! batch. [`ROUNDS`] rounds, the replica counts interleaved so that a
//! noisy moment hits both; each record gives the median round.
//!
//! "Live" matters on hosts whose KVM shadows guest page tables (PVM here):
//! KVM write-protects a guest table page once it has built a shadow of it,
//! so a write to it may trap and be emulated, while a write to a table no
//! walk has reached yet costs what it costs natively. So before timing,
//! one anchor page is mapped in the same page table and read through every
//! replica's root (CPU 0 loads each in turn): every replica's tables on the
//! path have then been walked, as they would be in a running process. The
//! anchor also keeps the page table alive across the unmap, so the timing
//! is of leaf updates and the batch's flush, not of freeing tables. The
//! read of every mapped page (timed apart, `touch_cycles`) makes the leaf
//! entries live too before they are unmapped: on a shadowing host that
//! read is where a remapping experiment pays (one shadow fault per page).
use super::error;
use crate::arch::cpu;
use crate::hostio::{self, LINE};
use crate::vm_space::{self, VmSpace, REGION_BASE};
use crate::{abi, mm};
use guest_mm::mmzone::MAX_NUMNODES;
use guest_mm::pgtable::PageSize;
use guest_mm::{PhysAddr, PAGE_SIZE};

/// Pages mapped and unmapped per round: two page tables, far beyond the
/// flush ceiling, so the batch ends in one CR3 reload, and long enough
/// (~0.5 ms natively) that one host interruption does not decide a round.
pub const PAGES: usize = 1024;
/// Rounds per replica count (odd: the median is a round).
pub const ROUNDS: usize = 7;
/// Past every vCPU's workload region.
pub const VA: u64 = super::REGION_STRIDE * crate::MAX_CPUS as u64 + REGION_BASE;

#[derive(Clone, Copy, Default)]
struct Update {
    map_cycles: u64,
    touch_cycles: u64,
    unmap_cycles: u64,
    flushes: u64,
    /// How the batch's flush went out (`arch::mmu`'s counters).
    invlpg_pages: u64,
    full_flushes: u64,
}

/// (pages invalidated one by one, full flushes) so far, all CPUs.
pub fn flush_counts() -> (u64, u64) {
    use core::sync::atomic::Ordering::Relaxed;
    (
        crate::arch::mmu::INVLPG_PAGES.load(Relaxed),
        crate::arch::mmu::FULL_FLUSHES.load(Relaxed),
    )
}

/// CPU 0, every other CPU idle on the kernel's map.
pub fn measure() {
    let nr = mm::allocator().topology().nr_nodes;
    let counts: &[usize] = if nr > 1 { &[1, nr] } else { &[1] };
    let mut rounds = [[Update::default(); ROUNDS]; 2];
    // Round r of every replica count before round r + 1 of any.
    for step in 0..ROUNDS * counts.len() {
        let (r, i) = (step / counts.len(), step % counts.len());
        match one(counts[i]) {
            Ok(u) => rounds[i][r] = u,
            Err(e) => error(format_args!(
                "ptrepl_update with {} replicas: {e}",
                counts[i]
            )),
        }
    }
    for (i, &replicas) in counts.iter().enumerate() {
        let u = median(&mut rounds[i]);
        let mut l = LINE.lock();
        l.begin(abi::RECORD_JSON);
        l.fmt(format_args!(
            "{{\"event\":\"ptrepl_update\",\"replicas\":{replicas},\"pages\":{PAGES},\
             \"rounds\":{ROUNDS},\"map_cycles\":{},\"unmap_cycles\":{},\"touch_cycles\":{},\
             \"flushes\":{},\"invlpg_pages\":{},\"full_flushes\":{}}}",
            u.map_cycles, u.unmap_cycles, u.touch_cycles, u.flushes, u.invlpg_pages, u.full_flushes
        ));
        hostio::send(l.finish());
    }
}

/// The round with the median map + unmap time (touches are a figure of
/// their own, far larger on a shadowing host, and would decide the order).
fn median(rounds: &mut [Update; ROUNDS]) -> Update {
    rounds.sort_unstable_by_key(|u| u.map_cycles + u.unmap_cycles);
    rounds[ROUNDS / 2]
}

fn one(replicas: usize) -> Result<Update, &'static str> {
    let mut space = VmSpace::new(0, 0).map_err(|_| "no memory for the address space")?;
    let mut frames = [PhysAddr(0); PAGES];
    let mut got = 0;
    let r = timed(&mut space, replicas, &mut frames, &mut got);
    // Whatever happened: off the space, frames back, space torn down.
    let left = vm_space::leave(0);
    for &pa in &frames[..got] {
        space.alloc().free_frames(pa, 0);
    }
    if space.teardown().is_err() {
        return Err("the space was still loaded at teardown");
    }
    if !left {
        return Err("could not load the kernel root again");
    }
    r
}

fn timed(
    space: &mut VmSpace,
    replicas: usize,
    frames: &mut [PhysAddr; PAGES],
    got: &mut usize,
) -> Result<Update, &'static str> {
    let nodes: [usize; MAX_NUMNODES] = core::array::from_fn(|n| n);
    space
        .set_replicas(&nodes[..replicas])
        .map_err(|_| "replication failed")?;
    space
        .map_region(VA, PAGE_SIZE, PageSize::Size4K, 0)
        .map_err(|_| "no memory for the anchor page")?;
    for f in frames.iter_mut() {
        *f = space
            .alloc()
            .alloc_frames(0, 0)
            .ok_or("no memory for the pages to map")?;
        *got += 1;
    }
    for n in 0..replicas {
        if !vm_space::load(0, space.root(n)) {
            return Err("SYS_LOAD_CR3 refused a replica root");
        }
        // SAFETY: the anchor page is mapped in every replica.
        unsafe { core::ptr::read_volatile(VA as *const u64) };
    }
    if !vm_space::load(0, space.root(0)) {
        return Err("SYS_LOAD_CR3 refused the home root");
    }
    let t0 = cpu::rdtsc();
    space
        .map_frames(VA + PAGE_SIZE, &frames[..])
        .map_err(|_| "map failed")?;
    let t1 = cpu::rdtsc();
    for i in 1..=PAGES as u64 {
        // SAFETY: mapped just above, through the root CPU 0 has loaded.
        unsafe { core::ptr::read_volatile((VA + i * PAGE_SIZE) as *const u64) };
    }
    let t2 = cpu::rdtsc();
    let before = flush_counts();
    let flushes = space
        .unmap_frames(VA + PAGE_SIZE, PAGES as u64)
        .map_err(|_| "unmap failed")?;
    let t3 = cpu::rdtsc();
    let after = flush_counts();
    Ok(Update {
        map_cycles: t1 - t0,
        touch_cycles: t2 - t1,
        unmap_cycles: t3 - t2,
        flushes,
        invlpg_pages: after.0 - before.0,
        full_flushes: after.1 - before.1,
    })
}
