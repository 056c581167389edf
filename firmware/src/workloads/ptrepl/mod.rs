//! ptrepl: page-table placement and replication (Mitosis) measured from
//! inside the guest, on guest-mm's page tables.
//!
//! One address space shared by the vCPUs that run (a process whose threads
//! are the vCPUs), data on each running vCPU's own node, one region per
//! vCPU at `vm_space::REGION_BASE + cpu * REGION_STRIDE`, mapped with 4 KiB
//! pages (THP off) or 2 MiB pages (THP on). Configurations:
//!
//! * `local`: one table on node 0, threads on node 0's vCPUs;
//! * `remote`: one table on node 1, threads on node 0's vCPUs;
//! * `replicated`: a replica per node, threads on every vCPU, each loading
//!   its own node's replica.
//!
//! With one node, `remote` keeps its table on node 0 and `replicated` has
//! one replica: both then equal `local`, and their records say so
//! (`"degraded"`). Each (configuration, THP) pair builds a space, runs
//! GUPS and chase timed with rdtsc per vCPU, asks the VMM for its walk
//! model once per vCPU that ran (`abi::RECORD_PTWALK`, tables unchanged
//! until the port write returns), checks that the replicas translate
//! identically with every table page on its node (the run fails if not),
//! and tears the space down. Then `update` measures page-table update cost
//! with 1 and with N replicas.
//!
//! Only CPU 0 builds, changes and tears down spaces, and only while every
//! other CPU waits at a barrier on the kernel's map (`arch::mmu`'s rule:
//! no IPIs needed).
mod params;
mod probes;
mod update;
mod work;

pub use params::OPTIONS;

use crate::hostio::{self, LINE};
use crate::smp::Barrier;
use crate::vm_space::{self, VmSpace, REGION_BASE};
use crate::{abi, mm, MAX_CPUS};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use guest_mm::mmzone::MAX_NUMNODES;
use guest_mm::pgtable::PageSize;
use guest_mm::SpinLock;
use params::{Params, CONFIGS};
use work::Work;

/// Regions are this far apart: room for the largest `ptrepl_mib`.
const REGION_STRIDE: u64 = 1 << 36;
const MIB: u64 = 1 << 20;

static BARRIER: Barrier = Barrier::new();
/// The space of the current (configuration, THP) pair; CPU 0's alone.
static SPACE: SpinLock<Option<VmSpace>> = SpinLock::new(None);
/// What each node's vCPUs load for the current pair (0: nothing to run).
static ROOTS: [AtomicU64; MAX_NUMNODES] = [const { AtomicU64::new(0) }; MAX_NUMNODES];
/// Set by any CPU that could not do its part; ends the run as failed.
static FAILED: AtomicBool = AtomicBool::new(false);
/// Cycles and a checksum per CPU per work of the current pair.
static CYCLES: [[AtomicU64; 2]; MAX_CPUS] = [const { [const { AtomicU64::new(0) }; 2] }; MAX_CPUS];
/// The root each CPU had loaded for the current pair.
static LOADED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static SUMS: [[AtomicU64; 2]; MAX_CPUS] = [const { [const { AtomicU64::new(0) }; 2] }; MAX_CPUS];
/// Whether each CPU timed each work in the current pair: a pair whose
/// set-up failed leaves CYCLES as the last pair that ran left them, and a
/// record must never carry another configuration's timing.
static RAN: [[AtomicBool; 2]; MAX_CPUS] =
    [const { [const { AtomicBool::new(false) }; 2] }; MAX_CPUS];

fn fail_flag() {
    FAILED.store(true, Relaxed);
}

/// The node a CPU is on.
fn node_of_cpu(cpu: usize) -> usize {
    mm::allocator().topology().cpu_node[cpu] as usize
}

/// Whether `cpu` runs in `config` (local/remote: node 0's vCPUs only).
fn runs(config: u32, cpu: usize) -> bool {
    config == abi::PTREPL_REPLICATED || node_of_cpu(cpu) == 0
}

fn region_base(cpu: usize) -> u64 {
    REGION_BASE + cpu as u64 * REGION_STRIDE
}

