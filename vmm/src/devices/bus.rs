//! The device bus vCPUs dispatch exits to: port I/O and MMIO ranges mapped to
//! devices by vm-device's `IoManager`.
//!
//! Exit handling sees the bus only through [`Bus`], so it is unit-tested
//! against a fake bus without KVM. All devices are registered before the
//! first vCPU runs; the bus is then shared read-only (`Arc`), and each device
//! keeps its own lock, so vCPUs touching different devices never contend.
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};

/// What exit handling needs of a bus. Each call says whether a device
/// claimed the access; unclaimed reads return all ones, writes are dropped.
pub trait Bus {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> bool;
    fn pio_write(&self, port: u16, data: &[u8]) -> bool;
    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool;
    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool;
}

impl Bus for IoManager {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        PioManager::pio_read(self, PioAddress(port), data).is_ok()
    }
    fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        PioManager::pio_write(self, PioAddress(port), data).is_ok()
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        MmioManager::mmio_read(self, MmioAddress(addr), data).is_ok()
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        MmioManager::mmio_write(self, MmioAddress(addr), data).is_ok()
    }
}
