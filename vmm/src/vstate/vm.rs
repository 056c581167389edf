//! The VM: its fd and the guest RAM it maps, owned together.
//!
//! Field order is teardown order: the VM fd closes (KVM drops its memslots
//! and stage-2 tables) before the RAM mappings go, and guest RAM cannot be
//! dropped while the VM that maps it is alive.
use super::kvm::KvmError;
use crate::devices::legacy::ioapic::IOAPIC_PINS;
use crate::memory::backing::BackingConfig;
use crate::memory::dirty::{self, DirtyError, DirtyLog, DirtyMode};
use crate::memory::{GuestMemory, GuestRam, MemoryError};
use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_pre_fault_memory, KVM_CAP_SPLIT_IRQCHIP,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use std::sync::Arc;

/// Address KVM may use for the VMX real-mode TSS: the top of the 4 GiB hole.
const TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Dirty(#[from] DirtyError),
}

/// Which interrupt controllers KVM emulates (`--irqchip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IrqchipMode {
    /// LAPICs in KVM; the IOAPIC in the VMM (`devices::legacy::ioapic`); no
    /// PIC or PIT. Closes in ~0.4 ms instead of ~20 ms on the hosts
    /// measured; enough for guests that route through the IOAPIC and time
    /// with the LAPIC and TSC, as ours does.
    Split,
    /// LAPICs, IOAPIC, PICs and PIT all in KVM, as Linux guests without
    /// ACPI tables expect.
    Full,
}

vmm_sys_util::ioctl_iowr_nr!(
    KVM_PRE_FAULT_MEMORY,
    kvm_bindings::KVMIO,
    0xd5,
    kvm_pre_fault_memory
);

/// How `--prefault` populated guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefaultMethod {
    KvmPreFaultMemory,
    MadvPopulateWrite,
}

pub struct Vm {
    /// `--dirty-log`; holds a clone of `fd`, so it goes first (see Drop).
    dirty: Option<Arc<DirtyLog>>,
    /// Shared with the userspace IOAPIC of a split irqchip, which sets GSI
    /// routes; it lives on the device bus, dropped before the VM.
    pub fd: Arc<VmFd>,
    /// Shared with devices that give memory back to the host (the balloon).
    ram: Arc<GuestRam>,
}

impl Vm {
    /// Creates the VM. Interrupt controllers come later, in
    /// [`Vm::add_interrupt_controllers`], after the memslots: on the PVM hosts
    /// measured here the first KVM_SET_USER_MEMORY_REGION took ~4.8 ms once an
    /// in-kernel irqchip existed and ~0.25 ms before it.
    ///
    /// Dirty logging is set up here because KVM wants it before the vCPUs
    /// (the ring) and in the memslot flags (both modes).
    pub fn new(
        kvm: &Kvm,
        memory: u64,
        backing: BackingConfig,
        dirty_mode: DirtyMode,
    ) -> Result<Self, VmError> {
        if !kvm.check_extension(Cap::Irqchip) {
            return Err(KvmError::MissingCap("KVM_CAP_IRQCHIP").into());
        }
        if !kvm.check_extension(Cap::UserMemory) {
            return Err(KvmError::MissingCap("KVM_CAP_USER_MEMORY").into());
        }
        let fd = kvm.create_vm().map_err(|source| KvmError::Ioctl {
            what: "KVM_CREATE_VM",
            source,
        })?;
        let (slot_flags, ring) = dirty::enable(&fd, dirty_mode)?;
        let ram = if dirty_mode == DirtyMode::Off {
            GuestRam::with_backing(memory, backing)?
        } else {
            GuestRam::with_vmm_write_tracking(memory, backing)?
        };
        ram.register_with_flags(&fd, slot_flags)?;
        let fd = Arc::new(fd);
        let dirty = (dirty_mode != DirtyMode::Off).then(|| {
            Arc::new(DirtyLog::new(
                dirty_mode,
                fd.clone(),
                ram.regions(),
                ram.memory().clone(),
                ring,
            ))
        });
        Ok(Vm {
            dirty,
            fd,
            ram: Arc::new(ram),
        })
    }

