//! balloon-hold: memory held busy while the host moves the balloon.
//!
//! `workload=balloon-hold size=N [seconds=S] [cycles=C] [linger=MS]
//! [fragment=K] [balloon_mode=4k|2m]`
//! (with a virtio-balloon device on the command line):
//!
//! 1. CPU 0 brings the driver up, takes `size` bytes from guest-mm
//!    (pageblocks first, smaller blocks when none is left) and writes
//!    `address ^ PATTERN` into every word. With `fragment=K` it then ages
//!    the guest: it takes every free page one at a time, keeps one in K
//!    (written, checked at the end like the held memory) and frees the
//!    rest, so what is free is single pages and short runs scattered
//!    through every 2 MiB block, as on a guest that has run a while. A
//!    `4k` balloon then gets scattered PFNs, as Linux's driver does on a
//!    used guest, and its inflate splits the host's huge pages (on a fresh
//!    guest the allocator hands out consecutive pages, which the device
//!    merges into whole 2 MiB ranges).
//! 2. Every CPU keeps touching its share of that memory (one block per
//!    step, the pattern read and written back) and calls the driver's
//!    `service` after every block, so the balloon follows the host's
//!    target while the memory stays in use. CPU 0 reports each target the
//!    balloon reaches as a `balloon` record.
//! 3. The hold ends after `seconds` (default 60), or once the host has
//!    taken the balloon through `cycles` (default 1; 0: only the time)
//!    inflate → deflate-to-zero cycles, so a test can drive it through the
//!    API and end it without a signal.
//! 4. Reuse: CPU 0 allocates what is free now, deflated memory included
//!    (pageblocks without reclaim, then order-0 pages with the right to
//!    reclaim, which is where guest-mm's OOM step deflates the balloon
//!    when the device offers F_DEFLATE_ON_OOM), writes and checks it, and
//!    frees it.
//! 5. The held memory is checked word by word and freed; the driver goes
//!    on for `linger` ms (default 0), so free page reporting can hand the
//!    freed memory to the host; the result line carries the checks and
//!    everything the driver counted.
use crate::arch::cpu;
use crate::hostio::{self, LINE};
use crate::smp::Barrier;
use crate::virtio::balloon::{self, Counters, Mode};
use crate::virtio::VirtioError;
use crate::{abi, cmdline, mm, user};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use guest_mm::gfp::Gfp;
use guest_mm::mmzone::PAGEBLOCK_ORDER;
use guest_mm::{Pfn, PAGE_SIZE};

const PATTERN: u64 = 0x6261_6c6c_6f6f_6e21;
pub const DEFAULT_SIZE: u64 = 64 << 20;
pub const DEFAULT_SECONDS: u64 = 60;
/// `fragment=K`: keep one page in K, K from 2 to a pageblock's pages.
const FRAGMENT_MAX: u64 = 1 << PAGEBLOCK_ORDER;
/// Held memory: movable, within the watermarks, no reclaim.
const GFP_HOLD: Gfp = Gfp::MOVABLE.union(Gfp::NOWAIT).union(Gfp::NOWARN);
/// Reuse at order 0 may reclaim: the slow path's OOM step deflates.
const GFP_REUSE: Gfp = Gfp::USER_MOVABLE.union(Gfp::NOWARN);
/// Index pages: allowed into the reserves so the books never fail.
const GFP_INDEX: Gfp = Gfp::NOWAIT.union(Gfp::MEMALLOC).union(Gfp::NOWARN);

static BARRIER: Barrier = Barrier::new();
static HELD: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicBool = AtomicBool::new(false);
static ERRORS: AtomicU64 = AtomicU64::new(0);
static TOUCHES: AtomicU64 = AtomicU64::new(0);
/// Free pages (per-CPU lists drained) once the driver is up, before the
/// hold takes its memory: what the end must come back to when the balloon
/// is empty again.
static FREE_START: AtomicU64 = AtomicU64::new(0);

/// Blocks (pfn, order) kept in chained index pages of
/// `[next, count, entry × ENTRIES]`, entry = pfn << 8 | order.
struct Blocks {
    head: u64,
    len: u64,
}

const ENTRIES: usize = PAGE_SIZE as usize / 8 - 2;

