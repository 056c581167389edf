//! `abi::RECORD_PTWALK`: the guest asks the VMM to run its 2D page-walk
//! model ([`crate::memory::walk_model`]) over live page tables, and the
//! answer goes into the report's `ptwalk` array.
//!
//! Why on the vCPU's exit, synchronously (like the dirty-window marks): the
//! guest only promises to keep its tables unchanged until its `out`
//! returns; a walk done later by the event loop could read tables the guest
//! has since unmapped and freed.
//!
//! Everything in a request is the guest's, and a hostile guest may send
//! anything, as often as it likes. So: a request of the wrong size, levels
//! other than 4 or 5, an unknown cpu, config or thp value, no samples, a
//! VA range that is empty, wraps or is not canonical, or a root that is not
//! a guest RAM page is refused and counted by reason (`ptwalk_rejected`)
//! with a warning. Samples are cut to `abi::PTWALK_MAX_SAMPLES` per
//! request and to [`WALK_BUDGET`] per run, the excess counted; results are
//! kept for at most [`MAX_RESULTS`] requests, the rest refused and counted.
//! A walk reads at most one entry per level (see the model), so neither
//! loops in the tables nor anything else can make one longer, and the
//! memory a request takes is bounded by its samples.
//!
//! Two views of "which node": the guest topology (the `--numa` layout's
//! node of each guest-physical page against the vCPU's guest node), and
//! real host placement (move_pages in query mode on each page's host
//! address, through the one residency sampler in `memory::accounting`,
//! against the host node of the CPUs the vCPU thread is pinned to).
use crate::abi;
use crate::clock::{now_ns, since_origin_us};
use crate::memory::numa::{CpuList, HostNuma};
use crate::memory::walk_model::{
    self, is_canonical, NodeView, ViewCounts, WalkEnds, PAGE, PTE_ADDR,
};
use crate::memory::{accounting, GuestMemory, RamRegion};
use serde::Serialize;
use std::mem::offset_of;
use std::sync::{Mutex, OnceLock};

/// Sampled walks per run, all requests together: 16 requests of the
/// largest size, about 1.3 s of host work on the vCPU threads in all (a
/// largest request over 256 MiB of 4 KiB pages took 80 ms here, both views
/// and move_pages included: `cargo run --release -p memvisor --example
/// ptwalk_cost`).
pub const WALK_BUDGET: u64 = 16 * abi::PTWALK_MAX_SAMPLES as u64;
/// Requests whose results the report keeps.
pub const MAX_RESULTS: usize = 256;

/// Why a request was refused; each names the bad value and what is valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PtWalkReject {
    #[error("ptwalk request of {0} bytes (valid: exactly {len})", len = abi::PTWALK_REQUEST_LEN)]
    BadLength(usize),
    #[error("ptwalk levels {0} (valid: 4 or 5)")]
    BadLevels(u32),
    #[error("ptwalk cpu {cpu} (valid: 0 to {})", vcpus - 1)]
    BadCpu { cpu: u32, vcpus: u32 },
    #[error("ptwalk config {0} (valid: 0 local, 1 remote, 2 replicated)")]
    BadConfig(u32),
    #[error("ptwalk thp {0} (valid: 0 or 1)")]
    BadThp(u32),
    #[error("ptwalk samples 0 (valid: 1 to {})", abi::PTWALK_MAX_SAMPLES)]
    NoSamples,
    #[error("ptwalk range {start:#x}+{len:#x}: not a non-empty range of canonical {levels}-level addresses")]
    BadRange { start: u64, len: u64, levels: u32 },
    #[error("ptwalk root {0:#x}: not the address of a guest RAM page (bits 12-51, RAM outside the MMIO gap)")]
    BadRoot(u64),
    #[error("ptwalk: {MAX_RESULTS} requests already answered this run; no more are kept")]
    TooManyRequests,
    #[error("ptwalk: the run's budget of {WALK_BUDGET} sampled walks is spent")]
    OverBudget,
}

/// Refused requests by reason, and the work bound.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PtWalkRejected {
    pub bad_length: u64,
    pub bad_levels: u64,
    pub bad_cpu: u64,
    pub bad_config: u64,
    pub bad_thp: u64,
    pub no_samples: u64,
    pub bad_range: u64,
    pub bad_root: u64,
    pub too_many_requests: u64,
    pub over_budget: u64,
    /// Samples asked beyond `abi::PTWALK_MAX_SAMPLES` in one request.
    pub samples_capped: u64,
    /// Samples not walked because the run's budget was spent.
    pub samples_over_budget: u64,
    /// The run's budget ([`WALK_BUDGET`]) and what was walked of it.
    pub walk_budget: u64,
    pub walked: u64,
}