/// Why a configuration is not what its name says on this topology.
fn degraded(config: u32, nr_nodes: usize) -> Option<&'static str> {
    match config {
        _ if nr_nodes > 1 => None,
        abi::PTREPL_REMOTE => Some("one NUMA node: the table is on node 0, as in local"),
        abi::PTREPL_REPLICATED => Some("one NUMA node: one replica, as in local"),
        _ => None,
    }
}

pub fn run(cpu: usize, ncpus: usize) -> bool {
    let p = Params::get();
    let before = if cpu == 0 {
        mm::free_pages_drained()
    } else {
        0
    };
    for config in 0..CONFIGS.len() as u32 {
        if p.configs & (1 << config) == 0 {
            continue;
        }
        for thp in [false, true] {
            if p.thp & (1 << thp as u32) == 0 {
                continue;
            }
            if cpu == 0 && !FAILED.load(Relaxed) {
                setup(&p, config, thp, ncpus);
            }
            // Every CPU passes every barrier, failed or not: a CPU that
            // skipped one would leave the others waiting for ever.
            BARRIER.wait(ncpus);
            run_pair(&p, cpu, ncpus, config, thp);
            BARRIER.wait(ncpus);
            if cpu == 0 {
                finish_pair(&p, ncpus, config, thp);
            }
        }
    }
    BARRIER.wait(ncpus);
    if cpu != 0 {
        return true;
    }
    if !FAILED.load(Relaxed) {
        update::measure();
        if !probes::run() {
            fail_flag();
        }
    }
    report(before)
}

/// CPU 0: the pair's space, regions and replicas; publishes the roots.
fn setup(p: &Params, config: u32, thp: bool, ncpus: usize) {
    let nr = mm::allocator().topology().nr_nodes;
    let home = if config == abi::PTREPL_REMOTE && nr > 1 {
        1
    } else {
        0
    };
    let mut space = match VmSpace::new(0, home) {
        Ok(s) => s,
        Err(e) => return error(format_args!("ptrepl: building the address space: {e}")),
    };
    let size = if thp {
        PageSize::Size2M
    } else {
        PageSize::Size4K
    };
    for c in (0..ncpus).filter(|&c| runs(config, c)) {
        let node = node_of_cpu(c);
        if let Err(e) = space.map_region(region_base(c), p.mib * MIB, size, node) {
            let _ = space.teardown();
            return error(format_args!(
                "ptrepl: mapping {} MiB for cpu {c} on node {node}: {e}",
                p.mib
            ));
        }
    }
    if config == abi::PTREPL_REPLICATED {
        let nodes: [usize; MAX_NUMNODES] = core::array::from_fn(|n| n);
        if let Err(e) = space.set_replicas(&nodes[..nr]) {
            let _ = space.teardown();
            return error(format_args!("ptrepl: replicating: {e}"));
        }
    }
    for (n, r) in ROOTS.iter().enumerate() {
        r.store(if n < nr { space.root(n) } else { 0 }, Relaxed);
    }
    *SPACE.lock() = Some(space);
}

/// Every CPU: load the space, run each work timed, ask for the walk model,
/// leave the space.
fn run_pair(p: &Params, cpu: usize, ncpus: usize, config: u32, thp: bool) {
    let base = region_base(cpu);
    let bytes = p.mib * MIB;
    let root = ROOTS[node_of_cpu(cpu)].load(Relaxed);
    // No root: set-up failed and there is nothing to run.
    let active = runs(config, cpu) && root != 0 && vm_space::load(cpu, root);
    if runs(config, cpu) && root != 0 && !active {
        fail_flag();
    }
    LOADED[cpu].store(if active { root } else { 0 }, Relaxed);
    for w in Work::ALL {
        if p.works & (1 << w as u32) == 0 {
            continue;
        }
        let ok = active && !FAILED.load(Relaxed);
        RAN[cpu][w as usize].store(false, Relaxed);
        let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(cpu as u64 + 1);
        if ok {
            work::prepare(w, base, bytes, seed);
            if w == Work::Chase && !work::chase_is_one_cycle(base, bytes) {
                fail_flag();
            }
        }
        BARRIER.wait(ncpus);
        if ok {
            let (cycles, sum) = work::run(w, base, bytes, p.ops, seed);
            CYCLES[cpu][w as usize].store(cycles, Relaxed);
            SUMS[cpu][w as usize].store(sum, Relaxed);
            RAN[cpu][w as usize].store(true, Relaxed);
        }
        BARRIER.wait(ncpus);
    }
    if active {
        hostio::send_ptwalk(abi::PtWalkRequest {
            cpu: cpu as u32,
            config,
            root,
            start: base,
            len: bytes,
            samples: p.samples,
            levels: vm_space::LEVELS.count() as u32,
            thp: thp as u32,
            reserved: 0,
        });
        if !vm_space::leave(cpu) {
            fail_flag();
        }
    }
}

