//! touch: the guest's first-touch bandwidth (`memvisor bench memory`).
//!
//! CPU 0 takes `touch_mib=N` MiB (default 64) from the page allocator in
//! the largest blocks it has (4 MiB, so each guest 2 MiB page is whole and
//! the host can back it with one huge page) and writes one byte to every
//! 4 KiB page, timing only the writes with the TSC. Nothing wrote to these
//! pages before (guest-mm keeps its free lists in the frame descriptors, not
//! in the free pages), so each write is the host's first touch: what is
//! measured is the cost of faulting guest RAM in, host page plus stage-2
//! (or shadow) entry, which `--backing`, `--thp` and `--prefault` change.
//! The VMM turns cycles into time with the report's `tsc_khz`.
//!
//! The other CPUs do nothing: one writer keeps the figure a bandwidth of
//! faults, not of contention on the host's fault path.
use crate::arch::cpu;
use crate::hostio::{self, LINE};
use crate::{abi, cmdline, mm};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use guest_mm::gfp::Gfp;
use guest_mm::mmzone::MAX_ORDER;
use guest_mm::{Pfn, PAGE_SIZE};

/// Movable, no reclaim, below the watermarks allowed: the test wants the
/// memory, not the allocator's reserves kept.
const GFP: Gfp = Gfp::MOVABLE.union(Gfp::MEMALLOC).union(Gfp::NOWARN);
const MIB: u64 = 1 << 20;
/// Blocks held at once, freed at the end: 4096 × 4 MiB = 16 GiB at most.
const MAX_BLOCKS: usize = 4096;
/// The blocks held, `pfn << 8 | order` (in .bss: too large for a stack).
static BLOCKS: [AtomicU64; MAX_BLOCKS] = [const { AtomicU64::new(0) }; MAX_BLOCKS];

pub fn run(cpu: usize, _ncpus: usize) -> bool {
    if cpu != 0 {
        return true;
    }
    // Validated at boot (cmdline::check): a bad value never gets here.
    let mib = cmdline::get(crate::user::cmdline(), "touch_mib")
        .and_then(cmdline::parse_touch_mib)
        .unwrap_or(64);
    let want = mib * MIB / PAGE_SIZE;
    let a = mm::allocator();
    let mut held = 0;
    let mut pages = 0u64;
    let mut cycles = 0u64;
    {
        let mut c = a.cpu(0);
        let mut order = MAX_ORDER;
        while pages < want && held < MAX_BLOCKS {
            order = order.min((want - pages).ilog2() as usize);
            let Some(Pfn(p)) = c.alloc(GFP, order) else {
                if order == 0 {
                    break;
                }
                order -= 1;
                continue;
            };
            BLOCKS[held].store(p << 8 | order as u64, Relaxed);
            held += 1;
            let base = p * PAGE_SIZE;
            let n = 1u64 << order;
            let t = cpu::rdtsc();
            for i in 0..n {
                // SAFETY: the block is ours and identity mapped; nothing
                // else reads or writes it until it is freed below.
                unsafe { core::ptr::write_volatile((base + i * PAGE_SIZE) as *mut u8, 1) };
            }
            cycles += cpu::rdtsc() - t;
            pages += n;
        }
        let mut free_errors = 0u64;
        for b in &BLOCKS[..held] {
            let b = b.load(Relaxed);
            free_errors += u64::from(c.free(Pfn(b >> 8), (b & 0xff) as usize).is_err());
        }
        if free_errors > 0 {
            crate::user::fail(format_args!("touch: {free_errors} blocks not freed"));
        }
    }
    if pages < want {
        crate::user::fail(format_args!(
            "touch: touch_mib={mib} asks for {want} pages, and only {pages} were free"
        ));
    }
    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"workload\",\"name\":\"touch\",\"ok\":true,\"touch_mib\":{mib},\
         \"pages\":{pages},\"bytes\":{},\"blocks\":{held},\"tsc_cycles\":{cycles}}}",
        pages * PAGE_SIZE
    ));
    hostio::send(l.finish());
    true
}
