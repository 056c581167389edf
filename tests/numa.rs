//! Guest NUMA on the host side (`--numa`): bad specs refused with exit 2
//! naming the bad part; each node's RAM its own regions, bound to its host
//! node (policy read back as MPOL_BIND), its resident pages on that node,
//! and its vCPU threads pinned.
//!
//! This host has one NUMA node, so every page would land on node 0 with or
//! without mbind: the policy read back is what proves the binding, and the
//! `host-cpus=` test is what proves pinning (node 0's CPUs are all CPUs).
#[macro_use]
mod common;

use common::hugetlb::root_or_skip;
use common::{memvisor, run, u64_at, Output};
use memvisor::memory::reserve::Reservation;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const NODE0: &str = "node=0,size=128M,cpus=0,host-node=0";
const NODE1: &str = "node=1,size=128M,cpus=1,host-node=0";

/// `--numa A --numa B ...` followed by `extra`.
fn numa_args<'a>(specs: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--quiet"];
    for s in specs {
        args.extend_from_slice(&["--numa", s]);
    }
    args.extend_from_slice(extra);
    args
}

fn ok(out: Output) -> Output {
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.leftovers.is_empty(), "{:?}", out.leftovers);
    out
}

fn regions(out: &Output) -> &Vec<Value> {
    out.report()["memory"]["regions"]
        .as_array()
        .expect("memory.regions is an array")
}

/// Host node 0's CPUs as sysfs lists them: where an unpinned-by-host-cpus
/// vCPU of a node on host node 0 must run.
fn host_node0_cpulist() -> String {
    std::fs::read_to_string("/sys/devices/system/node/node0/cpulist")
        .expect("reading node0's cpulist")
        .trim()
        .to_string()
}

/// Every region: bound to host node 0 as read back, and each resident
/// sampled page on host node 0.
fn assert_bound_to_node0(out: &Output) {
    for r in regions(out) {
        assert_eq!(r["host_node"], 0, "{r:#}");
        assert_eq!(r["policy"], "bind", "{r:#}");
        assert_eq!(r["policy_nodes"], serde_json::json!([0]), "{r:#}");
        let res = &r["residency"];
        let resident = u64_at(res, "resident");
        assert!(u64_at(res, "sampled") >= resident, "{r:#}");
        let nodes = res["nodes"].as_array().expect("residency.nodes");
        let on0: u64 = nodes
            .iter()
            .filter(|n| n["node"] == 0)
            .map(|n| u64_at(n, "pages"))
            .sum();
        assert_eq!(on0, resident, "every resident page on host node 0: {r:#}");
        assert!(nodes.iter().all(|n| n["node"] == 0), "{r:#}");
    }
}

#[test]
fn two_nodes_boot_memtest_bound_and_pinned_to_host_node_0() {
    require_kvm!();
    let out = ok(run(&numa_args(&[NODE0, NODE1], &[])));
    let w = out.guest_event("workload");
    assert_eq!(w["ok"], true, "{w:#}");
    let rep = out.report();
    assert_eq!(
        u64_at(&rep["config"], "memory_bytes"),
        256 * MIB,
        "the nodes' sum"
    );
    assert_eq!(
        u64_at(&rep["config"], "vcpus"),
        2,
        "the vCPUs the nodes name"
    );
    let rs = regions(&out);
    assert_eq!(rs.len(), 2, "{rs:#?}");
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(u64_at(r, "node"), i as u64, "{r:#}");
        assert_eq!(u64_at(r, "slot"), i as u64, "{r:#}");
        assert_eq!(
            u64_at(r, "guest_base"),
            i as u64 * 128 * MIB,
            "consecutive: {r:#}"
        );
        assert_eq!(u64_at(r, "size"), 128 * MIB, "{r:#}");
        assert_eq!(u64_at(r, "host_addr") % (2 * MIB), 0, "{r:#}");
        // memtest writes every free page of both nodes.
        assert!(
            u64_at(&r["residency"], "resident") * 2 > u64_at(&r["residency"], "sampled"),
            "memtest touched most of node {i}: {r:#}"
        );
    }
    assert_bound_to_node0(&out);
    let cpus = host_node0_cpulist();
    let vcpus = rep["vcpus"].as_array().expect("vcpus");
    assert_eq!(vcpus.len(), 2);
    for (i, v) in vcpus.iter().enumerate() {
        assert_eq!(u64_at(v, "id"), i as u64);
        assert_eq!(u64_at(v, "node"), i as u64);
        assert_eq!(v["affinity"], cpus.as_str(), "{v:#}");
    }
    let nodes = rep["config"]["numa"].as_array().expect("config.numa");
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[1]["cpus"], serde_json::json!([1]));
    assert_eq!(nodes[1]["host_node"], 0);
    assert_eq!(nodes[1]["distances"], serde_json::json!([20, 10]));
    assert_eq!(u64_at(&nodes[0], "size"), 128 * MIB);
}

