//! virtio-rng (entropy device, ID 4, §5.4): one queue, `requestq`; the
//! driver offers device-writable buffers and the device fills them with
//! random bytes, returning how many it wrote.
//!
//! Reads go in batches of up to `BATCH` 4 KiB buffers: the batch is added,
//! published with one index store, signalled with at most one QueueNotify
//! (none if the device's `avail_event` says it is still looking), and the
//! driver asks (`used_event`) for one interrupt when the whole batch is
//! back. It then waits for the pending mark the CPL0 stub sets (asleep in
//! `hlt`, or spinning at CPL3: `Wait`), acknowledges the interrupt (two
//! exits) and drains the used ring. A watchdog look at the used ring after
//! ~4 ms without one covers a lost interrupt (and, if nothing at all came
//! back for a batch that was not notified, notifies after all in case the
//! device's `avail_event` was stale);
//! `WAIT_CYCLES` without the batch complete is an error.
//!
//! Every used element is checked: its head must be one of this batch's,
//! and a length above what the buffer offered is clamped and counted.
use super::queue::{Buffer, Virtqueue};
use super::{Pages, Transport, VirtioError, Wait, F_RING_EVENT_IDX, F_VERSION_1};
use crate::arch::cpu;
use crate::irq;

pub const DEVICE_ID: u32 = 4;
pub const REQUESTQ: u16 = 0;
/// Buffers in flight per batch, and their size.
pub const BATCH: usize = 8;
pub const BUF_SIZE: usize = 4096;
/// Between fallback looks at the used ring (~4 ms at 2-3 GHz): a watchdog
/// for a lost interrupt, long enough that a late one is still waited for.
const POLL_CYCLES: u64 = 10_000_000;
/// The same for `Wait::Halt`, as a LAPIC timer count (~ns under KVM).
const POLL_NS: u32 = 4_000_000;
/// Longest wait for a batch (several seconds at any TSC rate we run on).
const WAIT_CYCLES: u64 = 20_000_000_000;
/// Batches in a row that may return no bytes before we give up.
const MAX_EMPTY_BATCHES: u32 = 16;

/// What reading cost.
#[derive(Clone, Copy, Default)]
pub struct ReadStats {
    pub bytes: u64,
    /// Buffers handed to the device.
    pub requests: u64,
    pub batches: u64,
    /// QueueNotify writes (exits).
    pub notifications: u64,
    /// Device interrupts taken while reading.
    pub interrupts: u64,
    /// Batches found complete by the fallback poll before their interrupt.
    pub polled_batches: u64,
    /// Used lengths above what the buffer offered (clamped).
    pub overlong: u64,
    /// QueueNotify writes after a watchdog period without progress for a
    /// batch the device's `avail_event` had said needed none (counted in
    /// `notifications` too). Non-zero means a stale `avail_event`.
    pub watchdog_kicks: u64,
    /// `Wait::Halt`: times the CPU slept waiting (system calls).
    pub sleeps: u64,
}

/// Buffers posted by [`VirtioRng::stage`]: the stores that hand them to
/// the device (`avail_idx` at `avail_idx_addr`, a fence, `queue` at
/// `notify_addr`) and the used index that says they are back.
#[derive(Clone, Copy)]
pub struct Staged {
    pub avail_idx_addr: u64,
    pub avail_idx: u16,
    pub notify_addr: u64,
    pub queue: u32,
    pub used_idx_addr: u64,
    pub used_idx: u16,
    /// The first buffer; `buffers` of `BUF_SIZE` bytes follow it.
    pub bufs: u64,
    pub buffers: usize,
    /// Where the device will write the first and last used elements.
    pub used_elems: (u64, u64),
}

pub struct VirtioRng {
    t: Transport,
    q: Virtqueue,
    pub features: u64,
    pub queue_size: u16,
    _rings: Pages,
    bufs: Pages,
}

impl VirtioRng {
    /// Finds the device on the command line and brings it up (§3.1.1) with
    /// its IRQ routed to this CPU.
    pub fn init(cmdline: &str, cpu: usize) -> Result<VirtioRng, VirtioError> {
        let mut t = Transport::find(cmdline, DEVICE_ID)?;
        let features = t.negotiate(F_VERSION_1, F_RING_EVENT_IDX)?;
        let event_idx = features & F_RING_EVENT_IDX != 0;
        let (q, rings) = t.setup_queue(REQUESTQ, 64, event_idx, cpu)?;
        let bufs = Pages::alloc(cpu, BATCH * BUF_SIZE).inspect_err(|_| t.fail())?;
        t.route_irq()?;
        t.driver_ok()?;
        Ok(VirtioRng {
            queue_size: q.size(),
            t,
            q,
            features,
            _rings: rings,
            bufs,
        })
    }

    pub fn base(&self) -> u64 {
        self.t.base
    }
    pub fn irq(&self) -> u32 {
        self.t.irq
    }

