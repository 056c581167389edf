//! memvisor: a KVM research VMM with a Linux-style guest-memory manager.
//!
//! The library holds everything; `main.rs` is only the command line. One
//! builder (`builder`) wires memory → kernel → vCPUs → devices, in that order,
//! the way Firecracker's does.

/// The VMM ⇄ guest-kernel contract, shared source with the firmware.
#[path = "../../firmware/src/abi.rs"]
pub mod abi;

pub mod api;
pub mod bench;
pub mod boot;
pub mod builder;
pub mod clock;
pub mod devices;
pub mod firmware;
pub mod guest;
pub mod memory;
pub mod report;
pub mod resources;
pub mod rpc;
pub mod signals;
pub mod vmm;
pub mod vstate;
