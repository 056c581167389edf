//! Huge pages back after a balloon cycle, off the vCPU threads and the
//! event loop.
//!
//! A 4 KiB-mode inflate discards single pages out of the host's 2 MiB THPs,
//! which splits them; when the guest takes the pages back (deflate) and
//! reuses them, each refaults as a 4 KiB host page, and the range stays
//! split for good (khugepaged is slow and off by default for madvise
//! mappings here). So every 2 MiB block the guest deflated is handed to
//! this worker, which waits a while (the guest is reusing it; default
//! [`DEFAULT_COLLAPSE_DELAY`]) and then asks the host to rebuild the huge
//! page with MADV_COLLAPSE (`GuestRam::collapse`, synchronous, milliseconds
//! per block, which is why it is a thread of its own).
//!
//! A block is collapsed only if none of its pages is in the balloon at that
//! moment: collapsing fills missing pages, which would hand an inflated
//! page's memory back to the guest. The check and the collapse happen
//! under the lock of the inflated-page map, which the device takes before
//! it marks pages inflated and discards them, so the two never interleave.
//!
//! For the same reason a block is collapsed only once the guest has
//! touched it again: at least [`MIN_RESIDENT_PAGES`] of its 512 pages on
//! the host (mincore). A deflated block the guest has not reused yet, or
//! has since handed back by free page reporting (which discards whole
//! 2 MiB blocks and leaves no mark here: the guest may reuse them without
//! telling anyone), would otherwise come back as a whole 2 MiB of Rss the
//! guest does not use, and after a large free the host's Rss would climb
//! back by 2 MiB per reported block. Such a block stays pending and is
//! looked at again after each delay, [`MAX_TRIES`] times, then given up
//! (`collapse_not_resident`).
//!
//! The worker also reads guest RAM's smaps (Rss, AnonHugePages) for the
//! timeline, since that read takes milliseconds for a large guest.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::device::{HostMemory, PageMap};
use super::metrics::{BalloonMetrics, Shared, ThpPoint};
use super::HUGE_PAGE;
use crate::clock::{now_ns, since_origin_us};

pub const DEFAULT_COLLAPSE_DELAY: Duration = Duration::from_secs(1);
/// Pages of a 2 MiB block (of 512) the host must hold before it is
/// collapsed: the other 64 at most (256 KiB) are filled with zeros, a
/// bounded cost for a block the guest is clearly using again; a reported
/// block (none resident) is never filled.
pub const MIN_RESIDENT_PAGES: u64 = 448;
/// Looks at a block that is not resident enough before giving it up.
pub const MAX_TRIES: u8 = 30;

/// What the device asks of the worker.
#[derive(Debug)]
pub enum Job {
    /// Take the deflated 2 MiB blocks waiting in the shared set
    /// ([`CollapseWorker::collapse_later`]) to collapse after the delay.
    Collapse,
    /// Collapse what is pending now.
    Flush,
    /// The guest reached an inflate target: THP coverage for the timeline,
    /// and the Rss of step `.0`.
    AfterInflate(usize),
    /// The guest reached a deflate target (step `.0`).
    AfterDeflate(usize),
}

pub struct CollapseWorker {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    /// Deflated blocks the worker has not taken yet. A set and not the
    /// blocks in each job: while the worker is inside a long round of
    /// collapses, a guest deflating in a loop would otherwise queue a
    /// vector per pass, without bound; a set holds each of guest RAM's
    /// blocks once, and one job wakes the worker for all of them.
    blocks: Arc<Mutex<BTreeSet<u64>>>,
    /// Jobs sent and not yet received.
    backlog: Arc<AtomicUsize>,
}

