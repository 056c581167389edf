//! What vCPU threads and devices tell the event loop, through one bounded
//! queue and one EventFd.
//!
//! Why bounded and in bytes: a guest decides how many records it sends and
//! how long each is. An unbounded channel let a 32 MiB guest sending legal
//! 64 KiB records grow the VMM to gigabytes while the loop was busy. A record
//! that would take the queue past [`QUEUE_BYTES`] makes its vCPU wait for
//! the loop to drain (back-pressure: a flooding guest is slowed, not
//! believed), at most [`PUSH_WAIT`], after which it is dropped and counted,
//! so a pause or a stuck loop never waits on a vCPU for long. Control
//! events (exit, crash, reset) are never dropped while few: a crash ends
//! its vCPU's run, but an exit-port write or an i8042 reset does not (the
//! vCPU runs on until the loop stops it), so a guest looping on `out` would
//! queue them without limit; only the first few are kept, and only the
//! first ends the run anyway. Marks beyond the first few are only counted.
use crate::guest::record::RecordKind;
use crate::vstate::vcpu::exit::Crash;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// Record payload bytes allowed in the queue at once.
pub const QUEUE_BYTES: usize = 8 << 20;
/// Longest a vCPU waits for room in the queue before its record is dropped.
pub const PUSH_WAIT: Duration = Duration::from_millis(100);
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
    /// Guest exit-port writes and i8042 resets.
    pub guest_exits: AtomicU64,
}

struct Inner {
    queue: VecDeque<VmEvent>,
    bytes: usize,
}

pub struct VmEvents {
    inner: Mutex<Inner>,
    /// Signalled by `drain`: room for waiting records.
    space: Condvar,
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
            space: Condvar::new(),
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
            VmEvent::GuestExit { .. } | VmEvent::Reset { .. }
                if c.guest_exits.fetch_add(1, Ordering::Relaxed) >= MAX_MARKS =>
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
                // The loop may be asleep with the queue full of older
                // records: wake it, then wait for room.
                let _ = self.wake.write(1);
                g = self
                    .space
                    .wait_timeout_while(g, PUSH_WAIT, |g| g.bytes + size > self.limit)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
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
        let all = g.queue.drain(..).collect();
        self.space.notify_all();
        all
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
    fn a_full_queue_makes_the_sender_wait_for_the_loop() {
        let q = std::sync::Arc::new(VmEvents::with_limit(100).unwrap());
        q.push(record(60));
        let q2 = q.clone();
        let sender = std::thread::spawn(move || q2.push(record(60)));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(q.drain().len(), 1, "the second record waits for room");
        sender.join().unwrap();
        assert_eq!(q.drain().len(), 1, "and arrives once the loop drained");
        assert_eq!(q.counters.dropped_records.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_exit_port_flood_is_counted_not_queued() {
        let q = VmEvents::with_limit(100).unwrap();
        for i in 0..10_000 {
            q.push(VmEvent::GuestExit {
                vcpu: 0,
                status: i,
                at_ns: 0,
            });
            q.push(VmEvent::Reset { vcpu: 0, at_ns: 0 });
        }
        let got = q.drain();
        assert_eq!(got.len(), MAX_MARKS as usize);
        assert!(
            matches!(got[0], VmEvent::GuestExit { status: 0, .. }),
            "the first exit is kept"
        );
        q.push(VmEvent::Crash {
            vcpu: 0,
            crash: Crash::TripleFault,
            rip: None,
            at_ns: 0,
        });
        assert_eq!(q.drain().len(), 1, "crashes are never dropped");
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
