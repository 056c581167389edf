//! The walk model over page tables built in a real `GuestMemory`, with a
//! fake two-node view: guest-physical pages below [`NODE1`] are node 0, the
//! rest node 1.
use super::*;
use crate::memory::GuestRam;
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const RAM: u64 = 32 * MIB;
const NODE1: u64 = 16 * MIB;
const RW: u64 = PTE_PRESENT | 2 | 4;

fn two_nodes(p: u64) -> Option<u32> {
    Some((p >= NODE1) as u32)
}

/// Page-table pages handed out per node, zeroed by the fresh RAM.
struct Tables<'a> {
    mem: &'a GuestMemory,
    next: [u64; 2],
}

impl<'a> Tables<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        // Node 0's tables from 1 MiB, node 1's from NODE1 + 1 MiB; data
        // pages live above 8 MiB in each node.
        Tables {
            mem,
            next: [MIB, NODE1 + MIB],
        }
    }

    fn alloc(&mut self, node: usize) -> u64 {
        let p = self.next[node];
        self.next[node] += PAGE;
        p
    }

    fn entry(&self, table: u64, index: u64) -> u64 {
        self.mem.read_obj(GuestAddress(table + 8 * index)).unwrap()
    }

    fn set(&self, table: u64, index: u64, value: u64) {
        self.mem
            .write_obj(value, GuestAddress(table + 8 * index))
            .unwrap();
    }

    /// Maps `va` → `pa` with a leaf of `leaf` in the table at `root`,
    /// allocating missing tables on `node` (`nodes[i]` for the table of
    /// level `levels - 1 - i` below the root when given).
    fn map(&mut self, root: u64, levels: usize, va: u64, pa: u64, leaf: Leaf, nodes: &[usize]) {
        let leaf_level = match leaf {
            Leaf::K4 => 1,
            Leaf::M2 => 2,
            Leaf::G1 => 3,
        };
        let mut table = root;
        for (i, level) in (leaf_level..=levels).rev().enumerate() {
            let index = (va >> (12 + 9 * (level - 1))) & 511;
            if level == leaf_level {
                let ps = if leaf == Leaf::K4 { 0 } else { PTE_HUGE };
                self.set(table, index, pa | RW | ps);
                return;
            }
            let e = self.entry(table, index);
            table = if e & PTE_PRESENT != 0 {
                e & PTE_ADDR
            } else {
                let t = self.alloc(nodes.get(i).copied().unwrap_or(0));
                self.set(table, index, t | RW);
                t
            };
        }
    }
}

fn ram() -> GuestRam {
    GuestRam::new(RAM).unwrap()
}

/// One walk's counts for a vCPU on `vcpu_node`, vCPU 0 on node 0.
fn one(mem: &GuestMemory, root: u64, levels: usize, va: u64, vcpu_node: u32) -> ViewCounts {
    let mut t = WalkTally::default();
    t.add(walk(mem, root, levels, va));
    assert_eq!(t.ends.walks, 1, "{:?}", walk(mem, root, levels, va));
    t.count(&two_nodes, Some(vcpu_node), Some(0))
}

fn rc(local: u64, remote: u64) -> RefCounts {
    RefCounts {
        local,
        remote,
        unknown: 0,
    }
}

#[test]
fn a_4k_walk_is_4_guest_refs_and_24_2d_refs() {
    let ram = ram();
    let mem = ram.memory();
    let mut t = Tables::new(mem);
    let root = t.alloc(0);
    let va = 0x7f12_3456_7000;
    t.map(root, 4, va, 9 * MIB, Leaf::K4, &[]);
    let w = walk(mem, root, 4, va + 0x123);
    let Walk::Complete { n, data, leaf, .. } = w else {
        panic!("{w:?}")
    };
    assert_eq!((n, data, leaf), (4, 9 * MIB, Leaf::K4));
    // Everything on node 0, the vCPU too.
    let c = one(mem, root, 4, va, 0);
    assert_eq!(c.ept_first_touch.guest_pt, rc(4, 0));
    assert_eq!(c.ept_first_touch.two_d, rc(24, 0));
    assert_eq!(c.ept_replicated, c.ept_first_touch);
    // A vCPU on node 1: every guest-PT page is remote; first-touch stage-2
    // (on vCPU 0's node 0) is remote too, a stage-2 replica is local.
    let c = one(mem, root, 4, va, 1);
    assert_eq!(c.ept_first_touch.guest_pt, rc(0, 4));
    assert_eq!(c.ept_first_touch.two_d, rc(0, 24));
    assert_eq!(c.ept_replicated.guest_pt, rc(0, 4));
    assert_eq!(c.ept_replicated.two_d, rc(20, 4));
    assert_eq!(c.vcpu_node, Some(1));
}