impl CollapseWorker {
    pub fn spawn(
        host: Arc<dyn HostMemory>,
        shared: Arc<Shared>,
        inflated: Arc<Mutex<PageMap>>,
        delay: Duration,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let blocks = Arc::new(Mutex::new(BTreeSet::new()));
        let backlog = Arc::new(AtomicUsize::new(0));
        let queue = Queue {
            rx,
            blocks: blocks.clone(),
            backlog: backlog.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("balloon-collapse".into())
            .spawn(move || run(queue, &*host, &shared, &inflated, delay))?;
        Ok(CollapseWorker {
            tx: Some(tx),
            handle: Some(handle),
            blocks,
            backlog,
        })
    }

    /// Deflated `blocks` (guest-physical bases) to collapse after the
    /// delay; the worker is woken only if none were waiting (a job is then
    /// on its way, and takes these too).
    pub fn collapse_later(&self, blocks: impl IntoIterator<Item = u64>) {
        let mut set = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = set.is_empty();
        set.extend(blocks);
        let wake = was_empty && !set.is_empty();
        drop(set);
        if wake {
            self.send(Job::Collapse);
        }
    }

    /// Jobs sent and not yet received by the worker.
    #[cfg(test)]
    pub(super) fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Collapses what is pending now and stops the worker, waiting for it:
    /// at teardown, so the report counts every deflated block.
    pub fn finish(&mut self) {
        self.send(Job::Flush);
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    pub fn send(&self, job: Job) {
        if let Some(tx) = &self.tx {
            // A worker that died (it cannot panic short of a bug) only
            // stops collapses; the device goes on.
            self.backlog.fetch_add(1, Ordering::Relaxed);
            if tx.send(job).is_err() {
                self.backlog.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for CollapseWorker {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn point(host: &dyn HostMemory) -> Option<ThpPoint> {
    let (rss, huge) = host.usage()?;
    Some(ThpPoint::new(since_origin_us(now_ns()), rss, huge))
}

/// The worker's side of what the device sends.
struct Queue {
    rx: mpsc::Receiver<Job>,
    blocks: Arc<Mutex<BTreeSet<u64>>>,
    backlog: Arc<AtomicUsize>,
}

fn run(
    q: Queue,
    host: &dyn HostMemory,
    shared: &Shared,
    inflated: &Mutex<PageMap>,
    delay: Duration,
) {
    // Block → times looked at. A map: a block deflated twice is collapsed
    // once, and the map never holds more than guest RAM's 2 MiB blocks.
    let mut pending = BTreeMap::new();
    let mut due: Option<Instant> = None;
    loop {
        let job = match due {
            Some(t) => {
                q.rx.recv_timeout(t.saturating_duration_since(Instant::now()))
            }
            None => q.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        if job.is_ok() {
            q.backlog.fetch_sub(1, Ordering::Relaxed);
        }
        match job {
            Ok(Job::Collapse) => {
                let blocks =
                    std::mem::take(&mut *q.blocks.lock().unwrap_or_else(|p| p.into_inner()));
                for b in blocks {
                    // Deflated again: the guest is reusing it, a fresh start.
                    pending.insert(b, 0);
                }
                due = Some(Instant::now() + delay);
            }
            Ok(Job::Flush) | Err(RecvTimeoutError::Timeout) => {
                collapse(host, &shared.metrics, inflated, &mut pending);
                due = (!pending.is_empty()).then(|| Instant::now() + delay);
                if let Some(p) = point(host) {
                    shared.timeline().thp_after_deflate = Some(p);
                }
            }
            Ok(Job::AfterInflate(step)) => {
                if let Some(p) = point(host) {
                    let mut t = shared.timeline();
                    t.thp_after_inflate.get_or_insert(p);
                    if let Some(s) = t.steps.get_mut(step) {
                        s.guest_rss_after_bytes = Some(p.guest_rss_bytes);
                    }
                }
            }
            Ok(Job::AfterDeflate(step)) => {
                if let Some(p) = point(host) {
                    if let Some(s) = shared.timeline().steps.get_mut(step) {
                        s.guest_rss_after_bytes = Some(p.guest_rss_bytes);
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                // The device is gone: what is still waiting is given up.
                let m = &shared.metrics;
                BalloonMetrics::add(&m.collapse_not_resident, pending.len() as u64);
                return;
            }
        }
    }
}

/// One look at every pending block: collapsed, dropped (in the balloon,
/// or out of tries) or kept for the next look (not resident enough yet).
fn collapse(
    host: &dyn HostMemory,
    m: &BalloonMetrics,
    inflated: &Mutex<PageMap>,
    pending: &mut BTreeMap<u64, u8>,
) {
    pending.retain(|&gpa, tries| {
        let map = inflated.lock().unwrap_or_else(|p| p.into_inner());
        if map.any_in(gpa, HUGE_PAGE) {
            BalloonMetrics::add(&m.collapse_skipped, 1);
            return false;
        }
        // A block the residency query refuses (past the last whole block
        // of a region) goes on to `collapse`, which refuses and counts it.
        if host
            .resident(gpa, HUGE_PAGE)
            .is_some_and(|n| n < MIN_RESIDENT_PAGES)
        {
            *tries += 1;
            if *tries < MAX_TRIES {
                return true;
            }
            BalloonMetrics::add(&m.collapse_not_resident, 1);
            return false;
        }
        match host.collapse(gpa, HUGE_PAGE) {
            Ok(()) => BalloonMetrics::add(&m.ranges_collapsed, 1),
            Err(_) => BalloonMetrics::add(&m.collapse_errors, 1),
        }
        false
    });
}
