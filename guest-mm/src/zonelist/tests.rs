use super::*;
use proptest::prelude::*;
use ZoneType::{Dma, Dma32, Normal};

/// Three nodes: 0–1 at 15, 0–2 at 30, 1–2 at 20.
fn slit3() -> Distances {
    let mut d = Distances::uniform(3);
    d.set(0, 1, 15);
    d.set(0, 2, 30);
    d.set(1, 2, 20);
    d
}

fn order_of(local: usize, d: &Distances, mem: &[bool]) -> Vec<usize> {
    node_order(local, d, mem).iter().collect()
}

fn zr(node: u8, zone: ZoneType) -> Zoneref {
    Zoneref { node, zone }
}

/// Node 0 has all three zones, the others only Normal.
fn populated3() -> Populated {
    let mut p = [[false; MAX_NR_ZONES]; MAX_NUMNODES];
    p[0] = [true, true, true];
    p[1][Normal as usize] = true;
    p[2][Normal as usize] = true;
    p
}

#[test]
fn nodemask_basics() {
    const M: NodeMask = NodeMask::of(&[1, 3, 5]);
    assert_eq!(M.count(), 3);
    assert_eq!(M.first(), Some(1));
    assert!(M.contains(3) && !M.contains(2) && !M.contains(64) && !M.contains(1000));
    assert_eq!(M.iter().collect::<Vec<_>>(), vec![1, 3, 5]);
    assert_eq!(
        M.without(1).with(0).iter().collect::<Vec<_>>(),
        vec![0, 3, 5]
    );
    assert_eq!(NodeMask::EMPTY.first(), None);
    assert!(NodeMask::EMPTY.is_empty());
    assert_eq!(NodeMask::single(MAX_NUMNODES), NodeMask::EMPTY);
    assert_eq!(NodeMask::first_n(3), NodeMask::of(&[0, 1, 2]));
    assert_eq!(NodeMask::first_n(100), NodeMask::all_possible());
    assert_eq!(NodeMask::all_possible().count(), MAX_NUMNODES);
    assert_eq!(NodeMask::from_bits(u64::MAX), NodeMask::all_possible());
    assert_eq!(M.and(NodeMask::of(&[3, 4])), NodeMask::single(3));
    assert_eq!(M.or(NodeMask::single(0)).count(), 4);
    assert_eq!(
        M.or(NodeMask::of(&[3, 4])),
        NodeMask::of(&[1, 3, 4, 5]),
        "a node in both stays"
    );
    assert_eq!(M.next_after_wrapping(1), Some(3));
    assert_eq!(M.next_after_wrapping(5), Some(1));
    assert_eq!(M.next_after_wrapping(63), Some(1));
    assert_eq!(M.next_after_wrapping(1000), Some(1));
    assert_eq!(NodeMask::EMPTY.next_after_wrapping(0), None);
    let mut m = NodeMask::EMPTY;
    m.insert(2);
    m.insert(7);
    m.remove(2);
    assert_eq!(m.bits(), 1 << 7);
}

#[test]
fn distances_defaults_and_bounds() {
    let d = Distances::uniform(2);
    assert_eq!(d.get(0, 0), LOCAL_DISTANCE);
    assert_eq!(d.get(0, 1), REMOTE_DISTANCE);
    assert_eq!(d.get(0, 2), u8::MAX);
    assert_eq!(Distances::uniform(100).nr_nodes, MAX_NUMNODES);
}

#[test]
fn slit_orders_nodes_nearest_first() {
    let d = slit3();
    let mem = [true; 3];
    assert_eq!(order_of(0, &d, &mem), vec![0, 1, 2]);
    assert_eq!(order_of(1, &d, &mem), vec![1, 0, 2]);
    assert_eq!(order_of(2, &d, &mem), vec![2, 1, 0]);
}

#[test]
fn nodes_without_memory_are_skipped_but_local_stays_first() {
    let d = slit3();
    assert_eq!(order_of(0, &d, &[true, false, true]), vec![0, 2]);
    assert_eq!(order_of(1, &d, &[true, false, true]), vec![1, 0, 2]);
    // A short slice means "no memory" for the missing nodes.
    assert_eq!(order_of(2, &d, &[true]), vec![2, 0]);
    // A node the table does not describe has no order at all.
    assert!(node_order(3, &d, &[true; 4]).is_empty());
    assert!(!node_order(2, &d, &[true]).is_empty());
}

#[test]
fn equal_distance_prefers_the_next_node_up_then_lower_id() {
    let d = Distances::uniform(4);
    let mem = [true; 4];
    assert_eq!(order_of(0, &d, &mem), vec![0, 1, 2, 3]);
    assert_eq!(order_of(1, &d, &mem), vec![1, 2, 3, 0]);
    assert_eq!(order_of(2, &d, &mem), vec![2, 3, 0, 1]);
    assert_eq!(order_of(3, &d, &mem), vec![3, 0, 1, 2]);
}

#[test]
fn a_nearer_lower_node_beats_a_farther_higher_one() {
    // Linux's +1 penalty would tie node 0 (20+1) with node 2 (21); we keep
    // distance first.
    let mut d = Distances::uniform(3);
    d.set(1, 0, 20);
    d.set(1, 2, 21);
    assert_eq!(order_of(1, &d, &[true; 3]), vec![1, 0, 2]);
}

