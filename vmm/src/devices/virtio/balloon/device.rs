//! The balloon's state and its queue processing.
//!
//! Threads: `activate` and config-space access arrive on vCPU threads (the
//! transport holds the device lock); queue work, the stats timer and target
//! changes from the API run on the event loop; MADV_COLLAPSE and smaps
//! reads run on the collapse worker (`collapse.rs`).
//!
//! One pass over a queue serves every available chain (at most
//! [`MAX_CHAINS_PER_PASS`], or until [`MAX_PFN_BYTES_PER_PASS`] are read,
//! then it kicks itself), discards the pass's
//! pages coalesced into ranges, and only then returns the chains to the
//! guest, with at most one interrupt: a guest that waits for its buffer
//! (Linux's `tell_host` does) sees the host's Rss already dropped. The
//! pages of a pass are kept as runs of consecutive PFNs, and flushed early
//! once [`MAX_RUNS`] runs pile up, so a pass's memory is bounded whatever
//! the guest sends.
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::chain::{Buf, ChainWalker, Payload};
use super::collapse::{CollapseWorker, Job, DEFAULT_COLLAPSE_DELAY};
use super::metrics::{BalloonMetrics, BalloonReport, Shared, Step, ThpPoint, MAX_STEPS};
pub use super::page_map::PageMap;
use super::{
    queue_index, queue_role, BalloonConfig, BalloonError, QueueRole, Reject, BALLOON_MAX_QUEUES,
    BALLOON_PAGE, BALLOON_QUEUE_SIZE, CONFIG_ACTUAL, CONFIG_SIZE, HUGE_PAGE, PFN_SHIFT,
    STAT_ENTRY_SIZE, VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_ID_BALLOON,
};
use crate::clock::{now_ns, since_origin_us};
use crate::devices::virtio::{
    needs_interrupt, ActivateError, IrqTrigger, VirtQueue, VirtioDevice, VIRTIO_MMIO_INT_VRING,
};
use crate::memory::{coalesce, GuestMemory, GuestRam, MemoryError};

/// Most chains served per wake-up, so one guest cannot hold the event loop.
pub const MAX_CHAINS_PER_PASS: usize = BALLOON_QUEUE_SIZE as usize;
/// PFN bytes after which a pass takes no more chains (and kicks itself),
/// one largest chain's worth: 1 Mi PFNs, 4 GiB of guest pages. The chain
/// cap alone is no bound: the overlap check is per chain, so 256 chains
/// may all point at one 4 MiB array: 16 such chains of scattered PFNs took
/// 1.9 s here, so a full queue held the event loop and the device lock
/// for ~30 s a pass.
pub const MAX_PFN_BYTES_PER_PASS: u64 = super::chain::MAX_PFN_BYTES_PER_CHAIN;
/// Runs of PFNs gathered before the pass discards what it has (16 bytes
/// each: 128 KiB at most).
pub const MAX_RUNS: usize = 8192;

/// What the balloon needs from guest RAM on the host. `GuestRam` is the
/// real one; tests wrap it to watch every call.
pub trait HostMemory: Send + Sync {
    /// Gives `[gpa, gpa + len)` back to the host (checked there too).
    fn discard(&self, gpa: u64, len: u64) -> Result<(), MemoryError>;
    /// [`Self::discard`] for each range, in as few calls to the kernel as
    /// the host allows; `done` hears of every range once.
    fn discard_many(
        &self,
        ranges: &[(u64, u64)],
        done: &mut dyn FnMut(u64, u64, Result<(), MemoryError>),
    ) {
        for &(gpa, len) in ranges {
            done(gpa, len, self.discard(gpa, len));
        }
    }
    /// Rebuilds huge pages over `[gpa, gpa + len)`.
    fn collapse(&self, gpa: u64, len: u64) -> Result<(), MemoryError>;
    /// Pages (4 KiB) of `[gpa, gpa + len)` the host holds now; None if
    /// the range cannot be asked about.
    fn resident(&self, gpa: u64, len: u64) -> Option<u64>;
    /// The smallest range the backing can discard (4 KiB, 2 MiB hugetlb).
    fn page_size(&self) -> u64;
    /// (Rss, AnonHugePages) of guest RAM in bytes, if smaps can be read.
    fn usage(&self) -> Option<(u64, u64)>;
}

