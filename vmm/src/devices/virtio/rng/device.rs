//! The entropy device's state and its queue processing.
//!
//! Activation arrives on a vCPU thread ([`VirtioDevice::activate`]): the
//! device only stores the queue, memory and interrupt and writes its
//! activation EventFd. Everything else runs on the event-loop thread
//! (`event_handler.rs`): registering the queue's EventFd once, and
//! [`Rng::process_queue`] on every kick or rate-limiter timer.
//!
//! One pass over the queue serves every available chain (re-checking after
//! re-enabling notifications, so a chain added meanwhile is not missed) and
//! raises at most one interrupt, only if `needs_notification` says the
//! driver wants one (with event-idx: only when used_event was crossed).
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::{
    EntropyConfig, RngError, RngMetrics, MAX_BYTES_PER_REQUEST, RNG_NUM_QUEUES, RNG_QUEUE_SIZE,
    SCRATCH_SIZE, VIRTIO_ID_RNG,
};
use crate::devices::rate_limiter::RateLimiter;
use crate::devices::virtio::{
    needs_interrupt, ActivateError, IrqTrigger, VirtQueue, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_MMIO_INT_VRING, VIRTIO_RING_F_EVENT_IDX,
};
use crate::memory::GuestMemory;

/// Most chains served per wake-up (at most 16 MiB of entropy at the
/// per-request cap), so one guest cannot monopolise the event loop.
pub const MAX_CHAINS_PER_PASS: usize = RNG_QUEUE_SIZE as usize;

/// What the device holds between DRIVER_OK and reset.
struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<IrqTrigger>,
}

/// A chain the device will not serve.
struct BadChain;

pub struct Rng {
    acked_features: u64,
    queue_max: [u16; RNG_NUM_QUEUES],
    active: Option<Active>,
    /// Clone of the transport's queue EventFd, kept from the first
    /// activation on: it is registered with epoll once and stays registered
    /// across resets (dropping a dup of a still-open eventfd would leave a
    /// stale epoll entry behind).
    pub(super) queue_evt: Option<EventFd>,
    pub(super) queue_evt_registered: bool,
    pub(super) activate_evt: EventFd,
    pub(super) timer: TimerFd,
    limiter: RateLimiter,
    /// [`MAX_CHAINS_PER_PASS`]; lowered by tests.
    pub(super) max_chains_per_pass: usize,
    /// Waiting for `timer`: kicks are left pending until it fires.
    pub(super) blocked: bool,
    metrics: Arc<RngMetrics>,
    scratch: Box<[u8; SCRATCH_SIZE]>,
}