/// The guest learns the topology given, from ACPI (SRAT and SLIT): its
/// ready line names each node's vCPUs and pages and carries the SLIT,
/// here with distances other than the default 20 (one given on one side
/// only, so it applies both ways) and a matrix that is not uniform.
#[test]
fn the_guest_reports_the_srat_and_slit_given() {
    require_kvm!();
    let cases: [(&[&str], Value); 2] = [
        (
            &[NODE0, "node=1,size=128M,cpus=1,host-node=0,distance=0@31"],
            serde_json::json!([[10, 31], [31, 10]]),
        ),
        (
            &[
                "node=0,size=64M,cpus=0,host-node=0",
                "node=1,size=64M,cpus=1-2,host-node=0,distance=0@31",
                "node=2,size=128M,cpus=3,host-node=0,distance=0@25,distance=1@40",
            ],
            serde_json::json!([[10, 31, 25], [31, 10, 40], [25, 40, 10]]),
        ),
    ];
    for (specs, slit) in cases {
        let out = ok(run(&numa_args(
            specs,
            &["--cmdline", "console=ttyS0 workload=boot"],
        )));
        let ready = out.guest_event("ready");
        let n = &ready["numa"];
        assert_eq!(n["source"], "acpi", "{n:#}");
        assert_eq!(n["slit"], true, "{n:#}");
        assert_eq!(n["nr_nodes"], specs.len(), "{n:#}");
        assert_eq!(n["distance"], slit, "{specs:?}: {n:#}");
        // config.numa's rows are the same matrix.
        let rows: Vec<Value> = out.report()["config"]["numa"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["distances"].clone())
            .collect();
        assert_eq!(Value::from(rows), slit);
        let cfg = out.report()["config"]["numa"].as_array().unwrap().clone();
        let nodes = n["nodes"].as_array().unwrap();
        let mut total = 0;
        for (i, (g, c)) in nodes.iter().zip(&cfg).enumerate() {
            assert_eq!(u64_at(g, "id"), i as u64, "{g:#}");
            assert_eq!(g["cpus"], c["cpus"], "node {i}'s vCPUs: {g:#}");
            // Each node has its RAM; node 0 less the legacy hole and the
            // first MiB's partial pages, as e820 says.
            let pages = u64_at(g, "pages");
            let size_pages = u64_at(c, "size") / 4096;
            if i == 0 {
                assert!(pages <= size_pages && pages + 256 >= size_pages, "{g:#}");
            } else {
                assert_eq!(pages, size_pages, "{g:#}");
            }
            total += pages;
        }
        assert_eq!(total, u64_at(ready, "total_pages"), "{n:#}");
    }
}

