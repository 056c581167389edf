//! Rows 6, 7 and 60 and the zone layout (seed 2.2.2, 2.2.3, 2.2.4): NUMA
//! fallback order, THISNODE, node masks and memory policies, zone edges,
//! lowmem reserves, and what init accepts.
use super::tests::{check_free_lists, fixture_topo, Fixture};
use super::*;
use crate::phys::sim::SimMemory;
use crate::zonelist::{Distances, NodeMask};

const MIB: u64 = 1 << 20;

#[test]
fn zonelist_follows_numa_distance_and_thisnode_fails_fast() {
    // Rows 6/7: with node 0 full the next allocation comes from the nearest
    // node; THISNODE on a full node fails and leaves other nodes untouched.
    let mut d = Distances::uniform(3);
    d.set(0, 1, 30);
    d.set(0, 2, 15);
    d.set(1, 2, 20);
    let mut topo = Topology::single(3);
    topo.nr_nodes = 3;
    topo.distances = d;
    topo.node_range[0] = (0, 32 * MIB);
    topo.node_range[1] = (32 * MIB, 64 * MIB);
    topo.node_range[2] = (64 * MIB, 96 * MIB);
    topo.cpu_node[1] = 1;
    topo.cpu_node[2] = 2;
    let f = fixture_topo(96 * MIB, topo);
    let mut c = f.a.cpu(0);
    let thisnode = Gfp::NOWAIT.union(Gfp::THISNODE);
    while c.alloc(thisnode, 0).is_some() {}
    let free1 = f.a.zone(1, ZoneType::Dma32).free_pages();
    let free2 = f.a.zone(2, ZoneType::Dma32).free_pages();
    assert!(c.alloc(thisnode, 0).is_none());
    assert_eq!(
        (
            f.a.zone(1, ZoneType::Dma32).free_pages(),
            f.a.zone(2, ZoneType::Dma32).free_pages()
        ),
        (free1, free2)
    );
    let p = c.alloc(Gfp::NOWAIT, 0).unwrap();
    assert!(
        p.0 * PAGE_SIZE >= 64 * MIB,
        "node 2 (distance 15) before node 1 (30): got pfn {}",
        p.0
    );
    assert!(c.events().get(VmEvent::NumaMiss) >= 1);
}

#[test]
fn nodemask_restricts_and_bind_fails_instead_of_spilling() {
    let mut topo = Topology::single(2);
    topo.nr_nodes = 2;
    topo.distances = Distances::uniform(2);
    topo.node_range[0] = (0, 32 * MIB);
    topo.node_range[1] = (32 * MIB, 64 * MIB);
    topo.cpu_node[1] = 1;
    let f = fixture_topo(64 * MIB, topo);
    let mut c = f.a.cpu(0);
    let only1 = Some(NodeMask::single(1));
    let p = c.alloc_node(Gfp::NOWAIT, 0, 0, only1).unwrap();
    assert!(p.0 * PAGE_SIZE >= 32 * MIB);
    while c.alloc_node(Gfp::NOWAIT, 0, 1, only1).is_some() {}
    assert!(
        c.alloc_node(Gfp::NOWAIT, 0, 1, only1).is_none(),
        "bound to a full node"
    );
    assert!(
        c.alloc_node(Gfp::NOWAIT, 0, 1, None).is_some(),
        "unbound spills to node 0"
    );
}

fn three_nodes() -> Fixture {
    // Distances from node 0: node 2 at 15, node 1 at 30.
    let mut d = Distances::uniform(3);
    d.set(0, 1, 30);
    d.set(0, 2, 15);
    d.set(1, 2, 20);
    let mut topo = Topology::single(3);
    topo.nr_nodes = 3;
    topo.distances = d;
    for n in 0..3 {
        topo.node_range[n] = (n as u64 * 32 * MIB, (n as u64 + 1) * 32 * MIB);
        topo.cpu_node[n] = n as u8;
    }
    fixture_topo(96 * MIB, topo)
}

fn node_of(p: Pfn) -> u64 {
    p.0 * PAGE_SIZE / (32 * MIB)
}

