//! virtio devices over the virtio-mmio transport (virtio 1.2, modern only).
//!
//! The split of work, and which thread does what:
//! - [`mmio::MmioTransport`] is the register file of one device (§4.2.2). It
//!   runs on vCPU threads (MMIO exits through vm-device's `IoManager`), owns
//!   the queue configuration until the driver writes DRIVER_OK, and then hands
//!   checked [`virtio_queue::Queue`]s to the device through
//!   [`VirtioDevice::activate`].
//! - A device (`rng/`, ...) does its work on the event-loop thread, as an
//!   `event_manager::MutEventSubscriber`: KVM signals guest kicks on the
//!   queue's `EventFd` (an ioeventfd, so a kick never exits to userspace) and
//!   the device raises interrupts through an irqfd ([`IrqTrigger`]), so no
//!   vCPU ever waits for a device.
//! - [`attach_mmio_device`] wires one device: window, IRQ, ioeventfds, irqfd,
//!   bus registration and the `virtio_mmio.device=` command-line entry.
//!
//! Locking: vCPU threads lock the transport, then the device; the event loop
//! locks only the device. Nothing locks in the other order.
//!
//! Wiring one device (the device manager, at boot, after the in-kernel
//! irqchip exists, before the command line is written to guest memory):
//! ```ignore
//! // once per VM
//! let mut mmio = AddressAllocator::new(MMIO_DEVICES_START, MMIO_DEVICES_END - MMIO_DEVICES_START + 1)?;
//! let mut irqs = IdAllocator::new(IRQ_BASE, IRQ_MAX)?;
//! // per device
//! let rng = Arc::new(Mutex::new(Rng::new(&entropy_config)?));
//! let slot = attach_mmio_device(rng.clone(), &mem, &vm_fd, &mut io_manager, &mut mmio, &mut irqs, &mut cmdline)?;
//! event_manager.add_subscriber(rng.clone()); // EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>
//! // report: rng.lock().unwrap().metrics().snapshot(), slot.transport.lock().unwrap().metrics()
//! ```
//! vCPU threads then pass MMIO exits to `io_manager.mmio_read/mmio_write`;
//! a guest kick is a 32-bit write of the queue index to base + 0x50, which
//! KVM swallows (ioeventfd, datamatch = index).
pub mod balloon;
pub mod mmio;
pub mod rng;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use virtio_queue::Queue;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vm_device::bus::{MmioAddress, MmioRange};
use vm_device::device_manager::{IoManager, MmioManager};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::layout::MMIO_DEVICE_SIZE;
use crate::memory::GuestMemory;
pub use mmio::{MmioMetrics, MmioTransport};