#[test]
fn huge_leaves_end_the_walk_early() {
    let ram = ram();
    let mem = ram.memory();
    let mut t = Tables::new(mem);
    let root = t.alloc(0);
    t.map(root, 4, 0x4020_0000, 10 * MIB, Leaf::M2, &[]);
    t.map(root, 4, 0x80_0000_0000, 0, Leaf::G1, &[]);
    let w = walk(mem, root, 4, 0x4020_0000 + 0x1_2345);
    assert!(
        matches!(w, Walk::Complete { n: 3, data, leaf: Leaf::M2, .. } if data == 10 * MIB + 0x1_2000),
        "{w:?}"
    );
    let c = one(mem, root, 4, 0x4020_0000, 0);
    assert_eq!(c.ept_first_touch.guest_pt, rc(3, 0));
    assert_eq!(c.ept_first_touch.two_d, rc(3 * 5 + 4, 0));
    // 1 GiB leaf at guest-physical 0: the data page is the offset's page.
    let w = walk(mem, root, 4, 0x80_0000_0000 + 17 * MIB + 5);
    assert!(
        matches!(w, Walk::Complete { n: 2, data, leaf: Leaf::G1, .. } if data == 17 * MIB),
        "{w:?}"
    );
    let c = one(mem, root, 4, 0x80_0000_0000 + 17 * MIB, 0);
    // The data page is on node 1: only its stage-2 refs count, and stage-2
    // is on node 0 in both models here.
    assert_eq!(c.ept_first_touch.guest_pt, rc(2, 0));
    assert_eq!(c.ept_first_touch.two_d, rc(2 * 5 + 4, 0));
}

#[test]
fn five_levels_make_29_refs() {
    let ram = ram();
    let mem = ram.memory();
    let mut t = Tables::new(mem);
    let root = t.alloc(0);
    let va = 0x00ab_cdef_1234_5000u64;
    assert!(is_canonical(va, 5) && !is_canonical(va, 4));
    t.map(root, 5, va, 12 * MIB, Leaf::K4, &[]);
    let c = one(mem, root, 5, va, 0);
    assert_eq!(c.ept_first_touch.guest_pt, rc(5, 0));
    assert_eq!(c.ept_first_touch.two_d, rc(29, 0));
    // Read as 4 levels, the same root reaches other entries: not mapped.
    assert_eq!(walk(mem, root, 4, va & 0xffff_ffff_ffff), Walk::NonPresent);
}

#[test]
fn tables_on_different_nodes_count_per_page() {
    let ram = ram();
    let mem = ram.memory();
    let mut t = Tables::new(mem);
    // Root on node 0, PDPT and PD on node 1, PT on node 0.
    let root = t.alloc(0);
    let va = 0x1234_5000;
    t.map(root, 4, va, 9 * MIB, Leaf::K4, &[1, 1, 0]);
    let c = one(mem, root, 4, va, 0);
    assert_eq!(c.ept_first_touch.guest_pt, rc(2, 2));
    assert_eq!(c.ept_first_touch.two_d, rc(22, 2));
    let c = one(mem, root, 4, va, 1);
    assert_eq!(c.ept_first_touch.guest_pt, rc(2, 2));
    assert_eq!(c.ept_first_touch.two_d, rc(2, 22));
    assert_eq!(c.ept_replicated.two_d, rc(22, 2));
}

/// Mitosis: a replica per node whose every table is on its node, mapping
/// the same data. Each vCPU walking its own node's replica makes only
/// local guest-PT references; with stage-2 replicas too, only local ones.
#[test]
fn replicated_roots_make_every_guest_pt_ref_local() {
    let ram = ram();
    let mem = ram.memory();
    let mut t = Tables::new(mem);
    let roots = [t.alloc(0), t.alloc(1)];
    let vas: Vec<u64> = (0..64).map(|i| 0x6000_0000 + i * 0x1234_5000).collect();
    for (node, &root) in roots.iter().enumerate() {
        for (i, &va) in vas.iter().enumerate() {
            let pa = [9 * MIB, NODE1 + 9 * MIB][i % 2] + (i as u64) * PAGE;
            t.map(root, 4, va, pa, Leaf::K4, &[node; 3]);
        }
    }
    for (node, &root) in roots.iter().enumerate() {
        let mut tally = WalkTally::default();
        for &va in &vas {
            tally.add(walk(mem, root, 4, va));
        }
        let c = tally.count(&two_nodes, Some(node as u32), Some(0));
        assert_eq!(c.ept_replicated.guest_pt, rc(64 * 4, 0), "node {node}");
        assert_eq!(c.ept_replicated.two_d, rc(64 * 24, 0), "node {node}");
        let ept_remote = if node == 0 { 0 } else { 64 * 20 };
        assert_eq!(c.ept_first_touch.two_d.remote, ept_remote, "node {node}");
        // vCPU 1 on node 0's single table instead: all guest-PT remote.
        let c = tally.count(&two_nodes, Some(1 - node as u32), Some(0));
        assert_eq!(c.ept_first_touch.guest_pt, rc(0, 64 * 4), "node {node}");
    }
}