#[test]
fn memory_policies_choose_nodes_as_documented() {
    // Row 60 (seed 2.2.3).
    use crate::mempolicy::{InterleaveState, MemPolicy, Policy};
    let f = three_nodes();
    let mut c = f.a.cpu(0);
    let mut il = InterleaveState::new();
    let g = Gfp::NOWAIT;
    let local = Policy::new(MemPolicy::Local);
    assert_eq!(node_of(c.alloc_policy(g, 0, &local, &mut il).unwrap()), 0);
    let pref = Policy::new(MemPolicy::Preferred(1));
    assert_eq!(node_of(c.alloc_policy(g, 0, &pref, &mut il).unwrap()), 1);
    // Interleave round-robins over its set.
    let inter = Policy::new(MemPolicy::Interleave(NodeMask::of(&[0, 2])));
    let nodes: Vec<u64> = (0..4)
        .map(|_| node_of(c.alloc_policy(g, 0, &inter, &mut il).unwrap()))
        .collect();
    assert_eq!(nodes, [0, 2, 0, 2]);
    // BIND on a full node fails instead of spilling.
    let bind1 = Policy::new(MemPolicy::Bind(NodeMask::single(1)));
    while c.alloc_policy(g, 0, &bind1, &mut il).is_some() {}
    assert!(c.alloc_policy(g, 0, &bind1, &mut il).is_none());
    // PREFERRED_MANY falls back to other nodes instead of failing.
    let many = Policy::new(MemPolicy::PreferredMany(NodeMask::single(1)));
    assert!(c.alloc_policy(g, 0, &many, &mut il).is_some());
    // Home node: with BIND over {1, 2} and home 0, the nearest to the home
    // node (2, at distance 15) comes first.
    let home = Policy::new(MemPolicy::Bind(NodeMask::of(&[1, 2]))).with_home_node(0);
    assert_eq!(node_of(c.alloc_policy(g, 0, &home, &mut il).unwrap()), 2);
}

#[test]
fn buddies_never_merge_across_a_zone_boundary_seed_2_2_1() {
    // Row 1: merging stops at the zone's edge, even where the edge is not
    // aligned to the block sizes (two nodes split at an odd page).
    let split = 40 * MIB + 13 * PAGE_SIZE;
    let mut topo = Topology::single(2);
    topo.nr_nodes = 2;
    topo.distances = Distances::uniform(2);
    topo.node_range[0] = (0, split);
    topo.node_range[1] = (split, 64 * MIB);
    topo.cpu_node[1] = 1;
    let f = fixture_topo(64 * MIB, topo);
    let z1 = f.a.zone(1, ZoneType::Dma32);
    assert_eq!(z1.start_pfn, split / PAGE_SIZE);
    check_free_lists(&f.a);
    // Every pageblock the zone overlaps is counted once, by its first page.
    let pb = crate::mmzone::PAGEBLOCK_NR_PAGES;
    let overlapped = (z1.end_pfn - (z1.start_pfn & !(pb - 1))).div_ceil(pb);
    let counts = f.a.pageblock_counts(1, ZoneType::Dma32);
    assert_eq!(counts[MigrateType::Movable as usize], overlapped);
    assert_eq!(counts.iter().sum::<u64>(), overlapped);
    let mut held = Vec::new();
    for cpu in 0..2 {
        let mut c = f.a.cpu(cpu);
        while let Some(p) = c.alloc_direct(Gfp::NOWAIT, 0) {
            held.push(p);
        }
    }
    for p in held {
        f.a.cpu(0).free_direct(p, 0).unwrap();
    }
    check_free_lists(&f.a);
}

