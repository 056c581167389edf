//! vCPUs: each on its own thread, a small state machine driven by messages.
//!
//! States: Running (in or around KVM_RUN), Paused (out of KVM_RUN, blocked on
//! its message channel, registers readable), Exited (the guest crashed or
//! the run failed; it waits to be finished). The event loop sends Pause,
//! Resume or Finish and then kicks: `immediate_exit` set atomically in
//! `kvm_run` plus a signal, so a vCPU inside KVM_RUN (even halted) returns
//! at once and one about to enter it does not. Exits are decoded here and
//! handled by `exit::handle` against the device bus; what the event loop
//! must learn travels through the bounded `VmEvents` queue.
pub mod exit;
pub mod x86_64;

pub use x86_64::{create_vcpu, BootState, VcpuError};

use crate::clock::now_ns;
use crate::devices::bus::Bus;
use crate::guest::events::{VmEvent, VmEvents};
use exit::{handle, Action, Exit};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

thread_local! {
    static VCPU_ID: Cell<u32> = const { Cell::new(u32::MAX) };
}

/// The index of the vCPU whose thread is running this code (u32::MAX off a
/// vCPU thread). Devices on the bus use it to say who sent a record.
pub fn current_vcpu() -> u32 {
    VCPU_ID.with(|c| c.get())
}

/// Exit counters, for the report.
#[derive(Default, Debug)]
pub struct ExitCounters {
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    /// Accesses no device claimed.
    pub unclaimed: AtomicU64,
    /// Times a vCPU was pulled out of KVM_RUN by a kick.
    pub kicks: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    Running,
    Paused,
    Exited,
}

#[derive(Debug)]
enum Msg {
    Pause,
    Resume,
    Finish,
}