#[test]
fn hostile_tables_end_walks_in_their_counters() {
    let ram = ram();
    let mem = ram.memory();
    let mut t = Tables::new(mem);
    let root = t.alloc(0);
    // PML4[1] points back at the PML4 itself: every level reads the same
    // page, and the "data" is the PML4 page. Bounded, counted as a loop.
    t.set(root, 1, root | RW);
    let va_loop = (1u64 << 39) | (1 << 30) | (1 << 21) | (1 << 12);
    let w = walk(mem, root, 4, va_loop);
    assert_eq!(
        w,
        Walk::Complete {
            pt: [root, root, root, root, 0],
            n: 4,
            data: root,
            leaf: Leaf::K4,
            looped: true
        }
    );
    // An entry whose table is beyond RAM, one in the MMIO gap, one whose
    // 2 MiB leaf is in the gap, PS at the PML4, and nothing at all.
    t.set(root, 2, (64 << 30) | RW);
    t.set(root, 3, 0xfee0_0000 | RW);
    t.set(root, 4, root | RW | PTE_HUGE);
    t.map(root, 4, 5 << 39, 0xd000_0000, Leaf::M2, &[]);
    t.map(root, 4, 6 << 39, RAM + 2 * MIB, Leaf::M2, &[]);
    assert_eq!(walk(mem, root, 4, 2 << 39), Walk::OutsideRam);
    assert_eq!(walk(mem, root, 4, 3 << 39), Walk::Mmio);
    assert_eq!(walk(mem, root, 4, 4 << 39), Walk::Reserved);
    assert_eq!(walk(mem, root, 4, 5 << 39), Walk::Mmio);
    assert_eq!(walk(mem, root, 4, 6 << 39), Walk::OutsideRam);
    assert_eq!(walk(mem, root, 4, 7 << 39), Walk::NonPresent);
    // A root outside RAM or in the gap.
    assert_eq!(walk(mem, 1 << 40, 4, 0), Walk::OutsideRam);
    assert_eq!(walk(mem, 0xfec0_0000, 5, 0), Walk::Mmio);
    // Tallied: only complete walks carry references.
    let mut tally = WalkTally::default();
    for va in [
        va_loop,
        2 << 39,
        3 << 39,
        4 << 39,
        5 << 39,
        6 << 39,
        7 << 39,
    ] {
        tally.add(walk(mem, root, 4, va));
    }
    assert_eq!(
        (
            tally.ends.walks,
            tally.ends.loops,
            tally.ends.outside_ram,
            tally.ends.mmio,
            tally.ends.reserved,
            tally.ends.non_present
        ),
        (1, 1, 2, 2, 1, 1)
    );
    let c = tally.count(&two_nodes, Some(0), Some(0));
    // The loop's root page is read 4 times and translated 5 times.
    assert_eq!(c.ept_first_touch.guest_pt, rc(4, 0));
    assert_eq!(c.ept_first_touch.two_d, rc(24, 0));
}

#[test]
fn an_unknown_node_is_neither_local_nor_remote() {
    let ram = ram();
    let mem = ram.memory();
    let mut t = Tables::new(mem);
    let root = t.alloc(0);
    t.map(root, 4, 0x1000, 9 * MIB, Leaf::K4, &[]);
    let mut tally = WalkTally::default();
    tally.add(walk(mem, root, 4, 0x1000));
    // A view that knows only the root's page.
    let c = tally.count(&|p: u64| (p == root).then_some(0), Some(0), Some(0));
    assert_eq!(c.unknown_pages, 4);
    assert_eq!(
        c.ept_first_touch.guest_pt,
        RefCounts {
            local: 1,
            remote: 0,
            unknown: 3
        }
    );
    assert_eq!(c.ept_first_touch.two_d.total(), 24);
    // And a vCPU of unknown node makes everything unknown.
    let c = tally.count(&two_nodes, None, Some(0));
    assert_eq!(c.ept_replicated.two_d.unknown, 24);
}