impl Rng {
    pub fn new(cfg: &EntropyConfig) -> Result<Self, RngError> {
        let limiter = match &cfg.rate_limiter {
            Some(rl) => RateLimiter::new(rl, Instant::now()).map_err(RngError::RateLimiter)?,
            None => RateLimiter::unlimited(),
        };
        let timer = TimerFd::new().map_err(|e| RngError::Fd(e.into()))?;
        crate::devices::virtio::set_nonblocking(&timer).map_err(RngError::Fd)?;
        Ok(Rng {
            acked_features: 0,
            queue_max: [RNG_QUEUE_SIZE],
            active: None,
            queue_evt: None,
            queue_evt_registered: false,
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(RngError::Fd)?,
            timer,
            limiter,
            max_chains_per_pass: MAX_CHAINS_PER_PASS,
            blocked: false,
            metrics: Arc::default(),
            scratch: Box::new([0; SCRATCH_SIZE]),
        })
    }

    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Serves every available chain (unless the rate limiter stops it) and
    /// signals the driver once if it asked to be. Returns the number of
    /// chains completed.
    pub fn process_queue(&mut self, now: Instant) -> usize {
        if self.blocked {
            return 0;
        }
        let Some(act) = self.active.as_mut() else {
            return 0;
        };
        let m = &*self.metrics;
        let mut done = 0;
        // Chains popped, served or not: what the per-pass cap counts.
        let mut seen = 0;
        'batch: loop {
            // With event-idx this does nothing (the driver kicks only past
            // avail_event); without, it sets VRING_USED_F_NO_NOTIFY.
            if act.queue.disable_notification(&act.mem).is_err() {
                break;
            }
            loop {
                // Not `pop_descriptor_chain`: it logs every refusal at error
                // level. A refusal (an avail index more than a queue ahead,
                // an avail ring at 0) ends the pass: `enable_notification`
                // would still see "more" and the pass would spin forever
                // on the event loop. The driver must fix its ring or reset.
                let chain = match act.queue.iter(&act.mem) {
                    Ok(mut avail) => avail.next(),
                    Err(_) => {
                        RngMetrics::add(&m.bad_descriptors, 1);
                        break 'batch;
                    }
                };
                let Some(chain) = chain else {
                    break;
                };
                if seen == self.max_chains_per_pass {
                    // A driver refilling as fast as we serve would keep the
                    // event loop here. Yield, and kick ourselves so the rest
                    // is served after the loop's other events (kicks are
                    // armed, so the driver may not kick again).
                    act.queue.go_to_previous_position();
                    if let Some(evt) = &self.queue_evt {
                        _ = evt.write(1);
                    }
                    break 'batch;
                }
                seen += 1;
                let head = chain.head_index();
                if head >= act.queue.size() {
                    // No used entry can name it (`add_used` would refuse,
                    // and log): skip it and serve the rest.
                    RngMetrics::add(&m.bad_descriptors, 1);
                    continue;
                }
                let plan = check_chain(&act.mem, chain.clone());
                let want = plan.as_ref().map_or(0, |&n| n);
                if let Err(wait) = self.limiter.consume(1, want.into(), now) {
                    // Leave the chain for the timer. (A timer that cannot be
                    // armed would stall the queue: then serve it anyway.)
                    if self.timer.reset(wait, None).is_ok() {
                        act.queue.go_to_previous_position();
                        self.blocked = true;
                        RngMetrics::add(&m.rate_limited, 1);
                        break 'batch;
                    }
                }
                let len = match plan {
                    Ok(n) => fill_chain(&act.mem, chain, n, &mut self.scratch, m),
                    Err(BadChain) => {
                        RngMetrics::add(&m.bad_descriptors, 1);
                        0
                    }
                };
                if act.queue.add_used(&act.mem, head, len).is_err() {
                    // The head index was checked and the used ring is in
                    // RAM (checked at QueueReady); stop rather than spin.
                    break 'batch;
                }
                RngMetrics::add(&m.requests, 1);
                RngMetrics::add(&m.bytes, len.into());
                done += 1;
            }
            // Re-arm kicks; if the driver added chains meanwhile, go again.
            match act.queue.enable_notification(&act.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if done > 0 && needs_interrupt(&mut act.queue, &act.mem) {
            RngMetrics::add(&m.interrupts, 1);
            _ = act.interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
        done
    }

    /// The rate-limiter timer fired.
    pub(super) fn unblock(&mut self) {
        self.blocked = false;
    }

    pub(super) fn queue_evt_fd(&self) -> Option<i32> {
        self.queue_evt.as_ref().map(|e| e.as_raw_fd())
    }
}

/// Every descriptor must be device-writable, and the bytes we would write
/// (the first [`MAX_BYTES_PER_REQUEST`] of the chain) inside guest RAM.
/// Returns how many bytes to write. virtio-queue's iterator has already
/// bounded the chain (next index < queue size, at most queue-size links,
/// total length without overflow, one level of indirection).
fn check_chain(mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> Result<u32, BadChain> {
    let mut total = 0u32;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(BadChain);
        }
        let n = desc.len().min(MAX_BYTES_PER_REQUEST - total);
        if !GuestMemoryBackend::check_range(mem, desc.addr(), n as usize) {
            return Err(BadChain);
        }
        total += n;
    }
    Ok(total)
}

/// Writes up to `want` random bytes along a checked chain; returns how many
/// were written.
fn fill_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    want: u32,
    scratch: &mut [u8; SCRATCH_SIZE],
    m: &RngMetrics,
) -> u32 {
    let mut left = want as usize;
    let mut written = 0u32;
    for desc in chain {
        let mut off = 0u64;
        let mut n = (desc.len() as usize).min(left);
        left -= n;
        while n > 0 {
            let k = n.min(SCRATCH_SIZE);
            let buf = &mut scratch[..k];
            if getrandom(buf).is_err() {
                RngMetrics::add(&m.host_rng_errors, 1);
                return written;
            }
            let Some(addr) = desc.addr().0.checked_add(off) else {
                return written;
            };
            if mem.write_slice(buf, GuestAddress(addr)).is_err() {
                return written;
            }
            off += k as u64;
            n -= k;
            written += k as u32;
        }
        if left == 0 {
            break;
        }
    }
    written
}

