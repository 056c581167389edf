//! Mitosis: one replica of an address space's tables per NUMA node
//! (seed 1.7.4.1), and the checker that proves the replicas agree.
//!
//! A page walk that misses the TLB reads one entry per level; with tables
//! on another node every one of those reads is remote. Mitosis copies the
//! whole tree to each node that runs the process, so each CPU loads its own
//! node's root into CR3 and walks local memory. The price is paid on
//! updates, which go to every replica (`space.rs` loops over them), and in
//! memory: one tree per node, reported by [`AddressSpace::pt_pages`].
//!
//! Replicas are equal except for pointers and accessed/dirty bits: an upper
//! entry of replica n points to replica n's own table (with the same flags
//! and the same count of non-empty entries), leaf entries are identical
//! apart from A/D, which the hardware sets only in the replica it walked,
//! so readers take the OR (`translate`, `harvest`).

use super::{
    entry_count, is_leaf, AddressSpace, MmuGather, PtAlloc, PtError, ADDR_MASK, ENTRIES, PTE_A,
    PTE_D,
};
use crate::addr::PhysAddr;
use crate::mmzone::MAX_NUMNODES;
use crate::phys::PhysMemory;
use core::sync::atomic::Ordering::Relaxed;

/// Where the replicas disagree, found by [`AddressSpace::check_replicas`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaMismatch {
    /// The replica at fault (the home node for faults of the home table).
    pub node: usize,
    /// The lowest virtual address the faulty entry or table covers.
    pub va: u64,
    /// Table level of the entry (0 = PTE), or of the table.
    pub level: usize,
    pub what: Mismatch,
}

/// The kinds of disagreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// An entry differs from the home table's beyond pointer and A/D bits.
    Entry { home: u64, replica: u64 },
    /// A page-table page of the replica is not on the replica's node.
    OffNode { pa: PhysAddr, on: Option<usize> },
    /// A parent entry's count of non-empty entries is not what the table
    /// holds (so it would be freed too early or never).
    Count { recorded: u64, actual: u64 },
    /// A table with no entries is still linked (it should have been freed).
    EmptyTable { pa: PhysAddr },
    /// `pt_pages` disagrees with the pages found in the tree.
    PtPages { recorded: u64, found: u64 },
}

impl<M: PhysMemory> AddressSpace<M> {
    /// Adds a replica on `node`: a full copy of the home tables, every page
    /// of it allocated on `node`. A node that has one already keeps it.
    pub fn replicate(&mut self, alloc: &dyn PtAlloc, node: usize) -> Result<(), PtError> {
        if node >= MAX_NUMNODES {
            return Err(PtError::NoSuchNode(node));
        }
        if self.roots[node].is_some() {
            return Ok(());
        }
        let top = self.levels.count() - 1;
        let mut pages = 0;
        let root = self.copy_table(alloc, node, self.home_root().0, top, &mut pages)?;
        self.roots[node] = Some(PhysAddr(root));
        self.pt_pages[node] = pages;
        Ok(())
    }

    /// Removes the replica of `node`, its pages into `g` (freed after a
    /// full flush: CPUs of that node may cache its entries); its accessed
    /// and dirty bits are kept, ORed into the home table. The caller must
    /// have switched those CPUs to another root ([`AddressSpace::root`] now
    /// gives the home table). Dropping the home replica makes the lowest
    /// remaining node home.
    pub fn drop_replica(&mut self, g: &mut MmuGather, node: usize) -> Result<(), PtError> {
        let root = match self.roots.get(node) {
            Some(Some(r)) => *r,
            _ => return Err(PtError::NoSuchNode(node)),
        };
        if self.nr_replicas() == 1 {
            return Err(PtError::LastReplica(node));
        }
        if !g.has_room(self.pt_pages[node] as usize) {
            return Err(PtError::GatherFull);
        }
        self.roots[node] = None;
        self.pt_pages[node] = 0;
        if self.home == node {
            self.home = (0..MAX_NUMNODES)
                .find(|&n| self.roots[n].is_some())
                .unwrap();
        }
        // A/D set only in the dropped replica would be lost, and a page
        // written through it would read clean: fold them into the home
        // table first.
        self.merge_ad(root.0, self.home_root().0, self.levels.count() - 1);
        g.add_all();
        self.free_tree(root.0, self.levels.count() - 1, &mut |p| g.free_pt(p));
        Ok(())
    }