fn words(addr: u64, bytes: u64) -> &'static mut [u64] {
    // SAFETY: callers pass blocks this workload owns (allocated, not
    // freed), identity mapped.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u64, (bytes / 8) as usize) }
}

impl Blocks {
    const fn new() -> Blocks {
        Blocks { head: 0, len: 0 }
    }

    fn push(&mut self, cpu: usize, pfn: u64, order: usize) -> bool {
        let full = self.head == 0 || words(self.head, PAGE_SIZE)[1] as usize == ENTRIES;
        if full {
            let Some(Pfn(p)) = mm::allocator().alloc_pages(cpu, GFP_INDEX, 0) else {
                return false;
            };
            let w = words(p * PAGE_SIZE, PAGE_SIZE);
            w[0] = self.head;
            w[1] = 0;
            self.head = p * PAGE_SIZE;
        }
        let w = words(self.head, PAGE_SIZE);
        let n = w[1] as usize;
        w[2 + n] = pfn << 8 | order as u64;
        w[1] += 1;
        self.len += 1;
        true
    }

    fn for_each(&self, mut f: impl FnMut(u64, u64, usize)) {
        let (mut page, mut i) = (self.head, 0u64);
        while page != 0 {
            let w = words(page, PAGE_SIZE);
            for &e in &w[2..2 + w[1] as usize] {
                f(i, e >> 8, (e & 0xff) as usize);
                i += 1;
            }
            page = w[0];
        }
    }

    /// Frees every block and the index pages.
    fn free(&mut self, cpu: usize) -> u64 {
        self.free_owned(cpu, |_| true)
    }

    /// Frees the blocks whose index `owned` accepts (the others were freed
    /// already) and the index pages.
    fn free_owned(&mut self, cpu: usize, owned: impl Fn(u64) -> bool) -> u64 {
        let a = mm::allocator();
        let mut bad = 0;
        self.for_each(|i, pfn, order| {
            if owned(i) {
                bad += a.free_pages(cpu, Pfn(pfn), order).is_err() as u64;
            }
        });
        while self.head != 0 {
            let next = words(self.head, PAGE_SIZE)[0];
            bad += a.free_pages(cpu, Pfn(self.head / PAGE_SIZE), 0).is_err() as u64;
            self.head = next;
        }
        self.len = 0;
        bad
    }
}

fn fill(pfn: u64, order: usize) {
    let base = pfn * PAGE_SIZE;
    for (i, w) in words(base, PAGE_SIZE << order).iter_mut().enumerate() {
        *w = (base + 8 * i as u64) ^ PATTERN;
    }
}

/// Bad words in a block.
fn check(pfn: u64, order: usize) -> u64 {
    let base = pfn * PAGE_SIZE;
    words(base, PAGE_SIZE << order)
        .iter()
        .enumerate()
        .filter(|(i, w)| **w != (base + 8 * *i as u64) ^ PATTERN)
        .count() as u64
}

/// Reads every word of a block and writes it back (a store per page keeps
/// it dirty on the host), counting words that lost the pattern.
fn touch(pfn: u64, order: usize) -> u64 {
    let base = pfn * PAGE_SIZE;
    let mut bad = 0;
    for (i, w) in words(base, PAGE_SIZE << order).iter_mut().enumerate() {
        // SAFETY: a word of a block this workload owns.
        let v = unsafe { core::ptr::read_volatile(w) };
        bad += (v != (base + 8 * i as u64) ^ PATTERN) as u64;
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(w, v) };
    }
    bad
}

/// Takes `bytes` in blocks, largest first (pageblocks, then smaller when
/// none is left), filling each.
fn take(cpu: usize, bytes: u64, gfp: Gfp, list: &mut Blocks) -> u64 {
    let a = mm::allocator();
    let mut pages = 0u64;
    let want = bytes.div_ceil(PAGE_SIZE);
    let mut order = PAGEBLOCK_ORDER;
    while pages < want {
        order = order.min((want - pages).ilog2() as usize);
        let Some(Pfn(p)) = a.alloc_pages(cpu, gfp, order) else {
            if order == 0 {
                break;
            }
            order -= 1;
            continue;
        };
        if !list.push(cpu, p, order) {
            let _ = a.free_pages(cpu, Pfn(p), order);
            break;
        }
        fill(p, order);
        pages += 1 << order;
    }
    pages
}

