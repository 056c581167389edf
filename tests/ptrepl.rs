//! The guest kernel on guest-mm's page tables and `workload=ptrepl`: the
//! kernel runs on an identity map of its own, every configuration (page
//! tables local, remote, replicated × THP off/on × GUPS/chase) reports
//! per-vCPU timings, the replicas stay identical with every table page on
//! its node, each vCPU that ran asks for the VMM's walk model, the update
//! cost is measured with 1 and 2 replicas, and a one-node guest degrades
//! as documented.
#[macro_use]
mod common;

use common::{run, u64_at, Output, TWO_NODES};
use serde_json::Value;
use std::sync::OnceLock;

const CONFIGS: [&str; 3] = ["local", "remote", "replicated"];
const WORKS: [&str; 2] = ["gups", "chase"];
const OPS: u64 = 20_000;
const MIB: u64 = 8;

fn two_nodes(extra: &str) -> Output {
    let cmdline = format!("workload=ptrepl ptrepl_mib={MIB} ptrepl_ops={OPS} {extra}");
    let mut args = TWO_NODES.to_vec();
    args.extend(["--quiet", "--cmdline", &cmdline]);
    run(&args)
}

/// One two-node run shared by the tests that only read it.
fn shared() -> &'static Output {
    static OUT: OnceLock<Output> = OnceLock::new();
    OUT.get_or_init(|| two_nodes(""))
}

fn events<'a>(out: &'a Output, name: &str) -> Vec<&'a Value> {
    out.report()["guest"]
        .as_array()
        .expect("report.guest")
        .iter()
        .filter(|v| v["event"] == name)
        .collect()
}

fn ok(out: &Output) {
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let w = out.guest_event("workload");
    assert_eq!(w["name"], "ptrepl");
    assert_eq!(w["ok"], true, "{w:#}");
    assert_eq!(w["free_pages_after"], w["free_pages_before"], "{w:#}");
    assert_eq!(w["free_errors"], 0);
}

/// The vCPUs that run a configuration: node 0's for local and remote,
/// all for replicated.
fn runners(config: &str) -> Vec<u64> {
    if config == "replicated" {
        vec![0, 1]
    } else {
        vec![0]
    }
}