#[test]
fn samples_are_spread_over_the_range_and_repeatable() {
    let (start, len) = (0x4000_0000u64, 64 * MIB);
    let a: Vec<u64> = sample_vas(start, len, 4096).collect();
    assert_eq!(a, sample_vas(start, len, 4096).collect::<Vec<_>>());
    assert!(a.iter().all(|&v| v >= start && v < start + len));
    // Every 1/16th of the range gets a fair share (4096/16 = 256 each).
    let mut bins = [0u32; 16];
    for v in &a {
        bins[((v - start) * 16 / len) as usize] += 1;
    }
    assert!(bins.iter().all(|&b| (192..=320).contains(&b)), "{bins:?}");
    let pages: std::collections::BTreeSet<u64> = a.iter().map(|v| v >> 12).collect();
    // 4096 random draws over 16384 pages: ~16384 * (1 - e^-0.25) = 3624
    // distinct, as GUPS's updates would be; a stride would give 4096.
    assert!(
        (3450..3800).contains(&pages.len()),
        "{} distinct pages",
        pages.len()
    );
    assert!(sample_vas(u64::MAX - 3, 3, 100).all(|v| v >= u64::MAX - 3));
    assert_eq!(sample_vas(5, 1, 10).collect::<Vec<_>>(), vec![5; 10]);
}