#[test]
fn a_node_set_does_not_bind_requests_below_the_policy_zone_not_in_seed() {
    // [NOT IN SEED] Linux's apply_policy_zone (seed 2.2.3 names BIND only):
    // node 1 has only Normal memory, node 0 only DMA32. BIND {1} holds a
    // request that may use Normal to node 1, but a DMA32-limited one could
    // never be served there, so the set does not apply to it.
    use crate::mempolicy::{InterleaveState, MemPolicy, Policy};
    let base = (4u64 << 30) - 32 * MIB;
    let mem = Box::new(SimMemory::new(PhysAddr(base), 64 * MIB));
    let mut mb = Memblock::new();
    // SAFETY: simulated RAM, nothing live in it.
    unsafe { mb.add(&*mem, PhysAddr(base), 64 * MIB).unwrap() };
    let mut topo = Topology::single(1);
    topo.nr_nodes = 2;
    topo.distances = Distances::uniform(2);
    topo.node_range[0] = (0, 4 << 30);
    topo.node_range[1] = (4 << 30, u64::MAX);
    let mut a = Box::new(PageAllocator::EMPTY);
    a.init(&mut mb, &*mem, topo).unwrap();
    let f = Fixture { a, _mem: mem };
    assert!(!f.a.zone(1, ZoneType::Dma32).populated());
    let mut c = f.a.cpu(0);
    let mut il = InterleaveState::new();
    let bind1 = Policy::new(MemPolicy::Bind(NodeMask::single(1)));
    let p = c.alloc_policy(Gfp::NOWAIT, 0, &bind1, &mut il).unwrap();
    assert!(
        p.0 * PAGE_SIZE >= 4 << 30,
        "Normal request: bound to node 1"
    );
    let q = c
        .alloc_policy(Gfp::NOWAIT.union(Gfp::DMA32), 0, &bind1, &mut il)
        .expect("a DMA32 request is not bound to a node without DMA32");
    assert!(q.0 * PAGE_SIZE < 4 << 30);
}

#[test]
fn every_node_of_the_largest_topology_allocates_locally_seed_2_2_2() {
    // Row 6 at MAX_NUMNODES: each CPU's first choice is its own node.
    let n = crate::mmzone::MAX_NUMNODES;
    let mut topo = Topology::single(n);
    topo.nr_nodes = n;
    topo.distances = Distances::uniform(n);
    for i in 0..n {
        topo.node_range[i] = (i as u64 * 8 * MIB, (i as u64 + 1) * 8 * MIB);
        topo.cpu_node[i] = i as u8;
    }
    let f = fixture_topo(8 * 8 * MIB, topo);
    for cpu in 0..n {
        let p = f.a.cpu(cpu).alloc(Gfp::NOWAIT, 0).unwrap();
        assert_eq!(p.0 * PAGE_SIZE / (8 * MIB), cpu as u64, "cpu {cpu}");
    }
}

#[test]
fn init_checks_its_topology() {
    let mem = SimMemory::new(PhysAddr(0), 16 * MIB);
    let try_init = |topo: Topology| {
        let mut mb = Memblock::new();
        mb.reserve(&mem, PhysAddr(0), MIB).unwrap();
        // SAFETY: simulated RAM, its first MiB reserved first.
        unsafe { mb.add(&mem, PhysAddr(0), 16 * MIB).unwrap() };
        let mut a = Box::new(PageAllocator::EMPTY);
        a.init(&mut mb, &mem, topo)
    };
    assert_eq!(try_init(Topology::single(MAX_CPUS)), Ok(()));
    assert_eq!(
        try_init(Topology::single(MAX_CPUS + 1)),
        Err(InitError::TooManyCpus)
    );
    assert_eq!(try_init(Topology::single(0)), Err(InitError::TooManyCpus));
    let mut t = Topology::single(1);
    t.nr_nodes = 0;
    assert_eq!(try_init(t), Err(InitError::BadTopology));
    t.nr_nodes = crate::mmzone::MAX_NUMNODES + 1;
    assert_eq!(try_init(t), Err(InitError::BadTopology));

    // What firmware tables may get wrong: a CPU on a node that does not
    // exist, two nodes claiming the same memory.
    let mut two = Topology::single(2);
    two.nr_nodes = 2;
    two.distances = Distances::uniform(2);
    two.node_range[0] = (0, 8 * MIB);
    two.node_range[1] = (8 * MIB, 16 * MIB);
    two.cpu_node[1] = 1;
    assert_eq!(two.check(), Ok(()));
    assert_eq!(try_init(two), Ok(()));
    let mut t = two;
    t.cpu_node[1] = 2;
    assert_eq!(try_init(t), Err(InitError::BadTopology));
    // A CPU past ncpus is not looked at.
    let mut t = two;
    t.cpu_node[2] = 7;
    assert_eq!(t.check(), Ok(()));
    let mut t = two;
    t.node_range[1] = (8 * MIB - PAGE_SIZE, 16 * MIB);
    assert_eq!(try_init(t), Err(InitError::BadTopology));
    let mut t = two;
    t.node_range[0] = (9 * MIB, 10 * MIB);
    assert_eq!(try_init(t), Err(InitError::BadTopology), "inside node 1");
    // Memoryless nodes overlap nothing, wherever their empty range sits.
    let mut t = two;
    t.nr_nodes = 3;
    t.distances = Distances::uniform(3);
    t.node_range[2] = (4 * MIB, 4 * MIB);
    t.cpu_node[1] = 2;
    assert_eq!(try_init(t), Ok(()));
}

