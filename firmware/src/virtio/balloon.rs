//! virtio-balloon driver (device ID 5, virtio 1.2 §5.5), following the
//! protocol as Linux's drivers/virtio/virtio_balloon.c speaks it, so it
//! works against any device that serves Linux ([NOT IN SEED]: the seed
//! does not describe ballooning).
//!
//! The host sets a target (`num_pages`, in 4 KiB pages) in the device
//! configuration and raises a configuration-change interrupt; the driver
//! inflates (takes pages from guest-mm and hands their PFNs to the host on
//! `inflateq`, after which the host may discard them) or deflates (tells
//! the host on `deflateq`, then gives the pages back to guest-mm) until the
//! balloon holds the target, writing `actual` after each batch.
//!
//! No scheduler: the interrupt only marks the IRQ pending (CPL0 stub), and
//! every vCPU's CPL3 loop calls [`service`] between units of its work. When
//! nothing is pending that is one atomic load and a TSC compare, so a
//! workload that holds memory and keeps busy never stops the balloon. The
//! first vCPU to see work takes the driver's lock and does it; the others
//! go on.
//!
//! Exits cost ~70 µs here, so: a buffer is a whole list page of 1024 PFNs
//! (`balloon_list`), a batch is up to a queue's worth of buffers behind one
//! QueueNotify (none when the device's `avail_event` says it is still
//! looking), and the driver asks for no used-buffer interrupts on the
//! inflate and deflate queues (EVENT_IDX `used_event`, or NO_INTERRUPT):
//! it watches the used ring in memory instead, which costs no exit.
//!
//! Two ways to fill the balloon (`balloon_mode=` on the command line):
//! `4k` takes single pages in the order guest-mm hands them out, as
//! Linux's driver does; `2m` (default) takes whole free pageblocks (order-9
//! allocations) and sends each as an aligned run of 512 PFNs, so the host
//! can free whole huge pages, and tops up with single pages when no
//! pageblock is left or less than one is wanted. Deflating frees what was
//! inflated, the most recent first (LIFO, as Linux), whole units only.
//!
//! Also: the stats queue (F_STATS_VQ, in `balloon_report`), free page
//! reporting (F_REPORTING, `balloon_report`), and deflate on OOM
//! (F_DEFLATE_ON_OOM): guest-mm's OOM hook ([`HOOKS`]) deflates a little
//! and lets the allocation retry.
use super::balloon_list::{Chunk, PfnStack, Popped, PFNS_PER_PAGE};
use super::balloon_report::{Reporter, Stats};
use super::queue::{Buffer, Virtqueue};
use super::{Pages, Transport, VirtioError, F_RING_EVENT_IDX, F_VERSION_1, INT_CONFIG_CHANGE};
use crate::arch::{cpu, irq::IRQ_PENDING};
use crate::{irq, mm};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use guest_mm::gfp::Gfp;
use guest_mm::page_alloc::ReclaimHooks;
use guest_mm::{Pfn, SpinLock, PAGE_SIZE};

pub const DEVICE_ID: u32 = 5;
/// Feature bits (§5.5.3).
pub const F_STATS_VQ: u64 = 1 << 1;
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
pub const F_REPORTING: u64 = 1 << 5;
pub const INFLATEQ: u16 = 0;
pub const DEFLATEQ: u16 = 1;
/// Config fields (§5.5.4): le32 num_pages (the target), le32 actual.
const CFG_NUM_PAGES: u64 = 0;
const CFG_ACTUAL: u64 = 4;
/// Descriptors per queue: at most this many list pages (64 Ki PFNs,
/// 256 MiB of 4 KiB pages or 4 GiB of pageblocks... in 2 MiB runs of 512
/// PFNs, 128 MiB) per batch and kick.
const QUEUE_SIZE: u16 = 64;
/// Movable like user memory, never below the min watermark's reserves,
/// no direct reclaim, no retries, no warnings: the balloon takes only what
/// is free (Linux: GFP_HIGHUSER_MOVABLE | __GFP_NOMEMALLOC | __GFP_NORETRY
/// | __GFP_NOWARN; we have no reclaim to run).
const GFP_BALLOON: Gfp = Gfp::MOVABLE
    .union(Gfp::NOWAIT)
    .union(Gfp::NORETRY)
    .union(Gfp::NOWARN);
