//! memvisor's host I/O ports (see `abi`): the results channel, boot-milestone
//! marks and the exit-status port.
//!
//! They are devices on the bus like any other, so the vCPU loop names none of
//! them. Each access reads what the guest points at right here, on the vCPU
//! thread (bounded by `abi::RECORD_MAX_LEN`), and hands the result to the
//! event loop through the bounded [`VmEvents`] queue. The dirty-window marks
//! act at once, on the vCPU thread: the guest's window must be cleared and
//! read while it waits on its `out`, not when the event loop gets to it.
//! Page-walk requests too (`guest::ptwalk`): the guest keeps its tables
//! unchanged only until its `out` returns.
use crate::abi;
use crate::clock::now_ns;
use crate::guest::events::{VmEvent, VmEvents};
use crate::guest::ptwalk::PtWalker;
use crate::guest::record::{read_record, RecordKind};
use crate::memory::dirty::DirtyLog;
use crate::memory::GuestMemory;
use crate::vstate::vcpu::current_vcpu;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;

/// Which of the host I/O ports a device instance serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPort {
    Results,
    Mark,
    Exit,
}

impl HostPort {
    pub fn port(self) -> u16 {
        match self {
            HostPort::Results => abi::RESULTS_PORT,
            HostPort::Mark => abi::MARK_PORT,
            HostPort::Exit => abi::EXIT_PORT,
        }
    }
}

pub struct HostIo {
    which: HostPort,
    mem: GuestMemory,
    events: Arc<VmEvents>,
    pub records: AtomicU64,
    /// The mark port's dirty log, with `--dirty-log`.
    pub dirty: Option<Arc<DirtyLog>>,
    /// The results port's walk model, set once by the builder.
    pub ptwalk: std::sync::OnceLock<Arc<PtWalker>>,
}

impl HostIo {
    pub fn new(which: HostPort, mem: GuestMemory, events: Arc<VmEvents>) -> Self {
        HostIo {
            which,
            mem,
            events,
            records: AtomicU64::new(0),
            dirty: None,
            ptwalk: Default::default(),
        }
    }
}

/// Little-endian value of a 1-, 2- or 4-byte access.
fn value(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl DevicePio for HostIo {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let vcpu = current_vcpu();
        let at_ns = now_ns();
        match self.which {
            // Only whole 32-bit writes at the port itself carry a value.
            HostPort::Results | HostPort::Mark if offset != 0 || data.len() != 4 => {}
            HostPort::Results => match read_record(&self.mem, value(data) as u64) {
                Ok((RecordKind::PtWalk, payload)) => {
                    self.records.fetch_add(1, Ordering::Relaxed);
                    let answer = match self.ptwalk.get() {
                        Some(w) => w.handle(vcpu, &payload).map_err(|e| e.to_string()),
                        None => Err("ptwalk request: this VM has no walk model".into()),
                    };
                    if let Err(error) = answer {
                        self.events.push(VmEvent::BadRecord { vcpu, error, at_ns });
                    }
                }
                Ok((kind, payload)) => {
                    self.records.fetch_add(1, Ordering::Relaxed);
                    self.events.push(VmEvent::Record {
                        vcpu,
                        kind,
                        payload,
                        at_ns,
                    });
                }
                Err(e) => self.events.push(VmEvent::BadRecord {
                    vcpu,
                    error: e.to_string(),
                    at_ns,
                }),
            },
            HostPort::Mark => {
                let value = value(data);
                if let Some(d) = &self.dirty {
                    let r = match value {
                        abi::MARK_DIRTY_START => d.window_start(),
                        abi::MARK_DIRTY_END => d.window_end(),
                        _ => Ok(()),
                    };
                    if let Err(e) = r {
                        self.events.push(VmEvent::Failed {
                            vcpu,
                            error: e.to_string(),
                            at_ns,
                        });
                    }
                }
                self.events.push(VmEvent::Mark { vcpu, value, at_ns })
            }
            HostPort::Exit => self.events.push(VmEvent::GuestExit {
                vcpu,
                status: value(data),
                at_ns,
            }),
        }
    }
}
