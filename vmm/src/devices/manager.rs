//! Puts devices on the bus: address and IRQ allocation (vm-allocator), the
//! legacy port-I/O devices every run has, and the registry of event-loop
//! subscribers that virtio devices bring.
//!
//! Everything is registered while the VM is built, before any vCPU runs;
//! [`DeviceManager::bus`] then freezes the bus into an `Arc` the vCPU threads
//! share.
use super::console::Console;
use super::legacy::hostio::{HostIo, HostPort};
use super::legacy::i8042::{I8042, I8042_BASE, I8042_LEN};
use super::legacy::ioapic::{Ioapic, KvmGsiRouter, IOAPIC_BASE, IOAPIC_LEN};
use super::legacy::serial::{SerialDevice, COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::guest::events::VmEvents;
use crate::memory::layout::{IRQ_BASE, IRQ_MAX, MMIO_DEVICES_END, MMIO_DEVICES_START};
use crate::memory::GuestMemory;
use event_manager::MutEventSubscriber;
use kvm_ioctls::VmFd;
use std::sync::{Arc, Mutex};
use vm_allocator::{AddressAllocator, IdAllocator};
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot create the {what} eventfd: {source}")]
    EventFd {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("KVM_IRQFD for {what} (GSI {gsi}) failed: {source}")]
    Irqfd {
        what: &'static str,
        gsi: u32,
        source: kvm_ioctls::Error,
    },
    #[error("cannot place {what} on the bus: {source}")]
    Bus {
        what: &'static str,
        source: vm_device::bus::Error,
    },
    #[error("address/IRQ allocator: {0}")]
    Allocator(#[from] vm_allocator::Error),
    #[error("virtio-rng: {0}")]
    Rng(#[from] crate::devices::virtio::rng::RngError),
    #[error("virtio-balloon: {0}")]
    Balloon(#[from] crate::devices::virtio::balloon::BalloonError),
    #[error(transparent)]
    Virtio(#[from] crate::devices::virtio::VirtioError),
    #[error("kernel command line: {0}")]
    Cmdline(String),
}

/// A device that has work to do on the event loop (virtio queues, timers).
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

pub struct DeviceManager {
    io: IoManager,
    pub mmio_addresses: AddressAllocator,
    pub irqs: IdAllocator,
    /// Added to the event manager once the VM is built.
    pub subscribers: Vec<Subscriber>,
    /// The results port, for its record count.
    pub results: Option<Arc<HostIo>>,
    /// The entropy device, for its metrics.
    pub rng: Option<Arc<Mutex<crate::devices::virtio::rng::Rng>>>,
    /// The balloon, for the API and the report.
    pub balloon: Option<Arc<Mutex<crate::devices::virtio::balloon::Balloon>>>,
}

impl DeviceManager {
    pub fn new() -> Result<Self, DeviceError> {
        Ok(DeviceManager {
            io: IoManager::new(),
            mmio_addresses: AddressAllocator::new(
                MMIO_DEVICES_START,
                MMIO_DEVICES_END - MMIO_DEVICES_START + 1,
            )?,
            irqs: IdAllocator::new(IRQ_BASE, IRQ_MAX)?,
            subscribers: Vec::new(),
            results: None,
            rng: None,
            balloon: None,
        })
    }

    pub fn io_mut(&mut self) -> &mut IoManager {
        &mut self.io
    }

    fn add_pio(
        &mut self,
        what: &'static str,
        base: u16,
        len: u16,
        dev: Arc<dyn vm_device::DevicePio + Send + Sync>,
    ) -> Result<(), DeviceError> {
        let range = PioRange::new(PioAddress(base), len)
            .map_err(|source| DeviceError::Bus { what, source })?;
        self.io
            .register_pio(range, dev)
            .map_err(|source| DeviceError::Bus { what, source })?;
        log::debug!("device {what} at ports {base:#x}..{:#x}", base + len);
        Ok(())
    }

    /// The IOAPIC of a split irqchip, which turns the guest's redirection
    /// entries into KVM GSI routes.
    pub fn add_ioapic(&mut self, vm: &Arc<VmFd>) -> Result<(), DeviceError> {
        let what = "IOAPIC";
        let dev = Arc::new(Mutex::new(Ioapic::new(Box::new(KvmGsiRouter(vm.clone())))));
        let range = MmioRange::new(MmioAddress(IOAPIC_BASE), IOAPIC_LEN)
            .map_err(|source| DeviceError::Bus { what, source })?;
        self.io
            .register_mmio(range, dev)
            .map_err(|source| DeviceError::Bus { what, source })?;
        log::debug!("device IOAPIC at {IOAPIC_BASE:#x} (split irqchip)");
        Ok(())
    }

    /// COM1, the i8042 reset line and the host I/O ports: what every run has.
    pub fn add_legacy(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        events: &Arc<VmEvents>,
        console: Console,
        dirty: Option<Arc<crate::memory::dirty::DirtyLog>>,
    ) -> Result<(), DeviceError> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| DeviceError::EventFd {
            what: "COM1",
            source,
        })?;
        vm.register_irqfd(&irq, COM1_IRQ)
            .map_err(|source| DeviceError::Irqfd {
                what: "COM1",
                gsi: COM1_IRQ,
                source,
            })?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(irq, console)));
        self.add_pio("COM1", COM1_BASE, COM1_LEN, serial)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(events.clone())));
        self.add_pio("i8042", I8042_BASE, I8042_LEN, i8042)?;
        for which in [HostPort::Results, HostPort::Mark, HostPort::Exit] {
            let mut dev = HostIo::new(which, mem.clone(), events.clone());
            if which == HostPort::Mark {
                dev.dirty = dirty.clone();
            }
            let dev = Arc::new(dev);
            if which == HostPort::Results {
                self.results = Some(dev.clone());
            }
            self.add_pio("host I/O port", which.port(), 4, dev)?;
        }
        Ok(())
    }

    /// A virtio-rng device on virtio-mmio; its token goes on `cmdline`.
    pub fn add_entropy(
        &mut self,
        cfg: &crate::devices::virtio::rng::EntropyConfig,
        vm: &VmFd,
        mem: &GuestMemory,
        cmdline: &mut linux_loader::cmdline::Cmdline,
    ) -> Result<(), DeviceError> {
        use crate::devices::virtio::{attach_mmio_device, rng::Rng};
        let rng = Arc::new(Mutex::new(Rng::new(cfg)?));
        let slot = attach_mmio_device(
            rng.clone(),
            mem,
            vm,
            &mut self.io,
            &mut self.mmio_addresses,
            &mut self.irqs,
            cmdline,
        )?;
        log::debug!("virtio-rng at {:#x}, IRQ {}", slot.base, slot.irq);
        self.rng = Some(rng.clone());
        self.subscribers.push(rng);
        Ok(())
    }

    /// A virtio-balloon device over `ram`; its token goes on `cmdline`.
    pub fn add_balloon(
        &mut self,
        cfg: &crate::devices::virtio::balloon::BalloonConfig,
        vm: &VmFd,
        ram: Arc<crate::memory::GuestRam>,
        cmdline: &mut linux_loader::cmdline::Cmdline,
    ) -> Result<(), DeviceError> {
        use crate::devices::virtio::{attach_mmio_device, balloon::Balloon};
        let (size, end, mem) = (ram.size(), ram.end(), ram.memory().clone());
        let balloon = Arc::new(Mutex::new(Balloon::new(cfg, ram, size, end)?));
        let slot = attach_mmio_device(
            balloon.clone(),
            &mem,
            vm,
            &mut self.io,
            &mut self.mmio_addresses,
            &mut self.irqs,
            cmdline,
        )?;
        log::debug!("virtio-balloon at {:#x}, IRQ {}", slot.base, slot.irq);
        self.balloon = Some(balloon.clone());
        self.subscribers.push(balloon);
        Ok(())
    }

    /// The finished bus, shared by the vCPU threads.
    pub fn bus(&mut self) -> Arc<IoManager> {
        Arc::new(std::mem::take(&mut self.io))
    }
}
