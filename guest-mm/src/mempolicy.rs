//! NUMA memory policies (seed 2.2.3, checklist row 60): where a task's or
//! range's pages should come from, turned into at most two concrete
//! allocation attempts for the page allocator.
//!
//! The seed names PREFERRED, BIND, PREFERRED_MANY ("a node set; falls back
//! without SIGSEGV/OOM", 5.15) and set_mempolicy_home_node ("with BIND or
//! PREFERRED_MANY, prefer the home node, then the nodes nearest to it",
//! 5.17). DEFAULT, LOCAL and INTERLEAVE, and every detail below the seed's
//! one-liners, follow Linux mm/mempolicy.c and are marked [NOT IN SEED].
//!
//! The planner is pure: it decides which node's zonelist to walk, which
//! nodes the walk may use, and whether the attempt may reclaim. Whether a
//! node is full is the allocator's business.

use crate::mmzone::{ZoneType, MAX_NUMNODES};
use crate::zonelist::{node_order, Distances, NodeMask};

/// The policy modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemPolicy {
    /// No policy of its own: allocate on the local node, falling back by
    /// distance ([NOT IN SEED]: Linux's MPOL_DEFAULT, whose system default
    /// behaves as Local).
    Default,
    /// Explicitly local, as Default ([NOT IN SEED]: MPOL_LOCAL).
    Local,
    /// Only these nodes; fail (and reclaim / OOM within them) rather than
    /// use others.
    Bind(NodeMask),
    /// Start at this node, then fall back everywhere by distance from it.
    Preferred(usize),
    /// Start within this set, nearest first, and if the set cannot supply
    /// the pages without reclaim, fall back everywhere rather than OOM.
    PreferredMany(NodeMask),
    /// Spread successive allocations round-robin over these nodes
    /// ([NOT IN SEED]: MPOL_INTERLEAVE).
    Interleave(NodeMask),
}

/// A policy: a mode plus the optional home node of
/// set_mempolicy_home_node, which only Bind and PreferredMany accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: MemPolicy,
    pub home_node: Option<usize>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(MemPolicy::Default)
    }
}

/// Why [`Policy::validate`] refused a policy. Each maps to an errno in
/// Linux: empty set and bad node are EINVAL, a home node on the wrong mode
/// is EOPNOTSUPP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// Bind, PreferredMany or Interleave with no nodes.
    EmptyNodemask,
    /// A node (in the mode or as the home node) at or above `nr_nodes`.
    NodeOutOfRange,
    /// A home node on a mode other than Bind or PreferredMany.
    HomeNodeNotSupported,
}

impl Policy {
    /// `mode` with no home node.
    pub const fn new(mode: MemPolicy) -> Policy {
        Policy {
            mode,
            home_node: None,
        }
    }

    /// `self` with `home` as its home node (unchecked; see [`Self::validate`]).
    pub const fn with_home_node(self, home: usize) -> Policy {
        Policy {
            mode: self.mode,
            home_node: Some(home),
        }
    }

    /// Checks the policy against a machine with `nr_nodes` nodes: node sets
    /// must be non-empty and within `0..nr_nodes`, nodes must exist, and a
    /// home node needs Bind or PreferredMany.
    ///
    /// [NOT IN SEED] Linux instead silently drops nodes a cpuset forbids
    /// and fails only when nothing is left; with no cpusets here, naming a
    /// node that does not exist is simply an error. Like Linux, the home
    /// node need not be in the set: it is where distances are measured from.
    pub fn validate(&self, nr_nodes: usize) -> Result<(), PolicyError> {
        let valid = NodeMask::first_n(nr_nodes);
        let check_mask = |m: NodeMask| {
            if m.is_empty() {
                Err(PolicyError::EmptyNodemask)
            } else if m.and(valid) != m {
                Err(PolicyError::NodeOutOfRange)
            } else {
                Ok(())
            }
        };
        match self.mode {
            MemPolicy::Default | MemPolicy::Local => {}
            MemPolicy::Preferred(n) => {
                if !valid.contains(n) {
                    return Err(PolicyError::NodeOutOfRange);
                }
            }
            MemPolicy::Bind(m) | MemPolicy::PreferredMany(m) | MemPolicy::Interleave(m) => {
                check_mask(m)?
            }
        }
        if let Some(home) = self.home_node {
            if !matches!(self.mode, MemPolicy::Bind(_) | MemPolicy::PreferredMany(_)) {
                return Err(PolicyError::HomeNodeNotSupported);
            }
            if !valid.contains(home) {
                return Err(PolicyError::NodeOutOfRange);
            }
        }
        Ok(())
    }
}

