//! Allocation requests: GFP flags (what the caller may tolerate) and the
//! allocator's internal ALLOC_* flags (which watermark, which reserves).
use crate::mmzone::{MigrateType, ZoneType};

/// Get-free-pages flags, as Linux's `gfp_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Gfp(pub u32);

impl Gfp {
    pub const DMA: Gfp = Gfp(1 << 0);
    pub const DMA32: Gfp = Gfp(1 << 1);
    pub const MOVABLE: Gfp = Gfp(1 << 2);
    pub const RECLAIMABLE: Gfp = Gfp(1 << 3);
    /// May use part of the reserve below the min watermark (`__GFP_HIGH`).
    pub const HIGH: Gfp = Gfp(1 << 4);
    /// Cannot sleep or reclaim; may use more reserves (`__GFP_ATOMIC`).
    pub const ATOMIC_FLAG: Gfp = Gfp(1 << 5);
    pub const DIRECT_RECLAIM: Gfp = Gfp(1 << 6);
    pub const KSWAPD_RECLAIM: Gfp = Gfp(1 << 7);
    /// Only the preferred node, never spill (`__GFP_THISNODE`).
    pub const THISNODE: Gfp = Gfp(1 << 8);
    /// The caller is a reclaimer (PF_MEMALLOC): may ignore watermarks.
    pub const MEMALLOC: Gfp = Gfp(1 << 9);
    pub const NOWARN: Gfp = Gfp(1 << 10);
    pub const NORETRY: Gfp = Gfp(1 << 11);

    pub const KERNEL: Gfp = Gfp(Self::DIRECT_RECLAIM.0 | Self::KSWAPD_RECLAIM.0);
    pub const USER_MOVABLE: Gfp = Gfp(Self::KERNEL.0 | Self::MOVABLE.0);
    pub const KERNEL_RECLAIMABLE: Gfp = Gfp(Self::KERNEL.0 | Self::RECLAIMABLE.0);
    pub const NOWAIT: Gfp = Gfp(Self::KSWAPD_RECLAIM.0);
    pub const ATOMIC: Gfp = Gfp(Self::HIGH.0 | Self::ATOMIC_FLAG.0 | Self::KSWAPD_RECLAIM.0);

    pub const fn union(self, o: Gfp) -> Gfp {
        Gfp(self.0 | o.0)
    }
    pub const fn contains(self, o: Gfp) -> bool {
        self.0 & o.0 == o.0
    }
    pub const fn without(self, o: Gfp) -> Gfp {
        Gfp(self.0 & !o.0)
    }

    /// Where the mobility bits (MOVABLE, RECLAIMABLE) sit.
    pub const MOBILITY_SHIFT: u32 = 2;

    /// The mobility bits alone, 0..=3: an index for per-class tables.
    #[inline(always)]
    pub const fn mobility_bits(self) -> usize {
        ((self.0 >> Self::MOBILITY_SHIFT) & 3) as usize
    }

    /// The mobility class the request belongs to (gfp_migratetype); a table
    /// lookup because it sits on every allocation's fast path.
    #[inline(always)]
    pub const fn migratetype(self) -> MigrateType {
        const T: [MigrateType; 4] = [
            MigrateType::Unmovable,
            MigrateType::Movable,
            MigrateType::Reclaimable,
            MigrateType::Movable,
        ];
        T[self.mobility_bits()]
    }

    /// Highest zone the request may use (gfp_zone), by table as above.
    #[inline(always)]
    pub const fn highest_zone(self) -> ZoneType {
        const T: [ZoneType; 4] = [
            ZoneType::Normal,
            ZoneType::Dma,
            ZoneType::Dma32,
            ZoneType::Dma,
        ];
        T[(self.0 & 3) as usize]
    }

    pub const fn can_direct_reclaim(self) -> bool {
        self.contains(Self::DIRECT_RECLAIM)
    }
}

/// Internal allocation flags (mm/internal.h ALLOC_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllocFlags(pub u32);

impl AllocFlags {
    pub const WMARK_MIN: u32 = 0;
    pub const WMARK_LOW: u32 = 1;
    pub const WMARK_HIGH: u32 = 2;
    pub const WMARK_MASK: u32 = 3;
    pub const NO_WATERMARKS: AllocFlags = AllocFlags(1 << 2);
    /// Try harder: may dip further below min (atomic requests).
    pub const HARDER: AllocFlags = AllocFlags(1 << 4);
    /// `__GFP_HIGH`: may use half of the reserve below min.
    pub const HIGH: AllocFlags = AllocFlags(1 << 5);
    /// Do not split a foreign pageblock for a small request (seed 2.2.6).
    pub const NOFRAGMENT: AllocFlags = AllocFlags(1 << 8);
    /// Wake kswapd on a boost or shortfall.
    pub const KSWAPD: AllocFlags = AllocFlags(1 << 11);
    /// Allowed to use the HighAtomic reserve.
    pub const HIGHATOMIC: AllocFlags = AllocFlags(1 << 12);

    pub const fn wmark(self) -> usize {
        (self.0 & Self::WMARK_MASK) as usize
    }
    pub const fn has(self, f: AllocFlags) -> bool {
        self.0 & f.0 != 0
    }
    pub const fn with(self, f: AllocFlags) -> AllocFlags {
        AllocFlags(self.0 | f.0)
    }
    pub const fn without(self, f: AllocFlags) -> AllocFlags {
        AllocFlags(self.0 & !f.0)
    }
    pub const fn with_wmark(self, w: u32) -> AllocFlags {
        AllocFlags((self.0 & !Self::WMARK_MASK) | w)
    }

    /// Slow-path flags from a request (gfp_to_alloc_flags): the min
    /// watermark, `__GFP_HIGH` and atomic reserves, kswapd wake-ups.
    pub const fn from_gfp_slowpath(gfp: Gfp) -> AllocFlags {
        let mut f = Self::WMARK_MIN;
        if gfp.contains(Gfp::HIGH) {
            f |= Self::HIGH.0;
        }
        if gfp.contains(Gfp::ATOMIC_FLAG) && !gfp.can_direct_reclaim() {
            f |= Self::HARDER.0 | Self::HIGHATOMIC.0;
        }
        if gfp.contains(Gfp::KSWAPD_RECLAIM) {
            f |= Self::KSWAPD.0;
        }
        AllocFlags(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migratetype_and_zone_follow_the_flags() {
        assert_eq!(Gfp::KERNEL.migratetype(), MigrateType::Unmovable);
        assert_eq!(Gfp::USER_MOVABLE.migratetype(), MigrateType::Movable);
        assert_eq!(
            Gfp::KERNEL_RECLAIMABLE.migratetype(),
            MigrateType::Reclaimable
        );
        assert_eq!(Gfp::KERNEL.highest_zone(), ZoneType::Normal);
        assert_eq!(
            Gfp::KERNEL.union(Gfp::DMA32).highest_zone(),
            ZoneType::Dma32
        );
        assert_eq!(Gfp::KERNEL.union(Gfp::DMA).highest_zone(), ZoneType::Dma);
    }

    #[test]
    fn slowpath_flags() {
        let a = AllocFlags::from_gfp_slowpath(Gfp::ATOMIC);
        assert!(a.has(AllocFlags::HIGH) && a.has(AllocFlags::HARDER) && a.has(AllocFlags::KSWAPD));
        assert_eq!(a.wmark(), 0);
        let k = AllocFlags::from_gfp_slowpath(Gfp::KERNEL);
        assert!(
            !k.has(AllocFlags::HIGH) && !k.has(AllocFlags::HARDER) && k.has(AllocFlags::KSWAPD)
        );
    }
}
