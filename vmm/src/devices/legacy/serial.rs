//! COM1, a 16550A UART from vm-superio, for Linux consoles and our crash dumps.
//! Its interrupt line (IRQ 4) is an irqfd into the in-kernel IOAPIC.
use crate::devices::console::Console;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;
pub const COM1_IRQ: u32 = 4;

pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialDevice(Serial<IrqTrigger, NoEvents, Console>);

impl SerialDevice {
    pub fn new(irq: EventFd, out: Console) -> Self {
        SerialDevice(Serial::new(IrqTrigger(irq), out))
    }
}

impl MutDevicePio for SerialDevice {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        // String I/O and wide accesses read the same register for each byte,
        // as a UART on an 8-bit bus would answer.
        for b in data.iter_mut() {
            *b = self.0.read(offset as u8);
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        for &b in data {
            // An output error (closed stdout) must not stop the guest.
            let _ = self.0.write(offset as u8, b);
        }
    }
}
