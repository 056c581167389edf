//! The shape of physical memory as the page allocator sees it: nodes hold
//! zones, zones hold free areas of orders 0..=MAX_ORDER, each split by
//! migrate type, and memory is typed in pageblocks (seed 0.1, 2.2.1, 3.3).
//!
//! This file holds the vocabulary shared by every allocator module; the
//! structures that use it live in `page_alloc`.

/// Highest buddy order: blocks of up to 2^10 = 1,024 pages (seed 2.2.1).
pub const MAX_ORDER: usize = 10;
pub const NR_ORDERS: usize = MAX_ORDER + 1;
/// Pageblock order: one 2 MiB huge page on x86-64 (seed 3.3).
pub const PAGEBLOCK_ORDER: usize = 9;
pub const PAGEBLOCK_NR_PAGES: u64 = 1 << PAGEBLOCK_ORDER;
/// Orders above this are "costly" (seed 3.2, 4.1.2): more than 8 pages.
pub const PAGE_ALLOC_COSTLY_ORDER: usize = 3;
/// Nodes this build supports.
pub const MAX_NUMNODES: usize = 8;

/// Zones in rising physical-address order (x86-64: below 16 MiB for ISA
/// DMA, below 4 GiB for 32-bit DMA, the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ZoneType {
    Dma = 0,
    Dma32 = 1,
    Normal = 2,
}

pub const MAX_NR_ZONES: usize = 3;

impl ZoneType {
    pub const ALL: [ZoneType; MAX_NR_ZONES] = [ZoneType::Dma, ZoneType::Dma32, ZoneType::Normal];
    /// Exclusive upper physical address of the zone.
    pub const fn limit(self) -> u64 {
        match self {
            ZoneType::Dma => 16 << 20,
            ZoneType::Dma32 => 4 << 30,
            ZoneType::Normal => u64::MAX,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            ZoneType::Dma => "DMA",
            ZoneType::Dma32 => "DMA32",
            ZoneType::Normal => "Normal",
        }
    }
    pub const fn from_index(i: usize) -> ZoneType {
        match i {
            0 => ZoneType::Dma,
            1 => ZoneType::Dma32,
            _ => ZoneType::Normal,
        }
    }
}

/// Migrate types, in Linux's order (seed 3.3): the first three are the
/// mobility classes with per-CPU lists, HighAtomic is a reserve for
/// high-order atomic allocations, Isolate takes pageblocks out of use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum MigrateType {
    Unmovable = 0,
    Movable = 1,
    Reclaimable = 2,
    HighAtomic = 3,
    Isolate = 4,
}

/// Types with per-CPU lists (MIGRATE_PCPTYPES).
pub const MIGRATE_PCPTYPES: usize = 3;
pub const MIGRATE_TYPES: usize = 5;

impl MigrateType {
    pub const ALL: [MigrateType; MIGRATE_TYPES] = [
        MigrateType::Unmovable,
        MigrateType::Movable,
        MigrateType::Reclaimable,
        MigrateType::HighAtomic,
        MigrateType::Isolate,
    ];
    pub const fn from_index(i: usize) -> MigrateType {
        match i {
            0 => MigrateType::Unmovable,
            1 => MigrateType::Movable,
            2 => MigrateType::Reclaimable,
            3 => MigrateType::HighAtomic,
            _ => MigrateType::Isolate,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            MigrateType::Unmovable => "Unmovable",
            MigrateType::Movable => "Movable",
            MigrateType::Reclaimable => "Reclaimable",
            MigrateType::HighAtomic => "HighAtomic",
            MigrateType::Isolate => "Isolate",
        }
    }
    /// Fallback order when a type's own lists are empty ([NOT IN SEED]: the
    /// seed names stealing but gives no table; this is Linux's `fallbacks[]`).
    pub const fn fallbacks(self) -> &'static [MigrateType] {
        match self {
            MigrateType::Unmovable => &[MigrateType::Reclaimable, MigrateType::Movable],
            MigrateType::Movable => &[MigrateType::Reclaimable, MigrateType::Unmovable],
            MigrateType::Reclaimable => &[MigrateType::Unmovable, MigrateType::Movable],
            MigrateType::HighAtomic | MigrateType::Isolate => &[],
        }
    }
}
