//! What a vCPU exit means, decided by a pure function so it is tested without
//! KVM_RUN (Firecracker keeps its exit handling apart the same way).
use crate::abi;

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;

/// An exit, copied out of `kvm_run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    IoOut { port: u16, len: u8, value: u32 },
    IoIn { port: u16, len: u8 },
    MmioRead { addr: u64, len: u8 },
    MmioWrite { addr: u64, len: u8 },
    Hlt,
    Shutdown,
    InternalError { suberror: u32 },
    FailEntry { reason: u64 },
    SystemEvent { kind: u32 },
    Interrupted,
    Other { reason: u32 },
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Resume the guest.
    Resume,
    SerialWrite {
        offset: u8,
        value: u8,
    },
    SerialRead {
        offset: u8,
    },
    /// Read the record at this guest-physical address.
    Record {
        gpa: u64,
    },
    Mark(u32),
    /// The guest wrote its exit status.
    GuestExit(u32),
    /// Reads of ports and MMIO nobody claims return all ones.
    ReadOnes,
    /// The vCPU halted with nothing to wake it (no in-kernel LAPIC).
    Idle,
    /// Interrupted by our kick signal: check whether to stop.
    Kicked,
    Crash(Crash),
}

pub fn decide(exit: Exit) -> Action {
    match exit {
        Exit::IoOut { port, value, .. } if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&port) => {
            Action::SerialWrite {
                offset: (port - COM1_BASE) as u8,
                value: value as u8,
            }
        }
        Exit::IoIn { port, .. } if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&port) => {
            Action::SerialRead {
                offset: (port - COM1_BASE) as u8,
            }
        }
        Exit::IoOut {
            port: abi::EXIT_PORT,
            value,
            ..
        } => Action::GuestExit(value),
        Exit::IoOut {
            port: abi::RESULTS_PORT,
            len: 4,
            value,
        } => Action::Record { gpa: value as u64 },
        Exit::IoOut {
            port: abi::MARK_PORT,
            len: 4,
            value,
        } => Action::Mark(value),
        // Writes to unclaimed ports and MMIO are dropped, as on real hardware.
        Exit::IoOut { .. } | Exit::MmioWrite { .. } => Action::Resume,
        Exit::IoIn { .. } | Exit::MmioRead { .. } => Action::ReadOnes,
        Exit::Hlt => Action::Idle,
        Exit::Interrupted => Action::Kicked,
        Exit::Shutdown => Action::Crash(Crash::TripleFault),
        Exit::InternalError { suberror } => Action::Crash(Crash::InternalError(suberror)),
        Exit::FailEntry { reason } => Action::Crash(Crash::FailEntry(reason)),
        Exit::SystemEvent { kind } => Action::Crash(Crash::SystemEvent(kind)),
        Exit::Other { reason } => Action::Crash(Crash::UnexpectedExit(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_ports_go_to_the_uart() {
        assert_eq!(
            decide(Exit::IoOut {
                port: 0x3f8,
                len: 1,
                value: b'A' as u32
            }),
            Action::SerialWrite {
                offset: 0,
                value: b'A'
            }
        );
        assert_eq!(
            decide(Exit::IoIn {
                port: 0x3fd,
                len: 1
            }),
            Action::SerialRead { offset: 5 }
        );
        assert_eq!(
            decide(Exit::IoOut {
                port: 0x3f7,
                len: 1,
                value: 0
            }),
            Action::Resume
        );
    }

    #[test]
    fn memvisor_ports() {
        assert_eq!(
            decide(Exit::IoOut {
                port: 0xf4,
                len: 4,
                value: 0
            }),
            Action::GuestExit(0)
        );
        assert_eq!(
            decide(Exit::IoOut {
                port: 0xf4,
                len: 1,
                value: 3
            }),
            Action::GuestExit(3)
        );
        assert_eq!(
            decide(Exit::IoOut {
                port: 0x6e0,
                len: 4,
                value: 0x1000
            }),
            Action::Record { gpa: 0x1000 }
        );
        // A record address must be a full 32-bit write.
        assert_eq!(
            decide(Exit::IoOut {
                port: 0x6e0,
                len: 1,
                value: 0x10
            }),
            Action::Resume
        );
        assert_eq!(
            decide(Exit::IoOut {
                port: 0x6e4,
                len: 4,
                value: 1
            }),
            Action::Mark(1)
        );
    }

    #[test]
    fn unclaimed_accesses_are_harmless() {
        assert_eq!(decide(Exit::IoIn { port: 0x60, len: 1 }), Action::ReadOnes);
        assert_eq!(
            decide(Exit::MmioRead {
                addr: 0xd000_0000,
                len: 4
            }),
            Action::ReadOnes
        );
        assert_eq!(
            decide(Exit::MmioWrite {
                addr: 0xd000_0000,
                len: 4
            }),
            Action::Resume
        );
    }

    #[test]
    fn failures_are_crashes() {
        assert_eq!(decide(Exit::Shutdown), Action::Crash(Crash::TripleFault));
        assert_eq!(
            decide(Exit::InternalError { suberror: 1 }),
            Action::Crash(Crash::InternalError(1))
        );
        assert!(Crash::InternalError(1)
            .to_string()
            .contains("emulation failure"));
        assert_eq!(
            decide(Exit::FailEntry { reason: 7 }),
            Action::Crash(Crash::FailEntry(7))
        );
        assert_eq!(
            decide(Exit::Other { reason: 99 }),
            Action::Crash(Crash::UnexpectedExit(99))
        );
        assert_eq!(decide(Exit::Hlt), Action::Idle);
        assert_eq!(decide(Exit::Interrupted), Action::Kicked);
    }
}