/// `fragment=K`: takes every free page, one at a time, into `list`, then
/// frees all but one in `keep_one_in` in the order they came (so the free
/// pages lie between kept ones in every block they came from) and writes
/// the kept ones. Returns the pages kept.
fn fragment(cpu: usize, keep_one_in: u64, list: &mut Blocks) -> u64 {
    let a = mm::allocator();
    while let Some(Pfn(p)) = a.alloc_pages(cpu, GFP_HOLD, 0) {
        if !list.push(cpu, p, 0) {
            let _ = a.free_pages(cpu, Pfn(p), 0);
            break;
        }
    }
    let mut kept = 0;
    list.for_each(|i, pfn, _| {
        if i % keep_one_in == 0 {
            fill(pfn, 0);
            kept += 1;
        } else if a.free_pages(cpu, Pfn(pfn), 0).is_err() {
            ERRORS.fetch_add(1, Relaxed);
        }
    });
    kept
}

fn parse_size(v: &str) -> Option<u64> {
    crate::virtio::cmdline::parse_size(v).filter(|&n| n > 0 && n.is_multiple_of(PAGE_SIZE))
}

pub fn hold(cpu: usize, ncpus: usize) -> bool {
    static mut HELD_LIST: Blocks = Blocks::new();
    static mut FRAGMENT_LIST: Blocks = Blocks::new();
    static FRAGMENT_KEPT: AtomicU64 = AtomicU64::new(0);
    /// K of `fragment=K`; 0 without.
    static FRAGMENT_K: AtomicU64 = AtomicU64::new(0);
    let line = user::cmdline();
    if cpu == 0 {
        if let Err(e) = balloon::init(line, 0) {
            report_init_error(e);
        }
        let size = match cmdline::get(line, "size") {
            None => DEFAULT_SIZE,
            Some(v) => parse_size(v).unwrap_or_else(|| {
                user::fail(format_args!(
                    "size={v}: must be a whole number of 4 KiB pages, with an optional K/M/G suffix"
                ))
            }),
        };
        for key in ["seconds", "cycles", "linger"] {
            if let Some(v) = cmdline::get(line, key) {
                if v.parse::<u64>().is_err() {
                    user::fail(format_args!("{key}={v}: must be a whole number"));
                }
            }
        }
        let keep_one_in = cmdline::get(line, "fragment").map(|v| {
            v.parse::<u64>()
                .ok()
                .filter(|k| (2..=FRAGMENT_MAX).contains(k))
                .unwrap_or_else(|| {
                    user::fail(format_args!(
                        "fragment={v}: keep one page in K, K a whole number from 2 to {FRAGMENT_MAX}"
                    ))
                })
        });
        FREE_START.store(mm::free_pages_drained(), Relaxed);
        // SAFETY: CPU 0 alone writes the lists, before the barrier; the
        // others only read the held one after.
        let list = unsafe { &mut *core::ptr::addr_of_mut!(HELD_LIST) };
        HELD.store(take(0, size, GFP_HOLD, list), Relaxed);
        if let Some(k) = keep_one_in {
            // SAFETY: as above; no other CPU ever reads this one.
            let frag = unsafe { &mut *core::ptr::addr_of_mut!(FRAGMENT_LIST) };
            FRAGMENT_KEPT.store(fragment(0, k, frag), Relaxed);
            FRAGMENT_K.store(k, Relaxed);
        }
    }
    BARRIER.wait(ncpus);
    // SAFETY: read only from here until CPU 0 frees it after the last
    // barrier.
    let list = unsafe { &*core::ptr::addr_of!(HELD_LIST) };
    let seconds = cmdline::get(line, "seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let cycles: u64 = cmdline::get(line, "cycles")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let t0 = cpu::rdtsc();
    let mut steps = Steps::default();
    while !DONE.load(Relaxed) {
        let mut bad = 0;
        list.for_each(|i, pfn, order| {
            if i % ncpus as u64 == cpu as u64 && !DONE.load(Relaxed) {
                bad += touch(pfn, order);
                TOUCHES.fetch_add(1, Relaxed);
                balloon::service(cpu);
                if cpu == 0 {
                    steps.watch(t0, seconds, cycles);
                }
            }
        });
        ERRORS.fetch_add(bad, Relaxed);
        balloon::service(cpu);
        if cpu == 0 {
            steps.watch(t0, seconds, cycles);
        }
    }
    BARRIER.wait(ncpus);
    if cpu != 0 {
        return true;
    }
    let held_secs_ms = balloon::with(|b| (cpu::rdtsc() - t0) / b.tsc_per_ms).unwrap_or(0);

    // Reuse what is free now: pageblocks without reclaim, then order-0
    // pages that may reclaim (the OOM step deflates).
    let mut reuse = Blocks::new();
    let mut reused = take(0, u64::MAX / 2, GFP_HOLD, &mut reuse);
    let a = mm::allocator();
    while let Some(Pfn(p)) = a.alloc_pages(0, GFP_REUSE, 0) {
        if !reuse.push(0, p, 0) {
            let _ = a.free_pages(0, Pfn(p), 0);
            break;
        }
        fill(p, 0);
        reused += 1;
        // The driver's own work also goes on (an OOM deflate is reported
        // to the host in the hook itself).
        balloon::service(0);
    }
    let mut reuse_errors = 0;
    reuse.for_each(|_, pfn, order| reuse_errors += check(pfn, order));
    let reuse_free_errors = reuse.free(0);

    let mut held_errors = ERRORS.load(Relaxed);
    list.for_each(|_, pfn, order| held_errors += check(pfn, order));
    let held_blocks = list.len;
    // SAFETY: every other CPU is past the last barrier and done with it.
    let mut held_free_errors = unsafe { (*core::ptr::addr_of_mut!(HELD_LIST)).free(0) };
    // The pages the fragment step kept (every K-th it took) are checked
    // and freed with the held memory.
    // SAFETY: CPU 0 alone ever touches this list.
    let frag = unsafe { &mut *core::ptr::addr_of_mut!(FRAGMENT_LIST) };
    let k = FRAGMENT_K.load(Relaxed);
    if k > 0 {
        frag.for_each(|i, pfn, _| {
            if i % k == 0 {
                held_errors += check(pfn, 0);
            }
        });
        held_free_errors += frag.free_owned(0, |i| i % k == 0);
    }
    // The host stamps each record on arrival: this one marks the free that
    // free page reporting answers (`memvisor bench balloon` times the Rss
    // drop from it), one exit after the free.
    {
        let mut l = LINE.lock();
        l.begin(abi::RECORD_JSON);
        l.fmt(format_args!(
            "{{\"event\":\"balloon-freed\",\"pages\":{}}}",
            HELD.load(Relaxed)
        ));
        hostio::send(l.finish());
    }
    // The balloon's work after the frees goes on for `linger` ms, so that
    // free page reporting can hand them to the host.
    let linger: u64 = cmdline::get(line, "linger")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tpm, reported_before) =
        balloon::with(|b| (b.tsc_per_ms, b.c.reported_pages)).unwrap_or((1, 0));
    let freed_at = cpu::rdtsc();
    loop {
        balloon::service(0);
        if (cpu::rdtsc() - freed_at) / tpm >= linger {
            break;
        }
        core::hint::spin_loop();
    }
    let free_end = mm::free_pages_drained();
    let (c, mode, target, actual, pages, features, list_pages) = balloon::with(|b| {
        (
            b.c,
            b.mode,
            b.target,
            b.actual,
            b.pages(),
            b.features(),
            b.list_pages(),
        )
    })
    .unwrap_or((Counters::default(), Mode::Huge, 0, 0, 0, 0, 0));
    let held = HELD.load(Relaxed);
    let ok = held > 0
        && held_errors == 0
        && reuse_errors == 0
        && held_free_errors == 0
        && reuse_free_errors == 0
        && c.free_errors == 0
        && c.bad_used == 0
        && balloon::with(|b| b.error.is_none()).unwrap_or(false);
    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"workload\",\"name\":\"balloon-hold\",\"ok\":{ok},\"mode\":\"{}\",\
         \"held_pages\":{held},\"held_blocks\":{},\"touches\":{},\"held_errors\":{held_errors},\
         \"reused_pages\":{reused},\"reuse_errors\":{reuse_errors},\"free_errors\":{},\
         \"hold_ms\":{held_secs_ms},\"cycles_seen\":{},\"target\":{target},\"actual\":{actual},\
         \"reported_after_free\":{},\"fragment_kept_pages\":{},\"free_pages_start\":{},\"free_pages_end\":{free_end},\"balloon_pages\":{pages},\"list_pages\":{list_pages},\"features\":{features},\"balloon\":",
        mode.name(),
        held_blocks,
        TOUCHES.load(Relaxed),
        held_free_errors + reuse_free_errors,
        steps.cycles,
        c.reported_pages - reported_before,
        FRAGMENT_KEPT.load(Relaxed),
        FREE_START.load(Relaxed),
    ));
    counters_json(&mut l, &c);
    if let Some(Some(e)) = balloon::with(|b| b.error) {
        l.raw(",\"driver_error\":");
        l.string_fmt(format_args!("{e}"));
    }
    l.raw("}");
    hostio::send(l.finish());
    ok
}