/// Pages deflated per OOM call (Linux's `oom_pages` default, 1 MiB); at
/// least the topmost unit.
pub const OOM_PAGES: u64 = 256;
/// How often the service loop looks at work no interrupt announces
/// (reporting's delay, retries after the allocator ran dry), in ms.
const TICK_MS: u64 = 20;
/// After an inflate found no memory, wait this long before trying again.
const RETRY_MS: u64 = 200;
/// Longest wait for the device to use a batch (seconds of TSC at any rate
/// we run on).
const WAIT_CYCLES: u64 = 20_000_000_000;

/// `balloon_mode=4k|2m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Small,
    Huge,
}

impl Mode {
    pub fn parse(v: &str) -> Option<Mode> {
        match v {
            "4k" => Some(Mode::Small),
            "2m" => Some(Mode::Huge),
            _ => None,
        }
    }
    pub fn from_cmdline(cmdline: &str) -> Mode {
        crate::cmdline::get(cmdline, "balloon_mode")
            .and_then(Mode::parse)
            .unwrap_or(Mode::Huge)
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Small => "4k",
            Mode::Huge => "2m",
        }
    }
}

/// What the driver did, for the workload's report.
#[derive(Clone, Copy, Default, Debug)]
pub struct Counters {
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    /// Units sent whole as 2 MiB runs (2m mode).
    pub huge_units: u64,
    /// 2m mode: single pages taken because no pageblock was free.
    pub small_fallback_pages: u64,
    pub inflate_buffers: u64,
    pub deflate_buffers: u64,
    pub inflate_batches: u64,
    pub deflate_batches: u64,
    /// QueueNotify writes, all queues.
    pub notifications: u64,
    pub interrupts: u64,
    pub config_changes: u64,
    /// Inflates that found no memory (the target stays out of reach).
    pub alloc_failures: u64,
    /// Frees of deflated pages guest-mm refused (a bug if ever non-zero).
    pub free_errors: u64,
    pub oom_calls: u64,
    pub oom_deflates: u64,
    pub oom_deflated_pages: u64,
    pub stats_requests: u64,
    pub report_passes: u64,
    pub reported_blocks: u64,
    pub reported_pages: u64,
    pub reports: u64,
    /// Used elements that were not what the driver posted.
    pub bad_used: u64,
    /// TSC cycles spent inflating and deflating.
    pub inflate_cycles: u64,
    pub deflate_cycles: u64,
}

pub struct Balloon {
    pub t: Transport,
    pub features: u64,
    pub mode: Mode,
    inflateq: Virtqueue,
    deflateq: Virtqueue,
    _rings: [Pages; 2],
    list: PfnStack<'static>,
    _chunks: Pages,
    pub target: u32,
    /// Pages the device has been told about (written to `actual`).
    pub actual: u32,
    /// A deflate on OOM happened: no inflating until the host sets a
    /// target again (Linux re-inflates only on a configuration change).
    oom_hold: bool,
    retry_at: u64,
    pub(super) stats: Option<Stats>,
    pub(super) reporter: Option<Reporter>,
    pub c: Counters,
    pub tsc_per_ms: u64,
    /// TSC when the driver last read a new target.
    pub changed_tsc: u64,
    /// Set when the device failed; the driver then stops.
    pub error: Option<VirtioError>,
}

/// The driver, once a workload has brought it up.
static BALLOON: SpinLock<Option<Balloon>> = SpinLock::new(None);
/// The device's bit in `IRQ_PENDING`; 0 while there is no driver.
static IRQ_BIT: AtomicU32 = AtomicU32::new(0);
/// TSC at which [`service`] looks for work no interrupt announces.
static NEXT_TICK: AtomicU64 = AtomicU64::new(u64::MAX);

/// Finds the device on the command line and brings it up (§3.1.1) with its
/// IRQ routed to `cpu`. The balloon then follows the host's target from
/// every vCPU's calls to [`service`].
pub fn init(cmdline: &str, cpu: usize) -> Result<(), VirtioError> {
    let b = Balloon::new(cmdline, cpu)?;
    let bit = 1u32 << b.t.irq;
    *BALLOON.lock() = Some(b);
    IRQ_BIT.store(bit, Relaxed);
    NEXT_TICK.store(0, Relaxed);
    Ok(())
}

