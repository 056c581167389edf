//! `memvisor bench ptrepl`: page-table replication (Mitosis) and the 2D
//! walk (vMitosis), beside issue 10's goals.
//!
//! Each run spawns `memvisor run` with two guest NUMA nodes of one vCPU
//! each and `workload=ptrepl`: the guest runs GUPS and a pointer chase
//! with its page tables local, remote and replicated, THP off and on,
//! times them with the TSC, measures the cost of a page-table update with
//! 1 and with 2 replicas, checks its replicas, and asks the VMM's walk
//! model (`guest::ptwalk`) to count the references of its vCPUs' 2D walks.
//! The bench reads it all from the run's report: ops/s and cycles/op from
//! the guest's `ptrepl` lines and the report's `tsc_khz`; walk counts from
//! `ptwalk`; replica overhead from `ptrepl_replicas`; update rates from
//! `ptrepl_update`. Rows compare node-0 vCPUs (where `local` and `remote`
//! differ); figures are medians over `--runs`, walk counts per walk over
//! all runs.
//!
//! Host binding: on a host with two or more NUMA nodes, guest node i is
//! bound to host node i (RAM mbind, vCPU thread pinned to its CPUs); on a
//! one-node host both go to host node 0. The table says which host it ran
//! on, because timings only mean replication where the host has several
//! nodes and the hardware walks the guest's tables (VMX/SVM with EPT/NPT).
//! Under PVM the host shadows guest page tables, so the walk the model
//! counts is not the one the hardware makes, and every write to a live
//! page-table page may trap: the update rate here bounds every remapping
//! experiment on this host, it is not a native figure.
use super::boot::TempDir;
use super::stats::{summarize, Summary};
use crate::abi;
use crate::memory::numa::HostNuma;
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};

pub struct PtreplBenchOptions {
    pub runs: u32,
    pub json: bool,
    /// Data region per run (`ptrepl_mib`), even, 2 to [`MAX_MIB`].
    pub mib: u64,
    /// Timed operations per vCPU (`ptrepl_ops`), 1 to [`MAX_OPS`].
    pub ops: u64,
}

pub const MAX_MIB: u64 = abi::PTREPL_MAX_MIB;
/// Runs per bench at most (each boots a VM and runs every configuration).
pub const MAX_RUNS: u32 = 100;
pub const MAX_OPS: u64 = 1_000_000_000;
/// Goals from issue 10.
const GOAL_REMOTE_2D_CUT: f64 = 0.90;
const GOAL_UPDATE_RATIO: f64 = 0.5;
const ANCHORS: [&str; 2] = [
    "Mitosis (ASPLOS'20, 4-socket Xeon): remote page tables cost up to 3.4x on RandomAccess (GUPS), 2x on Redis; replication removes it, update cost grows with the replica count",
    "vMitosis (ASPLOS'21): a 2D walk takes up to 24 memory references; misplaced gPT+ePT cost up to 3.1x, replicated/migrated 1.8-3.1x faster",
];
const WORKS: [&str; 2] = ["gups", "chase"];
const CONFIGS: [&str; 3] = ["local", "remote", "replicated"];

/// The KVM this host runs, from the loaded modules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KvmFlavour {
    /// `PVM`, `VMX`, `SVM` or `unknown`, with the module.
    pub name: String,
    /// Whether the hardware walks the guest's own tables (EPT/NPT on);
    /// false under PVM, which shadows them.
    pub nested_paging: Option<bool>,
}

/// Reads /sys/module through `read` (a path → a file's contents, "" for a
/// directory, None if absent). A module built into the kernel (kvm_pvm
/// here) has a directory there but no `refcnt`, so the directory is the
/// test.
pub fn kvm_flavour(read: &dyn Fn(&str) -> Option<String>) -> KvmFlavour {
    let exists = |m: &str| read(&format!("/sys/module/{m}")).is_some();
    let param = |m: &str, p: &str| {
        read(&format!("/sys/module/{m}/parameters/{p}"))
            .map(|v| matches!(v.trim(), "Y" | "y" | "1"))
    };
    if exists("kvm_pvm") {
        KvmFlavour {
            name: "PVM (kvm_pvm)".into(),
            nested_paging: Some(false),
        }
    } else if exists("kvm_intel") {
        KvmFlavour {
            name: "VMX (kvm_intel)".into(),
            nested_paging: param("kvm_intel", "ept"),
        }
    } else if exists("kvm_amd") {
        KvmFlavour {
            name: "SVM (kvm_amd)".into(),
            nested_paging: param("kvm_amd", "npt"),
        }
    } else {
        KvmFlavour {
            name: "unknown (no kvm_pvm, kvm_intel or kvm_amd module)".into(),
            nested_paging: None,
        }
    }
}