impl HostMemory for GuestRam {
    fn discard(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        GuestRam::discard(self, GuestAddress(gpa), len)
    }
    fn discard_many(
        &self,
        ranges: &[(u64, u64)],
        done: &mut dyn FnMut(u64, u64, Result<(), MemoryError>),
    ) {
        GuestRam::discard_many(self, ranges, done)
    }
    fn collapse(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        GuestRam::collapse(self, GuestAddress(gpa), len)
    }
    fn resident(&self, gpa: u64, len: u64) -> Option<u64> {
        self.resident_pages(gpa, len).ok()
    }
    fn page_size(&self) -> u64 {
        self.config().backing.page_size()
    }
    fn usage(&self) -> Option<(u64, u64)> {
        let s = crate::memory::rss::smaps_of(&self.host_ranges()).ok()?;
        Some((s.rss, s.anon_huge))
    }
}

/// What the device holds between DRIVER_OK and reset.
struct Active {
    mem: GuestMemory,
    /// By transport index; roles from [`queue_role`].
    queues: Vec<Queue>,
    interrupt: Arc<IrqTrigger>,
}

pub struct Balloon {
    cfg: BalloonConfig,
    acked_features: u64,
    queue_max: [u16; BALLOON_MAX_QUEUES],
    num_pages: u32,
    actual: u32,
    /// Guest RAM in balloon pages: no `actual` can exceed it.
    ram_pages: u64,
    active: Option<Active>,
    /// Clones of the transport's queue EventFds, kept from the first
    /// activation on and registered with epoll once (see the entropy
    /// device for why they stay across resets).
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) queue_evts_registered: bool,
    pub(super) activate_evt: EventFd,
    pub(super) stats_timer: TimerFd,
    stats_head: Option<u16>,
    host: Arc<dyn HostMemory>,
    shared: Arc<Shared>,
    inflated: Arc<Mutex<PageMap>>,
    worker: CollapseWorker,
    walker: ChainWalker,
    bufs: Vec<Buf>,
    runs: Vec<(u64, u64)>,
    /// Heads of the pass, returned once its discards are done.
    done: Vec<u16>,
    /// [`MAX_CHAINS_PER_PASS`]; lowered by tests.
    pub(super) max_chains_per_pass: usize,
    /// [`MAX_PFN_BYTES_PER_PASS`]; lowered by tests.
    pub(super) max_pfn_bytes_per_pass: u64,
}

impl Balloon {
    /// A balloon over `ram` (guest RAM of `ram_bytes`, ending at `ram_end`)
    /// with the target `cfg.amount_mib`.
    pub fn new(
        cfg: &BalloonConfig,
        host: Arc<dyn HostMemory>,
        ram_bytes: u64,
        ram_end: u64,
    ) -> Result<Self, BalloonError> {
        Self::with_collapse_delay(cfg, host, ram_bytes, ram_end, DEFAULT_COLLAPSE_DELAY)
    }