/// Feature bits every device of ours offers or may offer (virtio 1.2 §6).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Interrupt causes (InterruptStatus bits, §4.2.2).
pub const VIRTIO_MMIO_INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
pub const VIRTIO_MMIO_INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Offset of QueueNotify in the window: where the ioeventfds sit.
pub const NOTIFY_REG_OFFSET: u64 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY as u64;

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("queue max size {0} is not a power of two in 1..=32768")]
    QueueMaxSize(u16),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("no free virtio-mmio window")]
    AllocateWindow(#[source] vm_allocator::Error),
    #[error("no free IRQ for a virtio device")]
    AllocateIrq(#[source] vm_allocator::Error),
    #[error("KVM rejected the ioeventfd for queue {queue}")]
    IoEventFd {
        queue: usize,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM rejected the irqfd for GSI {gsi}")]
    IrqFd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot put the device on the MMIO bus: {0:?}")]
    Bus(vm_device::bus::Error),
    #[error("cannot announce the device on the kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
}

/// Why a device refused to start (the transport then sets
/// DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    #[error("cannot signal the event loop: {0}")]
    Signal(String),
}

/// The interrupt line of one device: InterruptStatus bits plus the irqfd
/// that KVM turns into a guest interrupt. Shared by the transport (which
/// reads and acknowledges the status) and the device (which raises it).
#[derive(Debug)]
pub struct IrqTrigger {
    pub status: AtomicU32,
    pub irqfd: EventFd,
    /// ConfigGeneration (§4.2.2): bumped on every device-side config change.
    pub config_generation: AtomicU32,
}

impl IrqTrigger {
    pub fn new() -> Result<Self, VirtioError> {
        Ok(IrqTrigger {
            status: AtomicU32::new(0),
            irqfd: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
            config_generation: AtomicU32::new(0),
        })
    }

    /// Sets `cause` in InterruptStatus and injects the interrupt.
    pub fn trigger(&self, cause: u32) -> std::io::Result<()> {
        self.status.fetch_or(cause, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// For devices whose config space changed: new generation, config
    /// interrupt.
    pub fn notify_config_change(&self) -> std::io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.trigger(VIRTIO_MMIO_INT_CONFIG)
    }
}

/// One queue handed to a device on activation: the checked queue and a clone
/// of the transport's notification EventFd (an ioeventfd once attached).
#[derive(Debug)]
pub struct VirtQueue {
    pub queue: Queue,
    pub event: EventFd,
}

/// Whether the driver wants an interrupt for the entries just added to the
/// used ring: virtio-queue's `needs_notification` (the event-idx rule), and
/// without event-idx the driver's VRING_AVAIL_F_NO_INTERRUPT flag
/// (§2.7.7.2), which virtio-queue 0.18 does not read. Errors (rings made
/// unreadable) err on the side of an interrupt.
pub fn needs_interrupt(queue: &mut Queue, mem: &GuestMemory) -> bool {
    use virtio_queue::QueueT;
    use vm_memory::Bytes;
    match queue.needs_notification(mem) {
        Ok(false) => false,
        // needs_notification's fence orders this read after our used-ring
        // writes.
        Ok(true) if !queue.event_idx_enabled() => mem
            .read_obj::<u16>(GuestAddress(queue.avail_ring()))
            .map_or(true, |flags| {
                u16::from_le(flags)
                    & virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16
                    == 0
            }),
        _ => true,
    }
}

/// What the transport needs from a device. Small on purpose: the transport
/// does feature negotiation and queue setup; a device declares what it
/// offers and starts work when handed its queues.
pub trait VirtioDevice: Send {
    /// virtio device ID (§5), e.g. 4 for entropy.
    fn device_type(&self) -> u32;
    /// Max size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered features; must include [`VIRTIO_F_VERSION_1`].
    fn avail_features(&self) -> u64;
    /// Told once the driver's FEATURES_OK was accepted (a subset of
    /// `avail_features`, with VERSION_1).
    fn set_acked_features(&mut self, features: u64);
    /// Device-specific config space (offset from 0x100). Default: none,
    /// reads as zeros.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    /// Default: writes ignored.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Called on a vCPU thread when the driver writes DRIVER_OK. Must not do
    /// the device's work here: store the state and wake the event loop.
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<VirtQueue>,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError>;
    /// Called when the driver writes 0 to Status: drop queues and memory,
    /// stop serving until the next `activate`.
    fn reset(&mut self);
}

/// What [`attach_mmio_device`] allocated, for the device manager and the
/// report.
#[derive(Clone)]
pub struct VirtioMmioSlot {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Wires one virtio device into the VM:
/// 1. allocates a 4 KiB window from `mmio` and an IRQ (= GSI) from `irqs`;
/// 2. creates the transport (which owns one EventFd per queue and the
///    [`IrqTrigger`]);
/// 3. registers each queue's EventFd as a KVM ioeventfd on the window's
///    QueueNotify with datamatch = queue index (u32), and the irqfd on the
///    GSI;
/// 4. puts the transport on the MMIO bus of `io`;
/// 5. appends `virtio_mmio.device=4K@0x...:IRQ` to `cmdline`.
///
/// The in-kernel irqchip must exist before this is called (irqfd). An error
/// leaves whatever was already registered in place: the caller is expected
/// to abandon the VM. The caller then adds the device to the event manager
/// (`event_manager.add_subscriber(dev)`), which registers its activation
/// event; the device registers its queue events itself once activated.
pub fn attach_mmio_device<D: VirtioDevice + 'static>(
    dev: Arc<Mutex<D>>,
    mem: &GuestMemory,
    vm: &VmFd,
    io: &mut IoManager,
    mmio: &mut AddressAllocator,
    irqs: &mut IdAllocator,
    cmdline: &mut Cmdline,
) -> Result<VirtioMmioSlot, VirtioError> {
    let range = mmio
        .allocate(MMIO_DEVICE_SIZE, MMIO_DEVICE_SIZE, AllocPolicy::FirstMatch)
        .map_err(VirtioError::AllocateWindow)?;
    let base = range.start();
    let irq = irqs.allocate_id().map_err(VirtioError::AllocateIrq)?;

    let transport = MmioTransport::new(dev, mem.clone())?;
    for (i, evt) in transport.queue_events().iter().enumerate() {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET),
            i as u32,
        )
        .map_err(|source| VirtioError::IoEventFd { queue: i, source })?;
    }
    vm.register_irqfd(&transport.interrupt().irqfd, irq)
        .map_err(|source| VirtioError::IrqFd { gsi: irq, source })?;

    let transport = Arc::new(Mutex::new(transport));
    io.register_mmio(
        MmioRange::new(MmioAddress(base), MMIO_DEVICE_SIZE).map_err(VirtioError::Bus)?,
        transport.clone(),
    )
    .map_err(VirtioError::Bus)?;
    cmdline
        .add_virtio_mmio_device(MMIO_DEVICE_SIZE, GuestAddress(base), irq, None)
        .map_err(VirtioError::Cmdline)?;
    Ok(VirtioMmioSlot {
        base,
        size: MMIO_DEVICE_SIZE,
        irq,
        transport,
    })
}

