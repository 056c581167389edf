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
use super::layout;
use crate::resources::{format_size, parse_size, MEMORY_ALIGN};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// SLIT distance of a node to itself.
pub const LOCAL_DISTANCE: u8 = 10;
/// Default SLIT distance between two different nodes.
pub const REMOTE_DISTANCE: u8 = 20;
/// Largest SLIT distance accepted (255 is "unreachable" in ACPI).
pub const MAX_DISTANCE: u8 = 254;
/// Largest CPU number a list may name: Linux's largest NR_CPUS, which also
/// keeps a hostile `0-4294967295` from allocating gigabytes.
pub const MAX_CPU_ID: u32 = 8191;

const SYS_NODES: &str = "/sys/devices/system/node";
const SYS_CPUS_ONLINE: &str = "/sys/devices/system/cpu/online";

const KEYS: &str = "node, size, cpus, host-node, host-cpus, distance";

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

/// A set of CPU (or vCPU) numbers, sorted and without repeats, written as a
/// Linux cpulist (`0-3,8`) and serialised as a list of numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuList(Vec<u32>);

impl CpuList {
    pub fn new(mut ids: Vec<u32>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        CpuList(ids)
    }

    /// Parses a cpulist (`0-3,8`, `5`); the empty string is the empty set
    /// (sysfs writes a CPU-less node's cpulist so).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut ids = Vec::new();
        for item in s.trim().split(',').filter(|i| !i.is_empty()) {
            let (a, b) = match item.split_once('-') {
                Some((a, b)) => (cpu_number(a)?, cpu_number(b)?),
                None => (cpu_number(item)?, cpu_number(item)?),
            };
            if a > b {
                return Err(format!("{item}: a range runs from low to high (e.g. 0-3)"));
            }
            ids.extend(a..=b);
        }
        Ok(CpuList::new(ids))
    }

    pub fn ids(&self) -> &[u32] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0.binary_search(&id).is_ok()
    }
}

fn cpu_number(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n <= MAX_CPU_ID => Ok(n),
        _ => Err(format!(
            "{s}: not a CPU number (valid: 0 to {MAX_CPU_ID}, as a list like 0-3,8)"
        )),
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// One `--numa` spec, parsed but not yet checked against the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaNode {
    /// The spec as given, for messages and to pass it on (`bench boot`).
    pub spec: String,
    pub id: u32,
    pub size: u64,
    /// The guest's vCPUs on this node.
    pub cpus: CpuList,
    pub host_node: u32,
    /// Host CPUs to pin this node's vCPUs to, instead of the host node's.
    pub host_cpus: Option<CpuList>,
    /// `distance=N@D` as given: node N is at distance D.
    pub distances: BTreeMap<u32, u8>,
}

