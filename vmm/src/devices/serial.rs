//! COM1, a 16550A UART from vm-superio, for Linux consoles and our crash dumps.
//! Its interrupt line (IRQ 4) is an irqfd into the in-kernel IOAPIC.
use super::console::Console;
use std::sync::Mutex;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_IRQ: u32 = 4;

pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialDevice(Mutex<Serial<IrqTrigger, NoEvents, Console>>);

impl SerialDevice {
    pub fn new(irq: EventFd, out: Console) -> Self {
        SerialDevice(Mutex::new(Serial::new(IrqTrigger(irq), out)))
    }

    pub fn write(&self, offset: u8, value: u8) {
        // An output error (closed stdout) must not stop the guest.
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(offset, value);
    }

    pub fn read(&self, offset: u8) -> u8 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(offset)
    }
}