    /// What a vCPU on `node` loads into CR3: the node's replica if it has
    /// one, else the home table.
    pub fn root(&self, node: usize) -> PhysAddr {
        match self.roots.get(node) {
            Some(Some(r)) => *r,
            _ => self.home_root(),
        }
    }

    /// Nodes that have a replica (the home node included).
    pub fn replica_nodes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_NUMNODES).filter(|&n| self.roots[n].is_some())
    }

    /// Page-table pages of the replica on `node`, its root included (0 if
    /// it has none).
    pub fn pt_pages(&self, node: usize) -> u64 {
        self.pt_pages.get(node).copied().unwrap_or(0)
    }

    /// Walks every replica against the home table. `Ok(leaf mappings)` when
    /// all translate identically (A/D aside), every page-table page of each
    /// replica is on its node (per `alloc.node_of`), every parent's count
    /// of non-empty entries is right, no empty table is left linked, and
    /// `pt_pages` is exact.
    pub fn check_replicas(&self, alloc: &dyn PtAlloc) -> Result<u64, ReplicaMismatch> {
        let home = self.home_root().0;
        let top = self.levels.count() - 1;
        let mut leaves = 0;
        for node in self.replica_nodes() {
            let root = self.roots[node].unwrap().0;
            let mut c = Check {
                node,
                alloc,
                leaves: 0,
                pages: 0,
            };
            self.check_table(&mut c, home, root, top, 0)?;
            if c.pages != self.pt_pages[node] {
                return Err(ReplicaMismatch {
                    node,
                    va: 0,
                    level: top,
                    what: Mismatch::PtPages {
                        recorded: self.pt_pages[node],
                        found: c.pages,
                    },
                });
            }
            leaves = c.leaves;
        }
        Ok(leaves)
    }

    /// Puts every page-table page of every replica into `g`, with a full
    /// flush.
    ///
    /// # Panics
    ///
    /// If `g` was made with [`MmuGather::new`] and has no room for all the
    /// pages: it could neither flush early nor refuse (nothing is left to
    /// retry with). Use [`MmuGather::attached`] for large address spaces.
    pub fn destroy(mut self, g: &mut MmuGather) {
        let total: u64 = self.pt_pages.iter().sum();
        assert!(
            g.has_room(total as usize),
            "destroy: {total} page-table pages do not fit a plain MmuGather; use MmuGather::attached"
        );
        g.add_all();
        let top = self.levels.count() - 1;
        for node in 0..MAX_NUMNODES {
            if let Some(root) = self.roots[node].take() {
                self.free_tree(root.0, top, &mut |p| g.free_pt(p));
            }
        }
    }

    // ---- helpers ----

    /// Copies the table `src` at `level` and everything below it onto
    /// `node`; on failure frees what it allocated and changes nothing.
    fn copy_table(
        &self,
        alloc: &dyn PtAlloc,
        node: usize,
        src: u64,
        level: usize,
        pages: &mut u64,
    ) -> Result<u64, PtError> {
        let dst = alloc.alloc_pt(node).ok_or(PtError::NoMemory)?.0;
        *pages += 1;
        for i in 0..ENTRIES {
            let e = self.read(src, i);
            if e == 0 {
                continue;
            }
            if is_leaf(e, level) {
                self.write(dst, i, e);
                continue;
            }
            match self.copy_table(alloc, node, e & ADDR_MASK, level - 1, pages) {
                Ok(child) => self.write(dst, i, (e & !ADDR_MASK) | child),
                Err(err) => {
                    // Never loaded into any CR3: no flush needed.
                    self.free_tree(dst, level, &mut |p| alloc.free_pt(p));
                    return Err(err);
                }
            }
        }
        Ok(dst)
    }

    /// ORs the A/D bits of every leaf under `from` into the same leaf under
    /// `into` (two replicas of the same shape).
    fn merge_ad(&self, from: u64, into: u64, level: usize) {
        for i in 0..ENTRIES {
            let e = self.read(from, i);
            if e == 0 {
                continue;
            }
            if is_leaf(e, level) {
                if e & (PTE_A | PTE_D) != 0 {
                    self.entry(into, i).fetch_or(e & (PTE_A | PTE_D), Relaxed);
                }
            } else {
                let other = self.read(into, i) & ADDR_MASK;
                self.merge_ad(e & ADDR_MASK, other, level - 1);
            }
        }
    }

    /// Hands the table at `level` and every table below it to `free`,
    /// children first: a gather when CPUs may have seen the tree, the
    /// allocator straight away when none has.
    fn free_tree(&self, table: u64, level: usize, free: &mut dyn FnMut(PhysAddr)) {
        if level > 0 {
            for i in 0..ENTRIES {
                let e = self.read(table, i);
                if e != 0 && !is_leaf(e, level) {
                    self.free_tree(e & ADDR_MASK, level - 1, free);
                }
            }
        }
        free(PhysAddr(table));
    }

    /// Compares the replica table `rep` with the home table `home` at
    /// `level` covering from `base`.
    fn check_table(
        &self,
        c: &mut Check,
        home: u64,
        rep: u64,
        level: usize,
        base: u64,
    ) -> Result<u64, ReplicaMismatch> {
        let va = self.canonical(base);
        let node = c.node;
        let fail = |level, va, what| {
            Err(ReplicaMismatch {
                node,
                va,
                level,
                what,
            })
        };
        let on = c.alloc.node_of(PhysAddr(rep));
        if on != Some(c.node) {
            return fail(
                level,
                va,
                Mismatch::OffNode {
                    pa: PhysAddr(rep),
                    on,
                },
            );
        }
        c.pages += 1;
        let mut used = 0;
        for i in 0..ENTRIES {
            let (h, r) = (self.read(home, i), self.read(rep, i));
            let eva = self.canonical(base + ((i as u64) << (12 + 9 * level)));
            let differs = || {
                fail(
                    level,
                    eva,
                    Mismatch::Entry {
                        home: h,
                        replica: r,
                    },
                )
            };
            if r != 0 {
                used += 1;
            }
            if (h == 0) != (r == 0) {
                return differs();
            }
            if h == 0 {
                continue;
            }
            if is_leaf(h, level) {
                if (h ^ r) & !(PTE_A | PTE_D) != 0 {
                    return differs();
                }
                c.leaves += 1;
                continue;
            }
            // A table entry: equal apart from the pointer and the A bit the
            // walker sets in upper levels.
            if is_leaf(r, level) || (h ^ r) & !(ADDR_MASK | PTE_A) != 0 {
                return differs();
            }
            let actual = self.check_table(c, h & ADDR_MASK, r & ADDR_MASK, level - 1, eva)?;
            let recorded = entry_count(r);
            if recorded != actual {
                return fail(level - 1, eva, Mismatch::Count { recorded, actual });
            }
            if actual == 0 {
                return fail(
                    level - 1,
                    eva,
                    Mismatch::EmptyTable {
                        pa: PhysAddr(r & ADDR_MASK),
                    },
                );
            }
        }
        Ok(used)
    }

    /// `va` with its unused high bits copied from the top implemented bit.
    fn canonical(&self, va: u64) -> u64 {
        let shift = 64 - self.levels.va_bits();
        (((va << shift) as i64) >> shift) as u64
    }
}

/// State of one replica's check.
struct Check<'a> {
    node: usize,
    alloc: &'a dyn PtAlloc,
    leaves: u64,
    pages: u64,
}
