//! numa: every memory policy, from every CPU, against the topology found.
//!
//! Each CPU allocates `numa_pages=N` pages (default 256) under each policy
//! through guest-mm's mempolicy API, with node sets chosen from the
//! topology so each policy is tested against something: Bind to the node
//! farthest from the CPU's home (remote when there is one), Preferred the
//! nearest other node, PreferredMany every node but home, Interleave every
//! node, Local none. Each page's node is checked as it arrives:
//!
//! - Bind: a node of the set, always;
//! - Local, Preferred: the home / preferred node, while it has room;
//! - PreferredMany: a node of the set, while the set has room;
//! - Interleave: the set's nodes in turn, lowest first, while the node due
//!   has room, so per-node counts end within one of each other.
//!
//! "Room" is free pages above the node's high watermarks: below that the
//! allocator may rightly fall back. With one node every policy reduces to
//! node 0, and the checks still hold. Pages are held (chained through
//! their first word) until every CPU is done, so no policy's pages are
//! another's, then freed; the free page count must come back. Any
//! violation, failed allocation or refused free fails the run.
use crate::hostio::{self, LINE};
use crate::smp::Barrier;
use crate::{abi, cmdline, mm, MAX_CPUS};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use guest_mm::gfp::Gfp;
use guest_mm::mempolicy::{InterleaveState, MemPolicy, Policy};
use guest_mm::mmzone::{ZoneType, MAX_NUMNODES};
use guest_mm::page_alloc::{PageAllocator, WMARK_HIGH};
use guest_mm::zonelist::NodeMask;
use guest_mm::{Pfn, PAGE_SIZE};

const NAMES: [&str; 5] = ["local", "bind", "preferred", "preferred_many", "interleave"];
const NR_POLICIES: usize = NAMES.len();
/// CPUs listed per policy in the record (totals cover them all).
const CPUS_SHOWN: usize = 16;

