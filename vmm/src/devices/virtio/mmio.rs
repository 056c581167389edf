//! The virtio-mmio transport (virtio 1.2 §4.2.2, version 2 "modern" register
//! layout only): one 4 KiB window per device, registers below 0x100, the
//! device's config space from 0x100.
//!
//! The driver's side of the protocol is a state machine (§3.1.1), and this
//! file enforces it rather than trusting the guest:
//! - Status only grows one step at a time, ACKNOWLEDGE → DRIVER →
//!   FEATURES_OK → DRIVER_OK (FAILED may be added at any time); writing 0
//!   resets device and queues. Anything else is ignored and counted.
//! - DriverFeatures is writable only between DRIVER and FEATURES_OK.
//!   FEATURES_OK is refused (the bit does not stick, so the driver reads it
//!   back clear, §2.1) unless the acked set is a subset of what we offer and
//!   contains VERSION_1: legacy drivers are not served.
//! - Queue registers are writable only between FEATURES_OK and DRIVER_OK and
//!   while the selected queue is not ready. QueueReady=1 is accepted only for
//!   a queue virtio-queue accepts: size a power of two ≤ QueueNumMax,
//!   aligned rings, and all three rings inside guest RAM.
//! - DRIVER_OK hands the checked queues to the device; if it refuses, the
//!   transport sets DEVICE_NEEDS_RESET and raises a config interrupt.
//!
//! Registers are 32-bit: other access sizes are ignored (reads return 0) and
//! counted, as are unknown offsets. A guest can make the transport count,
//! never log and never allocate.
//!
//! QueueNotify normally never reaches this code: KVM ioeventfds catch the
//! write (see `attach_mmio_device`). If one does arrive here, it is passed
//! on through the same EventFd, and counted in `notify_exits`.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::MutDeviceMmio;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    IrqTrigger, VirtQueue, VirtioDevice, VirtioError, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::memory::GuestMemory;

/// "virt", little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
pub const MMIO_VERSION: u32 = 2;
/// "MVMV".
pub const VENDOR_ID: u32 = 0x4d56_4d56;
/// Start of the device-specific config space.
pub const CONFIG_SPACE: u64 = reg::VIRTIO_MMIO_CONFIG as u64;
/// QueueReset (§4.2.2, only with VIRTIO_F_RING_RESET, which we do not offer);
/// not in virtio-bindings 0.2.
const QUEUE_RESET: u32 = 0xc0;

/// Counters a guest can move; read them any time without the lock.
#[derive(Debug, Default, serde::Serialize)]
pub struct MmioMetrics {
    /// Register reads and writes, i.e. MMIO exits that reached the VMM:
    /// with event-idx, an entropy batch costs the guest one kick (an
    /// ioeventfd, not counted here) and, per interrupt, one InterruptStatus
    /// read and one InterruptACK write.
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    /// QueueNotify writes that exited to us instead of hitting an ioeventfd.
    pub notify_exits: AtomicU64,
    /// Writes the state machine refused (wrong state or bad value).
    pub ignored_writes: AtomicU64,
    /// Accesses of the wrong size or to offsets that name no register.
    pub bad_accesses: AtomicU64,
    /// FEATURES_OK refusals.
    pub features_refused: AtomicU64,
    /// QueueReady=1 refusals.
    pub queues_refused: AtomicU64,
    /// DRIVER_OK with a device that refused to start.
    pub activate_fails: AtomicU64,
    pub activations: AtomicU64,
    pub resets: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the driver wrote for one queue; checked only at QueueReady=1.
#[derive(Clone, Copy, Debug, Default)]
struct QueueRegs {
    size: u32,
    desc: u64,
    avail: u64,
    used: u64,
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

/// One device's virtio-mmio register file. Put it on the bus as
/// `Arc<Mutex<MmioTransport>>` (vm-device's `DeviceMmio for Mutex<T>`).
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    // Cached at construction: a device's identity does not change, and
    // reading them must not take the device lock the event loop works under.
    device_type: u32,
    max_sizes: Vec<u16>,
    avail_features: u64,

