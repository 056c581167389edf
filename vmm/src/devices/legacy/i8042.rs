//! Just enough of the i8042 keyboard controller for a guest to reset the
//! machine: Linux's `reboot` writes command 0xfe (pulse the reset line) to
//! port 0x64. We end the run cleanly instead of rebooting, as Firecracker
//! does. Reads answer "no data, buffers empty" so probing drivers move on.
use crate::clock::now_ns;
use crate::guest::events::{VmEvent, VmEvents};
use crate::vstate::vcpu::current_vcpu;
use std::sync::Arc;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

pub const I8042_BASE: u16 = 0x60;
/// Data port 0x60 to command/status port 0x64.
pub const I8042_LEN: u16 = 5;
const COMMAND_OFFSET: u16 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    events: Arc<VmEvents>,
}

impl I8042 {
    pub fn new(events: Arc<VmEvents>) -> Self {
        I8042 { events }
    }
}

impl MutDevicePio for I8042 {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            log::debug!("i8042: reset requested by vCPU {}", current_vcpu());
            self.events.push(VmEvent::Reset {
                vcpu: current_vcpu(),
                at_ns: now_ns(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_command_ends_the_run() {
        let ev = Arc::new(VmEvents::new().unwrap());
        let mut k = I8042::new(ev.clone());
        k.pio_write(PioAddress(0x60), 0, &[0xfe]);
        k.pio_write(PioAddress(0x60), 4, &[0xaa]);
        assert!(ev.drain().is_empty());
        k.pio_write(PioAddress(0x60), 4, &[0xfe]);
        assert!(matches!(ev.drain()[..], [VmEvent::Reset { .. }]));
    }
}