#[test]
fn node_load_spreads_equidistant_groups() {
    // Two sockets of two nodes: {0,1} and {2,3}; within a socket 12, across 20.
    let mut d = Distances::uniform(4);
    d.set(0, 1, 12);
    d.set(2, 3, 12);
    let mem = [true; 4];
    let mut load = NodeLoad::new();
    let o0: Vec<_> = node_order_balanced(0, &d, &mem, &mut load).iter().collect();
    let o1: Vec<_> = node_order_balanced(1, &d, &mem, &mut load).iter().collect();
    assert_eq!(o0, vec![0, 1, 2, 3]);
    // Node 2 led node 0's remote group, so node 1 sends its overflow to 3.
    assert_eq!(o1, vec![1, 0, 3, 2]);
    // Without load the tie goes to the lower id.
    assert_eq!(order_of(1, &d, &mem), vec![1, 0, 2, 3]);
}

#[test]
fn fallback_list_is_zones_high_to_low_then_nodes_by_distance() {
    let d = slit3();
    let p = populated3();
    let zl = Zonelist::build_fallback(0, &d, &p);
    assert_eq!(
        zl.as_slice(),
        &[
            zr(0, Normal),
            zr(0, Dma32),
            zr(0, Dma),
            zr(1, Normal),
            zr(2, Normal)
        ]
    );
    let zl = Zonelist::build_fallback(2, &d, &p);
    assert_eq!(
        zl.as_slice(),
        &[
            zr(2, Normal),
            zr(1, Normal),
            zr(0, Normal),
            zr(0, Dma32),
            zr(0, Dma)
        ]
    );
}

#[test]
fn empty_zones_and_memoryless_nodes_are_left_out() {
    let d = slit3();
    let mut p = populated3();
    p[0][Dma as usize] = false;
    p[1][Normal as usize] = false;
    let zl = Zonelist::build_fallback(1, &d, &p);
    assert_eq!(zl.as_slice(), &[zr(0, Normal), zr(0, Dma32), zr(2, Normal)]);
    assert!(Zonelist::build_thisnode(1, &p).is_empty());
}

#[test]
fn thisnode_list_has_only_local_zones() {
    let p = populated3();
    let zl = Zonelist::build_thisnode(0, &p);
    assert_eq!(zl.as_slice(), &[zr(0, Normal), zr(0, Dma32), zr(0, Dma)]);
    let zl = Zonelist::build_thisnode(2, &p);
    assert_eq!(zl.as_slice(), &[zr(2, Normal)]);
    assert_eq!(zl.len(), 1);
    assert!(!zl.is_empty());
    assert!(Zonelist::build_thisnode(MAX_NUMNODES, &p).is_empty());
}

#[test]
fn zones_for_filters_by_zone_limit_and_nodemask() {
    let d = slit3();
    let zl = Zonelist::build_fallback(1, &d, &populated3());
    let all: Vec<_> = zl.zones_for(Normal, None).collect();
    assert_eq!(all.len(), 5);
    let dma32: Vec<_> = zl.zones_for(Dma32, None).collect();
    assert_eq!(dma32, vec![zr(0, Dma32), zr(0, Dma)]);
    let dma: Vec<_> = zl.zones_for(Dma, None).collect();
    assert_eq!(dma, vec![zr(0, Dma)]);
    let masked: Vec<_> = zl.zones_for(Normal, Some(NodeMask::of(&[1, 2]))).collect();
    assert_eq!(masked, vec![zr(1, Normal), zr(2, Normal)]);
    assert_eq!(zl.zones_for(Dma32, Some(NodeMask::of(&[1, 2]))).count(), 0);
    assert_eq!(
        zl.first_zone(Normal, Some(NodeMask::single(2))),
        Some(zr(2, Normal))
    );
    assert_eq!(zl.first_zone(Normal, Some(NodeMask::EMPTY)), None);
    assert_eq!(zl.first_zone(Dma32, None).map(Zoneref::zone_idx), Some(1));
}

proptest! {
    #[test]
    fn fallback_is_a_permutation_sorted_by_distance(
        nr in 1usize..=MAX_NUMNODES,
        raw in prop::collection::vec(11u8..60, MAX_NUMNODES * MAX_NUMNODES),
        pop in prop::collection::vec(any::<bool>(), MAX_NUMNODES * MAX_NR_ZONES),
        local in 0usize..MAX_NUMNODES,
    ) {
        let mut d = Distances::uniform(nr);
        for a in 0..MAX_NUMNODES {
            for b in a + 1..MAX_NUMNODES {
                d.set(a, b, raw[a * MAX_NUMNODES + b]);
            }
        }
        let mut p = [[false; MAX_NR_ZONES]; MAX_NUMNODES];
        for (i, &v) in pop.iter().enumerate() {
            p[i / MAX_NR_ZONES][i % MAX_NR_ZONES] = v;
        }
        let zl = Zonelist::build_fallback(local, &d, &p);
        let refs = zl.as_slice();
        // Exactly the populated zones of nodes 0..nr (if local is valid).
        let expected: usize = if local < nr {
            (0..nr).map(|n| p[n].iter().filter(|&&x| x).count()).sum()
        } else {
            0
        };
        prop_assert_eq!(refs.len(), expected);
        for w in refs.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.node == b.node {
                prop_assert!(a.zone > b.zone);
            } else {
                // Nodes appear in contiguous runs, distance never decreasing.
                prop_assert!(d.get(local, a.node()) <= d.get(local, b.node()));
                prop_assert!(!refs.iter().take_while(|z| **z != a).any(|z| z.node == b.node));
            }
        }
        if let Some(first) = refs.first() {
            if p[local].iter().any(|&x| x) {
                prop_assert_eq!(first.node(), local);
            }
        }
        let thisnode = Zonelist::build_thisnode(local, &p);
        prop_assert!(thisnode.as_slice().iter().all(|z| z.node() == local));
        prop_assert_eq!(thisnode.len(), p[local].iter().filter(|&&x| x).count());
    }
}
