//! The balloon's two optional queues: statistics (F_STATS_VQ, §5.5.6.3)
//! and free page reporting (F_REPORTING, §5.5.6.7), as Linux's
//! virtio_balloon.c and mm/page_reporting.c drive them.
//!
//! Stats: the driver hands the device one device-readable buffer of
//! `{le16 tag, le64 val}` entries and the device keeps it; when it wants
//! fresh numbers it returns the buffer (a used-buffer interrupt), and the
//! driver refills it from guest-mm's counters and hands it over again.
//!
//! Reporting: free blocks of at least a pageblock that are not yet reported
//! are isolated (guest-mm's `page_alloc::reporting`), sent as one chain of
//! up to [`REPORT_CAPACITY`] device-writable descriptors, one per block
//! (address, 4 KiB << order), exactly as Linux adds them with
//! `virtqueue_add_inbuf`; once the device has used the chain (and so has
//! discarded the memory) they go back to the free lists, marked reported.
//! A pass runs [`REPORT_DELAY_MS`] after the first free that left a
//! reportable block and sends at most [`REPORT_BUDGET`] chains; if that
//! was not all, the next pass follows at once.
use super::balloon::{Balloon, Counters};
use super::queue::{Buffer, Virtqueue};
use super::{Pages, Transport, VirtioError};
use crate::mm;
use guest_mm::page_alloc::reporting::{Isolated, PAGE_REPORTING_ORDER};
use guest_mm::page_alloc::WMARK_HIGH;
use guest_mm::vmstat::VmEvent;
use guest_mm::PAGE_SIZE;

/// Blocks per report (Linux's PAGE_REPORTING_CAPACITY).
pub const REPORT_CAPACITY: usize = 32;
/// Reports per pass.
pub const REPORT_BUDGET: u32 = 16;
/// From the first reportable free to the pass. Linux waits 2 s
/// (PAGE_REPORTING_DELAY) to let frees gather; memvisor's goal is memory
/// back within 1 s of the free, so a quarter of that.
pub const REPORT_DELAY_MS: u64 = 250;

// Stat tags (§5.5.6.3).
pub const S_SWAP_IN: u16 = 0;
pub const S_SWAP_OUT: u16 = 1;
pub const S_MAJFLT: u16 = 2;
pub const S_MINFLT: u16 = 3;
pub const S_MEMFREE: u16 = 4;
pub const S_MEMTOT: u16 = 5;
pub const S_AVAIL: u16 = 6;
pub const S_CACHES: u16 = 7;
pub const S_HTLB_PGALLOC: u16 = 8;
pub const S_HTLB_PGFAIL: u16 = 9;
/// Bytes of one packed `{le16 tag, le64 val}`.
const STAT_SIZE: usize = 10;
const NR_STATS: usize = 10;

/// The current statistics, tag by tag. Those this kernel has no notion of
/// are 0 and say so: it never swaps (swap in/out, major faults), maps all
/// RAM before CPL3 code runs so it takes no page faults (minor faults: a
/// fault is a crash here, so the true count is 0), and has no page cache
/// (caches). Huge-page allocations are guest-mm's order ≥ 9 allocations
/// and failures (`htlb_buddy_alloc_*`).
pub fn current() -> [(u16, u64); NR_STATS] {
    let a = mm::allocator();
    let free = a.free_pages_buddy();
    // As Linux's si_mem_available without page cache: what is free beyond
    // the reserves (high watermarks) the allocator keeps.
    let reserve: u64 = a.zones().map(|z| z.wmark(WMARK_HIGH)).sum();
    let ev = a.events();
    [
        (S_SWAP_IN, 0),
        (S_SWAP_OUT, 0),
        (S_MAJFLT, 0),
        (S_MINFLT, 0),
        (S_MEMFREE, free * PAGE_SIZE),
        (S_MEMTOT, a.total_managed_pages() * PAGE_SIZE),
        (S_AVAIL, free.saturating_sub(reserve) * PAGE_SIZE),
        (S_CACHES, 0),
        (S_HTLB_PGALLOC, ev.get(VmEvent::PgAllocHuge)),
        (S_HTLB_PGFAIL, ev.get(VmEvent::PgAllocHugeFail)),
    ]
}

pub(super) struct Stats {
    q: Virtqueue,
    _rings: Pages,
    buf: Pages,
}

#[derive(Default)]
pub(super) struct StatsNews {
    pub requests: u64,
    pub notifications: u64,
}

