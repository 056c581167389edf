//! Guest NUMA topology (`--numa`), as the user gave it and as the rest of
//! the VMM consumes it.
//!
//! A guest node is a slice of guest RAM and a set of vCPUs placed on one
//! host node: its RAM regions are bound there (see [`super::mempolicy`]),
//! its vCPU threads run on that node's CPUs (or `host-cpus=`), and the guest
//! learns the topology from ACPI SRAT/SLIT built from
//! [`GuestTopology`]. Without `--numa` the guest is one node holding all
//! RAM and all vCPUs, with no host binding and no pinning: what memvisor did
//! before nodes existed.
//!
//! Why everything is checked before anything is mapped: a topology that does
//! not add up (sizes against `--memory`, vCPU sets against `--vcpus`,
//! asymmetric distances) would either fail late with resources half taken or,
//! worse, boot a guest whose SRAT disagrees with its memslots. The checks
//! that need no host facts run in [`NumaConfig::validate`] (also on every API
//! machine-config change); those that read sysfs (host node exists, host
//! CPUs online) in [`NumaConfig::check_host`], just before RAM is mapped.
//!
//! Distances follow ACPI SLIT: 10 is a node to itself, 11..=254 to another
//! node (255 means unreachable and is not accepted). A pair given on one side
//! only applies both ways; given on both sides it must agree.
mod spec;

pub use spec::{CpuList, NumaNode};

use super::backing::Backing;
use super::layout;
use crate::resources::format_size;
use serde::Serialize;
use std::collections::BTreeMap;

/// SLIT distance of a node to itself (ACPI's, defined once with the tables).
pub use crate::boot::acpi::LOCAL_DISTANCE;
/// Default SLIT distance between two different nodes.
pub const REMOTE_DISTANCE: u8 = 20;
/// Largest SLIT distance accepted (255 is "unreachable" in ACPI).
pub const MAX_DISTANCE: u8 = 254;
/// Largest CPU number a list may name: Linux's largest NR_CPUS, which also
/// keeps a hostile `0-4294967295` from allocating gigabytes.
pub const MAX_CPU_ID: u32 = 8191;

const SYS_NODES: &str = "/sys/devices/system/node";
const SYS_CPUS_ONLINE: &str = "/sys/devices/system/cpu/online";
/// A node's 2 MiB hugetlb pool, under its sysfs directory.
const NODE_HUGE_POOL: &str = "hugepages/hugepages-2048kB";
const HUGE_PAGE: u64 = super::backing::HUGE as u64;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum NumaError {
    /// One `--numa` spec is malformed: the spec, the bad part, why.
    #[error("--numa {spec}: `{part}`: {why}")]
    Spec {
        spec: String,
        part: String,
        why: String,
    },
    /// The specs do not fit together or with `--memory`/`--vcpus`.
    #[error("--numa: {0}")]
    Nodes(String),
    /// The specs ask for host nodes or CPUs this host does not have.
    #[error("--numa node={node}: {why}")]
    Host { node: u32, why: String },
    #[error("--numa: cannot read the host topology: {0}")]
    HostRead(String),
}

/// The guest's nodes, sorted by id. Built from `--numa` specs; checked by
/// [`Self::validate`] before use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaConfig {
    nodes: Vec<NumaNode>,
}

/// One guest node's RAM and where it goes on the host, for
/// [`super::GuestRam::with_nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeRam {
    pub size: u64,
    /// Bind the node's regions to this host node (MPOL_BIND); None leaves
    /// them to the host's default policy.
    pub host_node: Option<u32>,
}

/// One guest node as the guest sees it (ACPI SRAT): its guest-physical RAM
/// ranges `(base, size)` and its vCPU ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestNode {
    pub ram: Vec<(u64, u64)>,
    pub vcpus: Vec<u32>,
}

/// The guest topology for the ACPI tables: nodes in id order and the n*n
/// distance matrix, row-major (`distance[i * n + j]`), as SLIT lays it out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestTopology {
    pub nodes: Vec<GuestNode>,
    pub distance: Vec<u8>,
}

