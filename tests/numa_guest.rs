//! How the bundled guest kernel learns its NUMA topology: the ACPI tables
//! the VMM writes (RSDP, XSDT, MADT, SRAT, SLIT) are found through
//! boot_params, one guest-mm node is built per proximity domain, the ready
//! line reports what was found, and `workload=numa` checks every memory
//! policy's placement against it from every vCPU.
#[macro_use]
mod common;

use common::{run, u64_at, Output, TWO_NODES};
use serde_json::Value;

fn ok(out: &Output) {
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

fn numa(out: &Output) -> &Value {
    &out.guest_event("ready")["numa"]
}

fn counts(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_u64().expect("a count"))
        .collect()
}

/// The workload record's entry for `policy`.
fn policy<'a>(w: &'a Value, policy: &str) -> &'a Value {
    w["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .find(|p| p["policy"] == policy)
        .unwrap_or_else(|| panic!("no {policy} in {w:#}"))
}

#[test]
fn one_node_from_acpi_holds_all_ram_and_every_cpu() {
    require_kvm!();
    let out = run(&["--vcpus", "3", "--memory", "192M", "--quiet"]);
    ok(&out);
    let ready = out.guest_event("ready");
    let n = numa(&out);
    assert_eq!(n["source"], "acpi", "{n:#}");
    assert_eq!(n["rsdp"], "zero_page", "found through boot_params: {n:#}");
    assert_eq!(n["slit"], true);
    assert_eq!(n["nr_nodes"], 1);
    let node = &n["nodes"][0];
    assert_eq!(node["id"], 0);
    assert_eq!(node["pxm"], 0);
    assert_eq!(counts(&node["cpus"]), [0, 1, 2]);
    assert_eq!(node["nr_cpus"], 3);
    // Every page of RAM the VMM declared is on the node.
    let total = u64_at(ready, "total_pages");
    assert_eq!(u64_at(node, "pages"), total);
    assert_eq!(total, u64_at(&out.report()["memory"], "e820_ram_pages"));
    assert_eq!(u64_at(node, "free_pages"), u64_at(ready, "free_pages"));
    assert_eq!(n["distance"], serde_json::json!([[10]]));
}

#[test]
fn numa_workload_places_every_policy_on_node_0_with_one_node() {
    require_kvm!();
    let out = run(&[
        "--vcpus",
        "2",
        "--quiet",
        "--cmdline",
        "workload=numa numa_pages=100",
    ]);
    ok(&out);
    let w = out.guest_event("workload");
    assert_eq!(w["name"], "numa");
    assert_eq!(w["ok"], true, "{w:#}");
    assert_eq!(w["nr_nodes"], 1);
    assert_eq!(w["free_pages_after"], w["free_pages_before"], "{w:#}");
    for p in ["local", "bind", "preferred", "preferred_many", "interleave"] {
        let p = policy(w, p);
        assert_eq!(p["violations"], 0, "{p:#}");
        assert_eq!(counts(&p["pages"]), [200], "{p:#}");
        for c in p["per_cpu"].as_array().unwrap() {
            assert_eq!(counts(&c["pages"]), [100], "{c}");
        }
    }
}

#[test]
fn a_bad_numa_pages_value_is_refused() {
    require_kvm!();
    let out = run(&["--quiet", "--cmdline", "workload=numa numa_pages=0"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let e = out.guest_event("error");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("'0'") && msg.contains("numa_pages") && msg.contains("1 to 65536"),
        "{msg}"
    );
}

/// Two nodes of 128 MiB, CPU 0 on node 0 and CPU 1 on node 1, distance
/// 20: the guest reports both nodes, the SLIT, each node's pages and CPUs,
/// and `workload=numa` places each policy's pages where it says.
#[test]
fn two_nodes_from_srat_and_slit() {
    require_kvm!();
    let mut args = TWO_NODES.to_vec();
    args.extend(["--quiet", "--cmdline", "workload=numa numa_pages=200"]);
    let out = run(&args);
    ok(&out);
    let ready = out.guest_event("ready");
    let n = numa(&out);
    assert_eq!(
        (&n["source"], &n["nr_nodes"]),
        (&"acpi".into(), &2.into()),
        "{n:#}"
    );
    assert_eq!(n["distance"], serde_json::json!([[10, 20], [20, 10]]));
    let nodes = n["nodes"].as_array().unwrap();
    assert_eq!(counts(&nodes[0]["cpus"]), [0]);
    assert_eq!(counts(&nodes[1]["cpus"]), [1]);
    // Node 1 is all RAM (128 MiB); node 0 loses the legacy hole and the
    // first MiB's partial pages as e820 does.
    assert_eq!(u64_at(&nodes[1], "pages"), 128 << 8);
    assert_eq!(
        u64_at(&nodes[0], "pages") + u64_at(&nodes[1], "pages"),
        u64_at(ready, "total_pages")
    );

    let w = out.guest_event("workload");
    assert_eq!(w["ok"], true, "{w:#}");
    let per_cpu = |p: &str| -> Vec<Vec<u64>> {
        policy(w, p)["per_cpu"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| counts(&c["pages"]))
            .collect()
    };
    // Local: home. Bind, Preferred, PreferredMany: the other node.
    // Interleave: half each.
    assert_eq!(per_cpu("local"), [[200, 0], [0, 200]]);
    for p in ["bind", "preferred", "preferred_many"] {
        assert_eq!(per_cpu(p), [[0, 200], [200, 0]], "{p}");
    }
    assert_eq!(per_cpu("interleave"), [[100, 100], [100, 100]]);
}

/// The MADT and SRAT carry 8-bit APIC ids: a VM with more vCPUs than fit
/// is refused before it runs (exit 2, naming the count and the limit),
/// unless the host's KVM refuses it first.
#[test]
fn more_vcpus_than_xapic_ids_are_refused() {
    require_kvm!();
    let k = common::TempFile::new("kernel");
    let out = common::memvisor(&["kernel", "--output", k.as_str()], &[]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let out = run(&["--kernel", k.as_str(), "--vcpus", "256", "--memory", "64M"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.leftovers.is_empty(), "{:?}", out.leftovers);
    let e = &out.stderr;
    assert!(
        e.contains("256 vCPUs: MADT and SRAT carry 8-bit APIC ids, so 1 to 255 vCPUs fit")
            || e.contains("--vcpus 256: this host's KVM allows at most"),
        "{e}"
    );
}
