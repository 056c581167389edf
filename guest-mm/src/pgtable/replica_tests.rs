//! Row 50 (Mitosis) property test: random map/unmap/protect/harvest/
//! replicate/drop sequences with a simulated hardware walker setting A/D in
//! random replicas, checked against a `BTreeMap` model.
use super::test_support::*;
use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const NODES: usize = 3;
const GIB: u64 = 1 << 30;

#[derive(Clone, Copy, Debug)]
enum Op {
    Map {
        slot: Slot,
        size: PageSize,
        prot: u8,
        pfn: u32,
    },
    MapPtes {
        slot: Slot,
        pages: u64,
        pfn: u32,
    },
    Unmap {
        slot: Slot,
        size: PageSize,
    },
    Protect {
        slot: Slot,
        size: PageSize,
        prot: u8,
    },
    Harvest {
        slot: Slot,
        size: PageSize,
    },
    Touch {
        slot: Slot,
        node: usize,
        write: bool,
    },
    Replicate {
        node: usize,
    },
    Drop {
        node: usize,
    },
    Finish,
}

/// A virtual address from a few 1 GiB regions (both halves, both ends),
/// a few 2 MiB blocks in each and a few pages in each block, so leaves of
/// different sizes overlap and tables fill and empty often.
#[derive(Clone, Copy, Debug)]
struct Slot {
    region: u8,
    block: u8,
    page: u16,
}

impl Slot {
    fn va(self, levels: Levels, size: PageSize) -> u64 {
        let base = match self.region {
            0 => 0,
            1 => levels.user_top() + 1 - GIB,
            2 => !levels.user_top(),
            3 => 0u64.wrapping_sub(GIB),
            _ => 512 * GIB, // another top-level entry
        };
        let va = base + ((self.block as u64) << 21) + ((self.page as u64) << 12);
        va & !(size.bytes() - 1)
    }
}

fn slot() -> impl Strategy<Value = Slot> {
    (0..5u8, 0..4u8, prop_oneof![0..8u16, 505..512u16]).prop_map(|(region, block, page)| Slot {
        region,
        block,
        page,
    })
}

fn size() -> impl Strategy<Value = PageSize> {
    prop_oneof![6 => Just(PageSize::Size4K), 2 => Just(PageSize::Size2M), 1 => Just(PageSize::Size1G)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (slot(), size(), 0..16u8, any::<u32>()).prop_map(|(slot, size, prot, pfn)| Op::Map { slot, size, prot, pfn }),
        2 => (slot(), 1..12u64, any::<u32>()).prop_map(|(slot, pages, pfn)| Op::MapPtes { slot, pages, pfn }),
        6 => (slot(), size()).prop_map(|(slot, size)| Op::Unmap { slot, size }),
        2 => (slot(), size(), 0..16u8).prop_map(|(slot, size, prot)| Op::Protect { slot, size, prot }),
        3 => (slot(), size()).prop_map(|(slot, size)| Op::Harvest { slot, size }),
        6 => (slot(), 0..NODES, any::<bool>()).prop_map(|(slot, node, write)| Op::Touch { slot, node, write }),
        1 => (0..NODES).prop_map(|node| Op::Replicate { node }),
        1 => (0..NODES).prop_map(|node| Op::Drop { node }),
        1 => Just(Op::Finish),
    ]
}

