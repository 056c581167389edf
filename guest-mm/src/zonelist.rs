//! Zonelists: the order in which an allocation tries zones (seed 2.2.2,
//! checklist rows 6 and 7).
//!
//! Within a node the cheapest zone comes first — Normal, then DMA32, then
//! DMA — so the small low zones that some devices need are spent last. Then
//! come the other nodes, nearest first by NUMA distance (2.6.5's
//! find_next_best_node, which replaced round-robin and node-id order). Each
//! node has two lists (2.6.26): FALLBACK over every node, and NOFALLBACK
//! with only its own zones, for `__GFP_THISNODE` callers that would rather
//! fail than get remote memory.
//!
//! Pure construction from a distance table and "which zones have memory";
//! the page allocator builds the lists once at boot (and again on hotplug)
//! and walks them with [`Zonelist::zones_for`]. No "zonelist full" cache
//! (removed in 4.4, row 63).

use crate::mmzone::{ZoneType, MAX_NR_ZONES, MAX_NUMNODES};

const _: () = assert!(MAX_NUMNODES <= 64, "NodeMask is one u64");
const _: () = assert!(
    MAX_NUMNODES <= u8::MAX as usize,
    "node ids are stored as u8"
);

/// A set of NUMA nodes (Linux's `nodemask_t`), one bit per node id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeMask(pub u64);

impl NodeMask {
    /// No nodes.
    pub const EMPTY: NodeMask = NodeMask(0);

    /// The set with the given bits; bits at or above [`MAX_NUMNODES`] are
    /// dropped so every member is a valid node id.
    pub const fn from_bits(bits: u64) -> NodeMask {
        NodeMask(bits & Self::all_possible().0)
    }

    /// Nodes `0..n` (`n` capped at [`MAX_NUMNODES`]): "every node" for a
    /// machine with `n` nodes.
    pub const fn first_n(n: usize) -> NodeMask {
        if n >= 64 {
            NodeMask(u64::MAX).and(Self::all_possible())
        } else {
            NodeMask((1u64 << n) - 1).and(Self::all_possible())
        }
    }

    /// Every node id this build supports.
    pub const fn all_possible() -> NodeMask {
        if MAX_NUMNODES >= 64 {
            NodeMask(u64::MAX)
        } else {
            NodeMask((1u64 << MAX_NUMNODES) - 1)
        }
    }

    /// `{node}`, or the empty set for an id at or above [`MAX_NUMNODES`].
    pub const fn single(node: usize) -> NodeMask {
        NodeMask::EMPTY.with(node)
    }

    /// Builds a set from a list of node ids (ids ≥ [`MAX_NUMNODES`] are
    /// ignored); `const` so policies can be written as constants.
    pub const fn of(nodes: &[usize]) -> NodeMask {
        let mut m = NodeMask::EMPTY;
        let mut i = 0;
        while i < nodes.len() {
            m = m.with(nodes[i]);
            i += 1;
        }
        m
    }

    /// `self ∪ {node}` (unchanged for an invalid id).
    pub const fn with(self, node: usize) -> NodeMask {
        if node < MAX_NUMNODES {
            NodeMask(self.0 | 1 << node)
        } else {
            self
        }
    }

    /// `self \ {node}`.
    pub const fn without(self, node: usize) -> NodeMask {
        if node < MAX_NUMNODES {
            NodeMask(self.0 & !(1 << node))
        } else {
            self
        }
    }

    /// `self ∩ other`.
    pub const fn and(self, other: NodeMask) -> NodeMask {
        NodeMask(self.0 & other.0)
    }

    /// `self ∪ other`.
    pub const fn or(self, other: NodeMask) -> NodeMask {
        NodeMask(self.0 | other.0)
    }

    pub fn insert(&mut self, node: usize) {
        *self = self.with(node);
    }

    pub fn remove(&mut self, node: usize) {
        *self = self.without(node);
    }

    pub const fn bits(self) -> u64 {
        self.0
    }

    pub const fn contains(self, node: usize) -> bool {
        node < 64 && self.0 & (1 << node) != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of nodes in the set.
    pub const fn count(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Lowest node id in the set.
    pub const fn first(self) -> Option<usize> {
        if self.0 == 0 {
            None
        } else {
            Some(self.0.trailing_zeros() as usize)
        }
    }

    /// Lowest member above `node`, wrapping to the lowest member (Linux's
    /// `next_node_in`); `None` only for the empty set.
    pub const fn next_after_wrapping(self, node: usize) -> Option<usize> {
        let above = if node >= 63 {
            0
        } else {
            self.0 & (u64::MAX << (node + 1))
        };
        if above != 0 {
            Some(above.trailing_zeros() as usize)
        } else {
            self.first()
        }
    }

    /// Members in ascending order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let n = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(n)
        })
    }
}

/// Distance from a node to itself in ACPI SLIT terms.
pub const LOCAL_DISTANCE: u8 = 10;
/// Default distance between two different nodes when firmware gives none
/// (SLIT's "twice as far as local").
pub const REMOTE_DISTANCE: u8 = 20;

