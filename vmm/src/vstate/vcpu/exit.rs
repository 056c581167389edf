//! What a vCPU exit means, decided by pure functions so it is tested without
//! KVM_RUN (Firecracker keeps its exit handling apart the same way): `handle`
//! dispatches port I/O and MMIO to the bus and says what the vCPU does next.
//! No device is named here; the bus knows them.
use crate::devices::bus::Bus;
/// An exit, as KVM_RUN left it. Port I/O carries the access size and the
/// whole data buffer: `rep ins/outs` hand over `size × count` bytes at once.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit<'a> {
    IoOut {
        port: u16,
        size: u8,
        data: &'a [u8],
    },
    IoIn {
        port: u16,
        size: u8,
        data: &'a mut [u8],
    },
    MmioRead {
        addr: u64,
        data: &'a mut [u8],
    },
    MmioWrite {
        addr: u64,
        data: &'a [u8],
    },
    Hlt,
    Shutdown,
    InternalError {
        suberror: u32,
    },
    FailEntry {
        reason: u64,
    },
    SystemEvent {
        kind: u32,
    },
    Interrupted,
    /// A split irqchip's EOI for a level-triggered vector. Our IOAPIC
    /// routes every pin as edge, so there is no remote IRR to clear.
    IoapicEoi {
        vector: u8,
    },
    /// KVM_EXIT_DIRTY_RING_FULL: this vCPU's dirty ring has no room left.
    DirtyRingFull,
    Other {
        reason: u32,
    },
}

/// Why the guest stopped running without asking to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// KVM_EXIT_SHUTDOWN: a triple fault (or a shutdown request).
    TripleFault,
    /// KVM_EXIT_INTERNAL_ERROR; suberror 1 is an emulation failure, which on
    /// PVM hosts means a CPL0 instruction the emulator does not support.
    InternalError(u32),
    FailEntry(u64),
    SystemEvent(u32),
    UnexpectedExit(u32),
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Crash::TripleFault => write!(f, "triple fault (KVM_EXIT_SHUTDOWN)"),
            Crash::InternalError(1) => {
                write!(f, "emulation failure (KVM_EXIT_INTERNAL_ERROR, suberror 1)")
            }
            Crash::InternalError(s) => write!(f, "KVM internal error, suberror {s}"),
            Crash::FailEntry(r) => write!(f, "VM entry failed, hardware reason {r:#x}"),
            Crash::SystemEvent(k) => write!(f, "system event {k}"),
            Crash::UnexpectedExit(r) => write!(f, "unexpected exit reason {r}"),
        }
    }
}

/// What the vCPU does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again. `unclaimed` is set when no device took the
    /// access (reads then return all ones, writes are dropped, as on real
    /// hardware).
    Resume {
        unclaimed: bool,
    },
    /// The vCPU halted with nothing to wake it (no in-kernel LAPIC).
    Idle,
    /// Pulled out of KVM_RUN by a kick: look at the vCPU's messages.
    Kicked,
    /// Empty the dirty rings (KVM_RESET_DIRTY_RINGS), then enter again.
    HarvestDirtyRing,
    Crash(Crash),
}

/// One `size`-byte access after another, the way a `rep` string instruction
/// performs them; an unknown size (0) means one access of the whole buffer.
fn accesses(len: usize, size: u8) -> impl Iterator<Item = std::ops::Range<usize>> {
    let step = if size == 0 { len.max(1) } else { size as usize };
    (0..len).step_by(step).map(move |i| i..(i + step).min(len))
}

