//! Guest memory management for memvisor, modelled on Linux mm/.
//!
//! `no_std` and heap-free so the guest kernel can link it before it has any
//! allocator; all physical memory access goes through [`phys::PhysMemory`]
//! so the same code is unit-tested on the host over simulated RAM.
#![cfg_attr(not(any(test, feature = "sim")), no_std)]

pub mod addr;
pub mod gfp;
pub mod ident_map;
pub mod memblock;
pub mod mempolicy;
pub mod mmzone;
pub mod page;
pub mod page_alloc;
pub mod pcp;
pub mod pgtable;
pub mod phys;
pub mod slab;
pub mod sync;
pub mod vmstat;
pub mod zonelist;

pub use addr::{align_down, align_up, Pfn, PhysAddr, PAGE_SHIFT, PAGE_SIZE};
pub use memblock::{FreeRanges, Memblock, MemblockError, Region, INIT_REGIONS};
pub use phys::{IdentityMap, PhysMemory};
pub use sync::{SpinLock, SpinLockGuard};