/// `config.numa` in the report: one entry per node, as given, with the
/// distance row resolved (defaults and the other side's value filled in).
#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    pub id: u32,
    pub size: u64,
    pub cpus: CpuList,
    pub host_node: u32,
    pub host_cpus: Option<CpuList>,
    /// Distance to node 0, 1, ... n-1.
    pub distances: Vec<u8>,
}

impl NumaConfig {
    pub fn new(mut nodes: Vec<NumaNode>) -> Self {
        nodes.sort_by_key(|n| n.id);
        NumaConfig { nodes }
    }

    pub fn nodes(&self) -> &[NumaNode] {
        &self.nodes
    }

    /// The specs as given, in node order (to pass them on to a child).
    pub fn specs(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.spec.as_str())
    }

    /// Sum of the node sizes, or None if it overflows.
    pub fn total_size(&self) -> Option<u64> {
        self.nodes
            .iter()
            .try_fold(0u64, |a, n| a.checked_add(n.size))
    }

    /// vCPUs the nodes name: one more than the highest id.
    pub fn vcpu_count(&self) -> u32 {
        self.nodes
            .iter()
            .filter_map(|n| n.cpus.ids().last())
            .max()
            .map_or(0, |m| m + 1)
    }

    /// The checks that need no host facts: node ids 0..n-1 once each,
    /// sizes adding up to `memory`, vCPU sets disjoint and covering exactly
    /// 0..vcpus-1, distances to existing nodes and symmetric.
    pub fn validate(&self, memory: u64, vcpus: u32) -> Result<(), NumaError> {
        let n = self.nodes.len();
        let err = |s: String| Err(NumaError::Nodes(s));
        for (i, node) in self.nodes.iter().enumerate() {
            if node.id as usize != i {
                let ids: Vec<String> = self.nodes.iter().map(|n| n.id.to_string()).collect();
                return err(format!(
                    "node ids are {}: each of 0 to {} must be given exactly once",
                    ids.join(","),
                    n - 1
                ));
            }
        }
        match self.total_size() {
            Some(t) if t == memory => {}
            t => {
                let sizes: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("node {} {}", n.id, format_size(n.size)))
                    .collect();
                return err(format!(
                    "the node sizes ({}) add up to {}, but --memory is {}: they must be equal (or leave --memory out)",
                    sizes.join(", "),
                    t.map_or("more than 2^64 bytes".into(), format_size),
                    format_size(memory)
                ));
            }
        }
        let mut owner: BTreeMap<u32, u32> = BTreeMap::new();
        for node in &self.nodes {
            for &c in node.cpus.ids() {
                if let Some(other) = owner.insert(c, node.id) {
                    return err(format!(
                        "vCPU {c} is in the cpus of node {other} and node {}: the nodes' cpu sets must be disjoint",
                        node.id
                    ));
                }
            }
        }
        let all = CpuList::new((0..vcpus).collect());
        let given = CpuList::new(owner.keys().copied().collect());
        if given != all {
            let extra = CpuList::new(
                given
                    .ids()
                    .iter()
                    .copied()
                    .filter(|&c| c >= vcpus)
                    .collect(),
            );
            let missing = CpuList::new((0..vcpus).filter(|c| !given.contains(*c)).collect());
            let mut why = Vec::new();
            if !extra.is_empty() {
                why.push(format!("vCPUs {extra} do not exist"));
            }
            if !missing.is_empty() {
                why.push(format!("vCPUs {missing} belong to no node"));
            }
            return err(format!(
                "with --vcpus {vcpus} the nodes' cpus must cover exactly {all}: {}",
                why.join(" and ")
            ));
        }
        for node in &self.nodes {
            for (&to, &d) in &node.distances {
                let Some(other) = self.nodes.get(to as usize) else {
                    return err(format!(
                        "node {} has distance={to}@{d}, but there is no node {to} (nodes: 0 to {})",
                        node.id,
                        n - 1
                    ));
                };
                if let Some(&back) = other.distances.get(&node.id) {
                    if back != d {
                        return err(format!(
                            "node {} has distance={to}@{d} but node {to} has distance={}@{back}: distances must be symmetric",
                            node.id, node.id
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks the host has the nodes and CPUs asked for and returns, per
    /// guest node, the host CPUs its vCPU threads are pinned to: `host-cpus`
    /// if given (all online), else the host node's CPUs.
    pub fn check_host(&self, host: &HostNuma) -> Result<Vec<CpuList>, NumaError> {
        let mut pins = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let herr = |why: String| NumaError::Host { node: node.id, why };
            let Some(node_cpus) = host.nodes.get(&node.host_node) else {
                let have: Vec<String> = host.nodes.keys().map(|k| k.to_string()).collect();
                return Err(herr(format!(
                    "host-node={}: {SYS_NODES}/node{} does not exist (host nodes: {})",
                    node.host_node,
                    node.host_node,
                    have.join(",")
                )));
            };
            let pin = match &node.host_cpus {
                Some(list) => {
                    let off = CpuList::new(
                        list.ids()
                            .iter()
                            .copied()
                            .filter(|&c| !host.online.contains(c))
                            .collect(),
                    );
                    if !off.is_empty() {
                        return Err(herr(format!(
                            "host-cpus={list}: CPUs {off} are not online (online CPUs: {})",
                            host.online
                        )));
                    }
                    list.clone()
                }
                None => {
                    let on = CpuList::new(
                        node_cpus
                            .ids()
                            .iter()
                            .copied()
                            .filter(|&c| host.online.contains(c))
                            .collect(),
                    );
                    if on.is_empty() {
                        return Err(herr(format!(
                            "host node {} has no online CPUs to run vCPUs on; give host-cpus= (online CPUs: {})",
                            node.host_node, host.online
                        )));
                    }
                    on
                }
            };
            pins.push(pin);
        }
        Ok(pins)
    }

    /// Reads this host's topology and checks it ([`Self::check_host`]); for
    /// hugetlb RAM also that each host node holds the huge pages bound to
    /// it ([`Self::check_huge_pages`]).
    pub fn check_this_host(&self, backing: Backing) -> Result<Vec<CpuList>, NumaError> {
        let host = HostNuma::read()?;
        let pins = self.check_host(&host)?;
        if backing.is_hugetlb() {
            self.check_huge_pages(&host.huge_pools()?, backing)?;
        }
        Ok(pins)
    }

    /// Hugetlb RAM is reserved from the whole pool when it is mapped, but a
    /// bound region's pages can only come from its host node: with too few
    /// free there, the guest would die of SIGBUS on a first touch instead of
    /// memvisor refusing to start. So each host node must have free the
    /// 2 MiB pages of every guest node bound to it.
    pub fn check_huge_pages(
        &self,
        pools: &BTreeMap<u32, NodeHugePool>,
        backing: Backing,
    ) -> Result<(), NumaError> {
        let mut need: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
        for node in &self.nodes {
            let e = need.entry(node.host_node).or_insert((node.id, 0));
            e.1 += node.size.div_ceil(HUGE_PAGE);
        }
        for (&host_node, &(first, pages)) in &need {
            let pool = pools.get(&host_node).copied().unwrap_or_default();
            if pool.free < pages {
                return Err(NumaError::Host {
                    node: first,
                    why: format!(
                        "--backing {}: host node {host_node} has {} free 2 MiB huge pages and the guest nodes bound to it need {pages}; reserve them as root with `echo {} > {SYS_NODES}/node{host_node}/{NODE_HUGE_POOL}/nr_hugepages`",
                        backing.name(),
                        pool.free,
                        pool.total + (pages - pool.free)
                    ),
                });
            }
        }
        Ok(())
    }

    /// The n*n SLIT matrix, row-major.
    pub fn distance_matrix(&self) -> Vec<u8> {
        let n = self.nodes.len();
        let mut m = vec![REMOTE_DISTANCE; n * n];
        for i in 0..n {
            m[i * n + i] = LOCAL_DISTANCE;
        }
        for node in &self.nodes {
            for (&to, &d) in &node.distances {
                let (i, j) = (node.id as usize, to as usize);
                if i < n && j < n {
                    m[i * n + j] = d;
                    m[j * n + i] = d;
                }
            }
        }
        m
    }

    pub fn report(&self) -> Vec<NodeReport> {
        let n = self.nodes.len();
        let m = self.distance_matrix();
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| NodeReport {
                id: node.id,
                size: node.size,
                cpus: node.cpus.clone(),
                host_node: node.host_node,
                host_cpus: node.host_cpus.clone(),
                distances: m[i * n..(i + 1) * n].to_vec(),
            })
            .collect()
    }

    /// The guest node vCPU `vcpu` belongs to.
    pub fn node_of_vcpu(&self, vcpu: u32) -> Option<u32> {
        self.nodes
            .iter()
            .find(|n| n.cpus.contains(vcpu))
            .map(|n| n.id)
    }
}

/// How guest RAM is cut into nodes: `--numa`'s nodes, bound to their host
/// nodes, or one unbound node of `memory` bytes.
pub fn ram_plan(numa: Option<&NumaConfig>, memory: u64) -> Vec<NodeRam> {
    match numa {
        Some(c) => c
            .nodes
            .iter()
            .map(|n| NodeRam {
                size: n.size,
                host_node: Some(n.host_node),
            })
            .collect(),
        None => vec![NodeRam {
            size: memory,
            host_node: None,
        }],
    }
}

/// What the guest's ACPI tables describe: `--numa`'s nodes, or one node with
/// all RAM and all `vcpus` at distance 10 from itself. Node RAM ranges come
/// from the same layout as the memslots ([`layout::node_ram_regions`]).
pub fn guest_topology(numa: Option<&NumaConfig>, memory: u64, vcpus: u32) -> GuestTopology {
    let plan = ram_plan(numa, memory);
    let sizes: Vec<u64> = plan.iter().map(|p| p.size).collect();
    let mut nodes: Vec<GuestNode> = vec![GuestNode::default(); plan.len()];
    for (node, base, size) in layout::node_ram_regions(&sizes) {
        nodes[node].ram.push((base, size));
    }
    match numa {
        Some(c) => {
            for (g, n) in nodes.iter_mut().zip(&c.nodes) {
                g.vcpus = n.cpus.ids().to_vec();
            }
            GuestTopology {
                nodes,
                distance: c.distance_matrix(),
            }
        }
        None => {
            nodes[0].vcpus = (0..vcpus).collect();
            GuestTopology {
                nodes,
                distance: vec![LOCAL_DISTANCE],
            }
        }
    }
}

/// The host's NUMA nodes (with their CPUs) and online CPUs, from sysfs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostNuma {
    pub nodes: BTreeMap<u32, CpuList>,
    pub online: CpuList,
}

impl HostNuma {
    pub fn read() -> Result<Self, NumaError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|e| NumaError::HostRead(format!("{p}: {e}")))
        };
        let list = |p: &str| {
            CpuList::parse(&read(p)?).map_err(|e| NumaError::HostRead(format!("{p}: {e}")))
        };
        let online = list(SYS_CPUS_ONLINE)?;
        let mut nodes = BTreeMap::new();
        let dir = std::fs::read_dir(SYS_NODES)
            .map_err(|e| NumaError::HostRead(format!("{SYS_NODES}: {e}")))?;
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            nodes.insert(id, list(&format!("{SYS_NODES}/node{id}/cpulist"))?);
        }
        Ok(HostNuma { nodes, online })
    }

    /// Each node's 2 MiB hugetlb pool (a node without one has none).
    pub fn huge_pools(&self) -> Result<BTreeMap<u32, NodeHugePool>, NumaError> {
        let value = |id: u32, name: &str| -> Result<u64, NumaError> {
            let p = format!("{SYS_NODES}/node{id}/{NODE_HUGE_POOL}/{name}");
            match super::backing::sysfs_number(&p) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(NumaError::HostRead(format!("{p}: {e}"))),
            }
        };
        self.nodes
            .keys()
            .map(|&id| {
                Ok((
                    id,
                    NodeHugePool {
                        total: value(id, "nr_hugepages")?,
                        free: value(id, "free_hugepages")?,
                    },
                ))
            })
            .collect()
    }
}

