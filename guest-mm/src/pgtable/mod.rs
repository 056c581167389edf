//! x86-64 page tables, built and torn down by guest-mm (seed section 1).
//!
//! Tables are in the hardware format (4-level, or 5-level with LA57), so the
//! CPU walks them directly and so can the VMM's 2D-walk model: one frame of
//! 512 little-endian 8-byte entries per table, every physical access through
//! [`PhysMemory`](crate::phys::PhysMemory).
//!
//! Three Linux ideas shape the code:
//!
//! * **mmu_gather** (seed 1.3, [`MmuGather`]): an unmap does not flush the
//!   TLB itself; it records the range in a gather, and the gather flushes
//!   once per batch. Page-table pages that an unmap empties (seed 1.7.6)
//!   are handed to the gather too, and go back to the allocator only after
//!   that flush, because until then another CPU's paging-structure cache
//!   may still walk them.
//! * **Freeing empty page-table pages** without scanning 512 entries: every
//!   entry that points to a table keeps, in bits the hardware ignores
//!   ([`COUNT_SHIFT`]), the number of non-empty entries of that table, the
//!   way Linux keeps a count in the page table's `struct page`. Map bumps
//!   it, unmap drops it, and the table is freed when it reaches zero.
//! * **Mitosis** (seed 1.7.4.1, `replica.rs`): an address space may keep a
//!   full copy of its tables per NUMA node, each copy's pages on its node,
//!   so every vCPU walks local memory. Upper entries of a replica point to
//!   that replica's own tables; leaf entries are equal in all of them.
//!   Every update goes to every replica, and accessed/dirty bits, which the
//!   hardware sets in whichever replica it walked, read as their OR.
//!
//! Leaf updates that race with the hardware walker (which sets A and D
//! with locked writes) use atomic read-modify-write, so no A/D bit is lost.

mod gather;
mod replica;
mod space;

pub use gather::{MmuGather, GATHER_PT_PAGES};
pub use replica::{Mismatch, ReplicaMismatch};
pub use space::AddressSpace;

use crate::addr::PhysAddr;

/// Entries per table: one 4 KiB frame of 8-byte entries.
pub const ENTRIES: usize = 512;

/// Present.
pub const PTE_P: u64 = 1 << 0;
/// Writable.
pub const PTE_RW: u64 = 1 << 1;
/// User-accessible (CPL3).
pub const PTE_US: u64 = 1 << 2;
/// Page-level write-through; with [`PTE_PCD`] selects PAT entry 3, UC.
pub const PTE_PWT: u64 = 1 << 3;
/// Page-level cache disable.
pub const PTE_PCD: u64 = 1 << 4;
/// Accessed: set by the hardware walker on any use.
pub const PTE_A: u64 = 1 << 5;
/// Dirty: set by the hardware walker on a write (leaf entries only).
pub const PTE_D: u64 = 1 << 6;
/// Page size: a 2 MiB (PDE) or 1 GiB (PDPTE) leaf instead of a table.
pub const PTE_PS: u64 = 1 << 7;
/// Execute disable (needs EFER.NXE).
pub const PTE_NX: u64 = 1 << 63;
/// Physical address bits of an entry (MAXPHYADDR 52).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Where an entry that points to a table keeps the number of non-empty
/// entries of that table: bits 52..=61, which the hardware ignores in
/// non-leaf entries (Intel SDM vol. 3 table 4-15..4-19, AMD APM "available"
/// bits), 10 bits for a count of at most 512. Readers of the raw tables
/// must mask addresses with [`ADDR_MASK`].
pub const COUNT_SHIFT: u32 = 52;
/// Mask of the count field (after shifting right by [`COUNT_SHIFT`]).
pub const COUNT_MASK: u64 = 0x3ff;
/// Flags of an entry that points to a table: permissive, so the leaf alone
/// decides the access rights (x86 takes the most restrictive of all levels).
pub const TABLE_FLAGS: u64 = PTE_P | PTE_RW | PTE_US;

/// Paging mode: how many bits of virtual address are translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Levels {
    /// 4-level paging, 48-bit virtual addresses.
    Four,
    /// 5-level paging (CR4.LA57), 57-bit virtual addresses.
    Five,
}

impl Levels {
    /// Number of table levels walked.
    pub const fn count(self) -> usize {
        match self {
            Levels::Four => 4,
            Levels::Five => 5,
        }
    }

    /// Implemented virtual-address bits; bits above must copy the top one.
    pub const fn va_bits(self) -> u32 {
        match self {
            Levels::Four => 48,
            Levels::Five => 57,
        }
    }

    /// The last byte of the lower ("user") half of the address space.
    pub const fn user_top(self) -> u64 {
        (1 << (self.va_bits() - 1)) - 1
    }
}

/// Whether `va` is canonical: its bits from `va_bits - 1` up are all equal.
/// The CPU faults (#GP) on any other address, so no table may map one.
pub const fn is_canonical(va: u64, levels: Levels) -> bool {
    let shift = 64 - levels.va_bits();
    (((va << shift) as i64) >> shift) as u64 == va
}

/// Sizes of leaf mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// A PTE.
    Size4K,
    /// A PDE with PS set.
    Size2M,
    /// A PDPTE with PS set.
    Size1G,
}

impl PageSize {
    pub const ALL: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