    /// Reads `total` bytes, handing each filled buffer to `sink`; waits for
    /// each batch as `wait` says.
    pub fn read(
        &mut self,
        total: u64,
        wait: Wait,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<ReadStats, VirtioError> {
        let mut st = ReadStats::default();
        let irqs_before = self.t.interrupts();
        let batch = BATCH.min(self.q.size() as usize);
        let mut offered = [0u32; BATCH];
        let mut empty = 0;
        while st.bytes < total {
            // Post a batch covering what is still missing.
            let mut asked = 0u64;
            let mut posted = 0;
            let mut heads = [0u16; BATCH];
            while posted < batch && st.bytes + asked < total {
                let len = (total - st.bytes - asked).min(BUF_SIZE as u64) as u32;
                let buf = Buffer {
                    addr: self.bufs.addr + (posted * BUF_SIZE) as u64,
                    len,
                    device_writes: true,
                };
                let Some(head) = self.q.add(&[buf]) else {
                    break;
                };
                heads[posted] = head;
                offered[posted] = len;
                asked += len as u64;
                posted += 1;
            }
            self.q.interrupt_after(posted as u16);
            let mut notified = self.q.publish();
            if notified {
                self.t.notify(&self.q);
                st.notifications += 1;
            }
            st.requests += posted as u64;
            st.batches += 1;

            // Wait for all of it.
            let mut got = 0u64;
            let mut done = 0;
            let start = cpu::rdtsc();
            let mut last_look = start;
            let mut by_interrupt = false;
            let mut slept = false;
            while done < posted {
                let watchdog = match self.t.service_interrupt()? {
                    Some(_) => {
                        by_interrupt = true;
                        false
                    }
                    None => {
                        let now = cpu::rdtsc();
                        if now - start > WAIT_CYCLES {
                            self.t.check()?;
                            return Err(VirtioError::Timeout {
                                in_flight: self.q.in_flight(),
                            });
                        }
                        match wait {
                            Wait::Spin if now - last_look <= POLL_CYCLES => {
                                core::hint::spin_loop();
                                continue;
                            }
                            Wait::Halt if !irq::take_mask(irq::WATCHDOG) => {
                                irq::wait(self.t.irq, POLL_NS);
                                st.sleeps += 1;
                                slept = true;
                                continue;
                            }
                            _ => {}
                        }
                        true
                    }
                };
                let before = done;
                while let Some(u) = self.q.pop_used()? {
                    let slot = heads[..posted].iter().position(|&h| h == u.head).ok_or(
                        VirtioError::BadUsed {
                            head: u.head as u32,
                        },
                    )?;
                    let len = if u.len > offered[slot] {
                        st.overlong += 1;
                        offered[slot]
                    } else {
                        u.len
                    };
                    let addr = self.bufs.addr + (slot * BUF_SIZE) as u64;
                    // SAFETY: our buffer page, identity mapped; the device
                    // has returned it (it is in the used ring).
                    sink(unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) });
                    got += len as u64;
                    done += 1;
                }
                let now = cpu::rdtsc();
                if watchdog && !notified && done == before && now - last_look > POLL_CYCLES {
                    // Nothing moved for a whole watchdog period although
                    // the device's avail_event said it would look by
                    // itself: notify once after all. (After a notification
                    // a slow device is only slow; notifying again would
                    // add exits and nothing else.)
                    self.t.notify(&self.q);
                    notified = true;
                    st.notifications += 1;
                    st.watchdog_kicks += 1;
                }
                if done > before || watchdog {
                    last_look = now;
                }
            }
            if slept {
                irq::stop_watchdog();
            }
            if !by_interrupt {
                st.polled_batches += 1;
            }
            st.bytes += got;
            if got == 0 {
                empty += 1;
                if empty >= MAX_EMPTY_BATCHES {
                    return Err(VirtioError::NoProgress { batches: empty });
                }
            } else {
                empty = 0;
            }
        }
        st.interrupts = (self.t.interrupts() - irqs_before) as u64;
        Ok(st)
    }

    /// Posts up to `BATCH` buffers for a caller that publishes and notifies
    /// by hand, with plain stores (see [`Staged`]), and asks for no
    /// interrupt for them. Take them back with [`Self::unstage`].
    pub fn stage(&mut self, n: usize) -> Staged {
        let mut posted = 0;
        for i in 0..n.min(BATCH) {
            let buf = Buffer {
                addr: self.bufs.addr + (i * BUF_SIZE) as u64,
                len: BUF_SIZE as u32,
                device_writes: true,
            };
            if self.q.add(&[buf]).is_none() {
                break;
            }
            posted += 1;
        }
        let first_elem = self.q.used_elem_addr(0);
        let last_elem = self.q.used_elem_addr(posted.max(1) as u16 - 1);
        self.q.interrupt_after(0);
        let (avail_idx_addr, avail_idx) = self.q.publish_by_hand();
        let (used_idx_addr, used_idx) = self.q.used_idx_when_done();
        Staged {
            avail_idx_addr,
            avail_idx,
            notify_addr: self.t.base + super::REG_QUEUE_NOTIFY,
            queue: self.q.index() as u32,
            used_idx_addr,
            used_idx,
            bufs: self.bufs.addr,
            buffers: posted,
            used_elems: (first_elem, last_elem),
        }
    }

    /// Takes back the chains of [`Self::stage`] once the used index says
    /// they are done; returns the bytes the device wrote.
    pub fn unstage(&mut self, s: &Staged) -> Result<u64, VirtioError> {
        let mut bytes = 0;
        for _ in 0..s.buffers {
            match self.q.pop_used()? {
                Some(u) => bytes += u.len.min(BUF_SIZE as u32) as u64,
                None => {
                    return Err(VirtioError::Timeout {
                        in_flight: self.q.in_flight(),
                    })
                }
            }
        }
        Ok(bytes)
    }

    /// Resets the device so it lets go of the rings and buffers, which are
    /// then freed.
    pub fn shutdown(mut self) -> Result<(), VirtioError> {
        self.t.reset()
    }
}
