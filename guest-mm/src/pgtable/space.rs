//! An address space: its tables (one tree per replica) and the walks that
//! map, unmap, protect, translate and harvest.
//!
//! Every operation validates against the home replica first and changes
//! nothing until it knows it will succeed (page-table allocations are made
//! up front and given back on failure), then applies the same change to
//! every replica. Replicas have the same shape (the same tables exist at the
//! same indices), so what the home walk finds holds for all of them.

use super::{
    entry_count, index, is_canonical, is_leaf, leaf_pa, Levels, MmuGather, PageSize, Prot, PtAlloc,
    PtError, Translation, ADDR_MASK, COUNT_MASK, COUNT_SHIFT, ENTRIES, PTE_A, PTE_D, PTE_NX, PTE_P,
    PTE_PCD, PTE_PS, PTE_PWT, PTE_RW, PTE_US, TABLE_FLAGS,
};
use crate::addr::PhysAddr;
use crate::mmzone::MAX_NUMNODES;
use crate::phys::PhysMemory;
use core::sync::atomic::{
    AtomicU64,
    Ordering::{Relaxed, Release},
};

/// Most tables one mapping can need: one per level below the root, per
/// replica.
const MAX_NEW_TABLES: usize = 4 * MAX_NUMNODES;

/// One count of a table's non-empty entries, in its parent entry.
const COUNT_ONE: u64 = 1 << COUNT_SHIFT;

/// A set of page tables translating one virtual address space, optionally
/// replicated per NUMA node.
pub struct AddressSpace<M: PhysMemory> {
    pub(super) mem: M,
    pub(super) levels: Levels,
    /// The node whose table is used where a node has no replica.
    pub(super) home: usize,
    /// Root table of each node's replica.
    pub(super) roots: [Option<PhysAddr>; MAX_NUMNODES],
    /// Page-table pages of each replica, the root included.
    pub(super) pt_pages: [u64; MAX_NUMNODES],
}

impl<M: PhysMemory> AddressSpace<M> {
    /// An empty address space: one root table on `home_node`.
    pub fn new(
        mem: M,
        alloc: &dyn PtAlloc,
        levels: Levels,
        home_node: usize,
    ) -> Result<Self, PtError> {
        if home_node >= MAX_NUMNODES {
            return Err(PtError::NoSuchNode(home_node));
        }
        let root = alloc.alloc_pt(home_node).ok_or(PtError::NoMemory)?;
        let mut s = AddressSpace {
            mem,
            levels,
            home: home_node,
            roots: [None; MAX_NUMNODES],
            pt_pages: [0; MAX_NUMNODES],
        };
        s.roots[home_node] = Some(root);
        s.pt_pages[home_node] = 1;
        Ok(s)
    }

    /// The paging mode.
    pub fn levels(&self) -> Levels {
        self.levels
    }

    /// The node whose table serves nodes without a replica.
    pub fn home_node(&self) -> usize {
        self.home
    }

    /// The memory the tables are reached through.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Maps `[va, va + size)` to `[pa, pa + size)`, in every replica.
    /// Refused with `AlreadyMapped` if anything (a leaf of any size, or a
    /// table of smaller leaves) is already there.
    pub fn map(
        &mut self,
        alloc: &dyn PtAlloc,
        va: u64,
        pa: PhysAddr,
        size: PageSize,
        prot: Prot,
    ) -> Result<(), PtError> {
        self.check_va(va, pa, size)?;
        self.install(alloc, va, pa, size, 1, prot)
    }

    /// Maps `pages` consecutive 4 KiB pages from `va` to consecutive frames
    /// from `pa` with one walk per replica: Linux's `set_ptes` (seed 1.7.8),
    /// so the run must stay inside one PTE table (one 2 MiB-aligned block).
    /// Equivalent to `pages` calls of [`AddressSpace::map`]; all or nothing.
    pub fn map_ptes(
        &mut self,
        alloc: &dyn PtAlloc,
        va: u64,
        pa: PhysAddr,
        pages: u64,
        prot: Prot,
    ) -> Result<(), PtError> {
        self.check_va(va, pa, PageSize::Size4K)?;
        if pages == 0 || index(va, 0) as u64 + pages > ENTRIES as u64 {
            return Err(PtError::CrossesTable { va, pages });
        }
        // The last frame must be nameable too (pa < 2^52 and pages <= 512,
        // so this cannot overflow).
        if (pa.0 + (pages - 1) * PageSize::Size4K.bytes()) & !ADDR_MASK != 0 {
            return Err(PtError::Misaligned {
                va,
                pa,
                size: PageSize::Size4K,
            });
        }
        self.install(alloc, va, pa, PageSize::Size4K, pages as usize, prot)
    }