    mem: GuestMemory,
    interrupt: Arc<IrqTrigger>,
    queue_evts: Vec<EventFd>,
    regs: Vec<QueueRegs>,
    /// QueueReady of each queue: set only after `check_queue` accepted it.
    ready: Vec<bool>,

    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver acked a feature above bit 63, which we never offer.
    driver_features_beyond: bool,
    queue_sel: u32,
    shm_sel: u32,
    metrics: Arc<MmioMetrics>,
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemory,
    ) -> Result<Self, VirtioError> {
        let (device_type, max_sizes, avail_features) = {
            let d = device.lock().unwrap();
            (
                d.device_type(),
                d.queue_max_sizes().to_vec(),
                d.avail_features(),
            )
        };
        for &max in &max_sizes {
            Queue::new(max).map_err(|_| VirtioError::QueueMaxSize(max))?;
        }
        let queue_evts = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioError::EventFd)?;
        let n = max_sizes.len();
        Ok(MmioTransport {
            device,
            device_type,
            max_sizes,
            avail_features,
            mem,
            interrupt: Arc::new(IrqTrigger::new()?),
            queue_evts,
            regs: vec![QueueRegs::default(); n],
            ready: vec![false; n],
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond: false,
            queue_sel: 0,
            shm_sel: 0,
            metrics: Arc::default(),
        })
    }

    /// One EventFd per queue: register each as an ioeventfd on
    /// base + 0x50 with datamatch = its index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Register `interrupt().irqfd` as the device's irqfd.
    pub fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.interrupt
    }

    pub fn metrics(&self) -> Arc<MmioMetrics> {
        self.metrics.clone()
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    fn acked_features(&self) -> u64 {
        self.driver_features
    }

    fn ignored(&self) {
        bump(&self.metrics.ignored_writes);
    }

    fn selected(&self) -> Option<usize> {
        let i = self.queue_sel as usize;
        (i < self.max_sizes.len()).then_some(i)
    }

    /// Queue registers may change only after FEATURES_OK, before DRIVER_OK.
    fn queue_setup_allowed(&self) -> bool {
        self.status & (FEATURES_OK | DRIVER_OK | FAILED | NEEDS_RESET) == FEATURES_OK
    }

    fn read_reg(&self, offset: u32) -> Option<u32> {
        Some(match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            reg::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device_type,
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected().map_or(0, |i| self.max_sizes[i].into())
            }
            reg::VIRTIO_MMIO_QUEUE_READY => self.selected().map_or(0, |i| self.ready[i].into()),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            reg::VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: their length reads as -1 (§4.2.2).
            reg::VIRTIO_MMIO_SHM_LEN_LOW
            | reg::VIRTIO_MMIO_SHM_LEN_HIGH
            | reg::VIRTIO_MMIO_SHM_BASE_LOW
            | reg::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => {
                self.interrupt.config_generation.load(Ordering::SeqCst)
            }
            QUEUE_RESET => 0,
            _ => return None,
        })
    }

    fn write_reg(&mut self, offset: u32, v: u32) -> bool {
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(v),
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            reg::VIRTIO_MMIO_QUEUE_NUM
            | reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_reg(offset, v),
            reg::VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(v),
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => {
                bump(&self.metrics.notify_exits);
                match self.queue_evts.get(v as usize) {
                    // A full counter (EAGAIN) still leaves the event pending.
                    Some(evt) => _ = evt.write(1),
                    None => self.ignored(),
                }
            }
            reg::VIRTIO_MMIO_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::VIRTIO_MMIO_STATUS => self.write_status(v),
            reg::VIRTIO_MMIO_SHM_SEL => self.shm_sel = v,
            // RING_RESET is not offered.
            QUEUE_RESET => self.ignored(),
            _ => return false,
        }
        true
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status != ACKNOWLEDGE | DRIVER {
            return self.ignored();
        }
        match self.driver_features_sel {
            0 => set_low(&mut self.driver_features, v),
            1 => set_high(&mut self.driver_features, v),
            _ => self.driver_features_beyond |= v != 0,
        }
    }

    fn write_queue_reg(&mut self, offset: u32, v: u32) {
        let Some(i) = self.selected() else {
            return self.ignored();
        };
        if !self.queue_setup_allowed() || self.ready[i] {
            return self.ignored();
        }
        let q = &mut self.regs[i];
        match offset {
            reg::VIRTIO_MMIO_QUEUE_NUM => q.size = v,
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW => set_low(&mut q.desc, v),
            reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => set_high(&mut q.desc, v),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => set_low(&mut q.avail, v),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => set_high(&mut q.avail, v),
            reg::VIRTIO_MMIO_QUEUE_USED_LOW => set_low(&mut q.used, v),
            reg::VIRTIO_MMIO_QUEUE_USED_HIGH => set_high(&mut q.used, v),
            _ => unreachable!("not a queue register: {offset:#x}"),
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        let Some(i) = self.selected() else {
            return self.ignored();
        };
        match v {
            // Unready is a no-op on an unready queue; after DRIVER_OK it
            // would need VIRTIO_F_RING_RESET.
            0 if self.status & DRIVER_OK == 0 => self.ready[i] = false,
            1 if self.queue_setup_allowed() && !self.ready[i] => {
                self.ready[i] = self.check_queue(i).is_some();
                if !self.ready[i] {
                    bump(&self.metrics.queues_refused);
                }
            }
            _ => self.ignored(),
        }
    }

    /// The queue the driver described, if virtio-queue accepts it: size,
    /// alignment (the `try_set_*` checks) and every ring inside guest RAM
    /// (`is_valid`). The ranges are checked here first, quietly, because
    /// `is_valid` logs each failure and a guest could repeat it at will.
    fn check_queue(&self, i: usize) -> Option<Queue> {
        let r = self.regs[i];
        let mut q = Queue::new(self.max_sizes[i]).ok()?;
        q.try_set_size(u16::try_from(r.size).ok()?).ok()?;
        q.try_set_desc_table_address(GuestAddress(r.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(r.avail)).ok()?;
        q.try_set_used_ring_address(GuestAddress(r.used)).ok()?;
        let n = usize::from(q.size());
        // Descriptor table, avail ring (flags, idx, ring, used_event), used
        // ring (flags, idx, ring, avail_event).
        let rings = [(r.desc, 16 * n), (r.avail, 6 + 2 * n), (r.used, 6 + 8 * n)];
        if !rings
            .iter()
            .all(|&(a, len)| GuestMemoryBackend::check_range(&self.mem, GuestAddress(a), len))
        {
            return None;
        }
        q.set_ready(true);
        q.is_valid(&self.mem).then_some(q)
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            return self.reset();
        }
        let cur = self.status;
        // The driver never clears a bit except by reset; NEEDS_RESET is the
        // device's, so the driver echoing it (or not) changes nothing.
        let keep = cur & !NEEDS_RESET;
        if v & keep != keep {
            return self.ignored();
        }
        let added = v & !cur & !NEEDS_RESET;
        if added == 0 {
            return;
        }
        if added == FAILED {
            self.status |= FAILED;
            return;
        }
        if cur & (FAILED | NEEDS_RESET) != 0 {
            return self.ignored();
        }
        match (cur, added) {
            (0, ACKNOWLEDGE) => self.status = ACKNOWLEDGE,
            (ACKNOWLEDGE, DRIVER) => self.status |= DRIVER,
            (s, FEATURES_OK) if s == ACKNOWLEDGE | DRIVER => {
                if self.features_acceptable() {
                    self.status |= FEATURES_OK;
                    let acked = self.acked_features();
                    self.device.lock().unwrap().set_acked_features(acked);
                } else {
                    bump(&self.metrics.features_refused);
                }
            }
            (s, DRIVER_OK) if s == ACKNOWLEDGE | DRIVER | FEATURES_OK => {
                self.status |= DRIVER_OK;
                self.activate();
            }
            _ => self.ignored(),
        }
    }

    fn features_acceptable(&self) -> bool {
        let acked = self.driver_features;
        !self.driver_features_beyond
            && acked & !self.avail_features == 0
            && acked & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        let event_idx = self.acked_features() & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.max_sizes.len());
        for (i, evt) in self.queue_evts.iter().enumerate() {
            // Checked again (queues are not Clone; the registers are frozen
            // since QueueReady, so this cannot fail). Unready queues go too
            // (drivers may skip optional ones); a device that needs them
            // refuses.
            let queue = if self.ready[i] {
                self.check_queue(i)
            } else {
                Queue::new(self.max_sizes[i]).ok()
            };
            let (Some(queue), Ok(event)) = (queue, evt.try_clone()) else {
                return self.activation_failed();
            };
            queues.push(VirtQueue { queue, event });
        }
        for vq in &mut queues {
            vq.queue.set_event_idx(event_idx);
        }
        let res =
            self.device
                .lock()
                .unwrap()
                .activate(self.mem.clone(), queues, self.interrupt.clone());
        match res {
            Ok(()) => bump(&self.metrics.activations),
            Err(_) => self.activation_failed(),
        }
    }

    fn activation_failed(&mut self) {
        bump(&self.metrics.activate_fails);
        self.status |= NEEDS_RESET;
        // §2.1.2: tell the driver through a configuration change interrupt.
        _ = self.interrupt.trigger(VIRTIO_MMIO_INT_CONFIG);
    }

    /// Status 0: device and transport back to their initial state. The
    /// queue EventFds and the irqfd stay (KVM holds them).
    fn reset(&mut self) {
        bump(&self.metrics.resets);
        self.device.lock().unwrap().reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond = false;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.regs.fill(QueueRegs::default());
        self.ready.fill(false);
        self.interrupt.status.store(0, Ordering::SeqCst);
    }
}