/// A vCPU's answer to Pause or Resume: its state afterwards, and for Paused
/// the rip read from its registers (proof that they are readable).
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub state: VcpuState,
    pub rip: Option<u64>,
    /// How many Pause and Resume messages the vCPU has handled: a reply
    /// that arrives after its request timed out is told from the answer to
    /// the next request, and skipped.
    pub seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuControlError {
    #[error("vCPU {0} did not answer within {1:?}")]
    Timeout(u32, Duration),
    #[error("vCPU {0} thread is gone")]
    Gone(u32),
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for the kick signal: its only job is to make
/// a blocked KVM_RUN return EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(SIGRTMIN(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// What every vCPU thread shares.
pub struct VcpuContext {
    pub bus: Arc<dyn Bus + Send + Sync>,
    pub events: Arc<VmEvents>,
    pub counters: Arc<ExitCounters>,
    /// `--dirty-log ring`: emptied here when a vCPU's ring fills.
    pub dirty: Option<Arc<crate::memory::dirty::DirtyLog>>,
}

/// The event loop's handle on one vCPU thread.
pub struct VcpuHandle {
    pub id: u32,
    pub state: VcpuState,
    thread: Option<JoinHandle<VcpuFd>>,
    /// `kvm_run.immediate_exit`, valid until the thread hands its VcpuFd back.
    immediate_exit: usize,
    tx: Sender<Msg>,
    rx: Receiver<Reply>,
    /// Pause and Resume messages sent; the reply to the latest has this seq.
    sent: u64,
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

impl VcpuHandle {
    pub fn spawn(mut vcpu: VcpuFd, id: u32, ctx: Arc<VcpuContext>) -> std::io::Result<Self> {
        let immediate_exit = &mut vcpu.get_kvm_run().immediate_exit as *mut u8 as usize;
        let (tx, msgs) = channel();
        let (replies, rx) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                VCPU_ID.with(|c| c.set(id));
                // Even if the loop panics (tests unwind), hand the VcpuFd back:
                // kick() writes into its kvm_run mapping until join().
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&mut vcpu, id, &ctx, &msgs, &replies)
                }));
                if r.is_err() {
                    ctx.events.push(VmEvent::Failed {
                        vcpu: id,
                        error: "the vCPU thread panicked".into(),
                        at_ns: now_ns(),
                    });
                }
                vcpu
            })?;
        Ok(VcpuHandle {
            id,
            state: VcpuState::Running,
            thread: Some(thread),
            immediate_exit,
            tx,
            rx,
            sent: 0,
        })
    }

    /// Makes the vCPU leave KVM_RUN now, or not enter it next time.
    fn kick(&self) {
        if let Some(t) = &self.thread {
            // SAFETY: kvm_run stays mapped until the VcpuFd the thread returns
            // is dropped, which happens only after join(), and join() takes
            // the thread out of `self.thread`. The byte is KVM's documented
            // immediate_exit flag, which KVM reads and we write atomically.
            let flag = unsafe { &*(self.immediate_exit as *const AtomicU8) };
            flag.store(1, Ordering::SeqCst);
            let _ = t.kill(SIGRTMIN());
        }
    }

    fn send(&mut self, m: Msg, kick: bool) -> Result<(), VcpuControlError> {
        self.tx
            .send(m)
            .map_err(|_| VcpuControlError::Gone(self.id))?;
        self.sent += 1;
        if kick {
            self.kick();
        }
        Ok(())
    }

    /// The answer to the latest Pause or Resume; late answers to earlier
    /// ones (which timed out) are skipped.
    fn reply(&mut self) -> Result<Reply, VcpuControlError> {
        let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let r = self.rx.recv_timeout(left).map_err(|e| match e {
                RecvTimeoutError::Timeout => VcpuControlError::Timeout(self.id, REPLY_TIMEOUT),
                RecvTimeoutError::Disconnected => VcpuControlError::Gone(self.id),
            })?;
            if r.seq == self.sent {
                self.state = r.state;
                return Ok(r);
            }
        }
    }

    /// Stops the thread and takes its VcpuFd back (dropped here).
    fn finish(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.tx.send(Msg::Finish);
            // SAFETY: as in kick(); the thread has not been joined yet.
            let flag = unsafe { &*(self.immediate_exit as *const AtomicU8) };
            flag.store(1, Ordering::SeqCst);
            let _ = t.kill(SIGRTMIN());
            let _ = t.join();
            self.state = VcpuState::Exited;
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Pauses every vCPU; returns when each is out of KVM_RUN (or already
/// exited), with the rip each read from its registers.
pub fn pause_all(vcpus: &mut [VcpuHandle]) -> Result<Vec<Reply>, VcpuControlError> {
    for v in vcpus.iter_mut() {
        v.send(Msg::Pause, true)?;
    }
    vcpus.iter_mut().map(VcpuHandle::reply).collect()
}

pub fn resume_all(vcpus: &mut [VcpuHandle]) -> Result<Vec<Reply>, VcpuControlError> {
    for v in vcpus.iter_mut() {
        v.send(Msg::Resume, false)?;
    }
    vcpus.iter_mut().map(VcpuHandle::reply).collect()
}

/// Stops and joins every vCPU thread.
pub fn finish_all(vcpus: &mut [VcpuHandle]) {
    for v in vcpus.iter() {
        let _ = v.tx.send(Msg::Finish);
        v.kick();
    }
    for v in vcpus.iter_mut() {
        v.finish();
    }
}

fn rip(vcpu: &VcpuFd) -> Option<u64> {
    vcpu.get_regs().ok().map(|r| r.rip)
}

/// Copies an exit out of `kvm_run`. Port I/O also reads the access size
/// (kvm-ioctls gives only the buffer): a `rep outsw` must reach the device
/// as two-byte writes.
fn next_exit<'a>(
    vcpu: &'a mut VcpuFd,
    run_ptr: *const kvm_bindings::kvm_run,
) -> Result<Exit<'a>, kvm_ioctls::Error> {
    // SAFETY: run_ptr is this vCPU's kvm_run mapping; for port-I/O exits
    // KVM filled the `io` member of the union, and reading its `size`
    // field does not overlap the data bytes the exit borrows.
    let io_size = || unsafe { (*run_ptr).__bindgen_anon_1.io.size };
    Ok(match vcpu.run()? {
        VcpuExit::IoIn(port, data) => Exit::IoIn {
            port,
            size: io_size(),
            data,
        },
        VcpuExit::IoOut(port, data) => Exit::IoOut {
            port,
            size: io_size(),
            data,
        },
        VcpuExit::MmioRead(addr, data) => Exit::MmioRead { addr, data },
        VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite { addr, data },
        VcpuExit::Hlt => Exit::Hlt,
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::InternalError => {
            // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
            // `internal` member of the union is the one KVM filled.
            let suberror = unsafe { (*run_ptr).__bindgen_anon_1.internal.suberror };
            Exit::InternalError { suberror }
        }
        VcpuExit::FailEntry(reason, _) => Exit::FailEntry { reason },
        VcpuExit::SystemEvent(kind, _) => Exit::SystemEvent { kind },
        VcpuExit::Intr => Exit::Interrupted,
        VcpuExit::IoapicEoi(vector) => Exit::IoapicEoi { vector },
        VcpuExit::Unsupported(kvm_bindings::KVM_EXIT_DIRTY_RING_FULL) => Exit::DirtyRingFull,
        // SAFETY: reading the exit reason KVM wrote.
        _ => Exit::Other {
            reason: unsafe { (*run_ptr).exit_reason },
        },
    })
}