#[test]
fn host_cpus_pin_each_nodes_vcpus_there() {
    require_kvm!();
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    // The last online CPU for node 1 (CPU 0 too on a one-CPU host).
    let last = online.trim().rsplit([',', '-']).next().unwrap().to_string();
    let n0 = "node=0,size=64M,cpus=0-1,host-node=0,host-cpus=0,distance=1@31";
    let n1 = format!("node=1,size=64M,cpus=2,host-node=0,host-cpus={last}");
    let out = ok(run(&numa_args(
        &[n0, &n1],
        &["--cmdline", "console=ttyS0 workload=boot"],
    )));
    let vcpus = out.report()["vcpus"].as_array().unwrap().clone();
    let aff: Vec<&str> = vcpus
        .iter()
        .map(|v| v["affinity"].as_str().unwrap())
        .collect();
    assert_eq!(aff, ["0", "0", last.as_str()], "{vcpus:#?}");
    let nodes: Vec<u64> = vcpus.iter().map(|v| u64_at(v, "node")).collect();
    assert_eq!(nodes, [0, 0, 1]);
    let cfg = &out.report()["config"]["numa"];
    assert_eq!(cfg[0]["host_cpus"], serde_json::json!([0]));
    assert_eq!(cfg[1]["distances"], serde_json::json!([31, 10]));
    assert_bound_to_node0(&out);
}

#[test]
fn without_numa_nothing_is_bound_or_pinned() {
    require_kvm!();
    let out = ok(run(&[
        "--quiet",
        "--vcpus",
        "2",
        "--cmdline",
        "workload=boot",
    ]));
    let rep = out.report();
    assert!(rep["config"]["numa"].is_null());
    let rs = regions(&out);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0]["node"], 0);
    assert!(rs[0]["host_node"].is_null());
    assert_eq!(rs[0]["policy"], "default", "no mbind without --numa");
    assert!(rs[0]["policy_nodes"].as_array().unwrap().is_empty());
    // The vCPU threads keep what memvisor inherited from us.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let ours = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    for v in rep["vcpus"].as_array().unwrap() {
        assert_eq!(v["affinity"], ours.as_str(), "{v:#}");
        assert_eq!(v["node"], 0);
    }
}