fn pt_pages(r: &Value) -> Vec<u64> {
    r["pt_pages"]
        .as_array()
        .expect("pt_pages")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn kernel_runs_on_its_own_identity_map() {
    require_kvm!();
    let out = shared();
    ok(out);
    let k = &out.guest_event("ready")["kernel_map"];
    // Not the VMM's boot PML4 (0x9000, in reserved low memory): a page
    // the kernel allocated.
    let root = u64_at(k, "root");
    assert!(root >= 1 << 20 && root.is_multiple_of(4096), "{k:#}");
    // 4 GiB covered with 2 MiB leaves: PML4, PDPT, 4 page directories.
    assert_eq!(k["mode"], "2m", "{k:#}");
    assert_eq!(u64_at(k, "leaves_2m"), 2048, "{k:#}");
    assert_eq!(u64_at(k, "leaves_1g"), 0, "{k:#}");
    assert_eq!(u64_at(k, "pt_pages"), 6, "{k:#}");
    // Every CPU loaded it, not only the BSP.
    assert_eq!(k["cpu_roots"], serde_json::json!([root, root]), "{k:#}");

    // kmap=boot stays on the VMM's map, for comparison.
    let out = run(&["--quiet", "--cmdline", "workload=boot kmap=boot"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let k = &out.guest_event("ready")["kernel_map"];
    assert_eq!(u64_at(k, "root"), 0x9000, "{k:#}");
    assert_eq!(u64_at(k, "pt_pages"), 0, "{k:#}");
    assert_eq!(k["cpu_roots"], serde_json::json!([0x9000]), "{k:#}");
}

#[test]
fn every_configuration_reports_every_vcpu_that_ran() {
    require_kvm!();
    let out = shared();
    ok(out);
    let recs = events(out, "ptrepl");
    for config in CONFIGS {
        for thp in [false, true] {
            for work in WORKS {
                let mut cpus: Vec<u64> = recs
                    .iter()
                    .filter(|r| r["config"] == config && r["thp"] == thp && r["work"] == work)
                    .map(|r| {
                        assert_eq!(u64_at(r, "ops"), OPS, "{r}");
                        assert!(u64_at(r, "cycles") > 0, "{r}");
                        assert_eq!(u64_at(r, "node"), u64_at(r, "cpu"), "{r}");
                        u64_at(r, "cpu")
                    })
                    .collect();
                cpus.sort();
                assert_eq!(cpus, runners(config), "{config} thp={thp} {work}");
            }
        }
    }
    assert_eq!(recs.len(), 2 * 2 * (1 + 1 + 2));
}

#[test]
fn replicas_are_identical_and_their_tables_on_their_nodes() {
    require_kvm!();
    let out = shared();
    ok(out);
    let reps = events(out, "ptrepl_replicas");
    assert_eq!(reps.len(), 6, "{reps:#?}");
    for r in &reps {
        // `identical` covers placement too: the checker refuses a replica
        // with a table page off its node.
        assert_eq!(r["identical"], true, "{r:#}");
        assert!(r.get("degraded").is_none(), "{r:#}");
        let pages = pt_pages(r);
        let (config, thp) = (r["config"].as_str().unwrap(), r["thp"] == true);
        match config {
            "local" => assert!(pages[0] > 0 && pages[1] == 0, "{r:#}"),
            "remote" => assert!(pages[0] == 0 && pages[1] > 0, "{r:#}"),
            _ => {
                assert_eq!(u64_at(r, "replicas"), 2);
                assert_eq!(pages[0], pages[1], "{r:#}");
            }
        }
        // Every data page is a mapping (plus the identity map's leaves):
        // 4 KiB or 2 MiB pages of MIB MiB per vCPU that ran.
        let per_cpu = if thp { MIB / 2 } else { MIB * 256 };
        let data = per_cpu * runners(config).len() as u64;
        let identity = u64_at(r, "mappings") - data;
        assert!((4..=2048).contains(&identity), "{r:#}");
    }
}

#[test]
fn update_cost_is_measured_with_one_and_two_replicas() {
    require_kvm!();
    let out = shared();
    ok(out);
    let ups = events(out, "ptrepl_update");
    let replicas: Vec<u64> = ups.iter().map(|u| u64_at(u, "replicas")).collect();
    assert_eq!(replicas, [1, 2], "{ups:#?}");
    for u in ups {
        assert_eq!(u64_at(u, "pages"), 1024, "{u}");
        assert_eq!(u64_at(u, "rounds"), 7, "{u}");
        assert!(u64_at(u, "map_cycles") > 0 && u64_at(u, "unmap_cycles") > 0);
        assert!(u64_at(u, "touch_cycles") > 0, "{u}");
        // One mmu_gather batch: one flush for all 1024 unmaps, past the
        // 33-page ceiling, so a CR3 reload rather than 256 invlpg.
        assert_eq!(u64_at(u, "flushes"), 1, "{u}");
        assert_eq!(u64_at(u, "full_flushes"), 1, "{u}");
        assert_eq!(u64_at(u, "invlpg_pages"), 0, "{u}");
    }
}

/// SYS_LOAD_CR3 refuses a torn-down root and a non-page value; a remap
/// with one flush is seen at once (the old translation gone), and a
/// one-page flush is one invlpg.
#[test]
fn cr3_loads_are_checked_and_a_remap_flush_drops_the_old_page() {
    require_kvm!();
    let out = shared();
    ok(out);
    let p = out.guest_event("ptrepl_probe");
    assert_eq!(p["stale_root_refused"], true, "{p:#}");
    assert_eq!(p["bad_root_refused"], true, "{p:#}");
    assert_eq!(p["remap_seen"], true, "{p:#}");
    assert_eq!(u64_at(p, "invlpg_pages"), 1, "{p:#}");
    assert_eq!(u64_at(p, "full_flushes"), 0, "{p:#}");
}

/// Each vCPU runs on its own node's replica when replicated, and on the
/// one table otherwise.
#[test]
fn every_vcpu_loads_its_own_nodes_root() {
    require_kvm!();
    let out = shared();
    ok(out);
    let reps = events(out, "ptrepl_replicas");
    for r in events(out, "ptrepl") {
        let rep = reps
            .iter()
            .find(|x| x["config"] == r["config"] && x["thp"] == r["thp"])
            .unwrap();
        let roots: Vec<u64> = rep["roots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            u64_at(r, "root"),
            roots[u64_at(r, "node") as usize],
            "{r}\n{rep}"
        );
        if rep["config"] == "replicated" {
            assert_ne!(roots[0], roots[1], "{rep}");
        } else {
            assert_eq!(roots[0], roots[1], "{rep}");
        }
    }
}

/// One walk request per vCPU that ran, per (configuration, THP), with the
/// root that vCPU had loaded. Answered in the report's `ptwalk` array once
/// the VMM has the walk model; a VMM without it warns about the kind.
#[test]
fn each_vcpu_that_ran_asks_for_the_walk_model() {
    require_kvm!();
    let out = shared();
    ok(out);
    let report = out.report();
    let Some(walks) = report.get("ptwalk").and_then(Value::as_array) else {
        let warned = report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("kind 3")));
        assert!(
            warned,
            "no ptwalk array and no warning of kind 3: {report:#}"
        );
        return;
    };
    assert_eq!(walks.len(), 2 * (1 + 1 + 2), "{walks:#?}");
    for config in CONFIGS {
        for thp in [false, true] {
            let mut cpus: Vec<u64> = walks
                .iter()
                .filter(|w| w["config"] == config && w["thp"] == thp)
                .map(|w| {
                    assert_eq!(u64_at(w, "len"), MIB << 20, "{w:#}");
                    assert_eq!(u64_at(w, "non_present"), 0, "{w:#}");
                    let pt = &w["guest_topology"]["ept_first_touch"]["guest_pt"];
                    let (local, remote) = (u64_at(pt, "local"), u64_at(pt, "remote"));
                    match config {
                        "remote" => assert_eq!(local, 0, "{w:#}"),
                        _ => assert_eq!(remote, 0, "{config}: {w:#}"),
                    }
                    u64_at(w, "cpu")
                })
                .collect();
            cpus.sort();
            assert_eq!(cpus, runners(config), "{config} thp={thp}");
        }
    }
}

#[test]
fn one_node_degrades_remote_and_replicated_to_local() {
    require_kvm!();
    let out = run(&[
        "--vcpus",
        "2",
        "--memory",
        "192M",
        "--quiet",
        "--cmdline",
        &format!("workload=ptrepl ptrepl_mib={MIB} ptrepl_ops={OPS} ptrepl_thp=off"),
    ]);
    ok(&out);
    assert_eq!(out.guest_event("workload")["nr_nodes"], 1);
    for r in events(&out, "ptrepl_replicas") {
        assert_eq!(r["identical"], true, "{r:#}");
        assert_eq!(u64_at(r, "replicas"), 1, "{r:#}");
        assert_eq!(pt_pages(r).len(), 1, "{r:#}");
        match r["config"].as_str().unwrap() {
            "local" => assert!(r.get("degraded").is_none(), "{r:#}"),
            _ => assert!(r["degraded"].as_str().unwrap().contains("one NUMA node")),
        }
    }
    // Both vCPUs are on node 0: both run every configuration.
    let recs = events(&out, "ptrepl");
    assert_eq!(recs.len(), 3 * 2 * 2);
    let ups = events(&out, "ptrepl_update");
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0]["replicas"], 1);
}