/// Makes a device's timer fd non-blocking. The event loop reads a timer
/// when epoll saw it expire, but a reset on a vCPU thread may disarm it
/// (which zeroes its count) in between: a blocking read would then hang the
/// event loop with the device locked.
pub(crate) fn set_nonblocking(fd: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own change only its flags.
    let ok = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRIVER,
        VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK,
    };
    use virtio_bindings::virtio_mmio as reg;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_device::bus::MmioAddress;
    use vm_device::MutDeviceMmio;
    use vm_memory::Bytes;

    use super::rng::{EntropyConfig, Rng};
    use super::*;
    use crate::memory::GuestRam;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const BUF: u64 = 0x10_0000;

    fn rd(t: &mut MmioTransport, off: u32) -> u32 {
        let mut b = [0u8; 4];
        t.mmio_read(MmioAddress(0), off.into(), &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u32, v: u32) {
        t.mmio_write(MmioAddress(0), off.into(), &v.to_le_bytes());
    }

    /// Puts a one-descriptor writable chain at descriptor `i` and publishes
    /// it as avail entry `i` (the way a driver does, minus barriers).
    fn offer(mem: &GuestMemory, i: u16, len: u32) {
        let d = DESC + 16 * u64::from(i);
        mem.write_obj(BUF + 0x1000 * u64::from(i), GuestAddress(d))
            .unwrap();
        mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(VRING_DESC_F_WRITE as u16, GuestAddress(d + 12))
            .unwrap();
        mem.write_obj(i, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
            .unwrap();
        mem.write_obj(i + 1, GuestAddress(AVAIL + 2)).unwrap();
    }

    /// The whole path without KVM: a driver's register sequence (as Linux's
    /// virtio_mmio does it) on the transport, activation and kicks through
    /// the event loop the integrator runs, entropy in the buffer, the used
    /// ring updated, one interrupt per batch, and the ACK.
    #[test]
    fn driver_sequence_serves_entropy_through_the_event_loop() {
        let mem = GuestRam::new(4 << 20).unwrap().memory().clone();
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        let rng = Arc::new(Mutex::new(Rng::new(&EntropyConfig::default()).unwrap()));
        em.add_subscriber(rng.clone());
        let mut t = MmioTransport::new(rng.clone(), mem.clone()).unwrap();

        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_ID), 4);
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK);
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER);
        let mut offered = 0u64;
        for page in 0..2 {
            wr(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, page);
            offered |= u64::from(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES)) << (32 * page);
        }
        assert_eq!(offered, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        for page in 0..2 {
            wr(&mut t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, page);
            wr(
                &mut t,
                reg::VIRTIO_MMIO_DRIVER_FEATURES,
                (offered >> (32 * page)) as u32,
            );
        }
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK);
        assert_eq!(
            rd(&mut t, reg::VIRTIO_MMIO_STATUS),
            ACK | DRIVER | FEATURES_OK
        );
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 16);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, DESC as u32);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL as u32);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, USED as u32);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 1);
        // With event-idx, used_event 0: interrupt after the first entry.
        offer(&mem, 0, 64);
        wr(
            &mut t,
            reg::VIRTIO_MMIO_STATUS,
            ACK | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(rng.lock().unwrap().is_active());

        // Activation event: registers the kick and serves the early chain.
        em.run_with_timeout(1000).unwrap();
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used_idx, 1);
        let used_len: u32 = mem.read_obj(GuestAddress(USED + 8)).unwrap();
        assert_eq!(used_len, 64);
        assert_eq!(t.interrupt().irqfd.read().unwrap(), 1);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        wr(&mut t, reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);

        // A kick that reaches the transport (no ioeventfd here).
        offer(&mem, 1, 32);
        mem.write_obj(1u16, GuestAddress(AVAIL + 4 + 2 * 16))
            .unwrap(); // used_event
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        em.run_with_timeout(1000).unwrap();
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used_idx, 2);
        let m = rng.lock().unwrap().metrics().snapshot();
        assert_eq!((m.requests, m.bytes, m.notifications), (2, 96, 1));
        assert_eq!(m.interrupts, 2);
        assert_eq!(t.metrics().notify_exits.load(Ordering::Relaxed), 1);
        // The exits of that request as seen by the VMM: the notify (an
        // ioeventfd in a VM) and, for its interrupt, status read and ACK.
        let exits = |t: &MmioTransport| {
            let m = t.metrics();
            m.reads.load(Ordering::Relaxed) + m.writes.load(Ordering::Relaxed)
        };
        let before = exits(&t);
        assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        wr(&mut t, reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(exits(&t), before + 2);

        // Reset: the device stops; a kick is drained and ignored.
        wr(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
        assert!(!rng.lock().unwrap().is_active());
        offer(&mem, 2, 32);
        wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        em.run_with_timeout(1000).unwrap();
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used_idx, 2);
    }

    /// Needs /dev/kvm (a VM fd and an irqchip, no vCPU is run); skipped
    /// without it unless REQUIRE_KVM=1.
    #[test]
    fn attach_allocates_wires_and_announces_devices() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(k) => k,
            Err(e) if std::env::var("REQUIRE_KVM").map_or(true, |v| v != "1") => {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping attach_allocates_wires_and_announces_devices: no KVM ({e})"
                );
                return;
            }
            Err(e) => panic!("REQUIRE_KVM=1 but KVM is unavailable: {e}"),
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = GuestRam::new(1 << 20).unwrap().memory().clone();
        let mut io = IoManager::new();
        let mut mmio = AddressAllocator::new(
            crate::memory::layout::MMIO_DEVICES_START,
            crate::memory::layout::MMIO_DEVICES_END - crate::memory::layout::MMIO_DEVICES_START + 1,
        )
        .unwrap();
        let mut irqs = IdAllocator::new(
            crate::memory::layout::IRQ_BASE,
            crate::memory::layout::IRQ_MAX,
        )
        .unwrap();
        let mut cmdline = Cmdline::new(4096).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();

        let mut slots = Vec::new();
        for _ in 0..2 {
            let rng = Arc::new(Mutex::new(Rng::new(&EntropyConfig::default()).unwrap()));
            slots.push(
                attach_mmio_device(rng, &mem, &vm, &mut io, &mut mmio, &mut irqs, &mut cmdline)
                    .unwrap(),
            );
        }
        assert_eq!((slots[0].base, slots[0].irq), (0xd000_0000, 5));
        assert_eq!((slots[1].base, slots[1].irq), (0xd000_1000, 6));
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6"
        );
        // The bus routes the window to the transport.
        let mut b = [0u8; 4];
        io.mmio_read(MmioAddress(0xd000_1000), &mut b).unwrap();
        assert_eq!(&b, b"virt");
        io.mmio_read(MmioAddress(0xd000_1008), &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 4);
        assert!(io.mmio_read(MmioAddress(0xd000_2000), &mut b).is_err());
    }
}
