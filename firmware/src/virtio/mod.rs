//! The virtio core every driver of this kernel uses: devices found on the
//! command line (`cmdline`), the virtio-mmio transport with MODERN registers
//! only (virtio 1.2 §4.2.2, Version 2), the §3.1.1 initialisation sequence
//! with feature negotiation, split virtqueues (`queue`, `ring`) and the
//! interrupt hookup; drivers (`rng`, later the balloon) sit on top.
//!
//! All of it runs at CPL3: device registers are MMIO in the hole below
//! 4 GiB, which the boot map covers, user-accessible. Each register access
//! is an exit to the VMM (~70 µs from CPL3 on PVM hosts), so the transport
//! keeps a copy of the status byte instead of re-reading it, and the data
//! path touches only QueueNotify (when the device asked for it) and the
//! interrupt registers (once per interrupt).
pub mod balloon;
pub mod balloon_list;
mod balloon_report;
pub mod cmdline;
pub mod queue;
pub mod ring;
pub mod rng;

use crate::{irq, mm};
use cmdline::{DeviceParamError, MmioDevice};
use core::fmt;
use core::ptr::{read_volatile, write_volatile};
use guest_mm::gfp::Gfp;
use guest_mm::{Pfn, PAGE_SIZE};
use queue::Virtqueue;

/// "virt", little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// MODERN virtio-mmio; version 1 (legacy) is not supported.
pub const VERSION_MODERN: u32 = 2;

// Registers (offsets into the window), §4.2.2.
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// Device-specific configuration starts here.
pub const REG_CONFIG: u64 = 0x100;

// Device status bits, §2.1.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

// Feature bits, §6.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;

// InterruptStatus bits.
#[allow(dead_code)]
pub const INT_USED_BUFFER: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

/// How a driver waits for its device between units of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Sleep in CPL0 `hlt` (one system call per wait) until the device's
    /// interrupt or the LAPIC-timer watchdog: the vCPU leaves the host
    /// core to others, the VMM's device thread among them.
    Halt,
    /// Spin at CPL3 on the pending mark (no system call, no LAPIC write;
    /// a host core stays busy).
    Spin,
}

impl Wait {
    /// From the kernel option `virtio_wait=hlt|spin` (default hlt).
    pub fn from_cmdline(cmdline: &str) -> Result<Wait, &str> {
        match crate::cmdline::get(cmdline, "virtio_wait") {
            None | Some("hlt") => Ok(Wait::Halt),
            Some("spin") => Ok(Wait::Spin),
            Some(v) => Err(v),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Wait::Halt => "hlt",
            Wait::Spin => "spin",
        }
    }
}

