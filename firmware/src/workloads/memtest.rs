//! memtest: every free page, from every CPU, through the frame allocator.
//!
//! Each CPU takes runs of up to 2 MiB from the allocator until it is empty and
//! fills them with `address ^ PATTERN` (an address-dependent pattern catches
//! aliasing, not just stuck bits). After a barrier each CPU verifies the runs
//! of its neighbour, so data written on one vCPU is read back on another.
//! Then everything is freed and the allocator must be back where it started.
use crate::hostio::{self, LINE};
use crate::mm::FRAMES;
use crate::smp::Barrier;
use crate::{abi, arch::cpu, MAX_CPUS};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use guest_mm::{IdentityMap, Pfn, PAGE_SIZE};

const PATTERN: u64 = 0x5a5a_a5a5_0f0f_f0f0;
const RUN_FRAMES: u64 = 512;
/// A list page: [next, count, (pfn, frames) × ENTRIES].
const ENTRIES: usize = (PAGE_SIZE as usize / 8 - 2) / 2;

struct PerCpu {
    list: AtomicU64,
    written: AtomicU64,
    verified: AtomicU64,
    errors: AtomicU64,
    first_bad: AtomicU64,
    free_errors: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: PerCpu = PerCpu {
    list: AtomicU64::new(0),
    written: AtomicU64::new(0),
    verified: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    first_bad: AtomicU64::new(0),
    free_errors: AtomicU64::new(0),
};
static PER_CPU: [PerCpu; MAX_CPUS] = [ZERO; MAX_CPUS];
static BARRIER: Barrier = Barrier::new();
static FREE_BEFORE: AtomicU64 = AtomicU64::new(0);

fn words(pfn: u64, frames: u64) -> &'static mut [u64] {
    // SAFETY: the frames were handed to this CPU by the allocator and are
    // identity mapped; nothing else uses them until they are freed.
    unsafe {
        core::slice::from_raw_parts_mut(
            (pfn * PAGE_SIZE) as *mut u64,
            (frames * PAGE_SIZE / 8) as usize,
        )
    }
}

fn fill(pfn: u64, frames: u64) {
    let base = pfn * PAGE_SIZE;
    for (i, w) in words(pfn, frames).iter_mut().enumerate() {
        *w = (base + 8 * i as u64) ^ PATTERN;
    }
}

/// Returns (bad words, address of the first bad word or 0).
fn check(pfn: u64, frames: u64) -> (u64, u64) {
    let base = pfn * PAGE_SIZE;
    let mut bad = 0;
    let mut first = 0;
    for (i, w) in words(pfn, frames).iter().enumerate() {
        let addr = base + 8 * i as u64;
        if *w != addr ^ PATTERN {
            if bad == 0 {
                first = addr;
            }
            bad += 1;
        }
    }
    (bad, first)
}

/// Visits every (pfn, frames) entry of a CPU's run list.
fn for_each_run(head: u64, mut f: impl FnMut(u64, u64)) {
    let mut page = head;
    while page != 0 {
        let w = words(page / PAGE_SIZE, 1);
        let (next, n) = (w[0], w[1] as usize);
        for e in 0..n {
            f(w[2 + 2 * e], w[3 + 2 * e]);
        }
        page = next;
    }
}

