//! The bench's parsing and printing against reports built here, in the
//! shape the guest (design: ptrepl, ptrepl_update, ptrepl_replicas lines)
//! and the VMM (`ptwalk`, serialised from the real types) give.
use super::*;
use crate::memory::walk_model::{ModelCounts, RefCounts, ViewCounts};
use serde_json::json;

/// A TSC of 1 GHz: cycles are nanoseconds.
const KHZ: u64 = 1_000_000;

fn rc(local: u64, remote: u64) -> RefCounts {
    RefCounts {
        local,
        remote,
        unknown: 0,
    }
}

/// The view counts of `walks` walks of 4 guest levels, `gpt_remote` of
/// each walk's guest-PT refs remote, stage-2 local (ft_remote: remote under
/// first touch).
fn view(walks: u64, gpt_remote: u64, ft_remote: bool) -> ViewCounts {
    let gpt = rc(walks * (4 - gpt_remote), walks * gpt_remote);
    let ept = 20 * walks;
    let with = |remote: bool| ModelCounts {
        guest_pt: gpt,
        two_d: if remote {
            rc(gpt.local, gpt.remote + ept)
        } else {
            rc(gpt.local + ept, gpt.remote)
        },
    };
    ViewCounts {
        vcpu_node: Some(0),
        unknown_pages: 0,
        ept_first_touch: with(ft_remote),
        ept_replicated: with(false),
    }
}

fn walk(config: &str, thp: bool, node: u64, walks: u64, gpt_remote: u64) -> Value {
    json!({
        "config": config, "thp": thp, "guest_node": node, "cpu": node,
        "walks": walks, "non_present": 0,
        "guest_topology": serde_json::to_value(view(walks, gpt_remote, node == 1)).unwrap(),
        "host_placement": serde_json::to_value(view(walks, 0, false)).unwrap(),
    })
}

fn ptrepl(work: &str, config: &str, thp: bool, node: u64, ops: u64, cycles: u64) -> Value {
    json!({"event": "ptrepl", "work": work, "config": config, "thp": thp,
           "cpu": node, "node": node, "ops": ops, "cycles": cycles})
}

fn report() -> Value {
    json!({
        "tsc_khz": KHZ,
        "guest": [
            {"event": "ready"},
            ptrepl("gups", "local", false, 0, 1_000_000, 2_000_000_000),
            ptrepl("gups", "local", false, 1, 1, 1),
            {"event": "ptrepl_replicas", "config": "local", "thp": false, "replicas": 1, "pt_pages": [40, 0], "identical": true, "mappings": 16384},
            ptrepl("gups", "remote", false, 0, 1_000_000, 4_000_000_000u64),
            {"event": "ptrepl_replicas", "config": "remote", "thp": false, "replicas": 1, "pt_pages": [0, 40], "identical": true, "mappings": 16384},
            // The check may arrive before the timings of its run; it is
            // the space's, shared by both works.
            {"event": "ptrepl_replicas", "config": "replicated", "thp": false, "replicas": 2, "pt_pages": [40, 41], "identical": true, "mappings": 16384},
            ptrepl("gups", "replicated", false, 0, 1_000_000, 2_000_000_000),
            ptrepl("gups", "replicated", false, 1, 1_000_000, 2_000_000_000),
            ptrepl("chase", "replicated", false, 0, 1_000_000, 8_000_000_000u64),
            {"event": "ptrepl_update", "replicas": 1, "pages": 1000, "map_cycles": 1_000_000, "unmap_cycles": 1_000_000, "touch_cycles": 5_000_000, "flushes": 2},
            {"event": "ptrepl_update", "replicas": 2, "pages": 1000, "map_cycles": 1_500_000, "unmap_cycles": 1_500_000, "touch_cycles": 5_000_000, "flushes": 2},
        ],
        "ptwalk": [
            walk("local", false, 0, 4096, 0),
            walk("remote", false, 0, 4096, 4),
            walk("replicated", false, 0, 4096, 0),
            walk("replicated", false, 1, 4096, 0),
        ],
    })
}

fn result(runs: &[RunData], kvm: KvmFlavour, nodes: usize) -> PtreplBenchResult {
    let (rows, updates, goals) = assemble(runs);
    PtreplBenchResult {
        honesty: honesty(&kvm, nodes),
        kvm,
        host_nodes: nodes,
        host_binding: vec![0, 0],
        runs: runs.len() as u32,
        mib: 64,
        ops: 1_000_000,
        rows,
        updates,
        goals,
        anchors: ANCHORS,
    }
}

fn pvm() -> KvmFlavour {
    kvm_flavour(&|p| (p == "/sys/module/kvm_pvm").then(|| "1".into()))
}