#[test]
fn canonical_addresses_for_4_and_5_levels() {
    for (va, l4, l5) in [
        (0u64, true, true),
        (0x7fff_ffff_ffff, true, true),
        (0x8000_0000_0000, false, true),
        (0xffff_8000_0000_0000, true, true),
        (0xff00_0000_0000_0000, false, true),
        (0x0100_0000_0000_0000, false, false),
    ] {
        assert_eq!(is_canonical(va, 4), l4, "{va:#x}");
        assert_eq!(is_canonical(va, 5), l5, "{va:#x}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever the tables hold, every walk ends in exactly one counter and
    /// a complete one touches at most levels + 1 pages.
    #[test]
    fn random_tables_never_panic(
        entries in proptest::collection::vec((0u64..512, any::<u64>()), 1..64),
        root_page in 0u64..8,
        levels in 4usize..=5,
        start in any::<u64>(),
    ) {
        let ram = GuestRam::new(16 * MIB).unwrap();
        let mem = ram.memory();
        // Entries scattered over 8 pages, their addresses mostly inside
        // those pages (so walks go deep) and sometimes anywhere.
        for (i, (index, raw)) in entries.iter().enumerate() {
            let page = MIB + (i as u64 % 8) * PAGE;
            let v = if raw % 3 == 0 { *raw } else { (MIB + (raw % 8) * PAGE) | (raw & 0x81) | 1 };
            mem.write_obj(v, GuestAddress(page + 8 * index)).unwrap();
        }
        let t = walk_range(mem, MIB + root_page * PAGE, levels, start, u64::MAX - start, 256);
        prop_assert_eq!(t.ends.walks + t.ends.non_present + t.ends.outside_ram + t.ends.mmio + t.ends.reserved, 256);
        let c = t.count(&two_nodes, Some(0), Some(0));
        prop_assert!(c.ept_first_touch.guest_pt.total() <= t.ends.walks * levels as u64);
        prop_assert!(c.ept_first_touch.two_d.total() <= t.ends.walks * (5 * levels as u64 + 4));
    }
}

/// RAM split by the MMIO gap (3 GiB + 8 MiB: [0, 3G) and [4G, 4G + 8M)):
/// tables on the last page below the gap and the first and last pages
/// above it walk; a table, root or data page in the gap is `Mmio`, one
/// past RAM's end `OutsideRam`, and a 1 GiB leaf is judged by the 4 KiB
/// page the address lands on, not by its frame's start.
#[test]
fn tables_at_the_edges_of_the_mmio_gap_and_of_ram() {
    let low = MMIO_GAP_START;
    let high = MMIO_GAP_END;
    let ram = GuestRam::new(low + 8 * MIB).unwrap();
    let mem = ram.memory();
    let end = high + 8 * MIB;
    let last_low = low - PAGE;
    let last = end - PAGE;
    let t = Tables::new(mem);
    // PML4 on the last page below the gap → PDPT on the first page above
    // it → PD on RAM's last page → a 2 MiB leaf ending at RAM's end.
    t.set(last_low, 0, high | RW);
    t.set(high, 0, last | RW);
    t.set(last, 0, (end - 2 * MIB) | RW | PTE_HUGE);
    match walk(mem, last_low, 4, 2 * MIB - 1) {
        Walk::Complete { pt, n, data, .. } => {
            assert_eq!((&pt[..n], data), (&[last_low, high, last][..], last));
        }
        w => panic!("{w:?}"),
    }
    // A table on the gap's first page, on the page past RAM's end.
    t.set(high, 1, low | RW);
    t.set(high, 2, end | RW);
    assert_eq!(walk(mem, last_low, 4, 1 << 30), Walk::Mmio);
    assert_eq!(walk(mem, last_low, 4, 2 << 30), Walk::OutsideRam);
    // 1 GiB leaves: [2G, 3G) is RAM to its last byte; [4G, 5G) only for
    // its first 8 MiB; [3G, 4G) is all gap.
    t.set(high, 3, (2 << 30) | RW | PTE_HUGE);
    t.set(high, 4, high | RW | PTE_HUGE);
    t.set(high, 5, low | RW | PTE_HUGE);
    assert!(matches!(
        walk(mem, last_low, 4, (4 << 30) - 1),
        Walk::Complete { data, leaf: Leaf::G1, .. } if data == last_low
    ));
    assert!(matches!(
        walk(mem, last_low, 4, (4 << 30) + 8 * MIB - 1),
        Walk::Complete { data, leaf: Leaf::G1, .. } if data == last
    ));
    assert_eq!(
        walk(mem, last_low, 4, (4 << 30) + 8 * MIB),
        Walk::OutsideRam
    );
    assert_eq!(walk(mem, last_low, 4, 5 << 30), Walk::Mmio);
    // PS in a PML5 entry is reserved, as in a PML4 entry.
    t.set(last, 1, last_low | RW | PTE_HUGE);
    assert_eq!(walk(mem, last, 5, 1 << 48), Walk::Reserved);
}

/// A 2 MiB or 1 GiB leaf with address bits set below its size (but bit 12,
/// PAT) faults in hardware: the model must not count it as a walk.
#[test]
fn large_leaves_with_reserved_address_bits_are_reserved() {
    let ram = ram();
    let mem = ram.memory();
    let mut t = Tables::new(mem);
    let root = t.alloc(0);
    let cases = [
        (Leaf::M2, 8 * MIB, 1 << 13),
        (Leaf::M2, 8 * MIB, 1 << 20),
        (Leaf::G1, 0, 1 << 21),
    ];
    for (i, (leaf, pa, bad)) in cases.into_iter().enumerate() {
        let va = (i as u64 + 1) << 39;
        t.map(root, 4, va, pa | 1 << 12, leaf, &[]);
        assert!(
            matches!(walk(mem, root, 4, va), Walk::Complete { .. }),
            "{leaf:?}: PAT (bit 12) is no reserved bit"
        );
        t.map(root, 4, va, pa | 1 << 12 | bad, leaf, &[]);
        assert_eq!(walk(mem, root, 4, va), Walk::Reserved, "{leaf:?} {bad:#x}");
    }
}

/// guest-mm keeps a count of non-empty entries in bits 52..=61 of every
/// entry that points to a table, and a leaf may carry NX (bit 63): the
/// hardware ignores the first and the address is bits 12..=51, so the
/// walk must too.
#[test]
fn ignored_high_bits_of_entries_do_not_move_the_walk() {
    let ram = ram();
    let mem = ram.memory();
    let mut t = Tables::new(mem);
    let root = t.alloc(0);
    let va = 0x4000_1000;
    t.map(root, 4, va, 9 * MIB, Leaf::K4, &[]);
    let plain = walk(mem, root, 4, va);
    // Set the count field (all ones) in every upper entry on the path, and
    // NX in the leaf.
    let mut table = root;
    for level in (1..=4usize).rev() {
        let i = (va >> (12 + 9 * (level - 1))) & 511;
        let e = t.entry(table, i);
        let high = if level == 1 { 1 << 63 } else { 0x3ff << 52 };
        t.set(table, i, e | high);
        table = e & PTE_ADDR;
    }
    assert_eq!(walk(mem, root, 4, va), plain);
    assert!(matches!(plain, Walk::Complete { data, .. } if data == 9 * MIB));
}