struct PerPolicy {
    pages: [AtomicU64; MAX_NUMNODES],
    violations: AtomicU64,
    failures: AtomicU64,
    /// The node set (or preferred node, as a one-bit set) it ran with.
    mask: AtomicU64,
    /// Chain of held pages: pfn + 1 of the last one, 0 for none.
    head: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: PerPolicy = PerPolicy {
    pages: [const { AtomicU64::new(0) }; MAX_NUMNODES],
    violations: AtomicU64::new(0),
    failures: AtomicU64::new(0),
    mask: AtomicU64::new(0),
    head: AtomicU64::new(0),
};
static STATS: [[PerPolicy; NR_POLICIES]; MAX_CPUS] = [const { [ZERO; NR_POLICIES] }; MAX_CPUS];
static FREE_ERRORS: AtomicU64 = AtomicU64::new(0);
static FREE_BEFORE: AtomicU64 = AtomicU64::new(0);
static BARRIER: Barrier = Barrier::new();

/// `numa_pages=N`: pages per policy per CPU.
pub fn parse_pages(v: &str) -> Option<u64> {
    v.parse().ok().filter(|n| (1..=65_536).contains(n))
}

fn node_free(a: &PageAllocator, node: usize) -> u64 {
    ZoneType::ALL
        .iter()
        .map(|&z| a.zone(node, z).free_pages())
        .sum()
}

/// Free pages above the high watermarks: the allocator has no reason to
/// look elsewhere.
fn has_room(a: &PageAllocator, node: usize) -> bool {
    let high: u64 = ZoneType::ALL
        .iter()
        .map(|&z| a.zone(node, z).wmark(WMARK_HIGH))
        .sum();
    node_free(a, node) > high
}

/// The policies for a CPU on `home`, in [`NAMES`] order.
fn policies(a: &PageAllocator, home: usize) -> [Policy; NR_POLICIES] {
    let t = a.topology();
    let nr = t.nr_nodes;
    let all = NodeMask::first_n(nr);
    let others = if nr > 1 { all.without(home) } else { all };
    let d = |n: usize| t.distances.get(home, n);
    // Farthest and nearest other node (the highest id wins a tie for
    // farthest, the lowest for nearest); home itself with one node.
    let farthest = others.iter().max_by_key(|&n| (d(n), n)).unwrap_or(home);
    let nearest = others.iter().min_by_key(|&n| (d(n), n)).unwrap_or(home);
    [
        Policy::new(MemPolicy::Local),
        Policy::new(MemPolicy::Bind(NodeMask::single(farthest))),
        Policy::new(MemPolicy::Preferred(nearest)),
        Policy::new(MemPolicy::PreferredMany(others)),
        Policy::new(MemPolicy::Interleave(all)),
    ]
}

/// Whether a page on `node` is what `policy` allows; `k` counts the
/// policy's earlier pages on this CPU (interleave's turn).
fn allowed(a: &PageAllocator, policy: &Policy, home: usize, k: u64, node: usize) -> bool {
    let wanted = |n: usize| node == n || !has_room(a, n);
    match policy.mode {
        MemPolicy::Default | MemPolicy::Local => wanted(home),
        MemPolicy::Preferred(n) => wanted(n),
        MemPolicy::Bind(m) => m.contains(node),
        MemPolicy::PreferredMany(m) => m.contains(node) || !m.iter().any(|n| has_room(a, n)),
        MemPolicy::Interleave(m) => {
            let turn = m.iter().nth((k % m.count().max(1) as u64) as usize);
            turn.is_none_or(wanted)
        }
    }
}

/// The nodes a policy names, for the record.
fn mask_of(p: &Policy) -> NodeMask {
    match p.mode {
        MemPolicy::Default | MemPolicy::Local => NodeMask::EMPTY,
        MemPolicy::Preferred(n) => NodeMask::single(n),
        MemPolicy::Bind(m) | MemPolicy::PreferredMany(m) | MemPolicy::Interleave(m) => m,
    }
}

pub fn run(cpu: usize, ncpus: usize) -> bool {
    let a = mm::allocator();
    let n = cmdline::get(crate::user::cmdline(), "numa_pages")
        .and_then(parse_pages)
        .unwrap_or(256);
    if cpu == 0 {
        FREE_BEFORE.store(mm::free_pages_drained(), Relaxed);
    }
    BARRIER.wait(ncpus);
    let home = a.topology().cpu_node[cpu] as usize;
    let nr = a.topology().nr_nodes;
    {
        let mut c = a.cpu(cpu);
        for (i, policy) in policies(a, home).iter().enumerate() {
            let st = &STATS[cpu][i];
            st.mask.store(mask_of(policy).bits(), Relaxed);
            if policy.validate(nr).is_err() {
                st.violations.fetch_add(1, Relaxed);
                continue;
            }
            let mut il = InterleaveState::new();
            for k in 0..n {
                let Some(p) = c.alloc_policy(Gfp::USER_MOVABLE, 0, policy, &mut il) else {
                    st.failures.fetch_add(1, Relaxed);
                    continue;
                };
                // SAFETY: the page is ours until freed below, identity mapped.
                unsafe { ((p.0 * PAGE_SIZE) as *mut u64).write(st.head.load(Relaxed)) };
                st.head.store(p.0 + 1, Relaxed);
                match a.node_of(p) {
                    Some(node) => {
                        st.pages[node].fetch_add(1, Relaxed);
                        if !allowed(a, policy, home, k, node) {
                            st.violations.fetch_add(1, Relaxed);
                        }
                    }
                    None => {
                        st.violations.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }
    BARRIER.wait(ncpus);
    {
        let mut c = a.cpu(cpu);
        for st in &STATS[cpu] {
            let mut next = st.head.swap(0, Relaxed);
            while next != 0 {
                let pfn = next - 1;
                // SAFETY: written above when this page was allocated.
                next = unsafe { ((pfn * PAGE_SIZE) as *const u64).read() };
                if c.free(Pfn(pfn), 0).is_err() {
                    FREE_ERRORS.fetch_add(1, Relaxed);
                }
            }
        }
    }
    BARRIER.wait(ncpus);
    if cpu != 0 {
        return true;
    }
    report(a, ncpus, n)
}

fn counts(st: &PerPolicy, nr: usize) -> [u64; MAX_NUMNODES] {
    let mut c = [0; MAX_NUMNODES];
    for (d, s) in c.iter_mut().zip(&st.pages).take(nr) {
        *d = s.load(Relaxed);
    }
    c
}

/// Interleave's counts over its set end within one of each other.
fn interleave_even(st: &PerPolicy, nr: usize) -> bool {
    let c = counts(st, nr);
    let m = NodeMask(st.mask.load(Relaxed));
    let (lo, hi) = m
        .iter()
        .filter(|&n| n < nr)
        .fold((u64::MAX, 0), |(lo, hi), n| (lo.min(c[n]), hi.max(c[n])));
    hi <= lo.saturating_add(1)
}

fn report(a: &PageAllocator, ncpus: usize, n: u64) -> bool {
    let nr = a.topology().nr_nodes;
    let before = FREE_BEFORE.load(Relaxed);
    let after = mm::free_pages_drained();
    let free_errors = FREE_ERRORS.load(Relaxed);
    let mut ok = before == after && free_errors == 0;
    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"workload\",\"name\":\"numa\",\"nr_nodes\":{nr},\"pages_per_policy\":{n},\
         \"free_pages_before\":{before},\"free_pages_after\":{after},\"free_errors\":{free_errors},\"policies\":["
    ));
    for (i, name) in NAMES.iter().enumerate() {
        let stats = || STATS[..ncpus].iter().map(|s| &s[i]);
        let violations: u64 = stats().map(|s| s.violations.load(Relaxed)).sum();
        let failures: u64 = stats().map(|s| s.failures.load(Relaxed)).sum();
        let even = i != 4 || stats().all(|s| interleave_even(s, nr));
        let mut total = [0u64; MAX_NUMNODES];
        for s in stats() {
            for (t, c) in total.iter_mut().zip(counts(s, nr)) {
                *t += c;
            }
        }
        let pol_ok = violations == 0 && failures == 0 && even;
        ok &= pol_ok;
        l.fmt(format_args!(
            "{}{{\"policy\":\"{name}\",\"ok\":{pol_ok},\"violations\":{violations},\"failures\":{failures},\"pages\":",
            if i == 0 { "" } else { "," }
        ));
        list(&mut l, &total[..nr]);
        l.raw(",\"per_cpu\":[");
        for (cpu, s) in stats().enumerate().take(CPUS_SHOWN) {
            let home = a.topology().cpu_node[cpu];
            l.fmt(format_args!(
                "{}{{\"cpu\":{cpu},\"home\":{home},\"nodes\":",
                if cpu == 0 { "" } else { "," }
            ));
            let m = NodeMask(s.mask.load(Relaxed));
            let mut ids = [0u64; MAX_NUMNODES];
            let k = m
                .iter()
                .zip(ids.iter_mut())
                .map(|(n, d)| *d = n as u64)
                .count();
            list(&mut l, &ids[..k]);
            l.raw(",\"pages\":");
            list(&mut l, &counts(s, nr)[..nr]);
            l.raw("}");
        }
        l.raw("]}");
    }
    l.fmt(format_args!("],\"ok\":{ok}}}"));
    hostio::send(l.finish());
    ok
}

fn list(l: &mut crate::json::Line, v: &[u64]) {
    l.raw("[");
    for (i, x) in v.iter().enumerate() {
        l.fmt(format_args!("{}{x}", if i == 0 { "" } else { "," }));
    }
    l.raw("]");
}
