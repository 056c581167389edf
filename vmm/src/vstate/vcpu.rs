//! vCPUs: creation, boot register state, and the run loop on its own thread.
//!
//! The loop copies each exit out of `kvm_run`, lets `exit::decide` say what it
//! means, and performs that. Everything the main thread must know travels as
//! a `VmEvent` over a channel; stopping is a flag plus `immediate_exit` plus a
//! signal, so a vCPU blocked in KVM_RUN (halted) is pulled out too.
use super::exit::{decide, Action, Crash, Exit};
use crate::boot::regs;
use crate::clock::now_ns;
use crate::devices::results::{read_record, RecordKind};
use crate::devices::serial::SerialDevice;
use crate::memory::GuestRam;
use kvm_bindings::{kvm_mp_state, kvm_msr_entry, CpuId, Msrs, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
#[error("vCPU {id}: {what} failed: {source}")]
pub struct VcpuError {
    pub id: u32,
    pub what: &'static str,
    #[source]
    pub source: kvm_ioctls::Error,
}

/// Where and how vCPUs start.
#[derive(Clone, Copy, Debug)]
pub struct BootState {
    pub entry: u64,
    pub boot_params: u64,
    pub cr3: u64,
    /// All vCPUs start at `entry` (memvisor SMP entry); else only vCPU 0.
    pub smp_entry: bool,
    pub count: u32,
}

/// Messages from vCPU threads to the VMM's main thread.
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

/// Exit counters, for the report.
#[derive(Default, Debug)]
pub struct ExitCounters {
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    pub records: AtomicU64,
    pub bad_records: AtomicU64,
    pub kicks: AtomicU64,
}

/// What every vCPU thread shares.
pub struct VcpuShared {
    pub ram: Arc<GuestRam>,
    pub serial: SerialDevice,
    pub events: Sender<VmEvent>,
    pub stop: AtomicBool,
    pub exits: ExitCounters,
}

/// Sets the LAPIC's LINT0 to ExtINT and LINT1 to NMI, as firmware would for
/// Linux (the PIC's output reaches the BSP through LINT0).
fn set_lint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut lapic = vcpu.get_lapic()?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let b: [u8; 4] = std::array::from_fn(|i| lapic.regs[off + i] as u8);
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, byte) in v.to_le_bytes().into_iter().enumerate() {
            lapic.regs[off + i] = byte as _;
        }
    }
    vcpu.set_lapic(&lapic)
}

/// CPUID as KVM supports it, with this vCPU's APIC ID in leaves 1 and 0xb/0x1f.
fn cpuid_for(base: &CpuId, id: u32) -> CpuId {
    let mut c = base.clone();
    for e in c.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24),
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
    c
}

pub fn create_vcpu(
    vm: &VmFd,
    id: u32,
    cpuid: &CpuId,
    boot: &BootState,
) -> Result<VcpuFd, VcpuError> {
    let err = |what| move |source| VcpuError { id, what, source };
    let vcpu = vm.create_vcpu(id as u64).map_err(err("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(&cpuid_for(cpuid, id))
        .map_err(err("KVM_SET_CPUID2"))?;
    set_lint(&vcpu).map_err(err("KVM_SET_LAPIC"))?;
    if id == 0 || boot.smp_entry {
        let sregs =
            regs::long_mode_sregs(vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?, boot.cr3);
        vcpu.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
        let smp = boot.smp_entry.then_some((id, boot.count));
        vcpu.set_regs(&regs::entry_regs(boot.entry, boot.boot_params, smp))
            .map_err(err("KVM_SET_REGS"))?;
        vcpu.set_fpu(&regs::fpu()).map_err(err("KVM_SET_FPU"))?;
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        }])
        .expect("one MSR fits");
        vcpu.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if id != 0 {
            // With an in-kernel LAPIC, APs otherwise wait for INIT/SIPI.
            vcpu.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(err("KVM_SET_MP_STATE"))?;
        }
    }
    Ok(vcpu)
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for the kick signal: its only job is to make
/// a blocked KVM_RUN return EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(SIGRTMIN(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

pub struct VcpuThread {
    handle: JoinHandle<VcpuFd>,
    immediate_exit: usize,
}