/// CPU 0, every CPU back on the kernel's map: the per-vCPU records, the
/// replica check, teardown.
fn finish_pair(p: &Params, ncpus: usize, config: u32, thp: bool) {
    let a = mm::allocator();
    let nr = a.topology().nr_nodes;
    let name = CONFIGS[config as usize];
    for w in Work::ALL {
        if p.works & (1 << w as u32) == 0 {
            continue;
        }
        for c in (0..ncpus).filter(|&c| RAN[c][w as usize].load(Relaxed)) {
            let mut l = LINE.lock();
            l.begin(abi::RECORD_JSON);
            l.fmt(format_args!(
                "{{\"event\":\"ptrepl\",\"work\":\"{}\",\"config\":\"{name}\",\"thp\":{thp},\"cpu\":{c},\
                 \"node\":{},\"root\":{},\"ops\":{},\"cycles\":{},\"checksum\":{}}}",
                w.name(),
                node_of_cpu(c),
                LOADED[c].load(Relaxed),
                p.ops,
                CYCLES[c][w as usize].load(Relaxed),
                SUMS[c][w as usize].load(Relaxed)
            ));
            hostio::send(l.finish());
        }
    }
    let Some(space) = SPACE.lock().take() else {
        return; // set-up failed and said why
    };
    let check = space.space().check_replicas(space.alloc());
    let replicas = space.space().replica_nodes().count();
    {
        let mut l = LINE.lock();
        l.begin(abi::RECORD_JSON);
        l.fmt(format_args!(
            "{{\"event\":\"ptrepl_replicas\",\"config\":\"{name}\",\"thp\":{thp},\"replicas\":{replicas},\
             \"home\":{},\"pt_pages\":[",
            space.space().home_node()
        ));
        for n in 0..nr {
            let sep = if n == 0 { "" } else { "," };
            l.fmt(format_args!("{sep}{}", space.space().pt_pages(n)));
        }
        l.raw("],\"roots\":[");
        for n in 0..nr {
            let sep = if n == 0 { "" } else { "," };
            l.fmt(format_args!("{sep}{}", space.root(n)));
        }
        l.fmt(format_args!("],\"identical\":{}", check.is_ok()));
        match check {
            Ok(m) => l.fmt(format_args!(",\"mappings\":{m}")),
            Err(e) => {
                l.raw(",\"mismatch\":");
                l.string_fmt(format_args!("{e:?}"));
            }
        }
        if let Some(why) = degraded(config, nr) {
            l.raw(",\"degraded\":");
            l.string(why);
        }
        l.raw("}");
        hostio::send(l.finish());
    }
    if check.is_err() {
        fail_flag();
    }
    for r in &ROOTS {
        r.store(0, Relaxed);
    }
    if space.teardown().is_err() {
        error(format_args!(
            "ptrepl: a CPU still had the space loaded at teardown"
        ));
    }
}

/// A guest error record, and the run fails.
fn error(msg: core::fmt::Arguments) {
    fail_flag();
    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.raw("{\"event\":\"error\",\"message\":");
    l.string_fmt(msg);
    l.raw("}");
    hostio::send(l.finish());
}

/// The verdict: nothing failed, every page came back.
fn report(before: u64) -> bool {
    let after = mm::free_pages_drained();
    let free_errors = vm_space::FREE_ERRORS.load(Relaxed);
    let failed = FAILED.load(Relaxed);
    let nr = mm::allocator().topology().nr_nodes;
    let ok = !failed && before == after && free_errors == 0;
    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"workload\",\"name\":\"ptrepl\",\"ok\":{ok},\"nr_nodes\":{nr},\
         \"free_pages_before\":{before},\"free_pages_after\":{after},\"free_errors\":{free_errors},\
         \"failed\":{failed}}}"
    ));
    hostio::send(l.finish());
    ok
}