/// Why a device could not be found, set up or driven.
#[derive(Clone, Copy, Debug)]
pub enum VirtioError {
    /// A `virtio_mmio.device=` value did not parse.
    Param {
        err: DeviceParamError,
    },
    /// No `virtio_mmio.device=` window holds a device of this ID.
    NotFound {
        device_id: u32,
        windows: usize,
    },
    /// A window lies where the boot map does not reach or is too small.
    Window {
        base: u64,
        size: u64,
    },
    BadMagic {
        base: u64,
        found: u32,
    },
    Version {
        base: u64,
        found: u32,
    },
    BadIrq {
        irq: u32,
    },
    /// The device does not offer a feature this driver requires.
    MissingFeatures {
        missing: u64,
    },
    /// FEATURES_OK did not stick.
    FeaturesRejected {
        status: u32,
    },
    /// Reset did not complete (status never read back 0).
    ResetStuck {
        status: u32,
    },
    QueueUnavailable {
        queue: u16,
    },
    QueueInUse {
        queue: u16,
    },
    /// QueueReady did not stick: the device refused the rings.
    QueueRefused {
        queue: u16,
        size: u16,
    },
    NoMemory {
        bytes: usize,
    },
    /// The device set DEVICE_NEEDS_RESET or the driver gave up on it.
    NeedsReset {
        status: u32,
    },
    /// A used element was malformed (see `queue::UsedError`).
    BadUsed {
        head: u32,
    },
    /// The used index ran ahead of what was in flight.
    UsedOverrun {
        used_idx: u16,
        last_used: u16,
    },
    /// Nothing came back within the wait budget.
    Timeout {
        in_flight: u16,
    },
    /// The device returned nothing for several batches in a row.
    NoProgress {
        batches: u32,
    },
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VirtioError::*;
        match *self {
            Param { err } => write!(f, "{}: bad {}", cmdline::KEY, err.what()),
            NotFound { device_id, windows } => write!(
                f,
                "no device with ID {device_id} on the command line ({windows} {}=SIZE@BASE:IRQ windows announced)",
                cmdline::KEY
            ),
            Window { base, size } => write!(
                f,
                "virtio-mmio window {size:#x}@{base:#x} must be at least 0x100 bytes and end below 4 GiB"
            ),
            BadMagic { base, found } => {
                write!(f, "virtio-mmio at {base:#x}: magic {found:#x}, expected {MAGIC:#x}")
            }
            Version { base, found } => write!(
                f,
                "virtio-mmio at {base:#x}: version {found}, only {VERSION_MODERN} (modern) is supported"
            ),
            BadIrq { irq } => write!(f, "virtio-mmio IRQ {irq} is not an IOAPIC pin"),
            MissingFeatures { missing } => {
                write!(f, "device lacks required feature bits {missing:#x}")
            }
            FeaturesRejected { status } => {
                write!(f, "device rejected the features (status {status:#x} without FEATURES_OK)")
            }
            ResetStuck { status } => write!(f, "device reset did not complete (status {status:#x})"),
            QueueUnavailable { queue } => write!(f, "queue {queue} is not available (QueueNumMax 0)"),
            QueueInUse { queue } => write!(f, "queue {queue} is already ready before setup"),
            QueueRefused { queue, size } => {
                write!(f, "device refused queue {queue} (size {size}): QueueReady stayed 0")
            }
            NoMemory { bytes } => write!(f, "no memory for {bytes} bytes of virtqueue or buffers"),
            NeedsReset { status } => write!(f, "device needs reset (status {status:#x})"),
            BadUsed { head } => write!(f, "device returned descriptor {head}, which is not in flight"),
            UsedOverrun { used_idx, last_used } => write!(
                f,
                "used index {used_idx} ran past what was in flight (last used {last_used})"
            ),
            Timeout { in_flight } => {
                write!(f, "device did not return {in_flight} buffers in time")
            }
            NoProgress { batches } => write!(f, "device returned no bytes for {batches} batches"),
        }
    }
}

impl From<queue::UsedError> for VirtioError {
    fn from(e: queue::UsedError) -> Self {
        match e {
            queue::UsedError::BadHead { head } => VirtioError::BadUsed { head },
            queue::UsedError::TooMany {
                used_idx,
                last_used,
            } => VirtioError::UsedOverrun {
                used_idx,
                last_used,
            },
        }
    }
}

/// Guest pages for rings and buffers, from the page allocator: unmovable
/// (the device holds their addresses) and zeroed by the caller.
pub struct Pages {
    pub addr: u64,
    order: usize,
    cpu: usize,
}

impl Pages {
    pub fn alloc(cpu: usize, bytes: usize) -> Result<Pages, VirtioError> {
        let pages = bytes.div_ceil(PAGE_SIZE as usize).max(1);
        let order = pages.next_power_of_two().trailing_zeros() as usize;
        let Pfn(pfn) = mm::allocator()
            .alloc_pages(cpu, Gfp::NOWAIT, order)
            .ok_or(VirtioError::NoMemory { bytes })?;
        Ok(Pages {
            addr: pfn * PAGE_SIZE,
            order,
            cpu,
        })
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // A failed free means the allocator's books are wrong already;
        // memtest-style checks elsewhere will say so.
        let _ = mm::allocator().free_pages(self.cpu, Pfn(self.addr / PAGE_SIZE), self.order);
    }
}

/// One virtio-mmio device window.
pub struct Transport {
    pub base: u64,
    pub irq: u32,
    pub device_id: u32,
    status: u32,
}

impl Transport {
    fn read(&self, reg: u64) -> u32 {
        // SAFETY: `probe` checked that the window is inside the boot map;
        // device registers are naturally aligned u32s.
        unsafe { read_volatile((self.base + reg) as *const u32) }
    }

    fn write(&self, reg: u64, v: u32) {
        // SAFETY: as read.
        unsafe { write_volatile((self.base + reg) as *mut u32, v) }
    }