pub fn handle(exit: Exit<'_>, bus: &dyn Bus) -> Action {
    let claimed = match exit {
        Exit::IoOut { port, size, data } => accesses(data.len(), size)
            .map(|r| bus.pio_write(port, &data[r]))
            .fold(true, |a, b| a & b),
        Exit::IoIn { port, size, data } => {
            let mut all = true;
            for r in accesses(data.len(), size) {
                if !bus.pio_read(port, &mut data[r.clone()]) {
                    data[r].fill(0xff);
                    all = false;
                }
            }
            all
        }
        Exit::MmioWrite { addr, data } => bus.mmio_write(addr, data),
        Exit::MmioRead { addr, data } => {
            let ok = bus.mmio_read(addr, data);
            if !ok {
                data.fill(0xff);
            }
            ok
        }
        Exit::IoapicEoi { .. } => true,
        Exit::Hlt => return Action::Idle,
        Exit::DirtyRingFull => return Action::HarvestDirtyRing,
        Exit::Interrupted => return Action::Kicked,
        Exit::Shutdown => return Action::Crash(Crash::TripleFault),
        Exit::InternalError { suberror } => return Action::Crash(Crash::InternalError(suberror)),
        Exit::FailEntry { reason } => return Action::Crash(Crash::FailEntry(reason)),
        Exit::SystemEvent { kind } => return Action::Crash(Crash::SystemEvent(kind)),
        Exit::Other { reason } => return Action::Crash(Crash::UnexpectedExit(reason)),
    };
    Action::Resume {
        unclaimed: !claimed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records every access; claims ports 0x3f8..0x400 and MMIO at 0xd000_0000.
    #[derive(Default)]
    struct FakeBus {
        log: RefCell<Vec<(char, u64, Vec<u8>)>>,
    }

    impl Bus for FakeBus {
        fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
            let ok = (0x3f8..0x400).contains(&port);
            if ok {
                data.fill(0x42);
                self.log
                    .borrow_mut()
                    .push(('r', port as u64, data.to_vec()));
            }
            ok
        }
        fn pio_write(&self, port: u16, data: &[u8]) -> bool {
            let ok = (0x3f8..0x400).contains(&port);
            if ok {
                self.log
                    .borrow_mut()
                    .push(('w', port as u64, data.to_vec()));
            }
            ok
        }
        fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
            let ok = addr == 0xd000_0000;
            if ok {
                data.fill(7);
            }
            ok
        }
        fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
            let ok = addr == 0xd000_0000;
            if ok {
                self.log.borrow_mut().push(('m', addr, data.to_vec()));
            }
            ok
        }
    }

    #[test]
    fn port_writes_go_to_the_bus() {
        let bus = FakeBus::default();
        let a = handle(
            Exit::IoOut {
                port: 0x3f8,
                size: 1,
                data: b"A",
            },
            &bus,
        );
        assert_eq!(a, Action::Resume { unclaimed: false });
        assert_eq!(bus.log.borrow()[0], ('w', 0x3f8, b"A".to_vec()));
    }

    #[test]
    fn string_io_is_split_into_accesses_of_its_size() {
        let bus = FakeBus::default();
        handle(
            Exit::IoOut {
                port: 0x3f8,
                size: 2,
                data: b"abcde",
            },
            &bus,
        );
        let log = bus.log.borrow();
        let chunks: Vec<&[u8]> = log.iter().map(|e| e.2.as_slice()).collect();
        assert_eq!(chunks, [&b"ab"[..], b"cd", b"e"]);
        drop(log);
        let mut buf = [0u8; 8];
        handle(
            Exit::IoIn {
                port: 0x3f8,
                size: 4,
                data: &mut buf,
            },
            &bus,
        );
        assert_eq!(bus.log.borrow().len(), 5, "two 4-byte reads");
        assert_eq!(buf, [0x42; 8]);
    }

    #[test]
    fn unclaimed_reads_return_all_ones() {
        let bus = FakeBus::default();
        let mut b = [0u8; 4];
        let a = handle(
            Exit::IoIn {
                port: 0x80,
                size: 4,
                data: &mut b,
            },
            &bus,
        );
        assert_eq!(a, Action::Resume { unclaimed: true });
        assert_eq!(b, [0xff; 4]);
        let mut m = [0u8; 4];
        assert_eq!(
            handle(
                Exit::MmioRead {
                    addr: 0xd000_1000,
                    data: &mut m
                },
                &bus
            ),
            Action::Resume { unclaimed: true }
        );
        assert_eq!(m, [0xff; 4]);
        let mut m = [0u8; 4];
        handle(
            Exit::MmioRead {
                addr: 0xd000_0000,
                data: &mut m,
            },
            &bus,
        );
        assert_eq!(m, [7; 4]);
    }

    #[test]
    fn mmio_writes_reach_the_device() {
        let bus = FakeBus::default();
        let a = handle(
            Exit::MmioWrite {
                addr: 0xd000_0000,
                data: &[1, 0, 0, 0],
            },
            &bus,
        );
        assert_eq!(a, Action::Resume { unclaimed: false });
        assert_eq!(bus.log.borrow()[0].0, 'm');
    }

    #[test]
    fn guest_failures_are_crashes() {
        let bus = FakeBus::default();
        assert_eq!(
            handle(Exit::Shutdown, &bus),
            Action::Crash(Crash::TripleFault)
        );
        assert_eq!(
            handle(Exit::InternalError { suberror: 1 }, &bus),
            Action::Crash(Crash::InternalError(1))
        );
        assert_eq!(
            handle(Exit::Other { reason: 99 }, &bus),
            Action::Crash(Crash::UnexpectedExit(99))
        );
        assert_eq!(handle(Exit::Interrupted, &bus), Action::Kicked);
        assert_eq!(handle(Exit::Hlt, &bus), Action::Idle);
    }

    #[test]
    fn a_full_dirty_ring_is_harvested_and_the_vcpu_goes_on() {
        let bus = FakeBus::default();
        assert_eq!(handle(Exit::DirtyRingFull, &bus), Action::HarvestDirtyRing);
        assert!(bus.log.borrow().is_empty(), "no device is involved");
    }

    #[test]
    fn crash_messages_name_the_cause() {
        assert!(Crash::InternalError(1)
            .to_string()
            .contains("emulation failure"));
        assert!(Crash::TripleFault.to_string().contains("triple fault"));
    }
}