#[test]
fn a_subset_runs_only_what_was_asked() {
    require_kvm!();
    let out = two_nodes("ptrepl_configs=replicated ptrepl_thp=on ptrepl_work=chase");
    ok(&out);
    let recs = events(&out, "ptrepl");
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert!(recs
        .iter()
        .all(|r| r["config"] == "replicated" && r["thp"] == true && r["work"] == "chase"));
    assert_eq!(events(&out, "ptrepl_replicas").len(), 1);
}

#[test]
fn bad_ptrepl_values_are_refused_naming_the_value_and_the_range() {
    require_kvm!();
    for (arg, valid) in [
        ("ptrepl_mib=3", "even whole number of MiB from 2 to 1024"),
        ("ptrepl_mib=2048", "from 2 to 1024"),
        ("ptrepl_ops=0", "from 1 to 1000000000"),
        ("ptrepl_configs=local,bogus", "local, remote, replicated"),
        ("ptrepl_thp=", "off, on"),
        ("ptrepl_work=gups,", "gups, chase"),
        ("ptrepl_samples=65537", "from 1 to 65536"),
        ("kmap=4k", "2m, 1g or boot"),
    ] {
        let out = run(&["--quiet", "--cmdline", &format!("workload=ptrepl {arg}")]);
        assert_eq!(out.code, Some(1), "{arg}: {}", out.describe());
        let msg = out.guest_event("error")["message"]
            .as_str()
            .unwrap()
            .to_string();
        let (key, value) = arg.split_once('=').unwrap();
        assert!(
            msg.contains(&format!("'{value}'")) && msg.contains(key) && msg.contains(valid),
            "{arg}: {msg}"
        );
        assert!(events(&out, "ptrepl").is_empty(), "{arg} ran anyway");
    }
}