    pub fn with_collapse_delay(
        cfg: &BalloonConfig,
        host: Arc<dyn HostMemory>,
        ram_bytes: u64,
        ram_end: u64,
        delay: Duration,
    ) -> Result<Self, BalloonError> {
        cfg.validate(ram_bytes)?;
        let stats_timer = TimerFd::new().map_err(|e| BalloonError::Fd(e.into()))?;
        crate::devices::virtio::set_nonblocking(&stats_timer).map_err(BalloonError::Fd)?;
        let shared = Arc::new(Shared::default());
        let inflated = Arc::new(Mutex::new(PageMap::new(ram_end)));
        let worker = CollapseWorker::spawn(host.clone(), shared.clone(), inflated.clone(), delay)
            .map_err(BalloonError::Worker)?;
        let mut b = Balloon {
            cfg: *cfg,
            acked_features: 0,
            queue_max: [BALLOON_QUEUE_SIZE; BALLOON_MAX_QUEUES],
            num_pages: 0,
            actual: 0,
            ram_pages: ram_bytes / BALLOON_PAGE,
            active: None,
            queue_evts: Vec::new(),
            queue_evts_registered: false,
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(BalloonError::Fd)?,
            stats_timer,
            stats_head: None,
            host,
            shared,
            inflated,
            worker,
            walker: ChainWalker::default(),
            bufs: Vec::new(),
            runs: Vec::new(),
            done: Vec::new(),
            max_chains_per_pass: MAX_CHAINS_PER_PASS,
            max_pfn_bytes_per_pass: MAX_PFN_BYTES_PER_PASS,
        };
        b.set_pages(super::mib_to_pages(cfg.amount_mib));
        Ok(b)
    }