impl PtWalkRejected {
    /// Requests refused, all reasons.
    pub fn refused(&self) -> u64 {
        self.bad_length
            + self.bad_levels
            + self.bad_cpu
            + self.bad_config
            + self.bad_thp
            + self.no_samples
            + self.bad_range
            + self.bad_root
            + self.too_many_requests
            + self.over_budget
    }

    fn count(&mut self, r: &PtWalkReject) {
        *match r {
            PtWalkReject::BadLength(_) => &mut self.bad_length,
            PtWalkReject::BadLevels(_) => &mut self.bad_levels,
            PtWalkReject::BadCpu { .. } => &mut self.bad_cpu,
            PtWalkReject::BadConfig(_) => &mut self.bad_config,
            PtWalkReject::BadThp(_) => &mut self.bad_thp,
            PtWalkReject::NoSamples => &mut self.no_samples,
            PtWalkReject::BadRange { .. } => &mut self.bad_range,
            PtWalkReject::BadRoot(_) => &mut self.bad_root,
            PtWalkReject::TooManyRequests => &mut self.too_many_requests,
            PtWalkReject::OverBudget => &mut self.over_budget,
        } += 1;
    }
}

/// A request's fields, decoded at `abi::PtWalkRequest`'s own offsets.
pub fn decode(p: &[u8]) -> Result<abi::PtWalkRequest, PtWalkReject> {
    if p.len() != abi::PTWALK_REQUEST_LEN as usize {
        return Err(PtWalkReject::BadLength(p.len()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(p[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().expect("8 bytes"));
    use abi::PtWalkRequest as R;
    Ok(R {
        cpu: u32_at(offset_of!(R, cpu)),
        config: u32_at(offset_of!(R, config)),
        root: u64_at(offset_of!(R, root)),
        start: u64_at(offset_of!(R, start)),
        len: u64_at(offset_of!(R, len)),
        samples: u32_at(offset_of!(R, samples)),
        levels: u32_at(offset_of!(R, levels)),
        thp: u32_at(offset_of!(R, thp)),
        reserved: u32_at(offset_of!(R, reserved)),
    })
}

/// The name of a `PTREPL_*` configuration.
pub fn config_name(config: u32) -> Option<&'static str> {
    match config {
        abi::PTREPL_LOCAL => Some("local"),
        abi::PTREPL_REMOTE => Some("remote"),
        abi::PTREPL_REPLICATED => Some("replicated"),
        _ => None,
    }
}

/// One answered request, as the report's `ptwalk` array holds it.
#[derive(Clone, Debug, Serialize)]
pub struct PtWalkResult {
    /// The vCPU whose exit carried the request, and the vCPU it models.
    pub sender: u32,
    pub cpu: u32,
    /// That vCPU's guest node (`--numa cpus=`) and the host node of the
    /// CPUs its thread runs on (null if they span nodes).
    pub guest_node: u32,
    pub host_node: Option<u32>,
    pub config: &'static str,
    pub thp: bool,
    pub levels: u32,
    pub root: u64,
    pub start: u64,
    pub len: u64,
    /// Samples asked, and walked (after the per-request and run caps).
    pub samples_asked: u32,
    pub samples: u32,
    /// How the walks ended: complete (the ones counted below), or not.
    #[serde(flatten)]
    pub ends: WalkEnds,
    /// Distinct guest-physical pages the complete walks touched.
    pub pages: u64,
    /// Nodes from the `--numa` layout: what a host binding guest node i to
    /// host node i gives.
    pub guest_topology: ViewCounts,
    /// Nodes where the host really holds each page (move_pages); null when
    /// the query failed (`host_error`).
    pub host_placement: Option<ViewCounts>,
    pub host_error: Option<String>,
    /// Host time the walk and both counts took, µs.
    pub host_us: f64,
    /// When it arrived (µs from the clock origin, like the guest's lines).
    pub at_us: f64,
}

#[derive(Default)]
struct State {
    results: Vec<PtWalkResult>,
    rejected: PtWalkRejected,
    /// Results slots handed out (some may still be walking).
    reserved: usize,
}

/// The walk model's side of the results port, shared by the vCPU threads.
pub struct PtWalker {
    mem: GuestMemory,
    regions: Vec<RamRegion>,
    /// Per vCPU: its guest node, and the host node of its CPUs, found on
    /// the first request (reading the host topology costs every boot
    /// otherwise) from `pins`.
    guest_node: Vec<u32>,
    host_node: OnceLock<Vec<Option<u32>>>,
    pins: Pins,
    state: Mutex<State>,
}

/// What [`PtWalker::for_vm`] needs to know of the host: the CPUs each
/// guest node's vCPUs are pinned to (None: unpinned).
pub type Pins = Option<Vec<CpuList>>;

/// Nodes from the `--numa` layout.
struct GuestView<'a>(&'a [RamRegion]);

impl NodeView for GuestView<'_> {
    fn nodes_of(&self, pages: &[u64]) -> Vec<Option<u32>> {
        pages
            .iter()
            .map(|&p| region_of(self.0, p).map(|r| r.node))
            .collect()
    }
}

fn region_of(regions: &[RamRegion], gpa: u64) -> Option<&RamRegion> {
    regions
        .iter()
        .find(|r| gpa >= r.guest_base && gpa - r.guest_base < r.size)
}

/// Nodes where the host holds each page now (move_pages, query mode); a
/// page it does not hold, or a failed query, is unknown.
struct HostView<'a> {
    regions: &'a [RamRegion],
    error: std::cell::RefCell<Option<String>>,
}