fn report_init_error(e: VirtioError) -> ! {
    match e {
        VirtioError::NotFound { .. } => user::fail(format_args!(
            "balloon: virtio-balloon: {e}; memvisor adds one with --balloon"
        )),
        _ => user::fail(format_args!("balloon: virtio-balloon: {e}")),
    }
}

/// CPU 0's view of the host's moves: a `balloon` record whenever the
/// balloon reaches a new target, and the end of the hold.
#[derive(Default)]
struct Steps {
    last: (u32, u32),
    inflated: bool,
    cycles: u64,
    next_look: u64,
}

impl Steps {
    fn watch(&mut self, t0: u64, seconds: u64, cycles: u64) {
        let now = cpu::rdtsc();
        if now < self.next_look {
            return;
        }
        let Some((target, actual, tpm, c, changed)) =
            balloon::with(|b| (b.target, b.actual, b.tsc_per_ms, b.c, b.changed_tsc))
        else {
            DONE.store(true, Relaxed);
            return;
        };
        self.next_look = now + tpm;
        if (target, actual) != self.last {
            self.last = (target, actual);
            if target == actual {
                let mut l = LINE.lock();
                l.begin(abi::RECORD_JSON);
                l.fmt(format_args!(
                    "{{\"event\":\"balloon\",\"target\":{target},\"actual\":{actual},\
                     \"ms_since_change\":{},\"inflated_pages\":{},\"deflated_pages\":{},\
                     \"reported_pages\":{},\"oom_deflated_pages\":{}}}",
                    (now - changed) / tpm,
                    c.inflated_pages,
                    c.deflated_pages,
                    c.reported_pages,
                    c.oom_deflated_pages
                ));
                hostio::send(l.finish());
                if target > 0 {
                    self.inflated = true;
                } else if self.inflated {
                    self.inflated = false;
                    self.cycles += 1;
                }
            }
        }
        if (cycles > 0 && self.cycles >= cycles) || (now - t0) / tpm >= seconds * 1000 {
            DONE.store(true, Relaxed);
        }
    }
}