/// One host node's 2 MiB hugetlb pool, from sysfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeHugePool {
    pub total: u64,
    pub free: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    const M: u64 = 1 << 20;

    fn node(spec: &str) -> NumaNode {
        NumaNode::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    fn config(specs: &[&str]) -> NumaConfig {
        NumaConfig::new(specs.iter().map(|s| node(s)).collect())
    }

    #[test]
    fn two_nodes_validate_and_give_the_topology() {
        let c = config(&[
            "node=1,size=128M,cpus=1,host-node=0,distance=0@30",
            "node=0,size=128M,cpus=0,host-node=0",
        ]);
        c.validate(256 * M, 2).unwrap();
        assert_eq!(c.nodes()[0].id, 0, "sorted by id");
        assert_eq!(
            c.distance_matrix(),
            vec![10, 30, 30, 10],
            "one side given: both ways"
        );
        assert_eq!(c.vcpu_count(), 2);
        assert_eq!(c.node_of_vcpu(1), Some(1));
        let t = guest_topology(Some(&c), 256 * M, 2);
        assert_eq!(
            t.nodes,
            vec![
                GuestNode {
                    ram: vec![(0, 128 * M)],
                    vcpus: vec![0]
                },
                GuestNode {
                    ram: vec![(128 * M, 128 * M)],
                    vcpus: vec![1]
                },
            ]
        );
        assert_eq!(t.distance, c.distance_matrix());
        assert_eq!(
            ram_plan(Some(&c), 256 * M),
            vec![
                NodeRam {
                    size: 128 * M,
                    host_node: Some(0)
                };
                2
            ]
        );
        let r = c.report();
        assert_eq!(r[1].distances, vec![30, 10]);
    }

    #[test]
    fn without_numa_one_unbound_node_holds_everything() {
        assert_eq!(
            ram_plan(None, 256 * M),
            vec![NodeRam {
                size: 256 * M,
                host_node: None
            }]
        );
        let t = guest_topology(None, 6 << 30, 3);
        assert_eq!(t.nodes.len(), 1);
        assert_eq!(t.nodes[0].ram, layout::ram_regions(6 << 30));
        assert_eq!(t.nodes[0].vcpus, vec![0, 1, 2]);
        assert_eq!(t.distance, vec![10]);
    }

    #[test]
    fn a_node_straddling_the_gap_has_two_ranges() {
        let g = 1u64 << 30;
        let c = config(&[
            "node=0,size=2G,cpus=0,host-node=0",
            "node=1,size=2G,cpus=1,host-node=0",
        ]);
        c.validate(4 * g, 2).unwrap();
        let t = guest_topology(Some(&c), 4 * g, 2);
        assert_eq!(t.nodes[1].ram, vec![(2 * g, g), (4 * g, g)]);
    }

    fn nodes_err(specs: &[&str], memory: u64, vcpus: u32) -> String {
        match config(specs).validate(memory, vcpus) {
            Err(e @ NumaError::Nodes(_)) => e.to_string(),
            other => panic!("{specs:?}: expected a topology error, got {other:?}"),
        }
    }

    #[test]
    fn topologies_that_do_not_add_up_are_refused() {
        let a = "node=0,size=128M,cpus=0,host-node=0";
        let b = "node=1,size=128M,cpus=1,host-node=0";
        let cases: &[(&[&str], u64, u32, &str)] = &[
            (&[a, "node=2,size=128M,cpus=1,host-node=0"], 256, 2, "node ids are 0,2: each of 0 to 1"),
            (&[a, a], 256, 2, "node ids are 0,0"),
            (&[b], 128, 2, "node ids are 1"),
            (&[a, b], 512, 2, "add up to 256M, but --memory is 512M"),
            (&[a, "node=1,size=128M,cpus=0-1,host-node=0"], 256, 2, "vCPU 0 is in the cpus of node 0 and node 1"),
            (&[a, b], 256, 3, "cover exactly 0-2: vCPUs 2 belong to no node"),
            (&[a, "node=1,size=128M,cpus=1-3,host-node=0"], 256, 2, "vCPUs 2-3 do not exist"),
            (&[a, "node=1,size=128M,cpus=1,host-node=0,distance=2@20"], 256, 2, "there is no node 2"),
            (
                &["node=0,size=128M,cpus=0,host-node=0,distance=1@20", "node=1,size=128M,cpus=1,host-node=0,distance=0@30"],
                256,
                2,
                "node 0 has distance=1@20 but node 1 has distance=0@30: distances must be symmetric",
            ),
        ];
        for (specs, mib, vcpus, want) in cases {
            let m = nodes_err(specs, mib * M, *vcpus);
            assert!(m.contains(want), "{specs:?}: {m:?} lacks {want:?}");
        }
        // Both sides given and equal is fine.
        config(&[
            "node=0,size=128M,cpus=0,host-node=0,distance=1@25",
            "node=1,size=128M,cpus=1,host-node=0,distance=0@25",
        ])
        .validate(256 * M, 2)
        .unwrap();
    }

    fn host() -> HostNuma {
        HostNuma {
            nodes: BTreeMap::from([
                (0, CpuList::parse("0-1").unwrap()),
                (1, CpuList::parse("2-3").unwrap()),
                (2, CpuList::default()),
            ]),
            online: CpuList::parse("0-2").unwrap(),
        }
    }

    #[test]
    fn host_nodes_and_cpus_are_checked_and_give_the_pins() {
        let c = config(&[
            "node=0,size=2M,cpus=0,host-node=1",
            "node=1,size=2M,cpus=1,host-node=0,host-cpus=1-2",
        ]);
        let pins = c.check_host(&host()).unwrap();
        assert_eq!(
            pins,
            vec![CpuList::new(vec![2]), CpuList::new(vec![1, 2])],
            "offline CPU 3 left out"
        );
        let cases = [
            (
                "node=0,size=2M,cpus=0,host-node=3",
                "host-node=3: /sys/devices/system/node/node3 does not exist (host nodes: 0,1,2)",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,host-cpus=1-4",
                "host-cpus=1-4: CPUs 3-4 are not online (online CPUs: 0-2)",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=2",
                "host node 2 has no online CPUs",
            ),
        ];
        for (spec, want) in cases {
            let e = config(&[spec]).check_host(&host()).unwrap_err().to_string();
            assert!(
                e.starts_with("--numa node=0: ") && e.contains(want),
                "{spec}: {e}"
            );
        }
        // A CPU-less host node is fine when host-cpus says where to run.
        config(&["node=0,size=2M,cpus=0,host-node=2,host-cpus=0"])
            .check_host(&host())
            .unwrap();
    }

    #[test]
    fn hugetlb_nodes_need_their_pages_on_their_host_node() {
        let c = config(&[
            "node=0,size=64M,cpus=0,host-node=0",
            "node=1,size=64M,cpus=1,host-node=1",
            "node=2,size=32M,cpus=2,host-node=1",
        ]);
        let pool = |total, free| NodeHugePool { total, free };
        let pools = BTreeMap::from([(0, pool(40, 32)), (1, pool(50, 48))]);
        c.check_huge_pages(&pools, Backing::Hugetlbfs).unwrap();
        let short = BTreeMap::from([(0, pool(40, 32)), (1, pool(50, 46))]);
        let e = c
            .check_huge_pages(&short, Backing::MemfdHugetlb)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--numa node=1: --backing memfd-hugetlb: host node 1 has 46 free")
                && e.contains("need 48")
                && e.contains("echo 52 > /sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"),
            "{e}"
        );
        let none = BTreeMap::from([(0, pool(40, 32))]);
        assert!(c.check_huge_pages(&none, Backing::Hugetlbfs).is_err());
    }

    #[test]
    fn this_host_reads() {
        let h = HostNuma::read().unwrap();
        assert!(h.nodes.contains_key(&0), "{h:?}");
        assert!(!h.online.is_empty());
    }
}