    /// The interrupt controllers of `mode`. Interrupts handled in the
    /// kernel cost no VMM exits: either way the LAPICs and their timers are
    /// KVM's, and device interrupts arrive through irqfds.
    pub fn add_interrupt_controllers(&self, mode: IrqchipMode) -> Result<(), VmError> {
        let io = |what| move |source| VmError::from(KvmError::Ioctl { what, source });
        self.fd
            .set_tss_address(TSS_ADDRESS)
            .map_err(io("KVM_SET_TSS_ADDR"))?;
        match mode {
            IrqchipMode::Split => {
                let mut cap = kvm_enable_cap {
                    cap: KVM_CAP_SPLIT_IRQCHIP,
                    ..Default::default()
                };
                cap.args[0] = IOAPIC_PINS as u64;
                self.fd
                    .enable_cap(&cap)
                    .map_err(io("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;
            }
            IrqchipMode::Full => {
                self.fd
                    .create_irq_chip()
                    .map_err(io("KVM_CREATE_IRQCHIP"))?;
                let pit = kvm_pit_config {
                    flags: KVM_PIT_SPEAKER_DUMMY,
                    ..Default::default()
                };
                self.fd.create_pit2(pit).map_err(io("KVM_CREATE_PIT2"))?;
            }
        }
        Ok(())
    }

    /// Populates all of guest RAM before the guest runs (`--prefault`):
    /// KVM_PRE_FAULT_MEMORY through `vcpu` where KVM supports it (host
    /// pages and stage-2 entries both), else MADV_POPULATE_WRITE (host
    /// pages only; stage-2 still fills on first touch, without the host
    /// fault). Which one ran is returned and logged.
    pub fn prefault(&self, vcpu: &VcpuFd) -> Result<PrefaultMethod, VmError> {
        match self.pre_fault_memory(vcpu) {
            Ok(()) => {
                log::info!("prefaulted guest RAM with KVM_PRE_FAULT_MEMORY");
                Ok(PrefaultMethod::KvmPreFaultMemory)
            }
            Err(e) => {
                log::info!(
                    "KVM_PRE_FAULT_MEMORY failed ({e}); prefaulting with MADV_POPULATE_WRITE"
                );
                self.ram.populate()?;
                Ok(PrefaultMethod::MadvPopulateWrite)
            }
        }
    }

    fn pre_fault_memory(&self, vcpu: &VcpuFd) -> std::io::Result<()> {
        for r in self.ram.regions() {
            let mut range = kvm_pre_fault_memory {
                gpa: r.guest_base,
                size: r.size,
                ..Default::default()
            };
            // KVM advances gpa and shrinks size as it goes, and returns
            // early (EINTR/EAGAIN) when it must: call until all is done.
            while range.size > 0 {
                // SAFETY: KVM_PRE_FAULT_MEMORY reads and writes exactly one
                // kvm_pre_fault_memory, which `range` is.
                let rc = unsafe {
                    vmm_sys_util::ioctl::ioctl_with_mut_ref(
                        vcpu,
                        KVM_PRE_FAULT_MEMORY(),
                        &mut range,
                    )
                };
                if rc < 0 {
                    let e = std::io::Error::last_os_error();
                    if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The dirty log, with `--dirty-log` bitmap or ring.
    pub fn dirty(&self) -> Option<&Arc<DirtyLog>> {
        self.dirty.as_ref()
    }

    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// A handle on guest RAM for a device that discards or collapses it.
    pub fn shared_ram(&self) -> Arc<GuestRam> {
        self.ram.clone()
    }

    pub fn memory(&self) -> &GuestMemory {
        self.ram.memory()
    }

    /// What guest RAM costs now, host and KVM side (the report's memory
    /// figures and `GET /vm/memory`).
    pub fn accounting(&self) -> crate::memory::accounting::MemoryAccounting {
        let kvm = super::kvm_stats::KvmStats::read_vm(&self.fd)
            .map_err(|e| log::debug!("KVM statistics: {e}"))
            .ok();
        crate::memory::accounting::measure(&self.ram, kvm)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // The VM fd must close here, before the RAM it maps is unmapped:
        // whoever shared it (the IOAPIC, the dirty log) is gone by now.
        self.dirty = None;
        debug_assert_eq!(Arc::strong_count(&self.fd), 1, "the VM fd outlives the Vm");
    }
}