/// Node-to-node distances, a copy of the firmware's SLIT: `table[a][b]` is
/// the relative cost of CPU on node `a` touching memory on node `b`, with
/// 10 meaning local. Only the first `nr_nodes` rows and columns matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Distances {
    pub table: [[u8; MAX_NUMNODES]; MAX_NUMNODES],
    pub nr_nodes: usize,
}

impl Distances {
    /// `nr_nodes` nodes (capped at [`MAX_NUMNODES`]), every pair at
    /// [`REMOTE_DISTANCE`]: what Linux assumes without a SLIT.
    pub const fn uniform(nr_nodes: usize) -> Distances {
        let nr_nodes = if nr_nodes > MAX_NUMNODES {
            MAX_NUMNODES
        } else {
            nr_nodes
        };
        let mut table = [[REMOTE_DISTANCE; MAX_NUMNODES]; MAX_NUMNODES];
        let mut i = 0;
        while i < MAX_NUMNODES {
            table[i][i] = LOCAL_DISTANCE;
            i += 1;
        }
        Distances { table, nr_nodes }
    }

    /// Sets the distance both ways (SLITs are normally symmetric).
    /// Out-of-range ids are ignored.
    pub fn set(&mut self, a: usize, b: usize, distance: u8) {
        if a < MAX_NUMNODES && b < MAX_NUMNODES {
            self.table[a][b] = distance;
            self.table[b][a] = distance;
        }
    }

    /// Distance from `from` to `to`; `u8::MAX` (SLIT's "unreachable") for
    /// ids this table does not describe, so they sort last.
    pub const fn get(&self, from: usize, to: usize) -> u8 {
        if from < self.nr_nodes && to < self.nr_nodes {
            self.table[from][to]
        } else {
            u8::MAX
        }
    }
}

/// A list of node ids, at most [`MAX_NUMNODES`] long, without a heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeOrder {
    nodes: [u8; MAX_NUMNODES],
    len: usize,
}

impl NodeOrder {
    const fn new() -> NodeOrder {
        NodeOrder {
            nodes: [0; MAX_NUMNODES],
            len: 0,
        }
    }

    fn push(&mut self, node: usize) {
        self.nodes[self.len] = node as u8;
        self.len += 1;
    }