fn run(
    vcpu: &mut VcpuFd,
    id: u32,
    ctx: &VcpuContext,
    msgs: &Receiver<Msg>,
    replies: &Sender<Reply>,
) {
    let push = |e| ctx.events.push(e);
    let c = &ctx.counters;
    let mut state = VcpuState::Running;
    let mut seq = 0;
    if id == 0 {
        push(VmEvent::FirstRun { at_ns: now_ns() });
    }
    let run_ptr = vcpu.get_kvm_run() as *const kvm_bindings::kvm_run;
    loop {
        let msg = if state == VcpuState::Running {
            match msgs.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            }
        } else {
            match msgs.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        };
        match msg {
            Some(Msg::Finish) => return,
            Some(Msg::Pause) => {
                if state == VcpuState::Running {
                    state = VcpuState::Paused;
                }
                seq += 1;
                let _ = replies.send(Reply {
                    state,
                    rip: rip(vcpu),
                    seq,
                });
                continue;
            }
            Some(Msg::Resume) => {
                if state == VcpuState::Paused {
                    state = VcpuState::Running;
                }
                seq += 1;
                let _ = replies.send(Reply {
                    state,
                    rip: None,
                    seq,
                });
            }
            None => {}
        }
        if state != VcpuState::Running {
            continue;
        }
        let exit = match next_exit(vcpu, run_ptr) {
            Ok(e) => e,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => {
                push(VmEvent::Failed {
                    vcpu: id,
                    error: format!("KVM_RUN: {e}"),
                    at_ns: now_ns(),
                });
                state = VcpuState::Exited;
                continue;
            }
        };
        let is_io = matches!(exit, Exit::IoIn { .. } | Exit::IoOut { .. });
        match handle(exit, &*ctx.bus) {
            Action::Resume { unclaimed } => {
                let n = if is_io { &c.io } else { &c.mmio };
                n.fetch_add(1, Ordering::Relaxed);
                if unclaimed && c.unclaimed.fetch_add(1, Ordering::Relaxed) < 8 {
                    log::debug!("vCPU {id}: an access no device claimed (further ones counted)");
                }
            }
            Action::HarvestDirtyRing => {
                // KVM re-enters only once the ring has room again.
                let r = ctx.dirty.as_ref().map(|d| d.ring_full());
                if let Some(Err(e)) = r {
                    push(VmEvent::Failed {
                        vcpu: id,
                        error: e.to_string(),
                        at_ns: now_ns(),
                    });
                    state = VcpuState::Exited;
                } else if r.is_none() {
                    push(VmEvent::Failed {
                        vcpu: id,
                        error: "KVM_EXIT_DIRTY_RING_FULL without a dirty ring".into(),
                        at_ns: now_ns(),
                    });
                    state = VcpuState::Exited;
                }
            }
            Action::Idle => {
                // KVM_EXIT_HLT reaches us only without an in-kernel LAPIC
                // (ours blocks in the kernel instead): nothing will wake it.
                log::debug!("vCPU {id}: halted with interrupts off");
                state = VcpuState::Exited;
            }
            Action::Kicked => {
                c.kicks.fetch_add(1, Ordering::Relaxed);
                // SAFETY: our own kvm_run mapping; see VcpuHandle::kick.
                let flag =
                    unsafe { &*(std::ptr::addr_of!((*run_ptr).immediate_exit) as *const AtomicU8) };
                flag.store(0, Ordering::SeqCst);
            }
            Action::Crash(crash) => {
                log::debug!("vCPU {id}: {crash}");
                push(VmEvent::Crash {
                    vcpu: id,
                    crash,
                    rip: rip(vcpu),
                    at_ns: now_ns(),
                });
                state = VcpuState::Exited;
            }
        }
    }
}
