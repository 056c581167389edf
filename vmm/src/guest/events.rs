//! What vCPU threads and devices tell the event loop, through one bounded
//! queue and one EventFd.
//!
//! Why bounded and in bytes: a guest decides how many records it sends and
//! how long each is. An unbounded channel let a 32 MiB guest sending legal
//! 64 KiB records grow the VMM to gigabytes while the loop was busy. Records
//! beyond [`QUEUE_BYTES`] in flight are dropped and counted here; control
//! events (exit, crash, reset) are never dropped, and they are few by
//! construction: each ends its vCPU's run. Marks beyond the first few are
//! only counted.
use crate::guest::record::RecordKind;
use crate::vstate::vcpu::exit::Crash;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

/// Record payload bytes allowed in the queue at once.
pub const QUEUE_BYTES: usize = 8 << 20;
/// Marks kept per run (only the first milestone marks mean anything).
const MAX_MARKS: u64 = 64;

#[derive(Debug)]
pub enum VmEvent {
    FirstRun {
        at_ns: u64,
    },
    Mark {
        vcpu: u32,
        value: u32,
        at_ns: u64,
    },
    Record {
        vcpu: u32,
        kind: RecordKind,
        payload: Vec<u8>,
        at_ns: u64,
    },
    BadRecord {
        vcpu: u32,
        error: String,
        at_ns: u64,
    },
    GuestExit {
        vcpu: u32,
        status: u32,
        at_ns: u64,
    },
    /// The guest asked for a reset through the i8042 (how Linux reboots).
    Reset {
        vcpu: u32,
        at_ns: u64,
    },
    Crash {
        vcpu: u32,
        crash: Crash,
        rip: Option<u64>,
        at_ns: u64,
    },
    Failed {
        vcpu: u32,
        error: String,
        at_ns: u64,
    },
}

/// Counters of what the guest sent and what was dropped on the way.
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub dropped_records: AtomicU64,
    pub dropped_bytes: AtomicU64,
    pub bad_records: AtomicU64,
    pub marks: AtomicU64,
}

struct Inner {
    queue: VecDeque<VmEvent>,
    bytes: usize,
}

pub struct VmEvents {
    inner: Mutex<Inner>,
    /// Written once per push; the event loop reads it and drains the queue.
    pub wake: EventFd,
    pub counters: QueueCounters,
    limit: usize,
}

impl VmEvents {
    pub fn new() -> std::io::Result<Self> {
        Self::with_limit(QUEUE_BYTES)
    }

    pub fn with_limit(limit: usize) -> std::io::Result<Self> {
        Ok(VmEvents {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
            }),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            counters: QueueCounters::default(),
            limit,
        })
    }

    /// Queues an event. Records that would exceed the byte limit, bad-record
    /// warnings past the first few and marks past the first few are counted
    /// and dropped; everything else is kept.
    pub fn push(&self, ev: VmEvent) {
        let c = &self.counters;
        // Marks and bad-record warnings are counted always; the queue keeps
        // only the first few (the loop rate-limits what it reports anyway).
        match &ev {
            VmEvent::Mark { .. } if c.marks.fetch_add(1, Ordering::Relaxed) >= MAX_MARKS => return,
            VmEvent::BadRecord { .. }
                if c.bad_records.fetch_add(1, Ordering::Relaxed) >= MAX_MARKS =>
            {
                return
            }
            _ => {}
        }
        let size = match &ev {
            VmEvent::Record { payload, .. } => payload.len(),
            _ => 0,
        };
        {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if size > 0 && g.bytes + size > self.limit {
                drop(g);
                c.dropped_records.fetch_add(1, Ordering::Relaxed);
                c.dropped_bytes.fetch_add(size as u64, Ordering::Relaxed);
                log::debug!("guest record of {size} bytes dropped: event queue full");
                return;
            }
            g.bytes += size;
            g.queue.push_back(ev);
        }
        let _ = self.wake.write(1);
    }

    /// Everything queued so far, oldest first.
    pub fn drain(&self) -> Vec<VmEvent> {
        let _ = self.wake.read();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.bytes = 0;
        g.queue.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> VmEvent {
        VmEvent::Record {
            vcpu: 0,
            kind: RecordKind::Json,
            payload: vec![b'x'; n],
            at_ns: 0,
        }
    }

    #[test]
    fn records_beyond_the_byte_limit_are_dropped_and_counted() {
        let q = VmEvents::with_limit(100).unwrap();
        q.push(record(60));
        q.push(record(60));
        q.push(VmEvent::GuestExit {
            vcpu: 0,
            status: 0,
            at_ns: 0,
        });
        assert_eq!(q.counters.dropped_records.load(Ordering::Relaxed), 1);
        assert_eq!(q.counters.dropped_bytes.load(Ordering::Relaxed), 60);
        let got = q.drain();
        assert_eq!(
            got.len(),
            2,
            "one record and the exit, never the exit dropped"
        );
        assert!(matches!(got[1], VmEvent::GuestExit { .. }));
        // Draining frees the budget.
        q.push(record(60));
        assert_eq!(q.drain().len(), 1);
    }

    #[test]
    fn a_mark_flood_is_counted_not_queued() {
        let q = VmEvents::with_limit(100).unwrap();
        for _ in 0..10_000 {
            q.push(VmEvent::Mark {
                vcpu: 0,
                value: 1,
                at_ns: 0,
            });
        }
        assert_eq!(q.drain().len(), MAX_MARKS as usize);
        assert_eq!(q.counters.marks.load(Ordering::Relaxed), 10_000);
    }
}