pub fn run(cpu: usize, ncpus: usize) -> bool {
    let mem = IdentityMap;
    let me = &PER_CPU[cpu];
    if cpu == 0 {
        FREE_BEFORE.store(
            FRAMES.lock().as_ref().map_or(0, |f| f.free_pages()),
            Relaxed,
        );
    }
    let t0 = cpu::rdtsc();
    BARRIER.wait(ncpus);

    // Phase 1: take runs and write the pattern. The first frame of a run
    // becomes a list page when the current one is full.
    let mut list: Option<&mut [u64]> = None;
    loop {
        let Some((Pfn(pfn), frames)) = FRAMES
            .lock()
            .as_mut()
            .and_then(|f| f.alloc_run(&mem, RUN_FRAMES))
        else {
            break;
        };
        let (mut pfn, mut frames) = (pfn, frames);
        if list.as_ref().is_none_or(|l| l[1] as usize == ENTRIES) {
            let page = words(pfn, 1);
            page[0] = me.list.load(Relaxed);
            page[1] = 0;
            me.list.store(pfn * PAGE_SIZE, Relaxed);
            list = Some(page);
            pfn += 1;
            frames -= 1;
        }
        let l = list.as_mut().expect("list page");
        let n = l[1] as usize;
        l[2 + 2 * n] = pfn;
        l[3 + 2 * n] = frames;
        l[1] += 1;
        if frames > 0 {
            fill(pfn, frames);
            me.written.fetch_add(frames, Relaxed);
        }
    }
    BARRIER.wait(ncpus);

    // Phase 2: verify the neighbour's runs.
    let other = &PER_CPU[(cpu + 1) % ncpus];
    for_each_run(other.list.load(Relaxed), |pfn, frames| {
        let (bad, first) = check(pfn, frames);
        me.verified.fetch_add(frames, Relaxed);
        if bad > 0 && me.errors.fetch_add(bad, Relaxed) == 0 {
            me.first_bad.store(first, Relaxed);
        }
    });
    BARRIER.wait(ncpus);

    // Phase 3: give everything back, list pages last.
    let free = |pfn: u64, frames: u64| {
        if frames > 0
            && FRAMES
                .lock()
                .as_mut()
                .map(|f| f.free_run(&mem, Pfn(pfn), frames))
                .is_none_or(|r| r.is_err())
        {
            me.free_errors.fetch_add(1, Relaxed);
        }
    };
    let mut page = me.list.load(Relaxed);
    for_each_run(page, free);
    while page != 0 {
        let next = words(page / PAGE_SIZE, 1)[0];
        free(page / PAGE_SIZE, 1);
        page = next;
    }
    BARRIER.wait(ncpus);
    if cpu != 0 {
        return true;
    }
    report(ncpus, cpu::rdtsc() - t0)
}

fn report(ncpus: usize, cycles: u64) -> bool {
    let before = FREE_BEFORE.load(Relaxed);
    let after = FRAMES.lock().as_ref().map_or(0, |f| f.free_pages());
    let cpus = &PER_CPU[..ncpus];
    let written: u64 = cpus.iter().map(|c| c.written.load(Relaxed)).sum();
    let verified: u64 = cpus.iter().map(|c| c.verified.load(Relaxed)).sum();
    let errors: u64 = cpus
        .iter()
        .map(|c| c.errors.load(Relaxed) + c.free_errors.load(Relaxed))
        .sum();
    let every_cpu_wrote = cpus.iter().all(|c| c.written.load(Relaxed) > 0);
    let ok =
        errors == 0 && written > 0 && verified == written && after == before && every_cpu_wrote;

    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"workload\",\"name\":\"memtest\",\"ok\":{ok},\"pattern\":\"address^{PATTERN:#x}\",\
         \"pages_written\":{written},\"pages_verified\":{verified},\"errors\":{errors},\
         \"free_pages_before\":{before},\"free_pages_after\":{after},\"tsc_cycles\":{cycles},\"per_cpu\":["
    ));
    for (i, c) in cpus.iter().enumerate() {
        l.fmt(format_args!(
            "{}{{\"cpu\":{i},\"pages_written\":{},\"verified_cpu\":{},\"pages_verified\":{},\"errors\":{},\
             \"first_bad_address\":{},\"free_errors\":{},\"ok\":{}}}",
            if i == 0 { "" } else { "," },
            c.written.load(Relaxed),
            (i + 1) % ncpus,
            c.verified.load(Relaxed),
            c.errors.load(Relaxed),
            c.first_bad.load(Relaxed),
            c.free_errors.load(Relaxed),
            c.written.load(Relaxed) > 0 && c.errors.load(Relaxed) == 0 && c.free_errors.load(Relaxed) == 0
        ));
    }
    l.raw("]}");
    hostio::send(l.finish());
    ok
}