#[test]
fn a_node_straddling_the_mmio_gap_gets_two_regions_both_bound() {
    require_kvm!();
    let out = ok(run(&numa_args(
        &[
            "node=0,size=2G,cpus=0,host-node=0",
            "node=1,size=2G,cpus=1,host-node=0",
        ],
        &["--cmdline", "console=ttyS0 workload=boot"],
    )));
    let got: Vec<(u64, u64, u64)> = regions(&out)
        .iter()
        .map(|r| {
            (
                u64_at(r, "node"),
                u64_at(r, "guest_base"),
                u64_at(r, "size"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [(0, 0, 2 * GIB), (1, 2 * GIB, GIB), (1, 4 * GIB, GIB)],
        "node 1 split around the gap at 3-4 GiB"
    );
    assert_bound_to_node0(&out);
}

#[test]
fn memfd_ram_is_bound_too() {
    require_kvm!();
    let out = ok(run(&numa_args(
        &[NODE0, NODE1],
        &["--backing", "memfd", "--thp", "off"],
    )));
    assert_eq!(out.guest_event("workload")["ok"], true);
    assert_eq!(regions(&out).len(), 2);
    assert_bound_to_node0(&out);
}

#[test]
fn hugetlb_ram_is_bound_too() {
    require_kvm!();
    if !root_or_skip("hugetlb_ram_is_bound_too") {
        return;
    }
    // Held across both runs; other tests, benches and processes wait.
    let _reserved = Reservation::pages(256 * MIB / (2 * MIB)).unwrap();
    for backing in ["hugetlbfs", "memfd-hugetlb"] {
        let out = ok(run(&numa_args(&[NODE0, NODE1], &["--backing", backing])));
        assert_eq!(out.guest_event("workload")["ok"], true, "{backing}");
        assert_eq!(regions(&out).len(), 2, "{backing}");
        assert_bound_to_node0(&out);
        for r in regions(&out) {
            assert!(u64_at(&r["residency"], "resident") > 0, "{backing}: {r:#}");
        }
    }
}

/// `memvisor run` with these `--numa` specs and flags must exit 2 with the
/// first stderr line containing every needle, and leave nothing behind.
fn refused(specs: &[&str], extra: &[&str], needles: &[&str]) {
    let out = run(&numa_args(specs, extra));
    assert_eq!(out.code, Some(2), "{specs:?} {extra:?}\n{}", out.describe());
    let text = out.stderr.trim();
    for n in needles {
        assert!(text.contains(n), "{specs:?}: no {n:?} in: {text}");
    }
    assert!(out.report.is_none(), "no report for a refused run");
    assert!(out.leftovers.is_empty(), "{:?}", out.leftovers);
}

#[test]
fn malformed_specs_exit_2_naming_the_bad_part() {
    // Refused while parsing the command line: no KVM needed.
    refused(
        &["node=0,size=3M,cpus=0,host-node=0"],
        &[],
        &["`size=3M`", "multiple of 2M"],
    );
    refused(
        &["node=0,size=2M,cpus=0,host-node=0,colour=red"],
        &[],
        &[
            "`colour=red`",
            "valid keys: node, size, cpus, host-node, host-cpus, distance",
        ],
    );
    refused(
        &["node=0,size=2M,cpus=0,host-node=0,distance=1@10"],
        &[],
        &["`distance=1@10`", "11 to 254"],
    );
    refused(&["node=0,size=2M,cpus=0"], &[], &["no `host-node=`"]);
    refused(
        &["node=0,size=2M,cpus=3-1,host-node=0"],
        &[],
        &["`cpus=3-1`", "low to high"],
    );
}

#[test]
fn topologies_that_do_not_add_up_exit_2() {
    require_kvm!();
    refused(
        &[NODE0, NODE1],
        &["--memory", "512M"],
        &["add up to 256M", "--memory is 512M"],
    );
    refused(
        &[NODE0, NODE1],
        &["--vcpus", "3"],
        &["vCPUs 2 belong to no node"],
    );
    refused(
        &[NODE0, "node=1,size=128M,cpus=0-1,host-node=0"],
        &[],
        &["vCPU 0 is in the cpus of node 0 and node 1", "disjoint"],
    );
    refused(&[NODE0, NODE0], &[], &["node ids are 0,0", "exactly once"]);
    refused(&[NODE1], &[], &["node ids are 1", "each of 0 to 0"]);
    refused(
        &[
            "node=0,size=128M,cpus=0,host-node=0,distance=1@20",
            "node=1,size=128M,cpus=1,host-node=0,distance=0@40",
        ],
        &[],
        &[
            "distances must be symmetric",
            "distance=1@20",
            "distance=0@40",
        ],
    );
}

#[test]
fn missing_host_nodes_and_offline_cpus_exit_2() {
    require_kvm!();
    refused(
        &["node=0,size=128M,cpus=0,host-node=99"],
        &[],
        &[
            "--numa node=0: host-node=99",
            "/sys/devices/system/node/node99 does not exist",
        ],
    );
    refused(
        &["node=0,size=128M,cpus=0,host-node=0,host-cpus=8000"],
        &[],
        &["--numa node=0: host-cpus=8000", "not online"],
    );
}

#[test]
fn bench_boot_passes_numa_through() {
    require_kvm!();
    let out = memvisor(
        &[
            "bench", "boot", "--runs", "1", "--json", "--numa", NODE0, "--numa", NODE1,
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let j: Value = serde_json::from_str(&out.stdout).expect("bench JSON");
    assert_eq!(j["numa"], serde_json::json!([NODE0, NODE1]));
    assert_eq!(j["memory"], "256M");
    assert_eq!(j["vcpus"], 2);
    let bad = memvisor(
        &[
            "bench", "boot", "--runs", "1", "--numa", NODE0, "--memory", "512M",
        ],
        &[],
    );
    assert_eq!(bad.code, Some(2), "{}", bad.describe());
    assert!(bad.stderr.contains("--memory is 512M"), "{}", bad.stderr);
}
