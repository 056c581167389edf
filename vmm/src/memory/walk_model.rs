//! The 2D page-walk model (vMitosis, seed 1.7.4): how many memory
//! references a TLB miss costs a vCPU under nested paging, and how many of
//! them cross a NUMA node.
//!
//! On a VMX/SVM host with EPT/NPT, a TLB miss walks the guest's page table
//! (guest-physical addresses) and translates every guest-physical address it
//! touches through the stage-2 table: for 4 guest levels that is 4 × (4
//! stage-2 references + 1 guest-PT reference) + 4 stage-2 references for the
//! data page = 24 references. Which node each of those pages is on decides
//! what the walk costs; that is what Mitosis (guest PT replicas per node) and
//! vMitosis (stage-2 replicas per node) change.
//!
//! Our hosts cannot measure that (PVM shadows guest paging, one NUMA node),
//! so the VMM reads the guest's real page tables out of guest memory and
//! counts. What is read and what is modelled:
//! - The guest levels are read: hardware x86-64 entries (P, PS at the PD and
//!   PDPT for 2 MiB and 1 GiB leaves, address bits 12–51), 4 or 5 levels.
//! - The stage-2 table is modelled, not read (KVM's is not ours to read, and
//!   on PVM it does not exist): [`EPT_LEVELS`] references per translated
//!   guest-physical address, always 4 KiB stage-2 leaves (the worst case;
//!   KVM maps 2 MiB where the host has THP, which takes one level off every
//!   row and changes no local/remote ratio). Where its pages are is a
//!   model choice ([`EptModel`]): all on the node of vCPU 0 (KVM allocates
//!   stage-2 pages on the node of the vCPU that faulted, and in our kernel
//!   vCPU 0 faults in boot memory first), or a replica per node (vMitosis),
//!   always the walking vCPU's own.
//! - Which node a guest-physical page is on comes from a [`NodeView`], so
//!   one walk is counted twice: by the guest topology (`--numa` layout) and
//!   by real host placement (move_pages), and unit tests use a fake.
//!
//! The data access itself is not counted (it is not part of the walk).
//! Walks that end non-present, outside RAM, in the MMIO gap or on a
//! reserved entry (PS set at level 4 or 5, a large leaf's address bits
//! below its size set) count only in their own
//! counters, not in the references: the figures are what a present walk
//! costs. Everything read is guest-controlled: a walk reads at most one
//! entry per level, so a table pointing back at itself (a loop) cannot make
//! it longer; such walks are counted in `loops` and still counted (the
//! hardware would make exactly those references).
use super::layout::{MMIO_GAP_END, MMIO_GAP_START};
use super::GuestMemory;
use serde::Serialize;
use std::collections::BTreeMap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

pub use crate::boot::pagetables::pte::{
    ADDR as PTE_ADDR, HUGE as PTE_HUGE, PRESENT as PTE_PRESENT,
};
pub const PAGE: u64 = 4096;
/// Stage-2 references per translated guest-physical address (4-level
/// EPT/NPT).
pub const EPT_LEVELS: u64 = 4;
/// Most guest levels (LA57).
pub const MAX_LEVELS: usize = 5;

/// Size of the leaf a walk ended on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    K4,
    M2,
    G1,
}

impl Leaf {
    fn bytes(self) -> u64 {
        match self {
            Leaf::K4 => PAGE,
            Leaf::M2 => 2 << 20,
            Leaf::G1 => 1 << 30,
        }
    }
}

/// How one walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// The guest-PT pages read, top level first (`pt[..n]`), and the 4 KiB
    /// guest-physical page holding the data.
    Complete {
        pt: [u64; MAX_LEVELS],
        n: usize,
        data: u64,
        leaf: Leaf,
        looped: bool,
    },
    NonPresent,
    OutsideRam,
    Mmio,
    /// PS set where x86-64 has no leaf (PML4, PML5).
    Reserved,
}

/// Why a guest-physical page cannot be read.
fn not_ram(mem: &GuestMemory, gpa: u64) -> Option<Walk> {
    if mem.address_in_range(GuestAddress(gpa)) {
        None
    } else if (MMIO_GAP_START..MMIO_GAP_END).contains(&gpa) {
        Some(Walk::Mmio)
    } else {
        Some(Walk::OutsideRam)
    }
}