    pub const fn len(&self) -> usize {
        self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`th node, nearest first.
    pub fn get(&self, i: usize) -> Option<usize> {
        self.as_slice().get(i).map(|&n| n as usize)
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.nodes[..self.len]
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.as_slice().iter().map(|&n| n as usize)
    }

    pub fn contains(&self, node: usize) -> bool {
        self.iter().any(|n| n == node)
    }
}

/// How often each node has been made the first of its distance group in
/// other nodes' orders, so later orders can prefer its equally near peers
/// (Linux's `node_load[]`, [NOT IN SEED]). Start from `NodeLoad::new()` and
/// build every node's order through the same value, in node-id order, as
/// the page allocator's `build_zonelists` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeLoad(pub [u32; MAX_NUMNODES]);

impl NodeLoad {
    pub const fn new() -> NodeLoad {
        NodeLoad([0; MAX_NUMNODES])
    }
}

/// The order in which node `local` falls back to other nodes: itself first
/// (even if it has no memory, as in Linux — its zones are then simply
/// absent from the zonelist), then every other node with memory, nearest
/// first. Nodes outside `0..d.nr_nodes` or without memory are left out;
/// `node_has_memory` entries past its end count as "no memory".
///
/// Ties at equal distance are broken like Linux's find_next_best_node
/// ([NOT IN SEED]; the seed says only "nearest first"), which is
/// deterministic: a node numbered above `local` beats one numbered below it
/// (so equidistant nodes take turns being "next" across the machine rather
/// than node 0 soaking up everyone's overflow), then the lower id wins.
/// Linux adds the below-local penalty to the distance itself, which can tie
/// a node at distance d+1; we compare the distance first, so a genuinely
/// nearer node always comes first. Linux also penalises nodes with CPUs; we
/// have no CPU map here and skip that. This stateless form is
/// [`node_order_balanced`] with zero load.
pub fn node_order(local: usize, d: &Distances, node_has_memory: &[bool]) -> NodeOrder {
    node_order_balanced(local, d, node_has_memory, &mut NodeLoad::new())
}

/// [`node_order`] with Linux's cross-node spreading: among nodes tied on
/// distance and the below-local rule, the one that has led its distance
/// group in fewer previously built orders comes first, and the first node
/// of each new distance group in this order has its load raised.
pub fn node_order_balanced(
    local: usize,
    d: &Distances,
    node_has_memory: &[bool],
    load: &mut NodeLoad,
) -> NodeOrder {
    let mut order = NodeOrder::new();
    let nr = d.nr_nodes.min(MAX_NUMNODES);
    if local >= nr {
        return order;
    }
    order.push(local);
    let mut used = NodeMask::single(local);
    let mut prev = local;
    loop {
        // Key: (distance, numbered below local, load, id), smallest wins.
        let mut best: Option<((u8, bool, u32, usize), usize)> = None;
        for n in 0..nr {
            if used.contains(n) || !node_has_memory.get(n).copied().unwrap_or(false) {
                continue;
            }
            let key = (d.get(local, n), n < local, load.0[n], n);
            if best.is_none_or(|(k, _)| key < k) {
                best = Some((key, n));
            }
        }
        let Some((_, n)) = best else { break };
        if d.get(local, n) != d.get(local, prev) {
            load.0[n] = load.0[n].saturating_add(1);
        }
        order.push(n);
        used.insert(n);
        prev = n;
    }
    order
}

/// One zone in a zonelist. Linux's `zoneref` caches the zone index next to
/// the zone pointer so the walk can filter by zone without touching the
/// zone (seed 2.2.2); here the zone is named by (node, type) outright.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Zoneref {
    pub node: u8,
    pub zone: ZoneType,
}

impl Zoneref {
    pub const fn node(self) -> usize {
        self.node as usize
    }
    pub const fn zone_idx(self) -> usize {
        self.zone as usize
    }
}

/// Longest possible zonelist: every zone of every node.
pub const MAX_ZONELIST: usize = MAX_NUMNODES * MAX_NR_ZONES;

/// `populated[node][zone]`: the zone exists and has managed pages. A zone
/// without pages is never put in a list (seed 2.2.2: never allocate from an
/// empty DMA zone).
pub type Populated = [[bool; MAX_NR_ZONES]; MAX_NUMNODES];

/// An ordered list of zones to try, fixed capacity, no heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zonelist {
    refs: [Zoneref; MAX_ZONELIST],
    len: usize,
}

impl Default for Zonelist {
    fn default() -> Self {
        Self::new()
    }
}

impl Zonelist {
    /// The empty list, for a node that has not been built yet.
    pub const fn new() -> Zonelist {
        Zonelist {
            refs: [Zoneref {
                node: 0,
                zone: ZoneType::Dma,
            }; MAX_ZONELIST],
            len: 0,
        }
    }

    /// Appends `node`'s populated zones, highest (cheapest) first.
    fn push_node(&mut self, node: usize, populated: &Populated) {
        let Some(zones) = populated.get(node) else {
            return;
        };
        for z in ZoneType::ALL.iter().rev() {
            if zones[*z as usize] && self.len < MAX_ZONELIST {
                self.refs[self.len] = Zoneref {
                    node: node as u8,
                    zone: *z,
                };
                self.len += 1;
            }
        }
    }

    /// Node `local`'s FALLBACK list (row 6): for each node of
    /// [`node_order`] — a node has memory when any of its zones is
    /// populated — its populated zones from Normal down to DMA.
    pub fn build_fallback(local: usize, d: &Distances, populated: &Populated) -> Zonelist {
        Self::build_fallback_balanced(local, d, populated, &mut NodeLoad::new())
    }

    /// [`Zonelist::build_fallback`] with [`node_order_balanced`].
    pub fn build_fallback_balanced(
        local: usize,
        d: &Distances,
        populated: &Populated,
        load: &mut NodeLoad,
    ) -> Zonelist {
        let mut has_memory = [false; MAX_NUMNODES];
        for (h, zones) in has_memory.iter_mut().zip(populated.iter()) {
            *h = zones.iter().any(|&p| p);
        }
        let mut list = Zonelist::new();
        for node in node_order_balanced(local, d, &has_memory, load).iter() {
            list.push_node(node, populated);
        }
        list
    }

    /// Node `local`'s NOFALLBACK list (row 7): its own populated zones only,
    /// for `__GFP_THISNODE`, which fails rather than spill to another node.
    pub fn build_thisnode(local: usize, populated: &Populated) -> Zonelist {
        let mut list = Zonelist::new();
        if local < MAX_NUMNODES {
            list.push_node(local, populated);
        }
        list
    }

    pub const fn len(&self) -> usize {
        self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[Zoneref] {
        &self.refs[..self.len]
    }

    /// The zones an allocation may use, in order: those no higher than
    /// `highest_zone` (the GFP zone limit: a DMA32 request must not get
    /// Normal memory) on nodes in `nodemask` (`None` = any node). Linux's
    /// `for_each_zone_zonelist_nodemask`.
    pub fn zones_for(
        &self,
        highest_zone: ZoneType,
        nodemask: Option<NodeMask>,
    ) -> impl Iterator<Item = Zoneref> + '_ {
        self.as_slice().iter().copied().filter(move |z| {
            z.zone <= highest_zone && nodemask.is_none_or(|m| m.contains(z.node()))
        })
    }

    /// The first zone [`Zonelist::zones_for`] yields: the allocation's
    /// preferred zone, against which NUMA hit/miss is counted (Linux's
    /// `first_zones_zonelist`).
    pub fn first_zone(
        &self,
        highest_zone: ZoneType,
        nodemask: Option<NodeMask>,
    ) -> Option<Zoneref> {
        self.zones_for(highest_zone, nodemask).next()
    }
}

#[cfg(test)]
mod tests;