/// Pending driver work, done between units of a workload. Call with no
/// `CpuCache` of this CPU held (inflating allocates on `cpu`).
#[inline]
pub fn service(cpu: usize) {
    let bit = IRQ_BIT.load(Relaxed);
    if bit == 0 {
        return;
    }
    if IRQ_PENDING.load(Relaxed) & bit == 0 && cpu::rdtsc() < NEXT_TICK.load(Relaxed) {
        return;
    }
    service_slow(cpu);
}

#[inline(never)]
fn service_slow(cpu: usize) {
    let Some(mut g) = BALLOON.try_lock() else {
        return;
    };
    if let Some(b) = g.as_mut() {
        b.work(cpu);
        if b.error.is_some() {
            IRQ_BIT.store(0, Relaxed);
        }
    }
}

/// Runs `f` on the driver (None if there is none).
pub fn with<R>(f: impl FnOnce(&mut Balloon) -> R) -> Option<R> {
    BALLOON.lock().as_mut().map(f)
}

/// guest-mm's hooks: the OOM step deflates (F_DEFLATE_ON_OOM).
pub struct Hooks;
pub static HOOKS: Hooks = Hooks;

impl ReclaimHooks for Hooks {
    fn out_of_memory(&self, _node: usize, _order: usize) -> bool {
        if IRQ_BIT.load(Relaxed) == 0 {
            return false;
        }
        // Called with this CPU's per-CPU lock held, from an allocation the
        // driver never makes itself (it allocates without direct reclaim),
        // so whoever holds the driver's lock is not waiting for us: wait
        // for it, within reason.
        let start = cpu::rdtsc();
        let mut g = loop {
            if let Some(g) = BALLOON.try_lock() {
                break g;
            }
            if cpu::rdtsc() - start > WAIT_CYCLES {
                return false;
            }
            core::hint::spin_loop();
        };
        let Some(b) = g.as_mut() else {
            return false;
        };
        b.oom_deflate()
    }
}

/// How deflated pages go back to guest-mm.
#[derive(Clone, Copy)]
enum Freer {
    /// Through this CPU's per-CPU lists.
    Cpu(usize),
    /// From inside the allocator's OOM hook, where this CPU's lists are
    /// locked.
    Hook,
}

impl Balloon {
    fn new(cmdline: &str, cpu: usize) -> Result<Balloon, VirtioError> {
        let mut t = Transport::find(cmdline, DEVICE_ID)?;
        let features = t.negotiate(
            F_VERSION_1,
            F_RING_EVENT_IDX | F_STATS_VQ | F_DEFLATE_ON_OOM | F_REPORTING,
        )?;
        let event_idx = features & F_RING_EVENT_IDX != 0;
        let (inflateq, r0) = t.setup_queue(INFLATEQ, QUEUE_SIZE, event_idx, cpu)?;
        let (deflateq, r1) = t.setup_queue(DEFLATEQ, QUEUE_SIZE, event_idx, cpu)?;
        // Queues that exist are numbered consecutively: the reporting
        // queue is 3 after a stats queue, else 2 (Linux's find_vqs skips
        // absent ones; FREE_PAGE_HINT, index 3 in the spec's table, is
        // never negotiated).
        let mut next = DEFLATEQ + 1;
        let stats = if features & F_STATS_VQ != 0 {
            next += 1;
            Some(Stats::setup(&mut t, next - 1, event_idx, cpu)?)
        } else {
            None
        };
        let reporter = if features & F_REPORTING != 0 {
            Some(Reporter::setup(&mut t, next, event_idx, cpu)?)
        } else {
            None
        };
        // One chunk per list page of 1024 PFNs for all of RAM, and slack
        // for list pages left part full when the unit order changes.
        let total = mm::allocator().total_managed_pages();
        let nchunks = (total as usize).div_ceil(PFNS_PER_PAGE) + 256;
        let chunk_pages =
            Pages::alloc(cpu, nchunks * core::mem::size_of::<Chunk>()).inspect_err(|_| t.fail())?;
        // SAFETY: freshly allocated, identity mapped, large enough, kept in
        // the driver (which is never dropped) for as long as the list.
        let chunks =
            unsafe { core::slice::from_raw_parts_mut(chunk_pages.addr as *mut Chunk, nchunks) };
        t.route_irq()?;
        let tsc_per_ms = irq::tsc_per_ms();
        t.driver_ok()?;
        let mut b = Balloon {
            features,
            mode: Mode::from_cmdline(cmdline),
            inflateq,
            deflateq,
            _rings: [r0, r1],
            list: PfnStack::new(chunks),
            _chunks: chunk_pages,
            target: 0,
            actual: 0,
            oom_hold: false,
            retry_at: 0,
            stats,
            reporter,
            c: Counters::default(),
            tsc_per_ms,
            changed_tsc: cpu::rdtsc(),
            error: None,
            t,
        };
        b.t.config_write32(CFG_ACTUAL, 0);
        b.target = b.t.config_read32(CFG_NUM_PAGES);
        if let Some(s) = b.stats.as_mut() {
            // The device holds the first stats buffer until it wants
            // fresh numbers (§5.5.6.3).
            b.c.notifications += s.post(&b.t) as u64;
        }
        Ok(b)
    }