impl Stats {
    pub(super) fn setup(
        t: &mut Transport,
        index: u16,
        event_idx: bool,
        cpu: usize,
    ) -> Result<Stats, VirtioError> {
        let (q, rings) = t.setup_queue(index, 4, event_idx, cpu)?;
        let buf = Pages::alloc(cpu, NR_STATS * STAT_SIZE).inspect_err(|_| t.fail())?;
        Ok(Stats {
            q,
            _rings: rings,
            buf,
        })
    }

    /// Fills the buffer and hands it to the device; true if that took a
    /// QueueNotify.
    pub(super) fn post(&mut self, t: &Transport) -> bool {
        for (i, (tag, val)) in current().iter().enumerate() {
            let at = (self.buf.addr as usize + i * STAT_SIZE) as *mut u8;
            // SAFETY: our buffer page; the device holds no copy now.
            unsafe {
                (at as *mut [u8; 2]).write_unaligned(tag.to_le_bytes());
                (at.add(2) as *mut [u8; 8]).write_unaligned(val.to_le_bytes());
            }
        }
        let b = Buffer {
            addr: self.buf.addr,
            len: (NR_STATS * STAT_SIZE) as u32,
            device_writes: false,
        };
        if self.q.add(&[b]).is_none() {
            return false;
        }
        // One interrupt when the device gives it back (its request).
        self.q.interrupt_after(1);
        let kick = self.q.publish();
        if kick {
            t.notify(&self.q);
        }
        kick
    }

    /// Answers a request: the device returned the buffer.
    pub(super) fn service(&mut self, t: &Transport) -> Result<StatsNews, VirtioError> {
        let mut n = StatsNews::default();
        while self.q.pop_used()?.is_some() {
            n.requests += 1;
        }
        // At most one buffer exists; a request answered many times over
        // (a device returning it twice is refused by pop_used) posts once.
        if n.requests > 0 && self.q.in_flight() == 0 {
            n.notifications += self.post(t) as u64;
        }
        Ok(n)
    }
}

pub(super) struct Reporter {
    q: Virtqueue,
    _rings: Pages,
    blocks: [Isolated; REPORT_CAPACITY],
    last_frees: u64,
    due: Option<u64>,
}

#[derive(Default)]
pub(super) struct ReportNews {
    pub passes: u64,
    pub reports: u64,
    pub blocks: u64,
    pub pages: u64,
    pub notifications: u64,
    /// The budget ran out: another pass is due now.
    pub more: bool,
}

impl Reporter {
    pub(super) fn setup(
        t: &mut Transport,
        index: u16,
        event_idx: bool,
        cpu: usize,
    ) -> Result<Reporter, VirtioError> {
        let (q, rings) = t.setup_queue(index, REPORT_CAPACITY as u16, event_idx, cpu)?;
        Ok(Reporter {
            q,
            _rings: rings,
            blocks: [Isolated::EMPTY; REPORT_CAPACITY],
            last_frees: u64::MAX,
            due: None,
        })
    }

    pub(super) fn service(
        &mut self,
        t: &Transport,
        now: u64,
        tsc_per_ms: u64,
    ) -> Result<ReportNews, VirtioError> {
        let a = mm::allocator();
        let frees = a.reportable_frees();
        if frees != self.last_frees {
            self.last_frees = frees;
            self.due.get_or_insert(now + REPORT_DELAY_MS * tsc_per_ms);
        }
        let mut n = ReportNews::default();
        match self.due {
            Some(d) if now >= d => self.due = None,
            _ => return Ok(n),
        }
        n.passes = 1;
        let cap = (self.q.size() as usize).min(REPORT_CAPACITY);
        for _ in 0..REPORT_BUDGET {
            let got = a.report_isolate(PAGE_REPORTING_ORDER, &mut self.blocks[..cap]);
            if got == 0 {
                return Ok(n);
            }
            let mut bufs = [Buffer {
                addr: 0,
                len: 0,
                device_writes: true,
            }; REPORT_CAPACITY];
            for (b, i) in bufs.iter_mut().zip(&self.blocks[..got]) {
                b.addr = i.pfn.0 * PAGE_SIZE;
                b.len = (PAGE_SIZE << i.order) as u32;
            }
            self.q
                .add(&bufs[..got])
                .expect("the queue is idle between reports");
            let mut c = Counters::default();
            // On an error the blocks stay isolated: the device may still be
            // discarding them, and memory handed out meanwhile would lose
            // what it is written.
            Balloon::kick_and_wait(t, &mut self.q, 1, &mut c)?;
            a.report_putback(&self.blocks[..got]);
            n.notifications += c.notifications;
            n.reports += 1;
            n.blocks += got as u64;
            n.pages += self.blocks[..got]
                .iter()
                .map(|b| 1u64 << b.order)
                .sum::<u64>();
        }
        n.more = true;
        self.due = Some(now);
        Ok(n)
    }
}