/// A configuration whose set-up fails (node 1 too small for vCPU 1's
/// region in `replicated`) sends no timing for it: the records of a pair
/// that did not run must not carry the previous pair's cycles. The run
/// fails, and the summary names why.
#[test]
fn a_pair_that_could_not_be_set_up_sends_no_timings() {
    require_kvm!();
    let out = run(&[
        "--vcpus",
        "2",
        "--memory",
        "80M",
        "--numa",
        "node=0,size=64M,cpus=0,host-node=0",
        "--numa",
        "node=1,size=16M,cpus=1,host-node=0",
        "--cmdline",
        "workload=ptrepl ptrepl_mib=16 ptrepl_ops=1000",
    ]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let err = out.guest_event("error")["message"].as_str().unwrap();
    assert!(err.contains("node 1"), "{err}");
    let reason = out.report()["exit"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(err),
        "the exit reason hides the guest's error: {reason}"
    );
    let recs = events(&out, "ptrepl");
    assert!(recs.iter().any(|r| r["config"] == "remote"), "{recs:#?}");
    for r in &recs {
        assert_ne!(r["config"], "replicated", "a pair that never ran: {r:#}");
        assert!(u64_at(r, "cycles") > 0, "{r:#}");
    }
}

/// README's `ptrepl` entry names every record the workload sends and each
/// of its fields, so a user reading a report finds what each one means (a
/// record added without a word there fails this).
#[test]
fn readme_names_every_ptrepl_record_and_field() {
    require_kvm!();
    let out = shared();
    ok(out);
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("reading README.md");
    let start = readme.find("- `ptrepl`: ").expect("README's ptrepl entry");
    let entry = &readme[start..start + readme[start..].find("\n- `boot`").unwrap()];
    let mut missing = Vec::new();
    for r in out.report()["guest"].as_array().unwrap() {
        let name = r["event"].as_str().unwrap_or_default();
        if !name.starts_with("ptrepl") && name != "workload" {
            continue;
        }
        let named = |k: &str| entry.contains(&format!("`{k}`"));
        if !named(name) {
            missing.push(name.to_string());
        }
        for k in r.as_object().unwrap().keys() {
            // Every record has these (the report section explains them).
            let common = ["event", "vcpu", "at_us", "name"].contains(&k.as_str());
            if !common && !named(k) {
                missing.push(format!("{name}.{k}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "README's ptrepl entry lacks {missing:?}"
    );
}