impl MutDeviceMmio for MmioTransport {
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        bump(&self.metrics.reads);
        if offset >= CONFIG_SPACE {
            if data.len() > 8 {
                bump(&self.metrics.bad_accesses);
                return data.fill(0);
            }
            return self
                .device
                .lock()
                .unwrap()
                .read_config(offset - CONFIG_SPACE, data);
        }
        let value = match u32::try_from(offset) {
            Ok(off) if data.len() == 4 => self.read_reg(off),
            _ => None,
        };
        match value {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()),
            None => {
                bump(&self.metrics.bad_accesses);
                data.fill(0);
            }
        }
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        bump(&self.metrics.writes);
        if offset >= CONFIG_SPACE {
            if data.len() > 8 {
                return bump(&self.metrics.bad_accesses);
            }
            return self
                .device
                .lock()
                .unwrap()
                .write_config(offset - CONFIG_SPACE, data);
        }
        let ok = match (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            (Ok(off), Ok(bytes)) => self.write_reg(off, u32::from_le_bytes(bytes)),
            _ => false,
        };
        if !ok {
            bump(&self.metrics.bad_accesses);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use crate::memory::GuestRam;

    /// A device that records what the transport tells it.
    #[derive(Default)]
    struct FakeDevice {
        pub max_sizes: Vec<u16>,
        pub features: u64,
        pub acked: u64,
        pub active: Option<Vec<VirtQueue>>,
        pub resets: usize,
        pub refuse: bool,
        pub config: [u8; 8],
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.max_sizes
        }
        fn avail_features(&self) -> u64 {
            self.features
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(0);
            let off = offset as usize;
            if off < self.config.len() {
                let n = data.len().min(self.config.len() - off);
                data[..n].copy_from_slice(&self.config[off..off + n]);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let off = offset as usize;
            if off + data.len() <= self.config.len() {
                self.config[off..off + data.len()].copy_from_slice(data);
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMemory,
            queues: Vec<VirtQueue>,
            _interrupt: Arc<IrqTrigger>,
        ) -> Result<(), ActivateError> {
            if self.refuse {
                return Err(ActivateError::QueueNotReady(0));
            }
            self.active = Some(queues);
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.active = None;
        }
    }

    const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 1;
    const MEM: u64 = 1 << 20;

    struct Fixture {
        t: MmioTransport,
        dev: Arc<Mutex<FakeDevice>>,
    }

    fn fixture() -> Fixture {
        let ram = GuestRam::new(MEM).unwrap();
        let dev = Arc::new(Mutex::new(FakeDevice {
            max_sizes: vec![256, 16],
            features: FEATURES,
            config: *b"configXY",
            ..Default::default()
        }));
        let t = MmioTransport::new(dev.clone(), ram.memory().clone()).unwrap();
        Fixture { t, dev }
    }

    impl Fixture {
        fn read(&mut self, off: u32) -> u32 {
            let mut b = [0u8; 4];
            self.t.mmio_read(MmioAddress(0), off.into(), &mut b);
            u32::from_le_bytes(b)
        }
        fn write(&mut self, off: u32, v: u32) {
            self.t
                .mmio_write(MmioAddress(0), off.into(), &v.to_le_bytes());
        }
        fn ignored(&self) -> u64 {
            self.t.metrics.ignored_writes.load(Ordering::Relaxed)
        }
        fn ack_features(&mut self, f: u64) {
            self.write(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
            self.write(reg::VIRTIO_MMIO_DRIVER_FEATURES, f as u32);
            self.write(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
            self.write(reg::VIRTIO_MMIO_DRIVER_FEATURES, (f >> 32) as u32);
        }
        /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
        fn negotiate(&mut self, f: u64) -> u32 {
            self.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
            self.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
            self.ack_features(f);
            self.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
            self.read(reg::VIRTIO_MMIO_STATUS)
        }
        fn setup_queue(&mut self, sel: u32, size: u32, desc: u64, avail: u64, used: u64) {
            self.write(reg::VIRTIO_MMIO_QUEUE_SEL, sel);
            self.write(reg::VIRTIO_MMIO_QUEUE_NUM, size);
            for (lo, hi, a) in [
                (
                    reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
                    reg::VIRTIO_MMIO_QUEUE_DESC_HIGH,
                    desc,
                ),
                (
                    reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                    reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                    avail,
                ),
                (
                    reg::VIRTIO_MMIO_QUEUE_USED_LOW,
                    reg::VIRTIO_MMIO_QUEUE_USED_HIGH,
                    used,
                ),
            ] {
                self.write(lo, a as u32);
                self.write(hi, (a >> 32) as u32);
            }
        }
        fn ready(&mut self, sel: u32) -> u32 {
            self.write(reg::VIRTIO_MMIO_QUEUE_SEL, sel);
            self.write(reg::VIRTIO_MMIO_QUEUE_READY, 1);
            self.read(reg::VIRTIO_MMIO_QUEUE_READY)
        }
        fn good_queues(&mut self) {
            self.setup_queue(0, 256, 0x1000, 0x2000, 0x3000);
            assert_eq!(self.ready(0), 1);
            self.setup_queue(1, 16, 0x4000, 0x5000, 0x6000);
            assert_eq!(self.ready(1), 1);
        }
    }

    #[test]
    fn identity_registers() {
        let mut f = fixture();
        assert_eq!(f.read(reg::VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC);
        assert_eq!(&MMIO_MAGIC.to_le_bytes(), b"virt");
        assert_eq!(f.read(reg::VIRTIO_MMIO_VERSION), 2);
        assert_eq!(f.read(reg::VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(f.read(reg::VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        assert_eq!(f.read(reg::VIRTIO_MMIO_DEVICE_FEATURES), FEATURES as u32);
        f.write(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(f.read(reg::VIRTIO_MMIO_DEVICE_FEATURES), 1); // VERSION_1
        f.write(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
        assert_eq!(f.read(reg::VIRTIO_MMIO_DEVICE_FEATURES), 0);
        assert_eq!(f.read(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        f.write(reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(f.read(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        f.write(reg::VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(f.read(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        f.write(reg::VIRTIO_MMIO_SHM_SEL, 0);
        assert_eq!(f.read(reg::VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(f.read(reg::VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
        assert_eq!(f.read(reg::VIRTIO_MMIO_CONFIG_GENERATION), 0);
        assert_eq!(f.t.metrics.bad_accesses.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn feature_negotiation_accepts_a_version_1_subset() {
        let mut f = fixture();
        let acked = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
        assert_eq!(f.negotiate(acked), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(f.dev.lock().unwrap().acked, acked);
        // Features are frozen after FEATURES_OK.
        f.ack_features(VIRTIO_F_VERSION_1);
        assert_eq!(f.ignored(), 2);
        assert_eq!(f.t.acked_features(), acked);
    }

    #[test]
    fn features_ok_refused_without_version_1() {
        let mut f = fixture();
        assert_eq!(f.negotiate(1), ACKNOWLEDGE | DRIVER);
        assert_eq!(f.t.metrics.features_refused.load(Ordering::Relaxed), 1);
        assert_eq!(f.dev.lock().unwrap().acked, 0);
        // The driver may retry with a good set.
        f.ack_features(VIRTIO_F_VERSION_1);
        f.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(
            f.read(reg::VIRTIO_MMIO_STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK
        );
    }

    #[test]
    fn features_ok_refused_for_unoffered_features() {
        let mut f = fixture();
        assert_eq!(f.negotiate(VIRTIO_F_VERSION_1 | 2), ACKNOWLEDGE | DRIVER);
        let mut f = fixture();
        f.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        f.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        f.ack_features(VIRTIO_F_VERSION_1);
        f.write(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
        f.write(reg::VIRTIO_MMIO_DRIVER_FEATURES, 1);
        f.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(f.read(reg::VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);
    }

    #[test]
    fn status_steps_out_of_order_are_ignored() {
        let mut f = fixture();
        // DRIVER before ACKNOWLEDGE, DRIVER_OK before FEATURES_OK.
        f.write(reg::VIRTIO_MMIO_STATUS, DRIVER);
        assert_eq!(f.read(reg::VIRTIO_MMIO_STATUS), 0);
        f.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        f.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
        assert_eq!(f.read(reg::VIRTIO_MMIO_STATUS), ACKNOWLEDGE);
        f.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        f.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
        assert_eq!(f.read(reg::VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);
        // Clearing a bit is not a step.
        f.write(reg::VIRTIO_MMIO_STATUS, DRIVER);
        assert_eq!(f.read(reg::VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);
        // The device refuses DriverFeatures before DRIVER.
        let mut g = fixture();
        g.ack_features(VIRTIO_F_VERSION_1);
        assert_eq!(g.t.acked_features(), 0);
        assert_eq!(f.ignored(), 4);
        // FAILED sticks at any time and blocks further steps.
        f.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FAILED);
        assert_eq!(
            f.read(reg::VIRTIO_MMIO_STATUS),
            ACKNOWLEDGE | DRIVER | FAILED
        );
        f.write(
            reg::VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FAILED | FEATURES_OK,
        );
        assert_eq!(
            f.read(reg::VIRTIO_MMIO_STATUS),
            ACKNOWLEDGE | DRIVER | FAILED
        );
    }

    #[test]
    fn queue_setup_and_activation() {
        let mut f = fixture();
        f.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        f.good_queues();
        f.write(
            reg::VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(
            f.read(reg::VIRTIO_MMIO_STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        );
        let dev = f.dev.lock().unwrap();
        let qs = dev.active.as_ref().unwrap();
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[0].queue.size(), 256);
        assert_eq!(qs[0].queue.desc_table(), 0x1000);
        assert_eq!(qs[0].queue.avail_ring(), 0x2000);
        assert_eq!(qs[0].queue.used_ring(), 0x3000);
        assert!(qs[0].queue.ready());
        assert!(qs[0].queue.event_idx_enabled());
        assert_eq!(qs[1].queue.size(), 16);
        drop(dev);
        // Queue registers are frozen after DRIVER_OK.
        let before = f.ignored();
        f.write(reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        f.write(reg::VIRTIO_MMIO_QUEUE_NUM, 8);
        f.write(reg::VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(f.read(reg::VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(f.ignored(), before + 2);
    }

    #[test]
    fn event_idx_follows_the_driver() {
        let mut f = fixture();
        f.negotiate(VIRTIO_F_VERSION_1);
        f.good_queues();
        f.write(
            reg::VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        let dev = f.dev.lock().unwrap();
        assert!(!dev.active.as_ref().unwrap()[0].queue.event_idx_enabled());
    }

    #[test]
    fn bad_queues_are_refused() {
        let mut f = fixture();
        // Before FEATURES_OK nothing sticks.
        f.write(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        f.setup_queue(0, 256, 0x1000, 0x2000, 0x3000);
        assert_eq!(f.ready(0), 0);
        f.negotiate(VIRTIO_F_VERSION_1);
        let bad: [(u32, u64, u64, u64); 9] = [
            (0, 0x1000, 0x2000, 0x3000),        // size 0
            (100, 0x1000, 0x2000, 0x3000),      // not a power of two
            (512, 0x1000, 0x2000, 0x3000),      // above max
            (1 << 16, 0x1000, 0x2000, 0x3000),  // above u16
            (256, 0x1008, 0x2000, 0x3000),      // desc not 16-aligned
            (256, 0x1000, 0x2001, 0x3000),      // avail not 2-aligned
            (256, 0x1000, 0x2000, 0x3002),      // used not 4-aligned
            (256, MEM - 0x800, 0x2000, 0x3000), // desc runs past RAM
            (256, 0x1000, 0x2000, 1 << 40),     // used outside RAM
        ];
        for (size, d, a, u) in bad {
            f.setup_queue(0, size, d, a, u);
            assert_eq!(f.ready(0), 0, "accepted {size} {d:#x} {a:#x} {u:#x}");
        }
        assert_eq!(f.t.metrics.queues_refused.load(Ordering::Relaxed), 9);
        // Selecting a queue that does not exist.
        assert_eq!(f.ready(5), 0);
        // Smaller than max is fine; once ready, its registers are frozen.
        f.setup_queue(0, 64, 0x1000, 0x2000, 0x3000);
        assert_eq!(f.ready(0), 1);
        f.setup_queue(0, 128, 0x1000, 0x2000, 0x3000);
        // Unready, then it may change.
        f.write(reg::VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(f.read(reg::VIRTIO_MMIO_QUEUE_READY), 0);
        f.setup_queue(0, 128, 0x1000, 0x2000, 0x3000);
        assert_eq!(f.ready(0), 1);
        // QueueReady other than 0/1.
        f.write(reg::VIRTIO_MMIO_QUEUE_READY, 2);
        assert_eq!(f.read(reg::VIRTIO_MMIO_QUEUE_READY), 1);
    }

    #[test]
    fn refused_activation_sets_needs_reset_and_raises_config_interrupt() {
        let mut f = fixture();
        f.dev.lock().unwrap().refuse = true;
        f.negotiate(VIRTIO_F_VERSION_1);
        f.good_queues();
        f.write(
            reg::VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        let status = f.read(reg::VIRTIO_MMIO_STATUS);
        assert_ne!(status & NEEDS_RESET, 0);
        assert_eq!(
            f.read(reg::VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
        assert_eq!(f.t.interrupt.irqfd.read().unwrap(), 1);
        assert_eq!(f.t.metrics.activate_fails.load(Ordering::Relaxed), 1);
        // Reset clears it.
        f.write(reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(f.read(reg::VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn writing_zero_resets_device_and_queues() {
        let mut f = fixture();
        f.negotiate(VIRTIO_F_VERSION_1);
        f.good_queues();
        f.write(
            reg::VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        f.t.interrupt.trigger(1).unwrap();
        f.write(reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(f.read(reg::VIRTIO_MMIO_STATUS), 0);
        assert_eq!(f.read(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(f.read(reg::VIRTIO_MMIO_QUEUE_READY), 0);
        {
            let dev = f.dev.lock().unwrap();
            assert_eq!(dev.resets, 1);
            assert!(dev.active.is_none());
        }
        // A second initialisation works from scratch.
        f.negotiate(VIRTIO_F_VERSION_1);
        f.good_queues();
        f.write(
            reg::VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(f.dev.lock().unwrap().active.is_some());
        assert_eq!(f.t.metrics.activations.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn interrupt_ack_clears_only_the_acked_bits() {
        let mut f = fixture();
        f.t.interrupt.trigger(VIRTIO_MMIO_INT_CONFIG).unwrap();
        f.t.interrupt.trigger(1).unwrap();
        assert_eq!(f.read(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        f.write(reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(f.read(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        f.write(reg::VIRTIO_MMIO_INTERRUPT_ACK, 2);
        assert_eq!(f.read(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn config_space_and_generation() {
        let mut f = fixture();
        let mut b = [0u8; 2];
        f.t.mmio_read(MmioAddress(0), CONFIG_SPACE + 6, &mut b);
        assert_eq!(&b, b"XY");
        f.t.mmio_write(MmioAddress(0), CONFIG_SPACE + 6, b"ab");
        f.t.mmio_read(MmioAddress(0), CONFIG_SPACE + 6, &mut b);
        assert_eq!(&b, b"ab");
        // Past the device's config: zeros.
        let mut w = [0xffu8; 4];
        f.t.mmio_read(MmioAddress(0), 0xff0, &mut w);
        assert_eq!(w, [0; 4]);
        f.t.interrupt.notify_config_change().unwrap();
        assert_eq!(f.read(reg::VIRTIO_MMIO_CONFIG_GENERATION), 1);
        assert_eq!(
            f.read(reg::VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
    }

    #[test]
    fn wrong_sizes_and_unknown_offsets_are_counted_not_served() {
        let mut f = fixture();
        let mut b2 = [0xffu8; 2];
        f.t.mmio_read(MmioAddress(0), 0, &mut b2);
        assert_eq!(b2, [0, 0]);
        let mut b8 = [0xffu8; 8];
        f.t.mmio_read(MmioAddress(0), 0, &mut b8);
        assert_eq!(b8, [0; 8]);
        f.t.mmio_write(MmioAddress(0), reg::VIRTIO_MMIO_STATUS.into(), &[1]);
        assert_eq!(f.read(reg::VIRTIO_MMIO_STATUS), 0);
        // Unknown register offsets, write-only registers read back, legacy
        // registers, and beyond the window.
        for off in [0x2, 0x18, 0x28, 0x3c, 0x40, 0xf8] {
            assert_eq!(f.read(off), 0, "offset {off:#x}");
        }
        f.write(reg::VIRTIO_MMIO_GUEST_PAGE_SIZE, 4096);
        f.write(0x0, 1);
        let mut big = [0u8; 16];
        f.t.mmio_read(MmioAddress(0), CONFIG_SPACE, &mut big);
        f.t.mmio_read(MmioAddress(0), u64::MAX, &mut [0u8; 4]);
        assert_eq!(f.t.metrics.bad_accesses.load(Ordering::Relaxed), 12);
        assert_eq!(f.read(reg::VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn notify_reaching_the_transport_goes_to_the_queue_eventfd() {
        let mut f = fixture();
        f.write(reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(f.t.queue_events()[1].read().unwrap(), 1);
        assert!(f.t.queue_events()[0].read().is_err()); // nothing pending
        f.write(reg::VIRTIO_MMIO_QUEUE_NOTIFY, 9);
        assert_eq!(f.t.metrics.notify_exits.load(Ordering::Relaxed), 2);
        assert_eq!(f.ignored(), 1);
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        fn offset() -> impl Strategy<Value = u64> {
            prop_oneof![(0u64..0x40).prop_map(|r| r * 4), 0u64..0x1000]
        }

        fn value() -> impl Strategy<Value = u32> {
            prop_oneof![
                any::<u32>(),
                0u32..16,
                prop::sample::select(vec![0x1000u32, 0x2000, 0x3000, 0x4000, 16, 256, 0x0b]),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            /// Whatever a guest writes, in any order and size, the
            /// transport never panics and never lets the device run on
            /// features or queues it did not check.
            #[test]
            fn hostile_register_sequences_keep_the_invariants(
                ops in prop::collection::vec(
                    (offset(), value(), prop::sample::select(vec![1usize, 2, 4, 8]), any::<bool>()),
                    0..200,
                )
            ) {
                let mut f = fixture();
                for (off, v, size, write) in ops {
                    let mut b = [0u8; 8];
                    b[..4].copy_from_slice(&v.to_le_bytes());
                    b[4..].copy_from_slice(&v.to_le_bytes());
                    if write {
                        f.t.mmio_write(MmioAddress(0), off, &b[..size]);
                    } else {
                        f.t.mmio_read(MmioAddress(0), off, &mut b[..size]);
                    }
                    let st = f.t.status;
                    if st & FEATURES_OK != 0 {
                        prop_assert!(st & (ACKNOWLEDGE | DRIVER) == ACKNOWLEDGE | DRIVER);
                        prop_assert!(f.t.features_acceptable());
                    }
                    if st & DRIVER_OK != 0 {
                        prop_assert!(st & FEATURES_OK != 0);
                    }
                    for i in 0..f.t.ready.len() {
                        if f.t.ready[i] {
                            prop_assert!(f.t.check_queue(i).is_some());
                        }
                    }
                    let dev = f.dev.lock().unwrap();
                    prop_assert_eq!(dev.acked & !FEATURES, 0);
                    if let Some(qs) = &dev.active {
                        prop_assert!(dev.acked & VIRTIO_F_VERSION_1 != 0);
                        for q in qs.iter().filter(|q| q.queue.ready()) {
                            prop_assert!(q.queue.is_valid(&f.t.mem));
                        }
                    }
                }
            }
        }
    }
}
