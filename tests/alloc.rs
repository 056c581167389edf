//! `workload=alloc`: the guest kernel's page and slab allocators under a
//! mixed load from every vCPU, and the fragmentation experiment with
//! grouping by mobility on and off (seed 3.3).
#[macro_use]
mod common;

use common::{run, u64_at};
use serde_json::Value;

fn alloc_workload(extra: &str) -> Value {
    let cmdline = format!("workload=alloc alloc_iters=40000 {extra}");
    let out = run(&["--vcpus", "2", "--memory", "256M", "--cmdline", &cmdline]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    out.guest_event("workload").clone()
}

#[test]
fn alloc_workload_returns_every_page_and_reports_the_allocator() {
    require_kvm!();
    let w = alloc_workload("");
    assert_eq!(w["ok"], true, "{w}");
    assert_eq!(
        u64_at(&w, "free_pages_before"),
        u64_at(&w, "free_pages_after")
    );
    assert_eq!(u64_at(&w, "free_errors"), 0);
    let per_cpu = w["per_cpu"].as_array().unwrap();
    assert_eq!(per_cpu.len(), 2);
    for c in per_cpu {
        let orders: Vec<u64> = c["allocs_per_order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(orders.len(), 11);
        assert!(
            orders[0] > 0 && orders[10] > 0,
            "every order exercised: {orders:?}"
        );
        assert!(u64_at(c, "slab_allocs") > 0);
    }
    let vm = &w["vmstat"];
    assert_eq!(vm["pgalloc"], vm["pgfree"], "{vm}");
    assert!(
        u64_at(vm, "pcp_alloc_hit") > u64_at(vm, "pcp_refill"),
        "per-CPU lists serve most order-0 requests"
    );
    let zones = w["zones"].as_array().unwrap();
    assert!(zones.iter().any(|z| z["zone"] == "DMA32"));
    for z in zones {
        let wm: Vec<u64> = z["watermarks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(wm[0] < wm[1] && wm[1] < wm[2], "{wm:?}");
        assert_eq!(z["pagetypeinfo"]["Movable"].as_array().unwrap().len(), 11);
        assert_eq!(z["fragmentation_index"].as_array().unwrap().len(), 11);
    }
    assert!(w["slab"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["cache"] == "kmalloc-rcl-64"));
}

#[test]
fn grouping_by_mobility_keeps_huge_blocks_free() {
    require_kvm!();
    let on = alloc_workload("mobility_grouping=on")["fragmentation"].clone();
    let off = alloc_workload("mobility_grouping=off")["fragmentation"].clone();
    assert_eq!(
        (
            on["grouping_by_mobility"].as_bool(),
            off["grouping_by_mobility"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let (free_on, max_on) = (
        u64_at(&on, "free_order9_blocks"),
        u64_at(&on, "max_order9_blocks"),
    );
    let free_off = u64_at(&off, "free_order9_blocks");
    assert!(
        free_on * 10 >= max_on * 8,
        "grouping on: {free_on} of {max_on} order-9 blocks free"
    );
    assert!(
        free_on > 4 * free_off.max(1),
        "on {free_on} vs off {free_off}"
    );
    assert_eq!(
        (on["restored"].as_bool(), off["restored"].as_bool()),
        (Some(true), Some(true))
    );
}

#[test]
fn bad_mobility_grouping_value_is_a_guest_error() {
    require_kvm!();
    let out = run(&["--cmdline", "workload=alloc mobility_grouping=maybe"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let e = out.guest_event("error");
    assert!(
        e["message"].as_str().unwrap().contains("on, off or auto"),
        "{e}"
    );
}