#[test]
fn rows_come_from_node0_timings_walks_and_replica_checks() {
    let d = parse_run(&report()).unwrap();
    let (rows, updates, _) = assemble(&[d]);
    let names: Vec<(&str, &str, bool)> = rows
        .iter()
        .map(|r| (r.work.as_str(), r.config.as_str(), r.thp))
        .collect();
    assert_eq!(
        names,
        [
            ("gups", "local", false),
            ("gups", "remote", false),
            ("gups", "replicated", false),
            ("chase", "replicated", false)
        ]
    );
    // Both works ran in the one space the replica check is about.
    assert_eq!(rows[3].pt_pages_per_replica, Some(vec![40, 41]));
    assert_eq!(rows[3].cycles_per_op.unwrap().median, 8000.0);
    let local = &rows[0];
    // 1e6 ops in 2e9 cycles at 1 GHz: 2 s; node 1's line left out.
    assert_eq!(local.ops_per_s.unwrap().median, 500_000.0);
    assert_eq!(local.cycles_per_op.unwrap().median, 2000.0);
    let w = local.walk.as_ref().unwrap();
    assert_eq!(w.walks, 4096);
    assert_eq!(w.guest_topology.ept_first_touch.guest_pt.local, 4.0);
    assert_eq!(w.guest_topology.ept_first_touch.two_d.local, 24.0);
    assert_eq!(local.pt_pages_per_replica, Some(vec![40, 0]));
    assert_eq!(local.kib_per_replica, Some(vec![160, 0]));
    let remote = &rows[1];
    assert_eq!(remote.ops_per_s.unwrap().median, 250_000.0);
    let g = remote.walk.as_ref().unwrap().guest_topology;
    assert_eq!(g.ept_first_touch.guest_pt.remote, 4.0);
    assert_eq!(g.ept_first_touch.two_d.remote, 4.0);
    // The replicated row: only the node-0 vCPU's walks, and the replica
    // check that came before its timings.
    let repl = &rows[2];
    assert_eq!(repl.walk.as_ref().unwrap().walks, 4096);
    assert_eq!(
        (repl.replicas, repl.pt_pages_per_replica.clone()),
        (Some(2), Some(vec![40, 41]))
    );
    // 1000 maps and 1000 unmaps in 2 ms: 1e6 updates/s; 3 ms with 2.
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].updates_per_s.unwrap().median, 1_000_000.0);
    assert_eq!(updates[0].maps_per_s.unwrap().median, 1_000_000.0);
    assert!((updates[1].updates_per_s.unwrap().median - 666_666.67).abs() < 1.0);
    // 5e6 cycles at 1 GHz over 1000 pages: 5 µs per first touch.
    assert_eq!(updates[0].touch_us_per_page.unwrap().median, 5.0);
    assert!(updates[1].touch_us_per_page.is_some());
}

#[test]
fn goals_say_met_exactly_when_the_figures_reach_them() {
    let good = parse_run(&report()).unwrap();
    let r = result(std::slice::from_ref(&good), pvm(), 1);
    let met: Vec<bool> = r.goals.iter().map(|g| g.met).collect();
    assert_eq!(met, [true, true, true, true, true], "{:#?}", r.goals);
    assert!(
        r.goals[1]
            .figure
            .contains("0.00 vs 4.00 per walk: 100.0% fewer"),
        "{}",
        r.goals[1].figure
    );
    // Node 1's vCPU reaches first-touch stage-2 tables on node 0: 20
    // remote refs per walk of its, 10 per walk over both vCPUs.
    assert!(
        r.goals[1].figure.ends_with("every vCPU: 10.00"),
        "{}",
        r.goals[1].figure
    );
    assert!(
        r.goals[2].figure.ends_with("every vCPU: 0.00"),
        "{}",
        r.goals[2].figure
    );
    assert_eq!(r.goals[4].figure, "thp off: 40+41 PT pages (160+164 KiB)");

    // A remote guest-PT reference in a replicated walk (node 1's vCPU),
    // replicated 2D refs only 50% fewer, updates at 40% with 2 replicas,
    // and one replica only.
    let mut bad = report();
    bad["ptwalk"][3] = walk("replicated", false, 1, 4096, 1);
    bad["ptwalk"][2] = walk("replicated", false, 0, 4096, 2);
    bad["guest"][6]["pt_pages"] = json!([40, 0]);
    bad["guest"][11]["map_cycles"] = json!(2_500_000);
    bad["guest"][11]["unmap_cycles"] = json!(2_500_000);
    let r = result(&[parse_run(&bad).unwrap()], pvm(), 1);
    let met: Vec<bool> = r.goals.iter().map(|g| g.met).collect();
    assert_eq!(met, [false, false, false, false, false], "{:#?}", r.goals);
    assert!(
        r.goals[0].figure.starts_with("12288 remote in 8192 walks"),
        "{}",
        r.goals[0].figure
    );
    assert!(r.goals[4].goal.contains("per replica"));
    // Exactly at the update goal's edge: 50% is met.
    let mut edge = report();
    edge["guest"][11]["map_cycles"] = json!(2_000_000);
    edge["guest"][11]["unmap_cycles"] = json!(2_000_000);
    let r = result(&[parse_run(&edge).unwrap()], pvm(), 1);
    assert!(r.goals[3].met, "{:?}", r.goals[3]);
}