/// The line above the table saying what its timings can mean here.
pub fn honesty(kvm: &KvmFlavour, host_nodes: usize) -> String {
    let mut why = Vec::new();
    if host_nodes < 2 {
        why.push(format!(
            "this host has {host_nodes} NUMA node, so both guest nodes are on host node 0"
        ));
    }
    if kvm.nested_paging != Some(true) {
        why.push(format!(
            "{} does not walk the guest's page tables in hardware (it shadows them, and a write to a live page-table page may be trapped)",
            kvm.name
        ));
    }
    if why.is_empty() {
        "timings: multi-node host with hardware nested paging; placement shows in them".into()
    } else {
        format!(
            "timings here are NOT a replication speed-up: {}; the walk model's counts (guest view) are what placement would change",
            why.join("; ")
        )
    }
}

/// References per walk, local / remote / unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PerWalk {
    pub local: f64,
    pub remote: f64,
    pub unknown: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ModelFigures {
    pub guest_pt: PerWalk,
    pub two_d: PerWalk,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ViewFigures {
    pub ept_first_touch: ModelFigures,
    pub ept_replicated: ModelFigures,
}

/// Summed counts of one view's model: [guest_pt l, r, u, two_d l, r, u].
type Sums = [u64; 6];

/// Walk counts summed over requests (and runs).
#[derive(Clone, Debug, Default, PartialEq)]
struct WalkSums {
    walks: u64,
    non_present: u64,
    /// [view][model]: view 0 guest topology, 1 host placement; model 0
    /// first touch, 1 replicated.
    sums: [[Sums; 2]; 2],
    /// Requests without a host view (move_pages failed).
    host_missing: u64,
}

const VIEWS: [&str; 2] = ["guest_topology", "host_placement"];
const MODELS: [&str; 2] = ["ept_first_touch", "ept_replicated"];

impl WalkSums {
    fn add_result(&mut self, w: &Value) {
        self.walks += w["walks"].as_u64().unwrap_or(0);
        self.non_present += w["non_present"].as_u64().unwrap_or(0);
        for (vi, view) in VIEWS.iter().enumerate() {
            if w[view].is_null() {
                self.host_missing += (vi == 1) as u64;
                continue;
            }
            for (mi, model) in MODELS.iter().enumerate() {
                let m = &w[view][model];
                for (ki, kind) in ["guest_pt", "two_d"].iter().enumerate() {
                    for (ri, rel) in ["local", "remote", "unknown"].iter().enumerate() {
                        self.sums[vi][mi][3 * ki + ri] += m[kind][rel].as_u64().unwrap_or(0);
                    }
                }
            }
        }
    }

    fn merge(&mut self, o: &WalkSums) {
        self.walks += o.walks;
        self.non_present += o.non_present;
        self.host_missing += o.host_missing;
        for v in 0..2 {
            for m in 0..2 {
                for k in 0..6 {
                    self.sums[v][m][k] += o.sums[v][m][k];
                }
            }
        }
    }

    fn view(&self, v: usize) -> ViewFigures {
        let per = |s: &Sums, k: usize| {
            let n = self.walks.max(1) as f64;
            PerWalk {
                local: s[3 * k] as f64 / n,
                remote: s[3 * k + 1] as f64 / n,
                unknown: s[3 * k + 2] as f64 / n,
            }
        };
        let model = |m: usize| ModelFigures {
            guest_pt: per(&self.sums[v][m], 0),
            two_d: per(&self.sums[v][m], 1),
        };
        ViewFigures {
            ept_first_touch: model(0),
            ept_replicated: model(1),
        }
    }
}

/// The walk model's figures for one row: per walk, over all runs.
#[derive(Clone, Debug, Serialize)]
pub struct WalkFigures {
    pub walks: u64,
    pub non_present: u64,
    /// Nodes from the `--numa` layout (guest node i on host node i).
    pub guest_topology: ViewFigures,
    /// Nodes where this host really holds the pages (move_pages).
    pub host_placement: Option<ViewFigures>,
}

/// One configuration: work × config × thp.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub work: String,
    pub config: String,
    pub thp: bool,
    /// Node-0 vCPUs: ops/s summed over them, cycles per op; medians.
    pub ops_per_s: Option<Summary>,
    pub cycles_per_op: Option<Summary>,
    /// Node-0 vCPUs' walks (the model counts by config × thp).
    pub walk: Option<WalkFigures>,
    /// The guest's replica check after the workload: replicas, PT pages
    /// of each replica (per node; a node without one has 0) and KiB.
    pub replicas: Option<u64>,
    pub pt_pages_per_replica: Option<Vec<u64>>,
    pub kib_per_replica: Option<Vec<u64>>,
    pub identical: Option<bool>,
}