    pub fn features(&self) -> u64 {
        self.features
    }

    /// Pages the balloon holds (what `actual` says once written).
    pub fn pages(&self) -> u64 {
        self.list.pages()
    }

    /// List pages holding the balloon's PFNs.
    pub fn list_pages(&self) -> usize {
        self.list.list_pages()
    }

    fn work(&mut self, cpu: usize) {
        let now = cpu::rdtsc();
        NEXT_TICK.store(now + TICK_MS * self.tsc_per_ms, Relaxed);
        match self.t.service_interrupt() {
            Ok(Some(isr)) => {
                self.c.interrupts += 1;
                if isr & INT_CONFIG_CHANGE != 0 {
                    self.c.config_changes += 1;
                    let target = self.t.config_read32(CFG_NUM_PAGES);
                    if target != self.target {
                        self.changed_tsc = now;
                    }
                    self.target = target;
                    self.oom_hold = false;
                    self.retry_at = 0;
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.error = Some(e);
                return;
            }
        }
        if let Some(s) = self.stats.as_mut() {
            match s.service(&self.t) {
                Ok(n) => {
                    self.c.stats_requests += n.requests;
                    self.c.notifications += n.notifications;
                }
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
        if let Err(e) = self.resize(cpu, now) {
            self.error = Some(e);
            return;
        }
        if let Some(r) = self.reporter.as_mut() {
            match r.service(&self.t, now, self.tsc_per_ms) {
                Ok(n) => {
                    self.c.report_passes += n.passes;
                    self.c.reports += n.reports;
                    self.c.reported_blocks += n.blocks;
                    self.c.reported_pages += n.pages;
                    self.c.notifications += n.notifications;
                    if n.more {
                        NEXT_TICK.store(0, Relaxed);
                    }
                }
                Err(e) => self.error = Some(e),
            }
        }
    }

    /// Inflates or deflates until the balloon holds the target, or the
    /// allocator has nothing more to give.
    fn resize(&mut self, cpu: usize, now: u64) -> Result<(), VirtioError> {
        loop {
            let (target, actual) = (self.target as u64, self.list.pages());
            if actual < target && !self.oom_hold {
                if now < self.retry_at {
                    return Ok(());
                }
                let t0 = cpu::rdtsc();
                let got = self.inflate_batch(cpu, target - actual)?;
                self.c.inflate_cycles += cpu::rdtsc() - t0;
                if got == 0 {
                    self.c.alloc_failures += 1;
                    self.retry_at = now + RETRY_MS * self.tsc_per_ms;
                    return Ok(());
                }
            } else if actual > target {
                let t0 = cpu::rdtsc();
                let got = self.deflate_batch(Freer::Cpu(cpu), actual - target)?;
                self.c.deflate_cycles += cpu::rdtsc() - t0;
                if got == 0 {
                    return Ok(());
                }
            } else {
                return Ok(());
            }
        }
    }

    /// Takes up to `want` pages from guest-mm into the list, then hands
    /// them to the host in one kick. Returns the pages added.
    fn inflate_batch(&mut self, cpu: usize, want: u64) -> Result<u64, VirtioError> {
        let from = self.list.end();
        let max_chunks = self.inflateq.num_free() as usize;
        let mut added = 0u64;
        let mut huge = self.mode == Mode::Huge;
        {
            let mut c = mm::allocator().cpu(cpu);
            while added < want {
                let order = if huge && want - added >= 512 { 9 } else { 0 };
                if !self.list.fits_top(order) && self.list.chunks_since(from) >= max_chunks {
                    break;
                }
                let Some(Pfn(pfn)) = c.alloc(GFP_BALLOON, order as usize) else {
                    if order == 9 {
                        // No whole pageblock left: single pages from here.
                        huge = false;
                        continue;
                    }
                    break;
                };
                let pushed = self.list.push(pfn as u32, order, || {
                    c.alloc(Gfp::NOWAIT, 0).map(|Pfn(p)| p * PAGE_SIZE)
                });
                if pushed.is_err() {
                    let _ = c.free(Pfn(pfn), order as usize);
                    break;
                }
                added += 1 << order;
                if order == 9 {
                    self.c.huge_units += 1;
                } else if self.mode == Mode::Huge {
                    self.c.small_fallback_pages += 1;
                }
            }
        }
        if added == 0 {
            return Ok(0);
        }
        let to = self.list.end();
        let mut n = 0;
        for (addr, len) in self.list.ranges(from, to) {
            let buf = Buffer {
                addr,
                len,
                device_writes: false,
            };
            self.inflateq.add(&[buf]).expect("room checked above");
            n += 1;
        }
        self.c.inflate_buffers += n;
        self.c.inflate_batches += 1;
        Self::kick_and_wait(&self.t, &mut self.inflateq, n as u16, &mut self.c)?;
        self.c.inflated_pages += added;
        self.actual = self.list.pages() as u32;
        self.t.config_write32(CFG_ACTUAL, self.actual);
        Ok(added)
    }

    /// Tells the host about up to `want` pages from the top of the list,
    /// then frees them. Returns the pages given back.
    fn deflate_batch(&mut self, freer: Freer, want: u64) -> Result<u64, VirtioError> {
        let max = self.deflateq.num_free() as usize;
        let (pos, got) = self.list.pop_position(want, max);
        if got == 0 {
            return Ok(0);
        }
        let mut n = 0;
        for (addr, len) in self.list.ranges(pos, self.list.end()) {
            let buf = Buffer {
                addr,
                len,
                device_writes: false,
            };
            self.deflateq.add(&[buf]).expect("room checked above");
            n += 1;
        }
        self.c.deflate_buffers += n;
        self.c.deflate_batches += 1;
        Self::kick_and_wait(&self.t, &mut self.deflateq, n as u16, &mut self.c)?;
        let a = mm::allocator();
        let mut errors = 0;
        let mut free = |pfn: u64, order: usize| {
            let r = match freer {
                Freer::Cpu(cpu) => a.free_pages(cpu, Pfn(pfn), order),
                Freer::Hook => a.free_from_hook(Pfn(pfn), order),
            };
            errors += r.is_err() as u64;
        };
        self.list.truncate(pos, |p| match p {
            Popped::Unit { pfn, order } => free(pfn as u64, order as usize),
            Popped::ListPage(addr) => free(addr / PAGE_SIZE, 0),
        });
        self.c.free_errors += errors;
        self.c.deflated_pages += got;
        self.actual = self.list.pages() as u32;
        self.t.config_write32(CFG_ACTUAL, self.actual);
        Ok(got)
    }

    fn oom_deflate(&mut self) -> bool {
        self.c.oom_calls += 1;
        if self.features & F_DEFLATE_ON_OOM == 0 || self.error.is_some() {
            return false;
        }
        let want = OOM_PAGES.max(self.list.top_unit_pages());
        match self.deflate_batch(Freer::Hook, want) {
            Ok(0) => false,
            Ok(got) => {
                self.c.oom_deflates += 1;
                self.c.oom_deflated_pages += got;
                self.oom_hold = true;
                true
            }
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    /// Publishes what was added to `q`, notifies if the device asked, and
    /// waits (watching the used ring, no interrupt) until all `n` chains
    /// are back.
    pub(super) fn kick_and_wait(
        t: &Transport,
        q: &mut Virtqueue,
        n: u16,
        c: &mut Counters,
    ) -> Result<(), VirtioError> {
        q.interrupt_after(0);
        if q.publish() {
            t.notify(q);
            c.notifications += 1;
        }
        let start = cpu::rdtsc();
        let mut done = 0;
        while done < n {
            match q.pop_used() {
                Ok(Some(_)) => done += 1,
                Ok(None) => {
                    if cpu::rdtsc() - start > WAIT_CYCLES {
                        t.check()?;
                        return Err(VirtioError::Timeout {
                            in_flight: q.in_flight(),
                        });
                    }
                    core::hint::spin_loop();
                }
                Err(e) => {
                    c.bad_used += 1;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}