/// Where the next Interleave allocation goes: Linux's per-task `il_prev`,
/// the node used last ([NOT IN SEED]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterleaveState {
    prev: u8,
}

impl Default for InterleaveState {
    fn default() -> Self {
        Self::new()
    }
}

impl InterleaveState {
    /// Fresh state: the first allocation goes to the lowest node of the
    /// set, as after Linux's set_mempolicy.
    pub const fn new() -> InterleaveState {
        InterleaveState {
            prev: (MAX_NUMNODES - 1) as u8,
        }
    }

    /// The node after the one used last, wrapping, and remembers it. A set
    /// that changed since the last call is handled naturally: the next
    /// member above the old node. `None` for an empty set.
    pub fn next(&mut self, mask: NodeMask) -> Option<usize> {
        let n = mask.next_after_wrapping(self.prev as usize)?;
        self.prev = n as u8;
        Some(n)
    }
}

/// One call into the allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocAttempt {
    /// The node the allocation should land on when it has room: the
    /// first node of `nodemask` (if any) in `zonelist_node`'s distance
    /// order. Linux's preferred zone, against which NUMA hit/miss is
    /// counted.
    pub preferred_node: usize,
    /// Whose FALLBACK zonelist to walk: the node distances are measured
    /// from. Equal to `preferred_node` except when it is outside
    /// `nodemask` (the local node under Bind, or a home node outside its
    /// set); walking this node's list filtered by `nodemask` reaches the
    /// allowed nodes nearest *to it* first, which is what Linux does
    /// (`policy_node` returns the local or home node, not a set member).
    pub zonelist_node: usize,
    /// Nodes the walk may use; `None` = all.
    pub nodemask: Option<NodeMask>,
    /// Try without direct reclaim and without failure warnings (kswapd may
    /// still be woken): PreferredMany's first pass, which must not reclaim
    /// or OOM inside the set before trying elsewhere.
    pub no_reclaim_nowarn: bool,
}

/// The attempts to make, in order, stopping at the first that succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocPlan {
    attempts: [AllocAttempt; 2],
    len: usize,
}

impl AllocPlan {
    const fn one(a: AllocAttempt) -> AllocPlan {
        AllocPlan {
            attempts: [a, a],
            len: 1,
        }
    }

    const fn two(a: AllocAttempt, b: AllocAttempt) -> AllocPlan {
        AllocPlan {
            attempts: [a, b],
            len: 2,
        }
    }

    pub fn as_slice(&self) -> &[AllocAttempt] {
        &self.attempts[..self.len]
    }

    pub const fn len(&self) -> usize {
        self.len
    }

    /// Always false: every plan has at least one attempt.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first attempt.
    pub const fn first(&self) -> AllocAttempt {
        self.attempts[0]
    }

    pub fn iter(&self) -> impl Iterator<Item = AllocAttempt> + '_ {
        self.as_slice().iter().copied()
    }
}