    /// Removes the leaf of `size` at `va` from every replica and returns the
    /// physical page it mapped. Tables left empty are unlinked and handed
    /// to `g`, which frees them after its flush (seed 1.7.6).
    pub fn unmap(
        &mut self,
        g: &mut MmuGather,
        va: u64,
        size: PageSize,
    ) -> Result<PhysAddr, PtError> {
        self.check_leaf_va(va, size)?;
        // The home walk validates and is reused: one walk per replica.
        let (home_path, e) = self.leaf_path(self.home_root(), va, size)?;
        let target = size.level();
        let top = self.levels.count() - 1;
        let may_free = (top - target) * self.nr_replicas();
        if !g.has_room(may_free) {
            return Err(PtError::GatherFull);
        }
        for node in 0..MAX_NUMNODES {
            let path = match self.roots[node] {
                None => continue,
                Some(_) if node == self.home => home_path,
                // Same shape as the home table, so the walk succeeds.
                Some(root) => match self.leaf_path(root, va, size) {
                    Ok((p, _)) => p,
                    Err(_) => unreachable!("replica {node} differs in shape"),
                },
            };
            let (t, i) = path[target];
            self.entry(t, i).swap(0, Relaxed);
            // Per replica, after its change: a free below may flush early
            // and reset the gather's range, and this replica's change (and
            // the tables it frees) still needs a flush after it.
            g.add_range(va, size.bytes());
            // Walk up while tables become empty: the entry for the table at
            // `level` lives in the table at `level + 1`.
            for level in target..top {
                let (pt, pi) = path[level + 1];
                let parent = self.entry(pt, pi);
                let before = parent.fetch_sub(COUNT_ONE, Relaxed);
                if entry_count(before) > 1 {
                    break;
                }
                parent.store(0, Relaxed);
                g.free_pt(PhysAddr(path[level].0));
                self.pt_pages[node] -= 1;
            }
        }
        Ok(PhysAddr(leaf_pa(e, target)))
    }

    /// Changes the rights of the leaf of `size` at `va` in every replica,
    /// keeping its accessed/dirty bits; the range goes into `g`'s flush.
    pub fn protect(
        &mut self,
        g: &mut MmuGather,
        va: u64,
        size: PageSize,
        prot: Prot,
    ) -> Result<(), PtError> {
        self.check_leaf_va(va, size)?;
        const RIGHTS: u64 = PTE_RW | PTE_US | PTE_PWT | PTE_PCD | PTE_NX;
        self.each_leaf(va, size, |slot| {
            // fetch_and then fetch_or would briefly grant no rights; one
            // compare-exchange loop switches atomically and keeps any A/D
            // bit the walker sets meanwhile.
            let _ = slot.fetch_update(Relaxed, Relaxed, |e| Some((e & !RIGHTS) | prot.bits()));
        })?;
        g.add_range(va, size.bytes());
        Ok(())
    }

    /// What `va` translates to; accessed/dirty are the OR over replicas.
    /// `None` when unmapped or not canonical.
    pub fn translate(&self, va: u64) -> Option<Translation> {
        if !is_canonical(va, self.levels) {
            return None;
        }
        let mut table = self.home_root();
        let mut level = self.levels.count() - 1;
        let e = loop {
            let e = self.read(table.0, index(va, level));
            if e & PTE_P == 0 {
                return None;
            }
            if is_leaf(e, level) {
                break e;
            }
            table = PhysAddr(e & ADDR_MASK);
            level -= 1;
        };
        let size = PageSize::from_level(level);
        let mut ad = e & (PTE_A | PTE_D);
        for root in self.replica_roots_except_home() {
            if let Ok((slot, _)) = self.find_leaf(root, va, size) {
                ad |= slot.load(Relaxed) & (PTE_A | PTE_D);
            }
        }
        Some(Translation {
            pa: PhysAddr(leaf_pa(e, level) + (va & (size.bytes() - 1))),
            size,
            prot: Prot::from_entry(e),
            accessed: ad & PTE_A != 0,
            dirty: ad & PTE_D != 0,
        })
    }