impl NumaNode {
    /// Parses `node=0,size=256M,cpus=0-1,host-node=0[,host-cpus=0-3][,distance=1@20]`.
    /// A part without `=` continues the list before it, so `cpus=0,2-3` and
    /// `distance=1@20,2@30` read as written; `cpus`, `host-cpus` and
    /// `distance` may also repeat (their values join).
    pub fn parse(spec: &str) -> Result<Self, NumaError> {
        let bad = |part: &str, why: String| NumaError::Spec {
            spec: spec.to_string(),
            part: part.to_string(),
            why,
        };
        let (mut id, mut size, mut host_node) = (None, None, None);
        let mut cpus: Option<Vec<u32>> = None;
        let mut host_cpus: Option<Vec<u32>> = None;
        let mut distances = BTreeMap::new();
        let mut list_key: Option<&str> = None;
        for part in spec.split(',') {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => match list_key {
                    Some(k) if !part.trim().is_empty() => (k, part.trim()),
                    _ => return Err(bad(part, format!("expected key=value (keys: {KEYS})"))),
                },
            };
            list_key = None;
            let once = |slot: bool| {
                if slot {
                    Err(bad(part, format!("`{key}=` is given twice")))
                } else {
                    Ok(())
                }
            };
            match key {
                "node" => {
                    once(id.is_some())?;
                    id = Some(value.parse::<u32>().map_err(|_| {
                        bad(part, "the node id is a number from 0 (e.g. node=0)".into())
                    })?);
                }
                "size" => {
                    once(size.is_some())?;
                    let s = parse_size(value).map_err(|e| bad(part, e.to_string()))?;
                    if s == 0 || !s.is_multiple_of(MEMORY_ALIGN) {
                        return Err(bad(
                            part,
                            "a node's size is a positive multiple of 2M (guest RAM is mapped in 2 MiB pages), e.g. size=128M".into(),
                        ));
                    }
                    size = Some(s);
                }
                "host-node" => {
                    once(host_node.is_some())?;
                    host_node = Some(value.parse::<u32>().map_err(|_| {
                        bad(
                            part,
                            "a host node number, as in /sys/devices/system/node/nodeN".into(),
                        )
                    })?);
                }
                "cpus" | "host-cpus" => {
                    let list = CpuList::parse(value).map_err(|e| bad(part, e))?;
                    let slot = if key == "cpus" {
                        &mut cpus
                    } else {
                        &mut host_cpus
                    };
                    slot.get_or_insert_with(Vec::new).extend(list.ids());
                    list_key = Some(if key == "cpus" { "cpus" } else { "host-cpus" });
                }
                "distance" => {
                    let (n, d) = parse_distance(value).map_err(|e| bad(part, e))?;
                    if distances.insert(n, d).is_some() {
                        return Err(bad(
                            part,
                            format!("the distance to node {n} is given twice"),
                        ));
                    }
                    list_key = Some("distance");
                }
                _ => return Err(bad(part, format!("unknown key (valid keys: {KEYS})"))),
            }
        }
        let missing = |k: &str| {
            bad(
                spec,
                format!("no `{k}=`: a node needs node=, size=, cpus= and host-node="),
            )
        };
        let id = id.ok_or_else(|| missing("node"))?;
        let cpus = CpuList::new(cpus.ok_or_else(|| missing("cpus"))?);
        if cpus.is_empty() {
            return Err(bad(
                "cpus=",
                "a node needs at least one vCPU (e.g. cpus=0)".into(),
            ));
        }
        let host_cpus = host_cpus.map(CpuList::new);
        if host_cpus.as_ref().is_some_and(CpuList::is_empty) {
            return Err(bad("host-cpus=", "an empty set of host CPUs pins to nothing; give CPUs (e.g. host-cpus=0-3) or leave host-cpus out".into()));
        }
        for (&n, &d) in &distances {
            let ok = if n == id {
                d == LOCAL_DISTANCE
            } else {
                (LOCAL_DISTANCE + 1..=MAX_DISTANCE).contains(&d)
            };
            if !ok {
                return Err(bad(
                    &format!("distance={n}@{d}"),
                    format!(
                        "a node is at distance {LOCAL_DISTANCE} from itself and {} to {MAX_DISTANCE} from another node",
                        LOCAL_DISTANCE + 1
                    ),
                ));
            }
        }
        Ok(NumaNode {
            spec: spec.to_string(),
            id,
            size: size.ok_or_else(|| missing("size"))?,
            cpus,
            host_node: host_node.ok_or_else(|| missing("host-node"))?,
            host_cpus,
            distances,
        })
    }
}