/// The member of `mask` nearest to `origin`, in the same order the
/// zonelists use ([`node_order`]), so the answer is the first node a walk
/// of `origin`'s zonelist filtered by `mask` reaches (memoryless nodes
/// aside, which the planner cannot see). `origin` itself if it is in the
/// set; the lowest member if `origin` is unknown to `d`; `origin` for an
/// empty set (the allocation will then fail, as it should).
fn nearest_in(origin: usize, mask: NodeMask, d: &Distances) -> usize {
    if mask.contains(origin) {
        return origin;
    }
    let mut members = [false; MAX_NUMNODES];
    for n in mask.iter() {
        members[n] = true;
    }
    node_order(origin, d, &members)
        .iter()
        .find(|&n| mask.contains(n))
        .or(mask.first())
        .unwrap_or(origin)
}

/// Turns `policy` into allocation attempts for a task running on
/// `local_node` (Linux's `policy_node` + `policy_nodemask` +
/// `alloc_pages_preferred_many`; [NOT IN SEED] beyond the seed's one-line
/// descriptions):
///
/// * Default / Local — one attempt from the local node, any node allowed.
/// * Preferred(n) — one attempt from `n`, any node allowed: falls back by
///   distance from `n`.
/// * Bind(set) — one attempt restricted to the set, walked from the home
///   node if set, else from the local node; it fails (after reclaim inside
///   the set) rather than spill outside.
/// * PreferredMany(set) — first the set, walked from the home node or the
///   local node, without direct reclaim and quietly; then anywhere,
///   walked from that same home or local node, with reclaim: falls back
///   instead of OOM-ing.
/// * Interleave(set) — one attempt from the next node of the set
///   round-robin, any node allowed, advancing `interleave_state`.
///
/// Expects a policy that passed [`Policy::validate`]; an invalid one still
/// yields a plan (an empty set plans an attempt that cannot succeed, a
/// home node on another mode is ignored, as Linux never stores one).
pub fn plan(
    policy: &Policy,
    local_node: usize,
    interleave_state: &mut InterleaveState,
    d: &Distances,
) -> AllocPlan {
    let anywhere_from = |node: usize| AllocAttempt {
        preferred_node: node,
        zonelist_node: node,
        nodemask: None,
        no_reclaim_nowarn: false,
    };
    let within = |mask: NodeMask| {
        let origin = policy.home_node.unwrap_or(local_node);
        AllocAttempt {
            preferred_node: nearest_in(origin, mask, d),
            zonelist_node: origin,
            nodemask: Some(mask),
            no_reclaim_nowarn: false,
        }
    };
    match policy.mode {
        MemPolicy::Default | MemPolicy::Local => AllocPlan::one(anywhere_from(local_node)),
        MemPolicy::Preferred(n) => AllocPlan::one(anywhere_from(n)),
        MemPolicy::Bind(mask) => AllocPlan::one(within(mask)),
        MemPolicy::PreferredMany(mask) => {
            let first = AllocAttempt {
                no_reclaim_nowarn: true,
                ..within(mask)
            };
            // Linux retries from the same node (home or local) with no set,
            // so the walk starts at that node even when it is outside the
            // set: the preferred node is then that node, not a set member.
            let second = anywhere_from(first.zonelist_node);
            AllocPlan::two(first, second)
        }
        MemPolicy::Interleave(mask) => {
            let n = interleave_state.next(mask).unwrap_or(local_node);
            AllocPlan::one(anywhere_from(n))
        }
    }
}

/// Whether a node-restricting policy (Bind) applies to an allocation whose
/// highest usable zone is `highest_zone`, given `policy_zone`, the highest
/// zone any node has memory in ([NOT IN SEED]: Linux's `apply_policy_zone`).
/// A DMA32-limited request on a machine whose policy zone is Normal ignores
/// the Bind set, because the set's nodes may have no low memory at all; the
/// allocator then uses `nodemask: None`.
pub fn policy_applies_to_zone(highest_zone: ZoneType, policy_zone: ZoneType) -> bool {
    highest_zone >= policy_zone
}

#[cfg(test)]
mod tests;