impl NodeView for HostView<'_> {
    fn nodes_of(&self, pages: &[u64]) -> Vec<Option<u32>> {
        let addrs: Vec<u64> = pages
            .iter()
            .map(|&p| region_of(self.regions, p).map_or(0, |r| r.host_addr + (p - r.guest_base)))
            .collect();
        match accounting::query_nodes(&addrs) {
            Ok(status) => status.into_iter().map(|s| u32::try_from(s).ok()).collect(),
            Err(e) => {
                *self.error.borrow_mut() = Some(format!("move_pages: {e}"));
                vec![None; pages.len()]
            }
        }
    }
}

impl PtWalker {
    /// The walker of a VM: each vCPU's guest node from `--numa` (node 0
    /// without it), its host node from `pins` and the host topology.
    pub fn for_vm(
        mem: GuestMemory,
        regions: Vec<RamRegion>,
        numa: Option<&crate::memory::numa::NumaConfig>,
        vcpus: u32,
        pins: Pins,
    ) -> Self {
        let guest_node: Vec<u32> = (0..vcpus)
            .map(|v| numa.and_then(|n| n.node_of_vcpu(v)).unwrap_or(0))
            .collect();
        let mut w = Self::new(mem, regions, guest_node, Vec::new());
        w.host_node = OnceLock::new();
        w.pins = pins;
        w
    }

    fn host_nodes(&self) -> &[Option<u32>] {
        self.host_node.get_or_init(|| {
            let host = HostNuma::read().ok();
            vcpu_host_nodes(&self.guest_node, self.pins.as_deref(), host.as_ref())
        })
    }