#[test]
fn node_of_names_the_node_whose_zone_holds_the_page() {
    let mut topo = Topology::single(2);
    topo.nr_nodes = 2;
    topo.distances = Distances::uniform(2);
    topo.node_range[0] = (0, 32 * MIB);
    topo.node_range[1] = (32 * MIB, 64 * MIB);
    topo.cpu_node[1] = 1;
    let f = fixture_topo(64 * MIB, topo);
    for (pfn, node) in [
        (32 * MIB / PAGE_SIZE - 1, Some(0)),
        (32 * MIB / PAGE_SIZE, Some(1)),
        (64 * MIB / PAGE_SIZE - 1, Some(1)),
        (64 * MIB / PAGE_SIZE, None),
    ] {
        assert_eq!(f.a.node_of(Pfn(pfn)), node, "pfn {pfn:#x}");
    }
    let mut c = f.a.cpu(1);
    let p = c
        .alloc_node(Gfp::NOWAIT, 0, 0, Some(NodeMask::single(0)))
        .unwrap();
    assert_eq!(f.a.node_of(p), Some(0));
    let p = c.alloc(Gfp::NOWAIT, 0).unwrap();
    assert_eq!(f.a.node_of(p), Some(1), "CPU 1's local node");
}

#[test]
fn lower_zones_keep_a_reserve_from_higher_requests_on_every_node_seed_2_2_4() {
    // Seed 2.2.4 (lowmem reserve, ratios [NOT IN SEED]): a lower zone keeps
    // back the managed pages of the zones above it, up to the request's
    // highest zone, divided by its ratio; each node on its own. Node 0 is
    // DMA32 only, node 1 DMA32 and Normal (it straddles 4 GiB).
    let base = (4u64 << 30) - 64 * MIB;
    let mem = Box::new(SimMemory::new(PhysAddr(base), 96 * MIB));
    let mut mb = Memblock::new();
    // SAFETY: simulated RAM, nothing live in it.
    unsafe { mb.add(&*mem, PhysAddr(base), 96 * MIB).unwrap() };
    let mut topo = Topology::single(2);
    topo.nr_nodes = 2;
    topo.distances = Distances::uniform(2);
    topo.node_range[0] = (0, base + 32 * MIB);
    topo.node_range[1] = (base + 32 * MIB, u64::MAX);
    topo.cpu_node[1] = 1;
    let mut a = Box::new(PageAllocator::EMPTY);
    a.init(&mut mb, &*mem, topo).unwrap();
    let f = Fixture { a, _mem: mem };
    let (d32, n32, nn) = (
        f.a.zone(0, ZoneType::Dma32),
        f.a.zone(1, ZoneType::Dma32),
        f.a.zone(1, ZoneType::Normal),
    );
    assert!(d32.populated() && n32.populated() && nn.populated());
    let r = zone::LOWMEM_RESERVE_RATIO[ZoneType::Dma32 as usize];
    assert_eq!(n32.lowmem_reserve, [0, 0, nn.managed_pages / r]);
    assert!(n32.lowmem_reserve[ZoneType::Normal as usize] > 0);
    assert_eq!(
        d32.lowmem_reserve, [0; MAX_NR_ZONES],
        "nothing above it on node 0"
    );
    assert_eq!(nn.lowmem_reserve, [0; MAX_NR_ZONES]);
}