    /// Test-and-clear of accessed and dirty of the leaf of `size` at `va` in
    /// every replica; returns their OR. A cleared bit must be flushed from
    /// the TLB (or the CPU would not set it again), so the range goes into
    /// `g` when anything was set.
    pub fn harvest(
        &mut self,
        g: &mut MmuGather,
        va: u64,
        size: PageSize,
    ) -> Result<(bool, bool), PtError> {
        self.check_leaf_va(va, size)?;
        let mut ad = 0;
        self.each_leaf(va, size, |slot| {
            ad |= slot.fetch_and(!(PTE_A | PTE_D), Relaxed) & (PTE_A | PTE_D);
        })?;
        if ad != 0 {
            g.add_range(va, size.bytes());
        }
        Ok((ad & PTE_A != 0, ad & PTE_D != 0))
    }

    // ---- helpers ----

    pub(super) fn home_root(&self) -> PhysAddr {
        self.roots[self.home].expect("the home node always has a table")
    }

    pub(super) fn nr_replicas(&self) -> usize {
        self.roots.iter().flatten().count()
    }

    fn replica_roots_except_home(&self) -> impl Iterator<Item = PhysAddr> + '_ {
        let home = self.home;
        (0..MAX_NUMNODES)
            .filter(move |&n| n != home)
            .filter_map(|n| self.roots[n])
    }

    /// The entry `i` of the table at `table`, as an atomic: the hardware
    /// walker sets A/D in entries with locked writes, so every access here
    /// is atomic too.
    #[inline]
    pub(super) fn entry(&self, table: u64, i: usize) -> &AtomicU64 {
        let p = self
            .mem
            .phys_to_ptr(PhysAddr(table + 8 * i as u64))
            .cast::<u64>();
        // SAFETY: page-table pages are 4 KiB frames from PtAlloc inside the
        // memory `mem` covers; PhysMemory promises a valid pointer with the
        // address's alignment (8 here) that stays valid while `self` lives,
        // and these frames are accessed only as atomics while they are
        // tables.
        unsafe { AtomicU64::from_ptr(p) }
    }

    #[inline]
    pub(super) fn read(&self, table: u64, i: usize) -> u64 {
        self.entry(table, i).load(Relaxed)
    }

    /// Release, so a walker that sees an entry pointing to a new table also
    /// sees that table zeroed (free on x86, where every store is a release).
    #[inline]
    pub(super) fn write(&self, table: u64, i: usize, v: u64) {
        self.entry(table, i).store(v, Release)
    }

    fn check_va(&self, va: u64, pa: PhysAddr, size: PageSize) -> Result<(), PtError> {
        if !is_canonical(va, self.levels) {
            return Err(PtError::NonCanonical(va));
        }
        let m = size.bytes() - 1;
        if va & m != 0 || pa.0 & m != 0 || pa.0 & !ADDR_MASK != 0 {
            return Err(PtError::Misaligned { va, pa, size });
        }
        Ok(())
    }

    fn check_leaf_va(&self, va: u64, size: PageSize) -> Result<(), PtError> {
        self.check_va(va, PhysAddr(0), size)
    }

    /// Applies `f` to the leaf of `size` at `va` in every replica, the home
    /// one first; if the home table has no such leaf, returns why and
    /// changes nothing.
    fn each_leaf(
        &self,
        va: u64,
        size: PageSize,
        mut f: impl FnMut(&AtomicU64),
    ) -> Result<(), PtError> {
        let (home, _) = self.find_leaf(self.home_root(), va, size)?;
        f(home);
        for root in self.replica_roots_except_home() {
            // Same shape as the home table, so the walk succeeds.
            match self.find_leaf(root, va, size) {
                Ok((slot, _)) => f(slot),
                Err(_) => unreachable!("replicas differ in shape"),
            }
        }
        Ok(())
    }

    /// The leaf entry of `size` for `va` under `root`, and its value.
    fn find_leaf(
        &self,
        root: PhysAddr,
        va: u64,
        size: PageSize,
    ) -> Result<(&AtomicU64, u64), PtError> {
        let (path, e) = self.leaf_path(root, va, size)?;
        let (t, i) = path[size.level()];
        Ok((self.entry(t, i), e))
    }

    /// The walk to the leaf of `size` for `va` under `root`: for each level
    /// from the leaf's up, the table and the index of `va` in it; and the
    /// leaf's value. Errors if there is no leaf of that size.
    fn leaf_path(
        &self,
        root: PhysAddr,
        va: u64,
        size: PageSize,
    ) -> Result<([(u64, usize); 5], u64), PtError> {
        let target = size.level();
        let mut path = [(0u64, 0usize); 5];
        let mut table = root.0;
        let mut level = self.levels.count() - 1;
        loop {
            let i = index(va, level);
            path[level] = (table, i);
            let e = self.read(table, i);
            if e & PTE_P == 0 {
                return Err(PtError::NotMapped(va));
            }
            let leaf = is_leaf(e, level);
            if level == target {
                if !leaf {
                    let found = PageSize::from_level(level - 1);
                    return Err(PtError::SizeMismatch {
                        va,
                        expected: size,
                        found,
                    });
                }
                return Ok((path, e));
            }
            if leaf {
                let found = PageSize::from_level(level);
                return Err(PtError::SizeMismatch {
                    va,
                    expected: size,
                    found,
                });
            }
            table = e & ADDR_MASK;
            level -= 1;
        }
    }

    /// Writes `n` leaves of `size` from `va`/`pa` (all in one table) into
    /// every replica, creating missing tables; all or nothing.
    fn install(
        &mut self,
        alloc: &dyn PtAlloc,
        va: u64,
        pa: PhysAddr,
        size: PageSize,
        n: usize,
        prot: Prot,
    ) -> Result<(), PtError> {
        let target = size.level();
        let top = self.levels.count() - 1;
        // Validate on the home table: how many levels are missing, and is
        // anything in the way? The walk is kept, so the home replica is
        // walked once.
        let mut table = self.home_root().0;
        let mut parent = None;
        let mut level = top;
        let mut missing = 0;
        while level > target {
            let i = index(va, level);
            let e = self.read(table, i);
            if e == 0 {
                missing = level - target;
                break;
            }
            if is_leaf(e, level) {
                return Err(PtError::AlreadyMapped(va));
            }
            parent = Some((table, i));
            table = e & ADDR_MASK;
            level -= 1;
        }
        if missing == 0 {
            let i0 = index(va, target);
            for k in 0..n {
                if self.read(table, i0 + k) != 0 {
                    return Err(PtError::AlreadyMapped(va + k as u64 * size.bytes()));
                }
            }
        }
        let home_start = (table, level, parent);
        // Allocate every new table before touching anything.
        let mut new = [PhysAddr(0); MAX_NEW_TABLES];
        let mut nr_new = 0;
        for node in 0..MAX_NUMNODES {
            if self.roots[node].is_none() {
                continue;
            }
            for _ in 0..missing {
                match alloc.alloc_pt(node) {
                    Some(p) => {
                        new[nr_new] = p;
                        nr_new += 1;
                    }
                    None => {
                        for &p in &new[..nr_new] {
                            alloc.free_pt(p);
                        }
                        return Err(PtError::NoMemory);
                    }
                }
            }
        }
        let mut leaf = pa.0 | PTE_P | prot.bits();
        if target > 0 {
            leaf |= PTE_PS;
        }
        let mut next_new = 0;
        for node in 0..MAX_NUMNODES {
            let (mut table, mut level, mut parent) = match self.roots[node] {
                None => continue,
                Some(_) if node == self.home => home_start,
                Some(root) => (root.0, top, None),
            };
            let mut added = n as u64;
            let first_new = next_new;
            while level > target {
                let i = index(va, level);
                let e = self.read(table, i);
                if e == 0 {
                    // The table at `level` gains one entry (for the chain
                    // of new tables below), each new table holds one, and
                    // the leaf table holds the n leaves.
                    if let Some((pt, pi)) = parent {
                        self.entry(pt, pi).fetch_add(COUNT_ONE, Relaxed);
                    }
                    while level > target {
                        let t = new[next_new].0;
                        next_new += 1;
                        let count = if level - 1 == target { n as u64 } else { 1 };
                        self.write(
                            table,
                            index(va, level),
                            t | TABLE_FLAGS | count << COUNT_SHIFT,
                        );
                        table = t;
                        level -= 1;
                    }
                    added = 0;
                    break;
                }
                parent = Some((table, i));
                table = e & ADDR_MASK;
                level -= 1;
            }
            if added > 0 {
                if let Some((pt, pi)) = parent {
                    self.entry(pt, pi).fetch_add(added * COUNT_ONE, Relaxed);
                }
            }
            let i0 = index(va, target);
            for k in 0..n {
                self.write(table, i0 + k, leaf + k as u64 * size.bytes());
            }
            self.pt_pages[node] += (next_new - first_new) as u64;
        }
        debug_assert_eq!(next_new, nr_new, "replicas differ in shape");
        Ok(())
    }
}

// The count field holds at most 1023, enough for 512 entries.
const _: () = assert!(COUNT_MASK >= ENTRIES as u64);