    /// `guest_node[i]` and `host_node[i]` are vCPU i's (see
    /// [`vcpu_host_nodes`]).
    pub fn new(
        mem: GuestMemory,
        regions: Vec<RamRegion>,
        guest_node: Vec<u32>,
        host_node: Vec<Option<u32>>,
    ) -> Self {
        PtWalker {
            mem,
            regions,
            guest_node,
            host_node: OnceLock::from(host_node),
            pins: None,
            state: Mutex::new(State {
                rejected: PtWalkRejected {
                    walk_budget: WALK_BUDGET,
                    ..Default::default()
                },
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The checks that need no walking.
    fn validate(&self, r: &abi::PtWalkRequest) -> Result<(), PtWalkReject> {
        if r.levels != 4 && r.levels != 5 {
            return Err(PtWalkReject::BadLevels(r.levels));
        }
        let vcpus = self.guest_node.len() as u32;
        if r.cpu >= vcpus {
            return Err(PtWalkReject::BadCpu { cpu: r.cpu, vcpus });
        }
        config_name(r.config).ok_or(PtWalkReject::BadConfig(r.config))?;
        if r.thp > 1 {
            return Err(PtWalkReject::BadThp(r.thp));
        }
        if r.samples == 0 {
            return Err(PtWalkReject::NoSamples);
        }
        let levels = r.levels as usize;
        let last = r.len.checked_sub(1).and_then(|l| r.start.checked_add(l));
        let range_ok = last.is_some_and(|last| {
            is_canonical(r.start, levels)
                && is_canonical(last, levels)
                && (r.start as i64 >= 0) == (last as i64 >= 0)
        });
        if !range_ok {
            return Err(PtWalkReject::BadRange {
                start: r.start,
                len: r.len,
                levels: r.levels,
            });
        }
        // CR3: bit 63 (no-flush with PCID) and the low 12 bits (PCD, PWT,
        // PCID) are not the address; bits 52-62 are reserved.
        let root = r.root & PTE_ADDR;
        if r.root & !(PTE_ADDR | (PAGE - 1) | 1 << 63) != 0
            || region_of(&self.regions, root).is_none()
        {
            return Err(PtWalkReject::BadRoot(r.root));
        }
        Ok(())
    }

    /// Answers one request from vCPU `sender`; a refusal comes back as the
    /// error (already counted) for the caller to warn about.
    pub fn handle(&self, sender: u32, payload: &[u8]) -> Result<(), PtWalkReject> {
        let t0 = now_ns();
        let r = decode(payload).and_then(|r| self.validate(&r).map(|()| r));
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.lock().rejected.count(&e);
                return Err(e);
            }
        };
        // Take a results slot and the samples from the budget up front, so
        // concurrent requests never overrun either.
        let samples = {
            let mut s = self.lock();
            let left = s.rejected.walk_budget - s.rejected.walked;
            let capped = r.samples.min(abi::PTWALK_MAX_SAMPLES);
            let refuse = if s.reserved >= MAX_RESULTS {
                Some(PtWalkReject::TooManyRequests)
            } else if left == 0 {
                Some(PtWalkReject::OverBudget)
            } else {
                None
            };
            if let Some(e) = refuse {
                s.rejected.count(&e);
                if e == PtWalkReject::OverBudget {
                    s.rejected.samples_over_budget += capped as u64;
                }
                return Err(e);
            }
            let n = (capped as u64).min(left) as u32;
            s.rejected.samples_capped += (r.samples - capped) as u64;
            s.rejected.samples_over_budget += (capped - n) as u64;
            s.rejected.walked += n as u64;
            s.reserved += 1;
            n
        };
        let tally = walk_model::walk_range(
            &self.mem,
            r.root,
            r.levels as usize,
            r.start,
            r.len,
            samples,
        );
        let (cpu, first) = (r.cpu as usize, 0usize);
        let guest = tally.count(
            &GuestView(&self.regions),
            Some(self.guest_node[cpu]),
            Some(self.guest_node[first]),
        );
        let host_view = HostView {
            regions: &self.regions,
            error: Default::default(),
        };
        let host_node = |i: usize| self.host_nodes().get(i).copied().flatten();
        let host = tally.count(&host_view, host_node(cpu), host_node(first));
        let host_error = host_view.error.into_inner();
        let result = PtWalkResult {
            sender,
            cpu: r.cpu,
            guest_node: self.guest_node[cpu],
            host_node: host_node(cpu),
            config: config_name(r.config).unwrap_or("?"),
            thp: r.thp == 1,
            levels: r.levels,
            root: r.root,
            start: r.start,
            len: r.len,
            samples_asked: r.samples,
            samples,
            ends: tally.ends,
            pages: tally.pages().len() as u64,
            guest_topology: guest,
            host_placement: host_error.is_none().then_some(host),
            host_error,
            host_us: now_ns().saturating_sub(t0) as f64 / 1000.0,
            at_us: since_origin_us(t0),
        };
        self.lock().results.push(result);
        Ok(())
    }

    /// The answered requests in arrival order, and the refusals.
    pub fn report(&self) -> (Vec<PtWalkResult>, PtWalkRejected) {
        let s = self.lock();
        let mut results = s.results.clone();
        results.sort_by(|a, b| a.at_us.total_cmp(&b.at_us));
        (results, s.rejected.clone())
    }
}

/// Per vCPU, the host node of the CPUs its thread may run on: its guest
/// node's pin (`pins[node]`) or, unpinned, every online CPU; None when
/// those CPUs span host nodes (or the host topology cannot be read).
pub fn vcpu_host_nodes(
    vcpu_guest_node: &[u32],
    pins: Option<&[CpuList]>,
    host: Option<&HostNuma>,
) -> Vec<Option<u32>> {
    let Some(host) = host else {
        return vec![None; vcpu_guest_node.len()];
    };
    vcpu_guest_node
        .iter()
        .map(|&node| {
            let cpus = pins
                .and_then(|p| p.get(node as usize))
                .unwrap_or(&host.online);
            let mut nodes = cpus.ids().iter().map(|&c| {
                host.nodes
                    .iter()
                    .find(|(_, list)| list.contains(c))
                    .map(|(&n, _)| n)
            });
            let first = nodes.next()??;
            nodes.all(|n| n == Some(first)).then_some(first)
        })
        .collect()
}

#[cfg(test)]
#[path = "ptwalk_tests.rs"]
mod tests;