    /// Bytes mapped by one leaf of this size.
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }

    /// log2 of [`PageSize::bytes`].
    pub const fn shift(self) -> u32 {
        12 + 9 * self.level() as u32
    }

    /// The table level that holds leaves of this size (0 = PTE table).
    pub const fn level(self) -> usize {
        match self {
            PageSize::Size4K => 0,
            PageSize::Size2M => 1,
            PageSize::Size1G => 2,
        }
    }

    const fn from_level(level: usize) -> PageSize {
        match level {
            0 => PageSize::Size4K,
            1 => PageSize::Size2M,
            _ => PageSize::Size1G,
        }
    }
}

/// Access rights and caching of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Prot {
    pub write: bool,
    pub user: bool,
    pub exec: bool,
    /// Uncached (PCD|PWT: PAT entry 3 with the power-on PAT).
    pub uncached: bool,
}

impl Prot {
    /// The leaf-entry bits for these rights (no P, PS, A, D).
    pub const fn bits(self) -> u64 {
        let mut b = 0;
        if self.write {
            b |= PTE_RW;
        }
        if self.user {
            b |= PTE_US;
        }
        if !self.exec {
            b |= PTE_NX;
        }
        if self.uncached {
            b |= PTE_PWT | PTE_PCD;
        }
        b
    }

    /// The rights a leaf entry grants.
    pub const fn from_entry(e: u64) -> Prot {
        Prot {
            write: e & PTE_RW != 0,
            user: e & PTE_US != 0,
            exec: e & PTE_NX == 0,
            uncached: e & PTE_PCD != 0,
        }
    }
}

/// Why a page-table operation was refused. Every refusal leaves the tables
/// (and the allocator) as they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtError {
    /// The virtual address is not canonical for the paging mode.
    NonCanonical(u64),
    /// The virtual or physical address is not a multiple of the page size,
    /// or the physical address needs more than 52 bits.
    Misaligned {
        va: u64,
        pa: PhysAddr,
        size: PageSize,
    },
    /// Something is mapped already where the new mapping would go (a leaf
    /// of any size, or a table holding smaller leaves): refused rather
    /// than overwritten (seed 1.7.3, page-table check).
    AlreadyMapped(u64),
    /// Nothing is mapped at this address.
    NotMapped(u64),
    /// A page-table page could not be allocated.
    NoMemory,
    /// The address is mapped with a different page size than asked.
    SizeMismatch {
        va: u64,
        expected: PageSize,
        found: PageSize,
    },
    /// The node is past `MAX_NUMNODES`, or (for `drop_replica`) has no replica.
    NoSuchNode(usize),
    /// `drop_replica` of the only replica: an address space needs a table.
    LastReplica(usize),
    /// The gather has no room for the page-table pages this operation may
    /// free and was made with [`MmuGather::new`], so it cannot flush early:
    /// finish it and retry (or use [`MmuGather::attached`]).
    GatherFull,
    /// `map_ptes`: the run of pages leaves its page table (crosses a 2 MiB
    /// boundary), or is empty; a run must stay in one PTE table (seed 1.7.8).
    CrossesTable { va: u64, pages: u64 },
}

/// One translation, as the hardware would see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address `va` translates to (page base plus offset).
    pub pa: PhysAddr,
    pub size: PageSize,
    pub prot: Prot,
    /// Accessed in any replica.
    pub accessed: bool,
    /// Dirty in any replica.
    pub dirty: bool,
}

/// Where page-table pages come from: one zeroed 4 KiB frame on `node`
/// (the firmware backs it with `PageAllocator::alloc_node` with THISNODE;
/// tests with a simulated pool that counts per node).
pub trait PtAlloc {
    /// A zeroed frame on `node`, or `None`; never a frame of another node,
    /// since a replica exists to be local.
    fn alloc_pt(&self, node: usize) -> Option<PhysAddr>;
    /// Returns a frame that `alloc_pt` gave out.
    fn free_pt(&self, pa: PhysAddr);
    /// The node that owns `pa`, for the replica checker.
    fn node_of(&self, pa: PhysAddr) -> Option<usize>;
}

/// What a finished batch asks of the TLB (firmware: one system call doing
/// invlpg per page or a CR3 reload).
pub trait TlbFlush {
    /// Invalidate translations of the pages in `[start, end)` (and, as
    /// INVLPG does, the paging-structure caches). For the top page of the
    /// address space `end` is `u64::MAX`, one byte short of 2^64, which
    /// still names that page.
    fn flush_range(&mut self, start: u64, end: u64);
    /// Invalidate everything (a CR3 reload).
    fn flush_all(&mut self);
}

/// Index of `va` in a table at `level` (0 = PTE table).
#[inline]
const fn index(va: u64, level: usize) -> usize {
    ((va >> (12 + 9 * level)) & 0x1ff) as usize
}

/// The count of non-empty entries of the table an entry points to.
#[inline]
const fn entry_count(e: u64) -> u64 {
    (e >> COUNT_SHIFT) & COUNT_MASK
}

/// Whether an entry at `level` is a leaf (a PTE, or a PDE/PDPTE with PS).
#[inline]
const fn is_leaf(e: u64, level: usize) -> bool {
    level == 0 || e & PTE_PS != 0
}

/// The physical base of the page a leaf at `level` maps (bit 12 of a huge
/// leaf is its PAT bit, not address).
#[inline]
const fn leaf_pa(e: u64, level: usize) -> u64 {
    e & ADDR_MASK & !(PageSize::from_level(level).bytes() - 1)
}

#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