#[test]
fn no_figures_meet_no_goal() {
    let empty = json!({"tsc_khz": KHZ, "guest": [], "ptwalk": []});
    let r = result(&[parse_run(&empty).unwrap()], pvm(), 1);
    assert!(r.rows.is_empty());
    assert!(r.goals.iter().all(|g| !g.met), "{:#?}", r.goals);
    let no_tsc = json!({"guest": []});
    let e = parse_run(&no_tsc).unwrap_err().to_string();
    assert!(e.contains("tsc_khz"), "{e}");
}

#[test]
fn medians_over_runs() {
    let a = parse_run(&report()).unwrap();
    let mut slow = report();
    slow["guest"][1]["cycles"] = json!(4_000_000_000u64);
    let b = parse_run(&slow).unwrap();
    let (rows, _, _) = assemble(&[a.clone(), b, a]);
    let s = rows[0].ops_per_s.unwrap();
    assert_eq!((s.min, s.median, s.max), (250_000.0, 500_000.0, 500_000.0));
    // Walk counts add up over runs, per walk unchanged.
    let w = rows[0].walk.as_ref().unwrap();
    assert_eq!(w.walks, 3 * 4096);
    assert_eq!(w.guest_topology.ept_first_touch.guest_pt.local, 4.0);
}

#[test]
fn the_table_says_where_it_ran_and_keeps_anchors_apart() {
    let r = result(&[parse_run(&report()).unwrap()], pvm(), 1);
    let t = table(&r);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with("KVM: PVM (kvm_pvm); host NUMA nodes: 1"),
        "{t}"
    );
    assert!(
        lines[1].starts_with("timings here are NOT a replication speed-up")
            && lines[1].contains("1 NUMA node")
            && lines[1].contains("shadows"),
        "{t}"
    );
    let repl = lines
        .iter()
        .find(|l| l.starts_with("gups   replicated"))
        .unwrap();
    assert!(
        repl.contains("4.00/0.00") && repl.contains("40+41"),
        "{repl}"
    );
    assert!(
        repl.contains("1000000") && repl.contains("666667"),
        "{repl}"
    );
    let local = lines
        .iter()
        .find(|l| l.starts_with("gups   local"))
        .unwrap();
    assert!(
        local.contains("500000") && local.contains("2000.0"),
        "{local}"
    );
    assert_eq!(t.matches("(met)").count(), 5, "{t}");
    assert_eq!(
        t.matches("anchor (published, not our result): ").count(),
        2,
        "{t}"
    );
    // The JSON is the same result.
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["rows"].as_array().unwrap().len(), 4);
    assert_eq!(j["kvm"]["nested_paging"], false);
    assert_eq!(j["goals"][0]["met"], true);
}

#[test]
fn kvm_flavour_and_honesty() {
    let files = |list: &'static [(&'static str, &'static str)]| {
        move |p: &str| {
            list.iter()
                .find(|(k, _)| *k == p)
                .map(|(_, v)| v.to_string())
        }
    };
    let intel = kvm_flavour(&files(&[
        ("/sys/module/kvm_intel", ""),
        ("/sys/module/kvm_intel/parameters/ept", "Y\n"),
    ]));
    assert_eq!(intel.name, "VMX (kvm_intel)");
    assert_eq!(intel.nested_paging, Some(true));
    let amd = kvm_flavour(&files(&[
        ("/sys/module/kvm_amd", ""),
        ("/sys/module/kvm_amd/parameters/npt", "0\n"),
    ]));
    assert_eq!(
        (amd.name.as_str(), amd.nested_paging),
        ("SVM (kvm_amd)", Some(false))
    );
    assert_eq!(kvm_flavour(&files(&[])).nested_paging, None);
    assert_eq!(pvm().nested_paging, Some(false));
    assert!(honesty(&intel, 2).starts_with("timings: multi-node host"));
    let h = honesty(&intel, 1);
    assert!(
        h.contains("NOT") && h.contains("1 NUMA node") && !h.contains("shadows"),
        "{h}"
    );
    let h = honesty(&amd, 4);
    assert!(
        h.contains("NOT") && h.contains("SVM (kvm_amd) does not walk"),
        "{h}"
    );
}

#[test]
fn guest_nodes_go_to_host_nodes_0_and_1_when_there_are_two() {
    use crate::memory::numa::CpuList;
    let host = |ids: &[u32]| HostNuma {
        nodes: ids.iter().map(|&i| (i, CpuList::new(vec![i]))).collect(),
        online: CpuList::new(ids.to_vec()),
    };
    assert_eq!(binding(&host(&[0])), vec![0, 0]);
    assert_eq!(binding(&host(&[0, 1, 2, 3])), vec![0, 1]);
    assert_eq!(binding(&host(&[0, 2])), vec![0, 2]);
    assert_eq!(node_mib(64), 384);
    assert_eq!(node_mib(1) % 2, 0);
}