impl VcpuThread {
    pub fn spawn(mut vcpu: VcpuFd, id: u32, shared: Arc<VcpuShared>) -> std::io::Result<Self> {
        let immediate_exit = &mut vcpu.get_kvm_run().immediate_exit as *mut u8 as usize;
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                // Even if the loop panics (tests unwind), hand the VcpuFd back:
                // kick() writes into its kvm_run mapping until join().
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_loop(&mut vcpu, id, &shared)
                }));
                if r.is_err() {
                    let _ = shared.events.send(VmEvent::Failed {
                        vcpu: id,
                        error: "the vCPU thread panicked".into(),
                        at_ns: now_ns(),
                    });
                }
                vcpu
            })?;
        Ok(VcpuThread {
            handle,
            immediate_exit,
        })
    }

    /// Makes the vCPU leave KVM_RUN now or at its next entry.
    pub fn kick(&self) {
        // SAFETY: kvm_run stays mapped until the VcpuFd the thread returns is
        // dropped, which happens only after join(); the byte is KVM's
        // documented immediate_exit flag.
        unsafe { std::ptr::write_volatile(self.immediate_exit as *mut u8, 1) };
        let _ = self.handle.kill(SIGRTMIN());
    }

    pub fn join(self) {
        let _ = self.handle.join();
    }
}

fn run_loop(vcpu: &mut VcpuFd, id: u32, s: &VcpuShared) {
    let send = |e| {
        let _ = s.events.send(e);
    };
    if id == 0 {
        send(VmEvent::FirstRun { at_ns: now_ns() });
    }
    while !s.stop.load(Ordering::Acquire) {
        let exit = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                s.exits.io.fetch_add(1, Ordering::Relaxed);
                match decide(Exit::IoIn {
                    port,
                    len: data.len() as u8,
                }) {
                    Action::SerialRead { offset } => data.fill(s.serial.read(offset)),
                    _ => data.fill(0xff),
                }
                continue;
            }
            Ok(VcpuExit::MmioRead(_, data)) => {
                s.exits.mmio.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
                continue;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                s.exits.io.fetch_add(1, Ordering::Relaxed);
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                Exit::IoOut {
                    port,
                    len: data.len() as u8,
                    value: u32::from_le_bytes(b),
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                s.exits.mmio.fetch_add(1, Ordering::Relaxed);
                Exit::MmioWrite {
                    addr,
                    len: data.len() as u8,
                }
            }
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::InternalError) => {
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                // `internal` member of the union is the one KVM filled.
                let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                Exit::InternalError { suberror }
            }
            Ok(VcpuExit::FailEntry(reason, _)) => Exit::FailEntry { reason },
            Ok(VcpuExit::SystemEvent(kind, _)) => Exit::SystemEvent { kind },
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(_) => Exit::Other {
                reason: vcpu.get_kvm_run().exit_reason,
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => {
                send(VmEvent::Failed {
                    vcpu: id,
                    error: format!("KVM_RUN: {e}"),
                    at_ns: now_ns(),
                });
                return;
            }
        };
        match decide(exit) {
            Action::Resume | Action::ReadOnes | Action::SerialRead { .. } => {}
            Action::SerialWrite { offset, value } => s.serial.write(offset, value),
            Action::Record { gpa } => match read_record(s.ram.memory(), gpa) {
                Ok((kind, payload)) => {
                    s.exits.records.fetch_add(1, Ordering::Relaxed);
                    send(VmEvent::Record {
                        vcpu: id,
                        kind,
                        payload,
                        at_ns: now_ns(),
                    });
                }
                Err(e) => {
                    // Counted always, reported for the first few only: a
                    // guest must not be able to flood the report.
                    if s.exits.bad_records.fetch_add(1, Ordering::Relaxed) < 8 {
                        send(VmEvent::BadRecord {
                            vcpu: id,
                            error: e.to_string(),
                            at_ns: now_ns(),
                        });
                    }
                }
            },
            Action::Mark(value) => send(VmEvent::Mark {
                vcpu: id,
                value,
                at_ns: now_ns(),
            }),
            Action::GuestExit(status) => {
                send(VmEvent::GuestExit {
                    vcpu: id,
                    status,
                    at_ns: now_ns(),
                });
                return;
            }
            Action::Idle => {
                // KVM_EXIT_HLT reaches us only without an in-kernel LAPIC
                // (ours blocks in the kernel instead): park until told to stop.
                while !s.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(std::time::Duration::from_millis(50));
                }
            }
            Action::Kicked => {
                s.exits.kicks.fetch_add(1, Ordering::Relaxed);
                vcpu.set_kvm_immediate_exit(0);
            }
            Action::Crash(crash) => {
                let rip = vcpu.get_regs().ok().map(|r| r.rip);
                send(VmEvent::Crash {
                    vcpu: id,
                    crash,
                    rip,
                    at_ns: now_ns(),
                });
                return;
            }
        }
    }
}