/// The cost of page-table updates with `replicas` replicas.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateFigures {
    pub replicas: u64,
    pub pages: u64,
    pub maps_per_s: Option<Summary>,
    pub unmaps_per_s: Option<Summary>,
    /// Maps and unmaps together: 2 × pages over both times.
    pub updates_per_s: Option<Summary>,
    pub flushes: Option<f64>,
    /// The first read of each newly mapped page, in µs: on a host that
    /// shadows guest page tables (PVM) this, not the update, is what a
    /// remapping experiment pays per page.
    pub touch_us_per_page: Option<Summary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub figure: String,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct PtreplBenchResult {
    pub kvm: KvmFlavour,
    pub host_nodes: usize,
    /// The host node each guest node was bound to.
    pub host_binding: Vec<u32>,
    pub honesty: String,
    pub runs: u32,
    pub mib: u64,
    pub ops: u64,
    pub rows: Vec<Row>,
    pub updates: Vec<UpdateFigures>,
    pub goals: Vec<Goal>,
    pub anchors: [&'static str; 2],
}

type UpdateSample = (u64, f64, f64, f64, f64, f64);

/// Row key: work, config, thp.
type Key = (String, String, bool);

/// What one run's report says.
#[derive(Clone, Debug, Default)]
pub struct RunData {
    /// Per row, node-0 vCPUs: (ops/s summed, cycles per op).
    timings: BTreeMap<Key, (f64, f64)>,
    /// Per (config, thp, guest node).
    walks: BTreeMap<(String, bool, u64), WalkSums>,
    /// Per (config, thp), the space both works ran in: (replicas,
    /// pt_pages per node, identical).
    replicas: BTreeMap<(String, bool), (u64, Vec<u64>, bool)>,
    /// Per replica count: (pages, maps/s, unmaps/s, updates/s, flushes,
    /// µs per first touch).
    updates: BTreeMap<u64, UpdateSample>,
}

fn key_of(e: &Value) -> Option<Key> {
    Some((
        e["work"].as_str()?.to_string(),
        e["config"].as_str()?.to_string(),
        e["thp"].as_bool()?,
    ))
}

/// Reads one run's report.
pub fn parse_run(r: &Value) -> Result<RunData> {
    let khz = r["tsc_khz"].as_f64().filter(|k| *k > 0.0);
    let hz = khz.context("the report has no tsc_khz: cycles cannot be turned into time")? * 1e3;
    let guest = r["guest"]
        .as_array()
        .context("the report has no guest lines")?;
    let mut d = RunData::default();
    // Per row: Σ ops/s, Σ ops, Σ cycles of node-0 vCPUs.
    let mut t: BTreeMap<Key, (f64, f64, f64)> = BTreeMap::new();
    for e in guest {
        match e["event"].as_str() {
            Some("ptrepl") if e["node"] == 0 => {
                let key = key_of(e).context("a ptrepl line without work, config or thp")?;
                let (ops, cycles) = (
                    e["ops"].as_f64().context("a ptrepl line without ops")?,
                    e["cycles"]
                        .as_f64()
                        .context("a ptrepl line without cycles")?,
                );
                if cycles > 0.0 {
                    let s = t.entry(key).or_default();
                    s.0 += ops / (cycles / hz);
                    s.1 += ops;
                    s.2 += cycles;
                }
            }
            Some("ptrepl_replicas") => {
                let (Some(config), Some(thp)) = (e["config"].as_str(), e["thp"].as_bool()) else {
                    continue;
                };
                let key = (config.to_string(), thp);
                let pages = e["pt_pages"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                d.replicas.insert(
                    key,
                    (
                        e["replicas"].as_u64().unwrap_or(0),
                        pages,
                        e["identical"].as_bool().unwrap_or(false),
                    ),
                );
            }
            Some("ptrepl_update") => {
                let n = |k: &str| e[k].as_f64().unwrap_or(0.0);
                let (pages, map, unmap) = (n("pages"), n("map_cycles"), n("unmap_cycles"));
                if map > 0.0 && unmap > 0.0 {
                    d.updates.insert(
                        e["replicas"].as_u64().unwrap_or(0),
                        (
                            pages as u64,
                            pages / (map / hz),
                            pages / (unmap / hz),
                            2.0 * pages / ((map + unmap) / hz),
                            n("flushes"),
                            n("touch_cycles") / hz * 1e6 / pages.max(1.0),
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    d.timings = t
        .into_iter()
        .map(|(k, (rate, ops, cycles))| (k, (rate, cycles / ops.max(1.0))))
        .collect();
    for w in r["ptwalk"].as_array().into_iter().flatten() {
        let (Some(config), Some(thp), Some(node)) = (
            w["config"].as_str(),
            w["thp"].as_bool(),
            w["guest_node"].as_u64(),
        ) else {
            continue;
        };
        d.walks
            .entry((config.to_string(), thp, node))
            .or_default()
            .add_result(w);
    }
    Ok(d)
}

fn sum_walks(runs: &[RunData], f: impl Fn(&(String, bool, u64)) -> bool) -> WalkSums {
    let mut s = WalkSums::default();
    for r in runs {
        for (k, w) in &r.walks {
            if f(k) {
                s.merge(w);
            }
        }
    }
    s
}

fn summary_of(runs: &[RunData], f: impl Fn(&RunData) -> Option<f64>) -> Option<Summary> {
    summarize(&runs.iter().filter_map(f).collect::<Vec<_>>())
}

/// Rows, updates and goals from the runs.
pub fn assemble(runs: &[RunData]) -> (Vec<Row>, Vec<UpdateFigures>, Vec<Goal>) {
    let mut keys: Vec<Key> = runs
        .iter()
        .flat_map(|r| r.timings.keys().cloned())
        .collect();
    let rank = |k: &Key| {
        let pos = |list: &[&str], s: &str| list.iter().position(|x| *x == s).unwrap_or(list.len());
        (pos(&WORKS, &k.0), pos(&CONFIGS, &k.1), k.2, k.clone())
    };
    keys.sort_by_key(rank);
    keys.dedup();
    let rows = keys
        .into_iter()
        .map(|k| {
            let w = sum_walks(runs, |(c, t, n)| *c == k.1 && *t == k.2 && *n == 0);
            let repl = runs
                .iter()
                .rev()
                .find_map(|r| r.replicas.get(&(k.1.clone(), k.2)));
            Row {
                ops_per_s: summary_of(runs, |r| r.timings.get(&k).map(|t| t.0)),
                cycles_per_op: summary_of(runs, |r| r.timings.get(&k).map(|t| t.1)),
                walk: (w.walks + w.non_present > 0).then(|| WalkFigures {
                    walks: w.walks,
                    non_present: w.non_present,
                    guest_topology: w.view(0),
                    host_placement: (w.host_missing == 0).then(|| w.view(1)),
                }),
                replicas: repl.map(|r| r.0),
                pt_pages_per_replica: repl.map(|r| r.1.clone()),
                kib_per_replica: repl.map(|r| r.1.iter().map(|p| p * 4).collect()),
                identical: repl.map(|r| r.2),
                work: k.0,
                config: k.1,
                thp: k.2,
            }
        })
        .collect::<Vec<_>>();
    let mut counts: Vec<u64> = runs
        .iter()
        .flat_map(|r| r.updates.keys().copied())
        .collect();
    counts.sort();
    counts.dedup();
    let updates: Vec<UpdateFigures> = counts
        .iter()
        .map(|&n| {
            let u = |f: fn(&UpdateSample) -> f64| summary_of(runs, |r| r.updates.get(&n).map(f));
            UpdateFigures {
                replicas: n,
                pages: runs
                    .iter()
                    .find_map(|r| r.updates.get(&n).map(|x| x.0))
                    .unwrap_or(0),
                maps_per_s: u(|x| x.1),
                unmaps_per_s: u(|x| x.2),
                updates_per_s: u(|x| x.3),
                flushes: u(|x| x.4).map(|s| s.median),
                touch_us_per_page: u(|x| x.5),
            }
        })
        .collect();
    let goals = goals(runs, &rows, &updates);
    (rows, updates, goals)
}

fn goals(runs: &[RunData], rows: &[Row], updates: &[UpdateFigures]) -> Vec<Goal> {
    let mut g = Vec::new();
    // 1. Replicated: no remote guest-PT reference, every vCPU, guest view.
    let repl = sum_walks(runs, |(c, _, _)| c == "replicated");
    let remote_gpt = repl.sums[0][0][1];
    g.push(Goal {
        goal: "replicated: 0 remote guest-PT references (walk model, guest view, every vCPU)"
            .into(),
        figure: format!(
            "{remote_gpt} remote in {} walks (host view: {})",
            repl.walks,
            if repl.host_missing > 0 {
                "missing".into()
            } else {
                format!("{} remote", repl.sums[1][0][1])
            }
        ),
        met: repl.walks > 0 && remote_gpt == 0,
    });
    // 2. Replicated vs remote, remote 2D references per walk (node-0
    // vCPUs, guest view), under each stage-2 model.
    let node0 = |config: &'static str| sum_walks(runs, move |(c, _, n)| c == config && *n == 0);
    let (r, m) = (node0("replicated"), node0("remote"));
    // Beside it, every vCPU's walks: under first-touch stage-2 the node-1
    // vCPUs of `replicated` reach stage-2 tables on node 0, which is what
    // vMitosis's stage-2 replicas remove.
    let every = sum_walks(runs, |(c, _, _)| c == "replicated");
    for (mi, model) in MODELS.iter().enumerate() {
        let per = |w: &WalkSums| w.sums[0][mi][4] as f64 / w.walks.max(1) as f64;
        let (a, b) = (per(&r), per(&m));
        let cut = (b > 0.0).then(|| 1.0 - a / b);
        let all = format!("; replicated, every vCPU: {:.2}", per(&every));
        g.push(Goal {
            goal: format!(
                "replicated: at least {:.0}% fewer remote 2D references than remote ({model}, node-0 vCPUs, guest view)",
                GOAL_REMOTE_2D_CUT * 100.0
            ),
            figure: match cut {
                Some(c) => format!("{a:.2} vs {b:.2} per walk: {:.1}% fewer{all}", c * 100.0),
                None => format!("{a:.2} vs {b:.2} per walk: no remote walks to compare{all}"),
            },
            met: r.walks > 0 && cut.is_some_and(|c| c >= GOAL_REMOTE_2D_CUT),
        });
    }
    // 3. Updates with N replicas at least half as fast as with 1.
    let rate = |u: &UpdateFigures| u.updates_per_s.map(|s| s.median);
    let one = updates.iter().find(|u| u.replicas == 1).and_then(rate);
    let most = updates
        .iter()
        .filter(|u| u.replicas > 1)
        .max_by_key(|u| u.replicas);
    let n_rate = most.and_then(rate);
    g.push(Goal {
        goal: format!(
            "update rate with {} replicas at least {:.0}% of the rate with 1",
            most.map_or(2, |u| u.replicas),
            GOAL_UPDATE_RATIO * 100.0
        ),
        figure: match (one, n_rate) {
            (Some(a), Some(b)) => format!("{b:.0} vs {a:.0} maps+unmaps/s: {:.0}%", 100.0 * b / a),
            _ => "no ptrepl_update figures for 1 and N replicas".into(),
        },
        met: matches!((one, n_rate), (Some(a), Some(b)) if b >= GOAL_UPDATE_RATIO * a),
    });
    // 4. Overhead per replica reported.
    // Both works of a THP setting ran in one space: one figure per setting.
    let mut over: Vec<String> = rows
        .iter()
        .filter(|r| r.config == "replicated")
        .filter_map(|r| {
            let p = r.pt_pages_per_replica.as_ref()?;
            Some(format!(
                "thp {}: {} PT pages ({} KiB)",
                if r.thp { "on" } else { "off" },
                p.iter().map(u64::to_string).collect::<Vec<_>>().join("+"),
                p.iter()
                    .map(|x| (x * 4).to_string())
                    .collect::<Vec<_>>()
                    .join("+")
            ))
        })
        .collect();
    over.sort();
    over.dedup();
    g.push(Goal {
        goal: "replica memory overhead reported per replica".into(),
        figure: if over.is_empty() {
            "no ptrepl_replicas line for the replicated configuration".into()
        } else {
            over.join("; ")
        },
        met: rows.iter().any(|r| {
            r.config == "replicated"
                && r.pt_pages_per_replica
                    .as_ref()
                    .is_some_and(|p| p.iter().filter(|&&x| x > 0).count() >= 2)
        }),
    });
    g
}

/// The host nodes the two guest nodes go to: 0 and 1 on a multi-node
/// host (the first two node ids), else 0 for both.
fn binding(host: &HostNuma) -> Vec<u32> {
    let ids: Vec<u32> = host.nodes.keys().copied().take(2).collect();
    match ids.as_slice() {
        [a, b] => vec![*a, *b],
        _ => vec![ids.first().copied().unwrap_or(0); 2],
    }
}

/// Guest node size: the data region and its page tables for each of the
/// node's runs, plus room for the kernel; whole 2 MiB pages.
fn node_mib(mib: u64) -> u64 {
    (2 * mib + 256).div_ceil(2) * 2
}

fn one_run(dir: &TempDir, i: u32, o: &PtreplBenchOptions, bind: &[u32]) -> Result<RunData> {
    let exe = std::env::current_exe().context("locating the memvisor binary")?;
    let report = dir.0.join(format!("ptrepl-{i}.json"));
    let size = node_mib(o.mib);
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--quiet", "--timeout", "1800"])
        .args([
            "--cmdline",
            &format!("workload=ptrepl ptrepl_mib={} ptrepl_ops={}", o.mib, o.ops),
        ])
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (node, host) in bind.iter().enumerate() {
        cmd.args([
            "--numa",
            &format!("node={node},size={size}M,cpus={node},host-node={host}"),
        ]);
    }
    let out = cmd.output().context("spawning memvisor run")?;
    let text = std::fs::read(&report).unwrap_or_default();
    let _ = std::fs::remove_file(&report);
    if !out.status.success() {
        bail!(
            "run {i}: memvisor run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let r: Value = serde_json::from_slice(&text).context("parsing the run's report")?;
    parse_run(&r).with_context(|| format!("run {i}"))
}

impl PtreplBenchOptions {
    /// The options' ranges, each refusal naming its option, the value and
    /// what is valid; what fails is bad input (the CLI exits 2).
    pub fn check(&self) -> Result<()> {
        let (runs, mib, ops) = (self.runs, self.mib, self.ops);
        let ok = [
            (1..=MAX_RUNS).contains(&runs),
            (2..=MAX_MIB).contains(&mib) && mib.is_multiple_of(2),
            (1..=MAX_OPS).contains(&ops),
        ];
        ensure!(ok[0], "--runs {runs}: must be 1 to {MAX_RUNS}");
        ensure!(ok[1], "--mib {mib}: must be even, 2 to {MAX_MIB}");
        ensure!(ok[2], "--ops {ops}: must be 1 to {MAX_OPS}");
        Ok(())
    }
}

pub fn bench_ptrepl(o: &PtreplBenchOptions) -> Result<()> {
    o.check()?;
    let host = HostNuma::read().context("reading the host's NUMA nodes")?;
    let bind = binding(&host);
    let kvm = kvm_flavour(&|p| {
        let path = std::path::Path::new(p);
        if path.is_dir() {
            Some(String::new())
        } else {
            std::fs::read_to_string(path).ok()
        }
    });
    let dir = TempDir::new()?;
    let runs = (0..o.runs)
        .map(|i| one_run(&dir, i, o, &bind))
        .collect::<Result<Vec<_>>>()?;
    let (rows, updates, goals) = assemble(&runs);
    let r = PtreplBenchResult {
        honesty: honesty(&kvm, host.nodes.len()),
        kvm,
        host_nodes: host.nodes.len(),
        host_binding: bind,
        runs: o.runs,
        mib: o.mib,
        ops: o.ops,
        rows,
        updates,
        goals,
        anchors: ANCHORS,
    };
    if o.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", table(&r));
    }
    Ok(())
}

fn pair(p: &PerWalk) -> String {
    format!("{:.2}/{:.2}", p.local, p.remote)
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

/// The human form: host lines, one table, goals, anchors.
pub fn table(r: &PtreplBenchResult) -> String {
    let mut s = String::new();
    s += &format!(
        "KVM: {}; host NUMA nodes: {}; guest nodes 0,1 on host nodes {}\n",
        r.kvm.name,
        r.host_nodes,
        r.host_binding
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    s += &format!("{}\n", r.honesty);
    s += &format!(
        "{} run(s), ptrepl_mib={} ptrepl_ops={}; timings and walks: node-0 vCPUs; refs per walk local/remote; \
         guest = the --numa layout's nodes, host = where this host holds the pages (move_pages); \
         2D under stage-2 first-touch (ft) and replicated (rep) models\n",
        r.runs, r.mib, r.ops
    );
    let upd = |n: u64| {
        r.updates
            .iter()
            .find(|u| u.replicas == n)
            .and_then(|u| u.updates_per_s)
            .map_or_else(|| "-".into(), |s| format!("{:.0}", s.median))
    };
    let most = r
        .updates
        .iter()
        .map(|u| u.replicas)
        .max()
        .unwrap_or(2)
        .max(2);
    s += &format!(
        "{:<6} {:<10} {:<4} {:>12} {:>9} {:>11} {:>12} {:>12} {:>11} {:>12} {:>11} {:>11} {:>11}\n",
        "work",
        "config",
        "thp",
        "ops/s",
        "cyc/op",
        "gPT guest",
        "2D guest ft",
        "2D guest rep",
        "gPT host",
        "2D host ft",
        "PT pg/repl",
        "upd/s 1",
        format!("upd/s {most}"),
    );
    for row in &r.rows {
        let w = row.walk.as_ref();
        let g = w.map(|w| w.guest_topology);
        let h = w.and_then(|w| w.host_placement);
        let replicated = row.config == "replicated";
        s += &format!(
            "{:<6} {:<10} {:<4} {:>12} {:>9} {:>11} {:>12} {:>12} {:>11} {:>12} {:>11} {:>11} {:>11}\n",
            row.work,
            row.config,
            if row.thp { "on" } else { "off" },
            opt(row.ops_per_s, |x| format!("{:.0}", x.median)),
            opt(row.cycles_per_op, |x| format!("{:.1}", x.median)),
            opt(g, |v| pair(&v.ept_first_touch.guest_pt)),
            opt(g, |v| pair(&v.ept_first_touch.two_d)),
            opt(g, |v| pair(&v.ept_replicated.two_d)),
            opt(h, |v| pair(&v.ept_first_touch.guest_pt)),
            opt(h, |v| pair(&v.ept_first_touch.two_d)),
            opt(row.pt_pages_per_replica.as_ref(), |p| p
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("+")),
            if replicated { upd(1) } else { "-".into() },
            if replicated { upd(most) } else { "-".into() },
        );
    }
    s += "(PT pg/repl: page-table pages of each replica, 4 KiB each; upd/s: 4 KiB maps+unmaps per second in a live address space with 1 and N replicas)\n";
    for u in &r.updates {
        let ns = |x: Option<Summary>| opt(x, |s| format!("{:.0}", 1e9 / s.median));
        s += &format!(
            "page-table update cost, {} replica(s), {} pages: map {} ns/page, unmap {} ns/page (one batch, {} flush), first touch of a newly mapped page {} us\n",
            u.replicas,
            u.pages,
            ns(u.maps_per_s),
            ns(u.unmaps_per_s),
            opt(u.flushes, |f| format!("{f:.0}")),
            opt(u.touch_us_per_page, |t| format!("{:.2}", t.median)),
        );
    }
    for g in &r.goals {
        s += &format!(
            "goal: {}: {} ({})\n",
            g.goal,
            g.figure,
            super::verdict(g.met)
        );
    }
    for a in r.anchors {
        s += &format!("anchor (published, not our result): {a}\n");
    }
    s
}

#[cfg(test)]
#[path = "ptrepl_tests.rs"]
mod tests;