/// The driver's counters as a JSON object.
pub fn counters_json(l: &mut crate::json::Line, c: &Counters) {
    l.fmt(format_args!(
        "{{\"inflated_pages\":{},\"deflated_pages\":{},\"huge_units\":{},\"small_fallback_pages\":{},\
         \"inflate_buffers\":{},\"deflate_buffers\":{},\"inflate_batches\":{},\"deflate_batches\":{},\
         \"notifications\":{},\"interrupts\":{},\"config_changes\":{},\"alloc_failures\":{},\
         \"free_errors\":{},\"oom_calls\":{},\"oom_deflates\":{},\"oom_deflated_pages\":{},\
         \"stats_requests\":{},\"report_passes\":{},\"reports\":{},\"reported_blocks\":{},\
         \"reported_pages\":{},\"bad_used\":{},\"inflate_cycles\":{},\"deflate_cycles\":{}}}",
        c.inflated_pages,
        c.deflated_pages,
        c.huge_units,
        c.small_fallback_pages,
        c.inflate_buffers,
        c.deflate_buffers,
        c.inflate_batches,
        c.deflate_batches,
        c.notifications,
        c.interrupts,
        c.config_changes,
        c.alloc_failures,
        c.free_errors,
        c.oom_calls,
        c.oom_deflates,
        c.oom_deflated_pages,
        c.stats_requests,
        c.report_passes,
        c.reports,
        c.reported_blocks,
        c.reported_pages,
        c.bad_used,
        c.inflate_cycles,
        c.deflate_cycles,
    ));
}