    pub fn config(&self) -> BalloonConfig {
        BalloonConfig {
            amount_mib: super::pages_to_mib(self.num_pages),
            ..self.cfg
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub fn num_pages(&self) -> u32 {
        self.num_pages
    }

    pub fn actual(&self) -> u32 {
        self.actual
    }

    pub fn metrics(&self) -> &BalloonMetrics {
        &self.shared.metrics
    }

    pub fn report(&self) -> BalloonReport {
        BalloonReport::new(self.num_pages, self.actual, &self.shared)
    }

    /// `PATCH /balloon`: a new target, told to the driver with a config
    /// change interrupt. Firecracker refuses it until the driver is up.
    pub fn update_target(&mut self, amount_mib: u32) -> Result<(), BalloonError> {
        super::check_amount(amount_mib, self.ram_pages * BALLOON_PAGE)?;
        let Some(act) = &self.active else {
            return Err(BalloonError::DeviceNotActive);
        };
        let irq = act.interrupt.clone();
        if self.set_pages(super::mib_to_pages(amount_mib)) {
            BalloonMetrics::add(&self.shared.metrics.config_interrupts, 1);
            _ = irq.notify_config_change();
        }
        Ok(())
    }

    /// `PATCH /balloon/statistics`: the interval may change, stats may not
    /// be turned on or off after boot (Firecracker's rule).
    pub fn update_stats_interval(&mut self, secs: u16) -> Result<(), BalloonError> {
        let now = self.cfg.stats_polling_interval_s;
        if now == secs {
            return Ok(());
        }
        if now == 0 || secs == 0 {
            return Err(BalloonError::InvalidStatsUpdate);
        }
        self.cfg.stats_polling_interval_s = secs;
        if self.stats_active() {
            self.arm_stats_timer();
        }
        Ok(())
    }

    pub fn stats_enabled(&self) -> bool {
        self.cfg.stats_polling_interval_s > 0
    }

    fn stats_active(&self) -> bool {
        self.active.is_some() && self.acked_features & (1 << VIRTIO_BALLOON_F_STATS_VQ) != 0
    }

    fn arm_stats_timer(&mut self) {
        let every = Duration::from_secs(self.cfg.stats_polling_interval_s.into());
        // A timer that cannot be armed leaves stats as last sent.
        _ = self.stats_timer.reset(every, Some(every));
    }

    /// Records the new target and the step it starts; true if it changed.
    fn set_pages(&mut self, pages: u32) -> bool {
        if pages == self.num_pages {
            return false;
        }
        let step = Step {
            kind: if pages > self.actual {
                "inflate"
            } else {
                "deflate"
            },
            from_pages: self.actual,
            to_pages: pages,
            target_set_us: since_origin_us(now_ns()),
            ..Default::default()
        };
        let mut t = self.shared.timeline();
        if t.steps.len() == MAX_STEPS {
            t.steps.remove(0);
            t.steps_dropped += 1;
        }
        t.steps.push(step);
        drop(t);
        self.num_pages = pages;
        true
    }

    /// The guest wrote `actual`: close the open step when it matches.
    fn set_actual(&mut self, actual: u32) {
        self.actual = actual;
        if actual != self.num_pages {
            return;
        }
        let mut t = self.shared.timeline();
        let n = t.steps.len();
        let Some(s) = t.steps.last_mut().filter(|s| s.actual_reached_ms.is_none()) else {
            return;
        };
        s.actual_reached_ms = Some((since_origin_us(now_ns()) - s.target_set_us) / 1000.0);
        let job = if s.kind == "inflate" {
            Job::AfterInflate(n - 1)
        } else {
            Job::AfterDeflate(n - 1)
        };
        drop(t);
        self.worker.send(job);
    }

    /// Teardown: collapse what is pending and stop the worker (no collapse
    /// after this), so the report that follows is complete.
    pub fn finish_collapses(&mut self) {
        self.worker.finish();
    }

    /// Collapse deflated blocks now instead of after the delay.
    pub fn flush_collapses(&self) {
        self.worker.send(Job::Flush);
    }

    /// Serves the queue with transport index `index`; returns the chains
    /// completed.
    pub fn process_queue(&mut self, index: usize) -> usize {
        let Some(role) = queue_role(index, self.acked_features) else {
            return 0;
        };
        if self
            .active
            .as_ref()
            .is_none_or(|a| !a.queues[index].ready())
        {
            return 0;
        }
        let payload = match role {
            QueueRole::Inflate | QueueRole::Deflate => Payload::Pfns,
            QueueRole::Stats => Payload::Stats,
            QueueRole::Reporting => Payload::Ranges,
        };
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let mut seen = 0;
        let mut pfn_bytes = 0u64;
        self.done.clear();
        'batch: loop {
            let act = self.active.as_mut().expect("checked above");
            let q = &mut act.queues[index];
            if q.disable_notification(&act.mem).is_err() {
                break;
            }
            loop {
                let act = self.active.as_mut().expect("checked above");
                let q = &mut act.queues[index];
                // Not `pop_descriptor_chain`: it logs every refusal. A
                // refused avail ring ends the pass (see the entropy device).
                let head = match q.iter(&act.mem) {
                    Ok(mut avail) => avail.next().map(|c| c.head_index()),
                    Err(_) => {
                        m.reject(Reject::AvailRing);
                        break 'batch;
                    }
                };
                let Some(head) = head else { break };
                if seen == self.max_chains_per_pass || pfn_bytes >= self.max_pfn_bytes_per_pass {
                    q.go_to_previous_position();
                    if let Some(evt) = self.queue_evts.get(index) {
                        _ = evt.write(1);
                    }
                    break 'batch;
                }
                seen += 1;
                let (mem, table, size) = (act.mem.clone(), q.desc_table(), q.size());
                let mut bufs = std::mem::take(&mut self.bufs);
                bufs.clear();
                match self.walker.walk(&mem, table, size, head, payload) {
                    Err(Reject::HeadOutOfRange) => m.reject(Reject::HeadOutOfRange),
                    Err(r) => {
                        m.reject(r);
                        self.done.push(head);
                    }
                    Ok(b) => bufs.extend_from_slice(b),
                }
                if !bufs.is_empty() {
                    match role {
                        QueueRole::Inflate | QueueRole::Deflate => {
                            pfn_bytes += bufs.iter().map(|b| u64::from(b.len)).sum::<u64>();
                            self.take_pfns(&mem, &bufs, role);
                            self.done.push(head);
                        }
                        QueueRole::Reporting => {
                            self.take_ranges(&bufs);
                            self.done.push(head);
                        }
                        // Held until the stats timer fires.
                        QueueRole::Stats => self.take_stats(&mem, &bufs, head),
                    }
                }
                self.bufs = bufs;
            }
            let act = self.active.as_mut().expect("checked above");
            match act.queues[index].enable_notification(&act.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        self.flush(role);
        let heads = std::mem::take(&mut self.done);
        let n = heads.len();
        self.give_back(index, &heads);
        self.done = heads;
        n
    }

    /// Returns `heads` with used length 0 and interrupts once if the
    /// driver wants it.
    fn give_back(&mut self, index: usize, heads: &[u16]) {
        let Some(act) = self.active.as_mut() else {
            return;
        };
        let q = &mut act.queues[index];
        let mut any = false;
        for &h in heads {
            // The head is below the queue size (checked by the walker) and
            // the used ring in RAM (checked at QueueReady).
            any |= q.add_used(&act.mem, h, 0).is_ok();
        }
        if any && needs_interrupt(q, &act.mem) {
            BalloonMetrics::add(&self.shared.metrics.interrupts, 1);
            _ = act.interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
    }

    /// Adds a page range to the pass's runs, flushing when they are many.
    fn push_run(&mut self, gpa: u64, len: u64, role: QueueRole) {
        match self.runs.last_mut() {
            Some(last) if last.0 + last.1 == gpa => last.1 += len,
            _ => self.runs.push((gpa, len)),
        }
        if self.runs.len() >= MAX_RUNS {
            self.flush(role);
        }
    }

    /// Acts on the pass's runs as the queue `role` asks.
    fn flush(&mut self, role: QueueRole) {
        match role {
            QueueRole::Inflate => self.flush_discard(true),
            // Reported pages are the guest's free memory, not the
            // balloon's: it takes them back without a word, so they must
            // not keep a deflated block from its collapse (the collapse
            // worker's residency check keeps it from refilling them).
            QueueRole::Reporting => self.flush_discard(false),
            QueueRole::Deflate => self.flush_deflate(),
            QueueRole::Stats => {}
        }
    }

    fn take_pfns(&mut self, mem: &GuestMemory, bufs: &[Buf], role: QueueRole) {
        let inflate = role == QueueRole::Inflate;
        let m = self.shared.clone();
        let m = &m.metrics;
        let mut scratch = [0u8; 4096];
        let mut pages = 0u64;
        for b in bufs {
            let mut off = 0u64;
            while off < u64::from(b.len) {
                let n = (u64::from(b.len) - off).min(scratch.len() as u64) as usize;
                // Checked in RAM by the walker.
                if mem
                    .read_slice(&mut scratch[..n], GuestAddress(b.addr + off))
                    .is_err()
                {
                    m.reject(Reject::BufferOutsideRam);
                    break;
                }
                for p in scratch[..n].chunks_exact(4) {
                    let pfn = u64::from(u32::from_le_bytes(p.try_into().unwrap()));
                    let gpa = pfn << PFN_SHIFT;
                    if pfn >= super::MAX_PFN
                        || !GuestMemoryBackend::check_range(
                            mem,
                            GuestAddress(gpa),
                            BALLOON_PAGE as usize,
                        )
                    {
                        m.reject(Reject::PfnOutsideRam);
                        continue;
                    }
                    pages += 1;
                    self.push_run(gpa, BALLOON_PAGE, role);
                }
                off += n as u64;
            }
        }
        if inflate {
            BalloonMetrics::add(&m.inflate_requests, 1);
            BalloonMetrics::add(&m.inflate_pages, pages);
        } else {
            BalloonMetrics::add(&m.deflate_requests, 1);
            BalloonMetrics::add(&m.deflate_pages, pages);
        }
    }

    /// Reported free ranges (checked page-aligned and in RAM by the walker).
    fn take_ranges(&mut self, bufs: &[Buf]) {
        let mut pages = 0;
        for b in bufs {
            pages += u64::from(b.len) / BALLOON_PAGE;
            self.push_run(b.addr, b.len.into(), QueueRole::Reporting);
        }
        let m = &self.shared.metrics;
        BalloonMetrics::add(&m.report_requests, 1);
        BalloonMetrics::add(&m.report_pages, pages);
    }

    fn take_stats(&mut self, mem: &GuestMemory, bufs: &[Buf], head: u16) {
        let m = &self.shared.metrics;
        let mut entry = [0u8; STAT_ENTRY_SIZE as usize];
        let mut stats = *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        for b in bufs {
            for i in 0..b.len / STAT_ENTRY_SIZE {
                let at = b.addr + u64::from(i * STAT_ENTRY_SIZE);
                if mem.read_slice(&mut entry, GuestAddress(at)).is_err() {
                    continue;
                }
                let tag = u16::from_le_bytes([entry[0], entry[1]]);
                let val = u64::from_le_bytes(entry[2..].try_into().unwrap());
                stats.set(tag, val);
            }
        }
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        BalloonMetrics::add(&m.stats_updates, 1);
        // The driver keeps one buffer with us; a second one means it is
        // not following the protocol: give the old one back.
        if let Some(old) = self.stats_head.replace(head) {
            m.reject(Reject::ExtraStatsBuffer);
            self.done.push(old);
        }
    }

    /// The stats timer fired: hand the held buffer back, so the driver
    /// refills it with fresh numbers.
    pub fn request_stats(&mut self) {
        let Some(index) = queue_index(QueueRole::Stats, self.acked_features) else {
            return;
        };
        if let Some(head) = self.stats_head.take() {
            self.give_back(index, &[head]);
        }
    }

    /// Discards the pass's runs (inflate or reporting), merged into as few
    /// ranges as possible, each range in one call so whole 2 MiB blocks go
    /// back whole. `in_balloon`: the pages are inflated (marked in the map
    /// until deflated), not reported.
    fn flush_discard(&mut self, in_balloon: bool) {
        if self.runs.is_empty() {
            return;
        }
        let ranges = coalesce(self.runs.drain(..));
        // Before the first inflate's discards (reporting's do not count:
        // they come and go with the guest's frees).
        let first = in_balloon && self.shared.timeline().thp_before_inflate.is_none();
        if first {
            if let Some((rss, huge)) = self.host.usage() {
                let p = ThpPoint::new(since_origin_us(now_ns()), rss, huge);
                self.shared.timeline().thp_before_inflate = Some(p);
            }
        }
        let m = &self.shared.metrics;
        let page = self.host.page_size().max(BALLOON_PAGE);
        // Held across the discards: the collapse worker must not rebuild a
        // block between its pages being marked and being discarded.
        let mut map = self.inflated.lock().unwrap_or_else(|p| p.into_inner());
        let mut whole = Vec::with_capacity(ranges.len());
        for &(gpa, len) in &ranges {
            // A hugetlb backing frees only whole huge pages. Inflated
            // pages stay in the map, so a huge page whose last pages come
            // in this pass is whole too: Linux's driver sends 256 PFNs
            // (1 MiB) a chain and waits for each, so no pass of its alone
            // ever covers a 2 MiB page.
            let (mut start, mut end) = (gpa.next_multiple_of(page), (gpa + len) / page * page);
            if in_balloon {
                map.set(gpa, len, true);
                if page > BALLOON_PAGE {
                    let (below, above) = (gpa / page * page, (gpa + len).next_multiple_of(page));
                    if below < start && map.all_in(below, page) {
                        start = below;
                    }
                    if above > end && map.all_in(end, page) {
                        end = above;
                    }
                }
            }
            // Ranges come sorted: a huge page two of them complete goes
            // once.
            if let Some(&(s, l)) = whole.last() {
                start = start.max(s + l);
            }
            if end > start {
                whole.push((start, end - start));
            }
        }
        self.host
            .discard_many(&whole, &mut |start, len, r| match r {
                Ok(()) => {
                    BalloonMetrics::add(&m.discards, 1);
                    BalloonMetrics::add(&m.discarded_bytes, len);
                    BalloonMetrics::add(&m.whole_2m_freed, whole_blocks(start, start + len));
                }
                Err(_) => BalloonMetrics::add(&m.discard_errors, 1),
            });
        drop(map);
        let mut t = self.shared.timeline();
        if let Some(s) = t
            .steps
            .last_mut()
            .filter(|s| s.kind == "inflate" && s.actual_reached_ms.is_none())
        {
            s.rss_done_ms = Some((since_origin_us(now_ns()) - s.target_set_us) / 1000.0);
        }
    }

    /// Deflated pages leave the balloon; the 2 MiB blocks they touch go to
    /// the collapse worker.
    fn flush_deflate(&mut self) {
        if self.runs.is_empty() {
            return;
        }
        let ranges = coalesce(self.runs.drain(..));
        let mut blocks = Vec::new();
        let mut map = self.inflated.lock().unwrap_or_else(|p| p.into_inner());
        for &(gpa, len) in &ranges {
            map.set(gpa, len, false);
            let mut b = gpa / HUGE_PAGE * HUGE_PAGE;
            while b < gpa + len {
                if blocks.last() != Some(&b) {
                    blocks.push(b);
                }
                b += HUGE_PAGE;
            }
        }
        drop(map);
        // Blocks past the last whole one of a region are refused by
        // `collapse` and counted as errors there.
        self.worker.collapse_later(blocks);
    }

    pub(super) fn queue_index_of_fd(&self, fd: i32) -> Option<usize> {
        self.queue_evts.iter().position(|e| e.as_raw_fd() == fd)
    }
}

/// Aligned 2 MiB blocks wholly inside `[start, end)`.
pub fn whole_blocks(start: u64, end: u64) -> u64 {
    let first = start.next_multiple_of(HUGE_PAGE);
    let last = end / HUGE_PAGE * HUGE_PAGE;
    last.saturating_sub(first) / HUGE_PAGE
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max
    }

    fn avail_features(&self) -> u64 {
        self.cfg.features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; CONFIG_SIZE as usize];
        cfg[..4].copy_from_slice(&self.num_pages.to_le_bytes());
        cfg[4..].copy_from_slice(&self.actual.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| cfg.get(o as usize).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        match <[u8; 4]>::try_from(data) {
            Ok(v) if offset == CONFIG_ACTUAL => {
                let actual = u32::from_le_bytes(v);
                if u64::from(actual) > self.ram_pages {
                    return self.shared.metrics.reject(Reject::BadConfigWrite);
                }
                self.set_actual(actual);
            }
            _ => self.shared.metrics.reject(Reject::BadConfigWrite),
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<VirtQueue>,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        if queues.len() != BALLOON_MAX_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: BALLOON_MAX_QUEUES,
                got: queues.len(),
            });
        }
        for (i, vq) in queues.iter().enumerate() {
            if queue_role(i, self.acked_features).is_some() && !vq.queue.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        self.activate_evt
            .write(1)
            .map_err(|e| ActivateError::Signal(e.to_string()))?;
        let (qs, evts): (Vec<_>, Vec<_>) = queues.into_iter().map(|v| (v.queue, v.event)).unzip();
        if self.queue_evts.is_empty() {
            self.queue_evts = evts;
        }
        self.active = Some(Active {
            mem,
            queues: qs,
            interrupt,
        });
        if self.stats_active() {
            self.arm_stats_timer();
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.stats_head = None;
        self.runs.clear();
        _ = self.stats_timer.clear();
        // The driver gave up its balloon: nothing of it stops a collapse.
        self.inflated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear_all();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