/// `N@D`: node N, distance D.
fn parse_distance(v: &str) -> Result<(u32, u8), String> {
    let err = || {
        format!(
            "expected NODE@DISTANCE, e.g. distance=1@20 (distance {} to {MAX_DISTANCE})",
            LOCAL_DISTANCE + 1
        )
    };
    let (n, d) = v.split_once('@').ok_or_else(err)?;
    let n = n.trim().parse::<u32>().map_err(|_| err())?;
    let d = d.trim().parse::<u8>().map_err(|_| err())?;
    Ok((n, d))
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

    fn spec_err(spec: &str) -> String {
        match NumaNode::parse(spec) {
            Err(e @ NumaError::Spec { .. }) => e.to_string(),
            other => panic!("{spec}: expected a spec error, got {other:?}"),
        }
    }

    #[test]
    fn cpulists_parse_and_print_as_linux_does() {
        let l = CpuList::parse("3,0-1,8-10,2").unwrap();
        assert_eq!(l.ids(), &[0, 1, 2, 3, 8, 9, 10]);
        assert_eq!(l.to_string(), "0-3,8-10");
        assert_eq!(CpuList::parse("\n").unwrap(), CpuList::default());
        assert_eq!(CpuList::parse("5").unwrap().to_string(), "5");
        for bad in ["3-1", "a", "0-", "-1", "0-8192", "4294967295"] {
            assert!(CpuList::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_spec_parses() {
        let n = node("node=1,size=256M,cpus=0-1,3,host-node=0,host-cpus=0-3,distance=0@21,2@30");
        assert_eq!(n.id, 1);
        assert_eq!(n.size, 256 * M);
        assert_eq!(n.cpus.ids(), &[0, 1, 3]);
        assert_eq!(n.host_node, 0);
        assert_eq!(n.host_cpus.unwrap().ids(), &[0, 1, 2, 3]);
        assert_eq!(n.distances, BTreeMap::from([(0, 21), (2, 30)]));
        // Repeated list keys join; a distance to itself of 10 is allowed.
        let n = node("cpus=2,node=0,size=2M,host-node=0,cpus=0,distance=0@10");
        assert_eq!(n.cpus.ids(), &[0, 2]);
    }

    #[test]
    fn bad_specs_name_the_bad_part_and_what_is_valid() {
        let cases = [
            ("node=0,size=256M,cpus=0", "no `host-node=`"),
            ("size=256M,cpus=0,host-node=0", "no `node=`"),
            ("node=0,cpus=0,host-node=0", "no `size=`"),
            ("node=0,size=256M,host-node=0", "no `cpus=`"),
            ("node=x,size=2M,cpus=0,host-node=0", "`node=x`"),
            (
                "node=0,size=3M,cpus=0,host-node=0",
                "`size=3M`: a node's size is a positive multiple of 2M",
            ),
            ("node=0,size=0,cpus=0,host-node=0", "`size=0`"),
            ("node=0,size=12X,cpus=0,host-node=0", "`size=12X`"),
            ("node=0,size=2M,cpus=1-0,host-node=0", "`cpus=1-0`"),
            ("node=0,size=2M,cpus=0,host-node=-1", "`host-node=-1`"),
            (
                "node=0,size=2M,cpus=0,host-node=0,host-cpus=x",
                "`host-cpus=x`",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,colour=red",
                "unknown key (valid keys: node, size",
            ),
            (
                "node=0,node=1,size=2M,cpus=0,host-node=0",
                "`node=1`: `node=` is given twice",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=1",
                "expected NODE@DISTANCE",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=1@10",
                "`distance=1@10`: a node is at distance 10 from itself and 11 to 254",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=1@255",
                "`distance=1@255`",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=1@300",
                "`distance=1@300`",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=0@20",
                "`distance=0@20`",
            ),
            (
                "node=0,size=2M,cpus=0,host-node=0,distance=1@20,1@30",
                "distance to node 1 is given twice",
            ),
            ("node=0,size=2M,cpus=0,host-node=0,,", "expected key=value"),
            ("", "expected key=value"),
        ];
        for (spec, want) in cases {
            let m = spec_err(spec);
            assert!(m.contains(want), "{spec}: {m:?} lacks {want:?}");
            assert!(m.starts_with(&format!("--numa {spec}: ")), "{m}");
        }
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
    fn this_host_reads() {
        let h = HostNuma::read().unwrap();
        assert!(h.nodes.contains_key(&0), "{h:?}");
        assert!(!h.online.is_empty());
    }
}