/// Walks `va` through the guest table at `root` (an address inside the
/// root page; the low 12 bits are ignored) with `levels` levels (4 or 5),
/// as the MMU would.
pub fn walk(mem: &GuestMemory, root: u64, levels: usize, va: u64) -> Walk {
    let levels = levels.clamp(1, MAX_LEVELS);
    let mut pt = [0u64; MAX_LEVELS];
    let mut table = root & PTE_ADDR;
    let mut looped = false;
    for (i, level) in (1..=levels).rev().enumerate() {
        if let Some(w) = not_ram(mem, table) {
            return w;
        }
        looped |= pt[..i].contains(&table);
        pt[i] = table;
        let index = (va >> (12 + 9 * (level - 1))) & 511;
        let Ok(entry) = mem.read_obj::<u64>(GuestAddress(table + 8 * index)) else {
            return Walk::OutsideRam;
        };
        if entry & PTE_PRESENT == 0 {
            return Walk::NonPresent;
        }
        let leaf = match level {
            1 => Some(Leaf::K4),
            2 if entry & PTE_HUGE != 0 => Some(Leaf::M2),
            3 if entry & PTE_HUGE != 0 => Some(Leaf::G1),
            4 | 5 if entry & PTE_HUGE != 0 => return Walk::Reserved,
            _ => None,
        };
        if let Some(leaf) = leaf {
            let size = leaf.bytes();
            // A large leaf's address bits below its size, but bit 12
            // (PAT), are reserved: the MMU faults on them (SDM 4.5).
            if entry & PTE_ADDR & (size - 1) & !(1 << 12) != 0 {
                return Walk::Reserved;
            }
            let frame = entry & PTE_ADDR & !(size - 1);
            let data = (frame + (va & (size - 1))) & !(PAGE - 1);
            if let Some(w) = not_ram(mem, data) {
                return w;
            }
            return Walk::Complete {
                pt,
                n: i + 1,
                data,
                leaf,
                looped,
            };
        }
        table = entry & PTE_ADDR;
    }
    unreachable!("level 1 always ends the walk")
}

/// `n` addresses spread over `[start, start + len)` by a fixed-seed
/// splitmix64, so a run is repeatable and the sample looks like GUPS's
/// random updates, not a stride that walks the tables in order.
pub fn sample_vas(start: u64, len: u64, n: u32) -> impl Iterator<Item = u64> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n).map(move |_| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        start + ((z as u128 * len as u128) >> 64) as u64
    })
}

/// How many times a guest-physical page was read as a guest-PT page and
/// translated as a data page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PageRefs {
    pt: u64,
    data: u64,
}

/// Walk outcomes by leaf size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Leaves {
    #[serde(rename = "4k")]
    pub k4: u64,
    #[serde(rename = "2m")]
    pub m2: u64,
    #[serde(rename = "1g")]
    pub g1: u64,
}

/// What the walks of one request found, before any node is looked up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalkTally {
    pub ends: WalkEnds,
    /// Per 4 KiB guest-physical page touched. Bounded by the walks: at most
    /// MAX_LEVELS + 1 pages per walk.
    pages: BTreeMap<u64, PageRefs>,
}

/// How walks ended: complete (the ones the reference counts are about), or
/// why not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WalkEnds {
    pub walks: u64,
    pub non_present: u64,
    pub outside_ram: u64,
    pub mmio: u64,
    pub reserved: u64,
    /// Complete walks that read one table page twice.
    pub loops: u64,
    pub leaves: Leaves,
}

impl WalkTally {
    pub fn add(&mut self, w: Walk) {
        match w {
            Walk::Complete {
                pt,
                n,
                data,
                leaf,
                looped,
            } => {
                self.ends.walks += 1;
                self.ends.loops += looped as u64;
                match leaf {
                    Leaf::K4 => self.ends.leaves.k4 += 1,
                    Leaf::M2 => self.ends.leaves.m2 += 1,
                    Leaf::G1 => self.ends.leaves.g1 += 1,
                }
                for &p in &pt[..n] {
                    self.pages.entry(p).or_default().pt += 1;
                }
                self.pages.entry(data).or_default().data += 1;
            }
            Walk::NonPresent => self.ends.non_present += 1,
            Walk::OutsideRam => self.ends.outside_ram += 1,
            Walk::Mmio => self.ends.mmio += 1,
            Walk::Reserved => self.ends.reserved += 1,
        }
    }