    /// Checks magic and version and reads the device ID (3 exits).
    pub fn probe(dev: MmioDevice) -> Result<Transport, VirtioError> {
        let window = VirtioError::Window {
            base: dev.base,
            size: dev.size,
        };
        if dev.size < REG_CONFIG || !dev.base.is_multiple_of(4) {
            return Err(window);
        }
        if dev
            .base
            .checked_add(dev.size)
            .is_none_or(|end| end > 1 << 32)
        {
            return Err(window);
        }
        let t = Transport {
            base: dev.base,
            irq: dev.irq,
            device_id: 0,
            status: 0,
        };
        let magic = t.read(REG_MAGIC);
        if magic != MAGIC {
            return Err(VirtioError::BadMagic {
                base: dev.base,
                found: magic,
            });
        }
        let version = t.read(REG_VERSION);
        if version != VERSION_MODERN {
            return Err(VirtioError::Version {
                base: dev.base,
                found: version,
            });
        }
        Ok(Transport {
            device_id: t.read(REG_DEVICE_ID),
            ..t
        })
    }

    /// The first device with `device_id` among those on the command line
    /// (ID 0 windows are placeholders, as in Linux). A malformed token is an
    /// error only if no device is found.
    pub fn find(cmdline: &str, device_id: u32) -> Result<Transport, VirtioError> {
        let mut first_err = None;
        let mut windows = 0;
        for (_, dev) in cmdline::devices(cmdline) {
            windows += 1;
            let t = dev
                .map_err(|err| VirtioError::Param { err })
                .and_then(Transport::probe);
            match t {
                Ok(t) if t.device_id == device_id => return Ok(t),
                Ok(_) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(VirtioError::NotFound { device_id, windows }))
    }

    fn set_status(&mut self, bits: u32) {
        self.status |= bits;
        self.write(REG_STATUS, self.status);
    }

    /// Gives up on the device (status FAILED), as §3.1.1 asks on an error.
    pub fn fail(&mut self) {
        self.set_status(STATUS_FAILED);
    }

    /// Resets the device: it forgets the queues and stops using memory.
    pub fn reset(&mut self) -> Result<(), VirtioError> {
        self.status = 0;
        self.write(REG_STATUS, 0);
        // The reset is complete when status reads back 0 (§4.2.3.1: a
        // driver must wait for it). Our VMM resets synchronously.
        for _ in 0..1000 {
            let s = self.read(REG_STATUS);
            if s == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(VirtioError::ResetStuck {
            status: self.read(REG_STATUS),
        })
    }

    /// §3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, feature negotiation,
    /// FEATURES_OK and its re-read. Returns the negotiated features:
    /// everything of `required` (else an error) plus what the device offers
    /// of `wanted`. On an error the device is marked FAILED.
    pub fn negotiate(&mut self, required: u64, wanted: u64) -> Result<u64, VirtioError> {
        self.reset()?;
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_DRIVER);
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        let low = self.read(REG_DEVICE_FEATURES) as u64;
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let offered = low | (self.read(REG_DEVICE_FEATURES) as u64) << 32;
        if offered & required != required {
            self.fail();
            return Err(VirtioError::MissingFeatures {
                missing: required & !offered,
            });
        }
        let features = offered & (required | wanted);
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, features as u32);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, (features >> 32) as u32);
        self.set_status(STATUS_FEATURES_OK);
        let status = self.read(REG_STATUS);
        if status & STATUS_FEATURES_OK == 0 {
            self.fail();
            return Err(VirtioError::FeaturesRejected { status });
        }
        Ok(features)
    }

    /// §3.1.1 step 7 for one queue: at most `want` entries (a power of two
    /// not above the device's QueueNumMax), rings allocated on `cpu`.
    pub fn setup_queue(
        &mut self,
        index: u16,
        want: u16,
        event_idx: bool,
        cpu: usize,
    ) -> Result<(Virtqueue, Pages), VirtioError> {
        self.write(REG_QUEUE_SEL, index as u32);
        if self.read(REG_QUEUE_READY) != 0 {
            self.fail();
            return Err(VirtioError::QueueInUse { queue: index });
        }
        let Some(size) = ring::queue_size(self.read(REG_QUEUE_NUM_MAX), want) else {
            self.fail();
            return Err(VirtioError::QueueUnavailable { queue: index });
        };
        let pages = Pages::alloc(cpu, Virtqueue::bytes(size)).inspect_err(|_| self.fail())?;
        // SAFETY: freshly allocated, identity mapped, large enough, ours
        // until `pages` is dropped (the caller keeps both together).
        let q = unsafe { Virtqueue::new(index, size, pages.addr, event_idx) };
        self.write(REG_QUEUE_NUM, size as u32);
        for (low, addr) in [
            (REG_QUEUE_DESC_LOW, q.desc_addr()),
            (REG_QUEUE_DRIVER_LOW, q.avail_addr()),
            (REG_QUEUE_DEVICE_LOW, q.used_addr()),
        ] {
            self.write(low, addr as u32);
            self.write(low + 4, (addr >> 32) as u32);
        }
        const _: () = assert!(REG_QUEUE_DESC_HIGH == REG_QUEUE_DESC_LOW + 4);
        const _: () = assert!(REG_QUEUE_DRIVER_HIGH == REG_QUEUE_DRIVER_LOW + 4);
        const _: () = assert!(REG_QUEUE_DEVICE_HIGH == REG_QUEUE_DEVICE_LOW + 4);
        self.write(REG_QUEUE_READY, 1);
        // One more exit, for a clear error: a device that finds the rings
        // unacceptable leaves QueueReady at 0.
        if self.read(REG_QUEUE_READY) != 1 {
            self.fail();
            return Err(VirtioError::QueueRefused { queue: index, size });
        }
        Ok((q, pages))
    }

    /// Routes the device's IRQ to this CPU (before DRIVER_OK, so that no
    /// interrupt is raised before anyone listens).
    pub fn route_irq(&mut self) -> Result<(), VirtioError> {
        irq::route_to_this_cpu(self.irq).map_err(|irq::BadIrq(irq)| {
            self.fail();
            VirtioError::BadIrq { irq }
        })
    }

    /// §3.1.1 step 8, then one status read to catch a device that refused.
    pub fn driver_ok(&mut self) -> Result<(), VirtioError> {
        self.set_status(STATUS_DRIVER_OK);
        self.check()
    }

    /// Reads the status: an error if the device needs a reset or failed.
    pub fn check(&self) -> Result<(), VirtioError> {
        let status = self.read(REG_STATUS);
        if status & (STATUS_DEVICE_NEEDS_RESET | STATUS_FAILED) != 0 {
            return Err(VirtioError::NeedsReset { status });
        }
        Ok(())
    }

    /// A 32-bit field of the device-specific configuration (one exit).
    pub fn config_read32(&self, offset: u64) -> u32 {
        self.read(REG_CONFIG + offset)
    }

    /// Writes a 32-bit field of the device-specific configuration.
    pub fn config_write32(&self, offset: u64, v: u32) {
        self.write(REG_CONFIG + offset, v)
    }

    /// QueueNotify for `q`: one exit.
    pub fn notify(&self, q: &Virtqueue) {
        self.notify_index(q.index());
    }

    /// QueueNotify for queue `index` (for rings written by hand).
    pub fn notify_index(&self, index: u16) {
        self.write(REG_QUEUE_NOTIFY, index as u32);
    }

    /// Reads InterruptStatus and acknowledges what it shows (two exits);
    /// returns the bits (INT_USED_BUFFER, INT_CONFIG_CHANGE).
    pub fn ack_interrupt(&self) -> u32 {
        let isr = self.read(REG_INTERRUPT_STATUS);
        if isr != 0 {
            self.write(REG_INTERRUPT_ACK, isr);
        }
        isr
    }

    /// Takes this device's pending-interrupt mark; if it was set, reads and
    /// acknowledges InterruptStatus and checks the device on a configuration
    /// change (which is how DEVICE_NEEDS_RESET is announced).
    pub fn service_interrupt(&self) -> Result<Option<u32>, VirtioError> {
        if !irq::take_pending(self.irq) {
            return Ok(None);
        }
        let isr = self.ack_interrupt();
        if isr & INT_CONFIG_CHANGE != 0 {
            self.check()?;
        }
        Ok(Some(isr))
    }

    /// Interrupts this device's IRQ has delivered so far.
    pub fn interrupts(&self) -> u32 {
        irq::count(self.irq)
    }
}