/// Fills `buf` from the host's entropy pool (`getrandom(2)`, blocking only
/// until the pool is initialised at boot).
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`,
        // which we own mutably.
        let r = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += r as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    // No config space (§5.4.4): the defaults read zeros and ignore writes.

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<VirtQueue>,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Ok([vq]) = <[VirtQueue; RNG_NUM_QUEUES]>::try_from(queues) else {
            return Err(ActivateError::QueueCount {
                expected: RNG_NUM_QUEUES,
                got,
            });
        };
        if !vq.queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.activate_evt
            .write(1)
            .map_err(|e| ActivateError::Signal(e.to_string()))?;
        if self.queue_evt.is_none() {
            self.queue_evt = Some(vq.event);
        }
        self.active = Some(Active {
            mem,
            queue: vq.queue,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.blocked = false;
        _ = self.timer.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
    use crate::memory::GuestRam;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    const MEM: u64 = 4 << 20;
    /// Our own used ring, away from the mock's: MockSplitQueue (0.18) puts
    /// its used ring inside its avail ring (it sizes the avail ring as `len`
    /// bytes, not `2 * len + 6`), so used-ring writes would clobber avail
    /// entries and used_event.
    const USED: u64 = 0x10000;
    const BUF: u64 = 0x10_0000;
    const W: u32 = VRING_DESC_F_WRITE;
    const NEXT: u32 = VRING_DESC_F_NEXT;

    type Mock<'a> = MockSplitQueue<'a, GuestMemory>;

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    /// A one-descriptor writable chain.
    fn w(addr: u64, len: u32) -> RawDescriptor {
        desc(addr, len, W, 0)
    }

    struct Fixture {
        mem: GuestMemory,
        rng: Rng,
        irq: Arc<IrqTrigger>,
    }

    /// Guest memory (a clone owns the mapping) and an inactive device.
    fn fixture(cfg: EntropyConfig) -> (Fixture, GuestMemory) {
        let mem = GuestRam::new(MEM).unwrap().memory().clone();
        let f = Fixture {
            mem: mem.clone(),
            rng: Rng::new(&cfg).unwrap(),
            irq: Arc::new(IrqTrigger::new().unwrap()),
        };
        (f, mem)
    }

    fn mock(mem: &GuestMemory) -> Mock<'_> {
        MockSplitQueue::create(mem, GuestAddress(0), RNG_QUEUE_SIZE)
    }

    impl Fixture {
        fn activate(&mut self, mock: &Mock, event_idx: bool) {
            let mut q = Queue::new(RNG_QUEUE_SIZE).unwrap();
            q.try_set_desc_table_address(mock.desc_table_addr())
                .unwrap();
            q.try_set_avail_ring_address(mock.avail_addr()).unwrap();
            q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
            q.set_ready(true);
            q.set_event_idx(event_idx);
            assert!(q.is_valid(&self.mem));
            let vq = VirtQueue {
                queue: q,
                event: EventFd::new(EFD_NONBLOCK).unwrap(),
            };
            self.rng
                .activate(self.mem.clone(), vec![vq], self.irq.clone())
                .unwrap();
        }

        fn process(&mut self) -> usize {
            self.rng.process_queue(Instant::now())
        }

        fn used_idx(&self) -> u16 {
            self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
        }

        /// (head id, len) of used entry `i`.
        fn used(&self, i: u64) -> (u32, u32) {
            let a = USED + 4 + 8 * i;
            (
                self.mem.read_obj(GuestAddress(a)).unwrap(),
                self.mem.read_obj(GuestAddress(a + 4)).unwrap(),
            )
        }

        fn set_used_event(&self, mock: &Mock, v: u16) {
            let a = mock.avail_addr().0 + 4 + 2 * u64::from(RNG_QUEUE_SIZE);
            self.mem.write_obj(v, GuestAddress(a)).unwrap();
        }

        fn interrupts(&self) -> u64 {
            self.rng.metrics.snapshot().interrupts
        }

        fn nonzero(&self, addr: u64, len: usize) -> usize {
            let mut b = vec![0u8; len];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            b.iter().filter(|&&x| x != 0).count()
        }
    }

    #[test]
    fn fills_writable_chains_and_signals_once() {
        let (mut f, mem) = fixture(EntropyConfig::default());
        let q = mock(&mem);
        f.activate(&q, false);
        // Chain 0→1 (64 + 32 bytes), chain 2 (16 bytes).
        q.add_desc_chains(
            &[
                desc(BUF, 64, W | NEXT, 1),
                w(BUF + 0x1000, 32),
                w(BUF + 0x2000, 16),
            ],
            0,
        )
        .unwrap();
        assert_eq!(f.process(), 2);
        assert_eq!(f.used_idx(), 2);
        assert_eq!(f.used(0), (0, 96));
        assert_eq!(f.used(1), (2, 16));
        assert!(f.nonzero(BUF, 64) > 48);
        assert!(f.nonzero(BUF + 0x1000, 32) > 20);
        assert_eq!(f.nonzero(BUF + 0x1000 + 32, 64), 0);
        let s = f.rng.metrics.snapshot();
        assert_eq!((s.requests, s.bytes, s.interrupts), (2, 112, 1));
        assert_eq!(f.irq.irqfd.read().unwrap(), 1);
        assert_eq!(f.irq.status.load(Ordering::SeqCst), VIRTIO_MMIO_INT_VRING);
        // Nothing new: no interrupt.
        assert_eq!(f.process(), 0);
        assert_eq!(f.interrupts(), 1);
    }

    #[test]
    fn readable_descriptor_fails_its_chain_and_the_device_keeps_serving() {
        let (mut f, mem) = fixture(EntropyConfig::default());
        let q = mock(&mem);
        f.activate(&q, false);
        q.add_desc_chains(
            &[
                desc(BUF, 16, W | NEXT, 1),
                desc(BUF + 0x100, 16, NEXT, 2), // device-readable
                w(BUF + 0x200, 16),
                w(BUF + 0x300, 8),
            ],
            0,
        )
        .unwrap();
        assert_eq!(f.process(), 2);
        assert_eq!(f.used(0), (0, 0));
        assert_eq!(f.used(1), (3, 8));
        // Nothing of the bad chain was written.
        assert_eq!(f.nonzero(BUF, 0x300), 0);
        let s = f.rng.metrics.snapshot();
        assert_eq!((s.bad_descriptors, s.requests, s.bytes), (1, 2, 8));
        q.add_desc_chains(&[w(BUF + 0x400, 8)], 4).unwrap();
        assert_eq!(f.process(), 1);
        assert_eq!(f.used(2), (4, 8));
    }

    /// An avail index more than a queue ahead of the device makes
    /// virtio-queue's iterator refuse, while `enable_notification` still
    /// sees "more": the pass must end, not spin on the event loop.
    #[test]
    fn an_avail_index_beyond_the_queue_does_not_hang_the_pass() {
        for event_idx in [false, true] {
            let (mut f, mem) = fixture(EntropyConfig::default());
            let q = mock(&mem);
            f.activate(&q, event_idx);
            q.avail().idx().store(RNG_QUEUE_SIZE + 100);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let n = f.process();
                let _ = tx.send((n, f.rng.metrics.snapshot().bad_descriptors));
            });
            let (n, bad) = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("process_queue spun on a broken avail index");
            assert_eq!(n, 0);
            assert!(bad >= 1, "counted");
        }
    }

    /// A head index past the queue has no used entry to give back; the
    /// chains after it are still served in the same pass.
    #[test]
    fn a_head_index_beyond_the_queue_is_counted_and_skipped() {
        let (mut f, mem) = fixture(EntropyConfig::default());
        let q = mock(&mem);
        f.activate(&q, false);
        q.add_desc_chains(&[w(BUF, 16), w(BUF + 0x100, 8)], 0)
            .unwrap();
        q.avail()
            .ring()
            .ref_at(0)
            .unwrap()
            .store(RNG_QUEUE_SIZE + 3);
        assert_eq!(f.process(), 1);
        assert_eq!(f.used_idx(), 1);
        assert_eq!(f.used(0), (1, 8));
        assert_eq!(f.rng.metrics.snapshot().bad_descriptors, 1);
    }

    #[test]
    fn buffers_outside_ram_are_refused() {
        let (mut f, mem) = fixture(EntropyConfig::default());
        let q = mock(&mem);
        f.activate(&q, false);
        q.add_desc_chains(&[w(MEM - 8, 16), w(u64::MAX - 4, 16), w(BUF, 16)], 0)
            .unwrap();
        assert_eq!(f.process(), 3);
        assert_eq!(f.used(0), (0, 0));
        assert_eq!(f.used(1), (1, 0));
        assert_eq!(f.used(2), (2, 16));
        assert_eq!(f.rng.metrics.snapshot().bad_descriptors, 2);
    }

    #[test]
    fn huge_descriptors_are_capped() {
        let (mut f, mem) = fixture(EntropyConfig::default());
        let q = mock(&mem);
        f.activate(&q, false);
        // 2 MiB asked, 64 KiB given, the rest untouched. The second
        // descriptor runs past RAM, but nothing is written that far.
        q.add_desc_chains(
            &[desc(BUF, 1 << 20, W | NEXT, 1), w(MEM - 0x1000, 1 << 20)],
            0,
        )
        .unwrap();
        assert_eq!(f.process(), 1);
        let cap = u64::from(MAX_BYTES_PER_REQUEST);
        assert_eq!(f.used(0), (0, MAX_BYTES_PER_REQUEST));
        assert!(f.nonzero(BUF + cap - 256, 256) > 200);
        assert_eq!(f.nonzero(BUF + cap, 4096), 0);
        assert_eq!(f.rng.metrics.snapshot().bytes, cap);
    }

    #[test]
    fn event_idx_interrupts_only_past_used_event_once_per_batch() {
        let (mut f, mem) = fixture(EntropyConfig::default());
        let q = mock(&mem);
        f.activate(&q, true);
        // The driver wants an interrupt only once used idx passes 2.
        f.set_used_event(&q, 2);
        q.add_desc_chains(&[w(BUF, 8)], 0).unwrap();
        f.process();
        assert_eq!(f.used_idx(), 1);
        assert_eq!(f.interrupts(), 0);
        q.add_desc_chains(&[w(BUF, 8), w(BUF + 8, 8)], 1).unwrap();
        f.process();
        assert_eq!(f.used_idx(), 3);
        assert_eq!(f.interrupts(), 1);
        // The device asks for the next kick right after what it consumed.
        let avail_event: u16 = f
            .mem
            .read_obj(GuestAddress(USED + 4 + 8 * u64::from(RNG_QUEUE_SIZE)))
            .unwrap();
        assert_eq!(avail_event, 3);
        // A batch of 20 requests: one interrupt.
        f.set_used_event(&q, 3);
        let many: Vec<_> = (0..20).map(|i| w(BUF + 16 * i, 16)).collect();
        q.add_desc_chains(&many, 3).unwrap();
        assert_eq!(f.process(), 20);
        assert_eq!(f.interrupts(), 2);
    }

    #[test]
    fn a_pass_is_bounded_and_reschedules_the_rest() {
        let (mut f, mem) = fixture(EntropyConfig::default());
        let q = mock(&mem);
        f.activate(&q, false);
        f.rng.max_chains_per_pass = 4;
        let d: Vec<_> = (0..10).map(|i| w(BUF + 16 * i, 16)).collect();
        q.add_desc_chains(&d, 0).unwrap();
        let kick = |f: &Fixture| f.rng.queue_evt.as_ref().unwrap().read().is_ok();
        assert_eq!(f.process(), 4);
        assert!(kick(&f), "the device kicks itself to come back");
        assert_eq!(f.process(), 4);
        assert!(kick(&f));
        assert_eq!(f.process(), 2);
        assert!(!kick(&f));
        assert_eq!(f.used_idx(), 10);
        assert_eq!(f.interrupts(), 3);
    }

    #[test]
    fn without_event_idx_no_interrupt_flag_is_honoured() {
        let (mut f, mem) = fixture(EntropyConfig::default());
        let q = mock(&mem);
        f.activate(&q, false);
        mem.write_obj(1u16, q.avail_addr()).unwrap(); // VRING_AVAIL_F_NO_INTERRUPT
        q.add_desc_chains(&[w(BUF, 8)], 0).unwrap();
        assert_eq!(f.process(), 1);
        assert_eq!(f.interrupts(), 0);
        mem.write_obj(0u16, q.avail_addr()).unwrap();
        q.add_desc_chains(&[w(BUF, 8)], 1).unwrap();
        assert_eq!(f.process(), 1);
        assert_eq!(f.interrupts(), 1);
    }

    #[test]
    fn without_event_idx_kicks_are_re_enabled_after_a_batch() {
        let (mut f, mem) = fixture(EntropyConfig::default());
        let q = mock(&mem);
        f.activate(&q, false);
        q.add_desc_chains(&[w(BUF, 8)], 0).unwrap();
        f.process();
        let flags: u16 = f.mem.read_obj(GuestAddress(USED)).unwrap();
        assert_eq!(flags, 0);
    }

    #[test]
    fn rate_limiter_stops_and_the_timer_resumes() {
        let cfg = EntropyConfig {
            rate_limiter: Some(RateLimiterConfig {
                bandwidth: Some(TokenBucketConfig {
                    size: 100,
                    one_time_burst: None,
                    refill_time: 100,
                }),
                ops: None,
            }),
        };
        let (mut f, mem) = fixture(cfg);
        let q = mock(&mem);
        f.activate(&q, false);
        let d: Vec<_> = (0..4).map(|i| w(BUF + 64 * i, 40)).collect();
        q.add_desc_chains(&d, 0).unwrap();
        let t0 = Instant::now();
        // 100 bytes of budget: two 40-byte requests, then blocked.
        assert_eq!(f.rng.process_queue(t0), 2);
        assert!(f.rng.blocked);
        assert!(f.rng.timer.is_armed().unwrap());
        assert_eq!(f.rng.metrics.snapshot().rate_limited, 1);
        assert_eq!(f.interrupts(), 1);
        // Kicks while blocked do nothing.
        assert_eq!(f.rng.process_queue(t0 + Duration::from_millis(200)), 0);
        // The timer fires: 20 ms give 20 bytes, enough for one more.
        f.rng.unblock();
        assert_eq!(f.rng.process_queue(t0 + Duration::from_millis(20)), 1);
        assert!(f.rng.blocked);
        f.rng.unblock();
        assert_eq!(f.rng.process_queue(t0 + Duration::from_millis(200)), 1);
        assert_eq!(f.used_idx(), 4);
        assert_eq!(f.rng.metrics.snapshot().bytes, 160);
    }

    #[test]
    fn activation_needs_its_one_ready_queue_and_reset_stops_service() {
        let (mut f, mem) = fixture(EntropyConfig::default());
        let unready = VirtQueue {
            queue: Queue::new(RNG_QUEUE_SIZE).unwrap(),
            event: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        assert_eq!(
            f.rng.activate(mem.clone(), vec![unready], f.irq.clone()),
            Err(ActivateError::QueueNotReady(0))
        );
        assert_eq!(
            f.rng.activate(mem.clone(), vec![], f.irq.clone()),
            Err(ActivateError::QueueCount {
                expected: 1,
                got: 0
            })
        );
        assert!(!f.rng.is_active());
        let q = mock(&mem);
        f.activate(&q, true);
        assert!(f.rng.is_active());
        assert_eq!(f.rng.activate_evt.read().unwrap(), 1);
        f.rng.reset();
        assert!(!f.rng.is_active());
        // A timer event handled after a reset disarmed the timer must not
        // block the event loop.
        assert!(f.rng.timer.wait().is_err());
        q.add_desc_chains(&[w(BUF, 8)], 0).unwrap();
        assert_eq!(f.process(), 0);
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        const CANARY: u64 = 0x30_0000;
        const CANARY_LEN: usize = 0x1_0000;

        /// Buffers in RAM below the canary (at most 64 KiB is written from
        /// any chain, so never into it), straddling the end of RAM, or
        /// anywhere at all (outside RAM).
        fn addr() -> impl Strategy<Value = u64> {
            prop_oneof![
                (0u64..0xf_0000).prop_map(|a| BUF + a),
                (0u64..0x1000).prop_map(|a| MEM - a),
                (MEM..=u64::MAX),
            ]
        }

        fn raw() -> impl Strategy<Value = (u64, u32, u16, u16)> {
            (
                addr(),
                prop_oneof![0u32..0x2000, any::<u32>()],
                prop_oneof![Just(W as u16), Just((W | NEXT) as u16), any::<u16>()],
                prop_oneof![0u16..16, any::<u16>()],
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            /// A hostile descriptor table and avail ring: the device never
            /// panics, never gives one request more than the cap, never
            /// writes where no descriptor points, and completes at most the
            /// chains offered.
            #[test]
            fn hostile_chains_are_contained(
                descs in prop::collection::vec(raw(), 16),
                heads in prop::collection::vec(prop_oneof![0u16..16, any::<u16>()], 0..16),
                event_idx in any::<bool>(),
            ) {
                let (mut f, mem) = fixture(EntropyConfig::default());
                mem.write_slice(&[0xaa; CANARY_LEN], GuestAddress(CANARY)).unwrap();
                let mut q = Queue::new(16).unwrap();
                let avail = 0x2000u64;
                for (i, &(a, l, fl, n)) in descs.iter().enumerate() {
                    let d = RawDescriptor::from(SplitDescriptor::new(a, l, fl, n));
                    mem.write_obj(d, GuestAddress(16 * i as u64)).unwrap();
                }
                for (i, h) in heads.iter().enumerate() {
                    mem.write_obj(*h, GuestAddress(avail + 4 + 2 * i as u64)).unwrap();
                }
                mem.write_obj(heads.len() as u16, GuestAddress(avail + 2)).unwrap();
                q.try_set_desc_table_address(GuestAddress(0)).unwrap();
                q.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
                q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
                q.set_ready(true);
                q.set_event_idx(event_idx);
                let vq = VirtQueue { queue: q, event: EventFd::new(EFD_NONBLOCK).unwrap() };
                f.rng.activate(mem.clone(), vec![vq], f.irq.clone()).unwrap();
                let done = f.process();
                prop_assert!(done <= heads.len());
                prop_assert!(usize::from(f.used_idx()) == done);
                for i in 0..done as u64 {
                    prop_assert!(f.used(i).1 <= MAX_BYTES_PER_REQUEST);
                }
                let mut c = vec![0u8; CANARY_LEN];
                mem.read_slice(&mut c, GuestAddress(CANARY)).unwrap();
                prop_assert!(c.iter().all(|&b| b == 0xaa));
                let m = f.rng.metrics.snapshot();
                prop_assert!(m.bytes <= done as u64 * u64::from(MAX_BYTES_PER_REQUEST));
            }
        }
    }
}