    /// The distinct guest-physical pages the complete walks touched.
    pub fn pages(&self) -> Vec<u64> {
        self.pages.keys().copied().collect()
    }

    /// The references, counted by `view`: `vcpu_node` is the walking
    /// vCPU's node and `vcpu0_node` vCPU 0's (where first-touch stage-2
    /// tables are), both in the view's terms (None: unknown).
    pub fn count(
        &self,
        view: &dyn NodeView,
        vcpu_node: Option<u32>,
        vcpu0_node: Option<u32>,
    ) -> ViewCounts {
        let pages = self.pages();
        let nodes = view.nodes_of(&pages);
        let mut guest_pt = RefCounts::default();
        let mut unknown_pages = 0;
        let mut translations = 0u64;
        for (refs, node) in self.pages.values().zip(nodes) {
            translations += refs.pt + refs.data;
            unknown_pages += node.is_none() as u64;
            guest_pt.add(relation(node, vcpu_node), refs.pt);
        }
        let model = |ept_node: Option<u32>| {
            let mut two_d = guest_pt;
            two_d.add(relation(ept_node, vcpu_node), EPT_LEVELS * translations);
            ModelCounts { guest_pt, two_d }
        };
        ViewCounts {
            vcpu_node,
            unknown_pages,
            ept_first_touch: model(vcpu0_node),
            ept_replicated: model(vcpu_node),
        }
    }
}

/// Walks `samples` addresses of `[start, start + len)`.
pub fn walk_range(
    mem: &GuestMemory,
    root: u64,
    levels: usize,
    start: u64,
    len: u64,
    samples: u32,
) -> WalkTally {
    let mut t = WalkTally::default();
    for va in sample_vas(start, len, samples) {
        t.add(walk(mem, root, levels, va));
    }
    t
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Relation {
    Local,
    Remote,
    Unknown,
}

fn relation(page: Option<u32>, vcpu: Option<u32>) -> Relation {
    match (page, vcpu) {
        (Some(p), Some(v)) if p == v => Relation::Local,
        (Some(_), Some(_)) => Relation::Remote,
        _ => Relation::Unknown,
    }
}

/// Which node each guest-physical page is on, in one view. Batched, so a
/// view backed by a system call makes one.
pub trait NodeView {
    fn nodes_of(&self, pages: &[u64]) -> Vec<Option<u32>>;
}

impl<F: Fn(u64) -> Option<u32>> NodeView for F {
    fn nodes_of(&self, pages: &[u64]) -> Vec<Option<u32>> {
        pages.iter().map(|&p| self(p)).collect()
    }
}

/// References relative to the walking vCPU's node; `unknown` where the
/// page's node (or the vCPU's) could not be told (a page the host does not
/// hold).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RefCounts {
    pub local: u64,
    pub remote: u64,
    pub unknown: u64,
}

impl RefCounts {
    fn add(&mut self, r: Relation, n: u64) {
        match r {
            Relation::Local => self.local += n,
            Relation::Remote => self.remote += n,
            Relation::Unknown => self.unknown += n,
        }
    }

    pub fn total(&self) -> u64 {
        self.local + self.remote + self.unknown
    }
}

/// One stage-2 model's counts: guest-PT references alone, and all the 2D
/// walk's references (guest-PT plus stage-2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModelCounts {
    pub guest_pt: RefCounts,
    pub two_d: RefCounts,
}

/// One view's counts under both stage-2 models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ViewCounts {
    /// The walking vCPU's node in this view.
    pub vcpu_node: Option<u32>,
    /// Distinct pages whose node this view could not tell.
    pub unknown_pages: u64,
    /// Stage-2 tables all on vCPU 0's node (KVM's first touch).
    pub ept_first_touch: ModelCounts,
    /// A stage-2 replica per node (vMitosis): always the vCPU's own.
    pub ept_replicated: ModelCounts,
}

/// The x86-64 canonical check for `levels` (48- or 57-bit addresses).
pub fn is_canonical(va: u64, levels: usize) -> bool {
    let bits = 12 + 9 * levels as u32;
    let top = (va as i64) >> (bits - 1);
    top == 0 || top == -1
}

#[cfg(test)]
#[path = "walk_model_tests.rs"]
mod tests;