fn prot(bits: u8) -> Prot {
    Prot {
        write: bits & 1 != 0,
        user: bits & 2 != 0,
        exec: bits & 4 != 0,
        uncached: bits & 8 != 0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Leaf {
    pa: u64,
    size: PageSize,
    prot: Prot,
    a: bool,
    d: bool,
}

/// The model: leaves by virtual address.
#[derive(Default)]
struct Model(BTreeMap<u64, Leaf>);

impl Model {
    /// The leaf whose range contains `va`.
    fn containing(&self, va: u64) -> Option<(u64, Leaf)> {
        let (&v, &l) = self.0.range(..=va).next_back()?;
        (va - v < l.size.bytes()).then_some((v, l))
    }
    /// Whether anything overlaps `[va, va + len)`.
    fn overlaps(&self, va: u64, len: u64) -> bool {
        self.containing(va).is_some()
            || self
                .0
                .range(va..)
                .next()
                .is_some_and(|(&v, _)| v - va < len)
    }
    /// What a leaf operation on (`va`, `size`) must answer when the model
    /// has no exact leaf there.
    fn miss(&self, va: u64, size: PageSize) -> PtError {
        if self.overlaps(va, size.bytes()) {
            PtError::SizeMismatch {
                va,
                expected: size,
                found: PageSize::Size4K,
            }
        } else {
            PtError::NotMapped(va)
        }
    }
    fn exact(&self, va: u64, size: PageSize) -> Option<Leaf> {
        self.0.get(&va).copied().filter(|l| l.size == size)
    }
}

/// SizeMismatch's `found` depends on the shape found; the model checks the
/// kind of error only for it.
fn same_error(got: PtError, want: PtError) -> bool {
    match (got, want) {
        (
            PtError::SizeMismatch { va, expected, .. },
            PtError::SizeMismatch {
                va: v, expected: e, ..
            },
        ) => va == v && expected == e,
        _ => got == want,
    }
}

fn run(levels: Levels, ops: &[Op]) -> Result<(), TestCaseError> {
    let pool = SimPool::new(NODES, 256);
    let mut s = AddressSpace::new(&pool.mem, &pool, levels, 0).unwrap();
    let mut m = Model::default();
    let mut g = MmuGather::new();
    let mut tlb = CountingTlb::new(&pool);
    for (step, &op) in ops.iter().enumerate() {
        match op {
            Op::Map {
                slot,
                size,
                prot: p,
                pfn,
            } => {
                let va = slot.va(levels, size);
                let pa = (pfn as u64) << size.shift() & ((1 << 46) - 1);
                let r = s.map(&pool, va, PhysAddr(pa), size, prot(p));
                if m.overlaps(va, size.bytes()) {
                    prop_assert!(matches!(r, Err(PtError::AlreadyMapped(_))), "{op:?}: {r:?}");
                } else {
                    prop_assert_eq!(r, Ok(()), "{:?}", op);
                    m.0.insert(
                        va,
                        Leaf {
                            pa,
                            size,
                            prot: prot(p),
                            a: false,
                            d: false,
                        },
                    );
                }
            }
            Op::MapPtes { slot, pages, pfn } => {
                let va = slot.va(levels, PageSize::Size4K);
                let pa = (pfn as u64) << 12 & ((1 << 46) - 1);
                let r = s.map_ptes(&pool, va, PhysAddr(pa), pages, prot(3));
                if index(va, 0) as u64 + pages > 512 {
                    prop_assert_eq!(r, Err(PtError::CrossesTable { va, pages }));
                } else if m.overlaps(va, pages << 12) {
                    prop_assert!(matches!(r, Err(PtError::AlreadyMapped(_))), "{op:?}: {r:?}");
                } else {
                    prop_assert_eq!(r, Ok(()));
                    for k in 0..pages {
                        let leaf = Leaf {
                            pa: pa + (k << 12),
                            size: PageSize::Size4K,
                            prot: prot(3),
                            a: false,
                            d: false,
                        };
                        m.0.insert(va + (k << 12), leaf);
                    }
                }
            }
            Op::Unmap { slot, size } => {
                let va = slot.va(levels, size);
                let r = s.unmap(&mut g, va, size);
                match m.exact(va, size) {
                    Some(l) => {
                        prop_assert_eq!(r, Ok(PhysAddr(l.pa)));
                        m.0.remove(&va);
                    }
                    None => prop_assert!(
                        same_error(r.unwrap_err(), m.miss(va, size)),
                        "{op:?}: {r:?}"
                    ),
                }
            }
            Op::Protect {
                slot,
                size,
                prot: p,
            } => {
                let va = slot.va(levels, size);
                let r = s.protect(&mut g, va, size, prot(p));
                match m.0.get_mut(&va).filter(|l| l.size == size) {
                    Some(l) => {
                        prop_assert_eq!(r, Ok(()));
                        l.prot = prot(p);
                    }
                    None => prop_assert!(
                        same_error(r.unwrap_err(), m.miss(va, size)),
                        "{op:?}: {r:?}"
                    ),
                }
            }
            Op::Harvest { slot, size } => {
                let va = slot.va(levels, size);
                let r = s.harvest(&mut g, va, size);
                match m.0.get_mut(&va).filter(|l| l.size == size) {
                    Some(l) => {
                        prop_assert_eq!(r, Ok((l.a, l.d)), "{:?}: not the OR over replicas", op);
                        (l.a, l.d) = (false, false);
                    }
                    None => prop_assert!(
                        same_error(r.unwrap_err(), m.miss(va, size)),
                        "{op:?}: {r:?}"
                    ),
                }
            }
            Op::Touch { slot, node, write } => {
                let va = slot.va(levels, PageSize::Size4K) + 0x18;
                let hit = hw_walk(&pool.mem, s.root(node), levels, va, write);
                match m.containing(va) {
                    Some((v, _)) => {
                        prop_assert!(hit.is_some(), "{op:?}: replica {node} misses {va:#x}");
                        let l = m.0.get_mut(&v).unwrap();
                        l.a = true;
                        l.d |= write;
                    }
                    None => prop_assert!(hit.is_none(), "{op:?}: replica {node} maps {va:#x}"),
                }
            }
            Op::Replicate { node } => {
                prop_assert_eq!(s.replicate(&pool, node), Ok(()));
                prop_assert_eq!(pool.node_of(s.root(node)), Some(node));
            }
            Op::Drop { node } => {
                let had = s.replica_nodes().collect::<Vec<_>>();
                let r = s.drop_replica(&mut g, node);
                if !had.contains(&node) {
                    prop_assert_eq!(r, Err(PtError::NoSuchNode(node)));
                } else if had.len() == 1 {
                    prop_assert_eq!(r, Err(PtError::LastReplica(node)));
                } else {
                    prop_assert_eq!(r, Ok(()));
                    prop_assert_eq!(s.pt_pages(node), 0);
                }
            }
            Op::Finish => {
                g.finish(&pool, &mut tlb);
                // Every page-table page out of the pool is in some replica,
                // on that replica's node.
                for n in 0..NODES {
                    prop_assert_eq!(pool.out(n), s.pt_pages(n), "node {}", n);
                }
            }
        }
        // The touched address translates as the model says, A/D as the OR.
        if let Op::Map { slot, .. }
        | Op::Unmap { slot, .. }
        | Op::Touch { slot, .. }
        | Op::Harvest { slot, .. } = op
        {
            let va = slot.va(levels, PageSize::Size4K) + 0x18;
            let want = m.containing(va).map(|(v, l)| Translation {
                pa: PhysAddr(l.pa + (va - v)),
                size: l.size,
                prot: l.prot,
                accessed: l.a,
                dirty: l.d,
            });
            prop_assert_eq!(s.translate(va), want, "step {}: {:?}", step, op);
        }
        if step % 64 == 63 {
            prop_assert_eq!(
                s.check_replicas(&pool),
                Ok(m.0.len() as u64),
                "step {}",
                step
            );
        }
    }
    prop_assert_eq!(s.check_replicas(&pool), Ok(m.0.len() as u64));
    for (&va, l) in &m.0 {
        let t = s.translate(va + l.size.bytes() / 2).unwrap();
        prop_assert_eq!(
            (t.pa.0, t.size, t.accessed, t.dirty),
            (l.pa + l.size.bytes() / 2, l.size, l.a, l.d)
        );
    }
    // Destroy: every page-table page of every replica back in the pool.
    s.destroy(&mut g);
    g.finish(&pool, &mut tlb);
    prop_assert_eq!(pool.total_out(), 0);
    Ok(())
}

proptest! {
    // 256 cases of 400..500 operations: over 10^5 operations per run.
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn row50_replicas_agree_under_random_updates(five in any::<bool>(), ops in prop::collection::vec(op(), 400..500)) {
        run(if five { Levels::Five } else { Levels::Four }, &ops)?;
    }
}
