//! The VM: its fd and the guest RAM it maps, owned together.
//!
//! Field order is teardown order: the VM fd closes (KVM drops its memslots
//! and stage-2 tables) before the RAM mappings go, and guest RAM cannot be
//! dropped while the VM that maps it is alive.
use super::kvm::KvmError;
use crate::memory::{GuestMemory, GuestRam, MemoryError};
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};

/// Address KVM may use for the VMX real-mode TSS: the top of the 4 GiB hole.
const TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

pub struct Vm {
    pub fd: VmFd,
    ram: GuestRam,
}

impl Vm {
    /// Creates the VM. Interrupt controllers come later, in
    /// [`Vm::add_interrupt_controllers`], after the memslots: on the PVM hosts
    /// measured here the first KVM_SET_USER_MEMORY_REGION took ~4.8 ms once an
    /// in-kernel irqchip existed and ~0.25 ms before it.
    pub fn new(kvm: &Kvm, memory: u64) -> Result<Self, VmError> {
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
        let ram = GuestRam::new(memory)?;
        ram.register(&fd)?;
        Ok(Vm { fd, ram })
    }

    /// An in-kernel LAPIC/IOAPIC/PIC and PIT: Linux guests need them, and
    /// interrupts handled in the kernel cost no VMM exits.
    pub fn add_interrupt_controllers(&self) -> Result<(), VmError> {
        let io = |what| move |source| VmError::from(KvmError::Ioctl { what, source });
        self.fd
            .set_tss_address(TSS_ADDRESS)
            .map_err(io("KVM_SET_TSS_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(io("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(io("KVM_CREATE_PIT2"))?;
        Ok(())
    }

    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    pub fn memory(&self) -> &GuestMemory {
        self.ram.memory()
    }
}
