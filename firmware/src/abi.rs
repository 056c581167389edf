//! The contract between memvisor's VMM and its guest kernel.
//!
//! This one file is compiled into both sides (vmm includes it with `#[path]`),
//! so the port numbers and record layout can never drift apart. Everything here
//! exists because exits are expensive on the hosts we run on (~70 µs from CPL3,
//! see HOST_FACTS): the guest hands over whole lines in one port write instead
//! of pushing bytes through a UART.
#![allow(dead_code)]

/// QEMU's isa-debug-exit port: a 32-bit write ends the VM with that status, so
/// the same guest also ends cleanly under QEMU.
pub const EXIT_PORT: u16 = 0xf4;

/// A 32-bit write of the guest-physical address (below 4 GiB) of a
/// [`RecordHeader`] followed by `len` bytes hands one whole record to the VMM.
pub const RESULTS_PORT: u16 = 0x6e0;

/// A 32-bit write of a `MARK_*` value timestamps a boot milestone on the host
/// clock (one ~10 µs exit from CPL0), so the report can show when the guest ran
/// its first instruction without trusting the guest's clock.
pub const MARK_PORT: u16 = 0x6e4;
pub const MARK_FIRST_INSTRUCTION: u32 = 1;
/// Dirty-log window marks (`workload=dirty`): at the start mark the VMM
/// clears its dirty log, at the end mark it reads what was written since,
/// both synchronously on the writing vCPU's exit, so the window holds
/// exactly what was written between the two `out`s.
pub const MARK_DIRTY_START: u32 = 2;
pub const MARK_DIRTY_END: u32 = 3;

/// "MVR1": lets the VMM reject a stray or corrupted address cheaply.
pub const RECORD_MAGIC: u32 = 0x3152_564d;
/// Payload is one JSON object (one line of the report's `guest` stream).
pub const RECORD_JSON: u32 = 1;
/// Payload is human-readable console text (printed like serial output).
pub const RECORD_CONSOLE: u32 = 2;
/// Payload is one [`PtWalkRequest`]: the VMM runs its 2D page-walk model
/// over the guest's live page tables synchronously on the requesting
/// vCPU's exit, so the guest only has to keep those tables unchanged until
/// its port write returns (`workload=ptrepl`).
pub const RECORD_PTWALK: u32 = 3;
/// Upper bound the VMM accepts for one record's payload.
pub const RECORD_MAX_LEN: u32 = 64 * 1024;
/// Size of [`RecordHeader`] in bytes.
pub const RECORD_HEADER_LEN: u32 = 16;

/// Layout of a record header in guest memory (little endian, packed as four
/// u32 words): magic, kind, payload length, reserved (0).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct RecordHeader {
    pub magic: u32,
    pub kind: u32,
    pub len: u32,
    pub reserved: u32,
}

/// Page-table placement of one `workload=ptrepl` configuration.
pub const PTREPL_LOCAL: u32 = 0;
pub const PTREPL_REMOTE: u32 = 1;
pub const PTREPL_REPLICATED: u32 = 2;
/// `ptrepl_mib` (the data region per vCPU): even, so that it maps whole
/// 2 MiB pages with THP on, from 2 to this many MiB.
pub const PTREPL_MAX_MIB: u64 = 1024;
/// Addresses the VMM samples per walk request at most, whatever the guest asks.
pub const PTWALK_MAX_SAMPLES: u32 = 65536;

/// Layout of a [`RECORD_PTWALK`] payload (little endian, 48 bytes): "model
/// the walks vCPU `cpu` makes, with `root` in CR3, for `samples` addresses
/// spread over [start, start + len)". `config` is a `PTREPL_*` value and
/// `thp` 1 when the data is mapped with 2 MiB pages; both only label the
/// result. `levels` is 4 or 5 (LA57).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PtWalkRequest {
    pub cpu: u32,
    pub config: u32,
    pub root: u64,
    pub start: u64,
    pub len: u64,
    pub samples: u32,
    pub levels: u32,
    pub thp: u32,
    pub reserved: u32,
}
/// Size of [`PtWalkRequest`] in bytes.
pub const PTWALK_REQUEST_LEN: u32 = 48;

/// Values the guest writes to [`EXIT_PORT`].
pub const GUEST_EXIT_SUCCESS: u32 = 0;
pub const GUEST_EXIT_FAILURE: u32 = 1;
/// The guest took an unexpected exception or panicked.
pub const GUEST_EXIT_CRASH: u32 = 3;

/// The BIOS read-only area [start, end) where the ACPI spec has an OS scan
/// for the RSDP on 16-byte boundaries: the VMM writes its ACPI tables
/// there (and says where in boot_params.acpi_rsdp_addr), the guest kernel
/// scans it when the zero page does not say.
pub const ACPI_AREA_START: u64 = 0xe0000;
pub const ACPI_AREA_END: u64 = 0x10_0000;

/// vCPUs the bundled guest kernel supports (its per-CPU stacks and TSSs);
/// the VMM refuses more when booting it.
pub const MAX_VCPUS: usize = 64;

/// ELF note (name "memvisor") announcing the memvisor SMP entry: every vCPU
/// starts at the ELF entry in 64-bit mode with `rdi` = vCPU index, `rsi` =
/// boot_params, `rdx` = vCPU count, instead of only the BSP as in the Linux
/// 64-bit boot protocol. Saves an INIT/SIPI round and a real-mode trampoline,
/// thousands of emulated CPL0 instructions per vCPU on PVM hosts.
pub const NOTE_NAME: &[u8] = b"memvisor\0";
pub const NOTE_TYPE_SMP_ENTRY: u32 = 0x4d56_0001;

const _: () = assert!(core::mem::size_of::<PtWalkRequest>() == PTWALK_REQUEST_LEN as usize);
const _: () = assert!(core::mem::size_of::<RecordHeader>() == RECORD_HEADER_LEN as usize);
