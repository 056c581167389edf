//! Memory accounting (the report's `memory` section and `GET /vm/memory`):
//! what the host and KVM say the guest's RAM is, for each backing; and a
//! discard seen from inside a running guest.
//!
//! The hugetlb test reserves 2 MiB pages itself (as root) and gives them
//! back, holding memvisor's hugetlb lock file so parallel tests and benches
//! do not shrink the pool under each other.
#[macro_use]
mod common;

use common::{run, u64_at, unique_path, Output, BIN};
use memvisor::api::client::request;
use memvisor::memory::backing::{Backing, BackingConfig, Thp};
use memvisor::memory::reserve::Reservation;
use memvisor::vstate::kvm_stats::KvmStats;
use memvisor::vstate::vm::Vm;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;
const TOUCH_MIB: u64 = 128;

/// `workload=touch touch_mib=128` in 256 MiB, with `extra` flags.
fn touch(extra: &[&str]) -> Output {
    let cmdline = format!("workload=touch touch_mib={TOUCH_MIB}");
    let mut args = vec!["--quiet", "--memory", "256M", "--cmdline", &cmdline];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let w = out.guest_event("workload");
    assert_eq!(w["name"], "touch", "{w:#}");
    assert_eq!(u64_at(w, "bytes"), TOUCH_MIB * MIB, "{w:#}");
    out
}

fn region0(out: &Output) -> &Value {
    &out.report()["memory"]["regions"][0]
}

fn kvm(out: &Output) -> &Value {
    &out.report()["memory"]["kvm"]
}

#[test]
fn thp_on_backs_touched_ram_with_huge_pages_and_kvm_maps_them_2m() {
    require_kvm!();
    let out = touch(&["--thp", "on"]);
    let r = region0(&out);
    let touched = u64_at(r, "rss_bytes");
    assert!(touched >= TOUCH_MIB * MIB, "{r:#}");
    let huge = u64_at(r, "anon_huge_bytes");
    assert!(huge * 10 >= touched * 9, "{huge} of {touched} THP\n{r:#}");
    let k = kvm(&out);
    let pages_2m = u64_at(k, "pages_2m");
    assert!(
        pages_2m * 2 * MIB * 10 >= touched * 9,
        "KVM maps {pages_2m} 2M pages for {touched} touched bytes\n{k:#}"
    );
    let res = &r["residency"];
    assert_eq!(u64_at(res, "sampled"), 4096, "{res:#}");
    // Half of RAM touched: about half of an even sample is resident.
    let resident = u64_at(res, "resident");
    assert!((2048..=2400).contains(&resident), "{res:#}");
    let on_nodes: u64 = res["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| u64_at(n, "pages"))
        .sum();
    assert_eq!(on_nodes, resident, "{res:#}");
}

#[test]
fn thp_off_gives_no_huge_pages_to_the_host_or_kvm() {
    require_kvm!();
    let out = touch(&["--thp", "off"]);
    let r = region0(&out);
    assert!(u64_at(r, "rss_bytes") >= TOUCH_MIB * MIB, "{r:#}");
    assert_eq!(u64_at(r, "anon_huge_bytes"), 0, "{r:#}");
    let k = kvm(&out);
    assert_eq!(u64_at(k, "pages_2m"), 0, "{k:#}");
    assert!(u64_at(k, "pages_4k") * 4096 >= TOUCH_MIB * MIB, "{k:#}");
}

#[test]
fn hugetlb_backings_put_all_of_guest_ram_in_huge_pages() {
    require_kvm!();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("REQUIRE_KVM").map_or(true, |v| v != "1"),
            "reserving hugetlb pages needs root, and REQUIRE_KVM=1 makes that a failure"
        );
        eprintln!("skipping: reserving hugetlb pages needs root");
        return;
    }
    let _pool = Reservation::pages(128).unwrap();
    for backing in ["hugetlbfs", "memfd-hugetlb"] {
        let out = touch(&["--backing", backing, "--prefault"]);
        let r = region0(&out);
        assert_eq!(u64_at(r, "hugetlb_bytes"), 256 * MIB, "{backing}\n{r:#}");
        assert_eq!(
            u64_at(r, "rss_bytes"),
            0,
            "{backing}: no 4 KiB pages\n{r:#}"
        );
        let res = &r["residency"];
        assert_eq!(u64_at(res, "page_bytes"), 2 * MIB, "{res:#}");
        assert_eq!(u64_at(res, "sampled"), 128, "{res:#}");
        assert_eq!(
            u64_at(res, "resident"),
            128,
            "{backing}: all resident\n{res:#}"
        );
        let k = kvm(&out);
        assert!(
            u64_at(k, "pages_2m") * 2 * MIB * 10 >= TOUCH_MIB * MIB * 9,
            "{backing}\n{k:#}"
        );
    }
}

/// Where the probe guest writes what it read: no memslot there, so each
/// write is an MMIO exit carrying the byte.
const PROBE_MMIO: u64 = 0x3000_0000;
const PROBE_DATA: u64 = 0x8000;
const PROBE_CODE: u64 = 0x1000;

/// 64-bit code run at CPL3 (natively, also on PVM hosts, where CPL0 code is
/// emulated and its accesses never go through KVM's page mappings):
///
/// ```text
/// mov al, [DATA]; mov [MMIO], al        ; what is there
/// mov byte [DATA], 0x5a                 ; the guest's own write
/// mov al, [DATA]; mov [MMIO], al        ; read back
/// mov byte [MMIO + 8], 1                ; done
/// ```
const PROBE: &[u8] = &[
    0x8a, 0x04, 0x25, 0x00, 0x80, 0x00, 0x00, // mov al, [0x8000]
    0x88, 0x04, 0x25, 0x00, 0x00, 0x00, 0x30, // mov [0x30000000], al
    0xc6, 0x04, 0x25, 0x00, 0x80, 0x00, 0x00, 0x5a, // mov byte [0x8000], 0x5a
    0x8a, 0x04, 0x25, 0x00, 0x80, 0x00, 0x00, // mov al, [0x8000]
    0x88, 0x04, 0x25, 0x00, 0x00, 0x00, 0x30, // mov [0x30000000], al
    0xc6, 0x04, 0x25, 0x08, 0x00, 0x00, 0x30, 0x01, // mov byte [0x30000008], 1
    0xeb, 0xfe, // jmp $
];

/// Runs the probe from its first instruction at CPL3; returns the bytes
/// it reported.
fn run_probe(vcpu: &mut kvm_ioctls::VcpuFd, cr3: u64) -> Vec<u8> {
    let mut s = memvisor::boot::regs::long_mode_sregs(vcpu.get_sregs().unwrap(), cr3);
    s.cs.dpl = 3;
    s.cs.selector |= 3;
    for seg in [&mut s.ds, &mut s.es, &mut s.ss] {
        seg.dpl = 3;
        seg.selector |= 3;
    }
    vcpu.set_sregs(&s).unwrap();
    vcpu.set_regs(&kvm_bindings::kvm_regs {
        rip: PROBE_CODE,
        rsp: 0x7000,
        rflags: 2,
        ..Default::default()
    })
    .unwrap();
    let mut seen = Vec::new();
    loop {
        match vcpu.run().unwrap() {
            kvm_ioctls::VcpuExit::MmioWrite(PROBE_MMIO, data) => seen.push(data[0]),
            kvm_ioctls::VcpuExit::MmioWrite(a, _) if a == PROBE_MMIO + 8 => return seen,
            e => panic!("unexpected exit {e:?}"),
        }
    }
}

/// A real guest reads what the VMM discarded as zeros: KVM's mapping of the
/// page goes with the host's (MMU notifier), and the guest's next access
/// faults in a fresh zero page.
#[test]
fn a_guest_reads_zeros_where_the_vmm_discarded() {
    require_kvm!();
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    for thp in [Thp::On, Thp::Off] {
        let cfg = BackingConfig {
            backing: Backing::Anon,
            thp,
        };
        let vm = Vm::new(&kvm, 16 * MIB, cfg, Default::default()).unwrap();
        let mem = vm.memory();
        memvisor::boot::regs::write_boot_tables(mem).unwrap();
        let cr3 = memvisor::boot::pagetables::build_identity_map(mem, 16 * MIB).unwrap();
        mem.write_slice(PROBE, GuestAddress(PROBE_CODE)).unwrap();
        mem.write_obj(0xa5u8, GuestAddress(PROBE_DATA)).unwrap();
        let mut vcpu = vm.fd.create_vcpu(0).unwrap();
        assert_eq!(
            run_probe(&mut vcpu, cr3),
            [0xa5, 0x5a],
            "{thp:?}: the VMM's byte, then the guest's"
        );
        let mapped = KvmStats::read_vm(&vm.fd).unwrap();
        assert!(
            mapped.pages_4k.unwrap_or(0) + mapped.pages_2m.unwrap_or(0) > 0,
            "{thp:?}: KVM mapped the guest's pages: {mapped:?}"
        );
        vm.ram().discard(GuestAddress(PROBE_DATA), 4096).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(PROBE_DATA)).unwrap(), 0);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(PROBE_CODE)).unwrap(),
            PROBE[0],
            "code kept"
        );
        assert_eq!(
            run_probe(&mut vcpu, cr3),
            [0x00, 0x5a],
            "{thp:?}: the guest reads zero after the discard"
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(PROBE_DATA)).unwrap(), 0x5a);
        assert_eq!(vm.ram().op_counts().discarded_bytes, 4096);
    }
}

/// A memvisor serving the API with a spinning guest.
struct Served {
    child: std::process::Child,
    sock: std::path::PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

impl Served {
    fn spawn(extra: &[&str]) -> Served {
        let sock = unique_path("mem.sock");
        let mut args = vec!["run", "--quiet", "--timeout", "60", "--api-sock"];
        args.push(sock.to_str().unwrap());
        args.extend_from_slice(extra);
        let child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Served { child, sock };
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&s.sock).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "no API socket");
            std::thread::sleep(Duration::from_millis(2));
        }
        s
    }

    fn get(&self, uri: &str) -> (u16, String) {
        request(&self.sock, "GET", uri, None).unwrap()
    }

    fn memory(&self) -> Value {
        let (code, body) = self.get("/vm/memory");
        assert_eq!(code, 200, "{body}");
        assert!(body.len() < 16 << 10, "bounded: {} bytes", body.len());
        serde_json::from_str(&body).unwrap()
    }
}

#[test]
fn get_vm_memory_answers_while_the_guest_runs_and_while_paused() {
    require_kvm!();
    let s = Served::spawn(&["--memory", "4100M", "--cmdline", "workload=spin"]);
    let t = Instant::now();
    while s.get("/").1.contains("Not started") {
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    let m = s.memory();
    let regions = m["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2, "{m:#}");
    let mut sum = 0;
    for (r, (base, size)) in regions
        .iter()
        .zip([(0, 3072 * MIB), (4096 * MIB, 1028 * MIB)])
    {
        assert_eq!(
            (u64_at(r, "guest_base"), u64_at(r, "size")),
            (base, size),
            "{r:#}"
        );
        assert!(r["error"].is_null(), "{r:#}");
        sum += u64_at(r, "rss_bytes");
        let res = &r["residency"];
        assert_eq!(u64_at(res, "sampled"), 4096, "{res:#}");
    }
    assert!(u64_at(&regions[0], "rss_bytes") > 0, "the boot touched RAM");
    assert_eq!(sum, u64_at(&m, "guest_rss_bytes"), "{m:#}");
    assert!(m["kvm"]["pages_2m"].is_u64(), "{m:#}");
    for k in [
        "discarded_bytes",
        "discard_ranges",
        "collapsed_bytes",
        "collapse_ranges",
    ] {
        assert_eq!(u64_at(&m, k), 0, "{k}");
    }
    let (code, body) = request(&s.sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).unwrap();
    assert_eq!(code, 204, "{body}");
    let paused = s.memory();
    assert_eq!(paused["regions"].as_array().unwrap().len(), 2);
    let (code, _) = request(&s.sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).unwrap();
    assert_eq!(code, 204);
    s.memory();
}

#[test]
fn get_vm_memory_before_start_is_refused() {
    require_kvm!();
    let s = Served::spawn(&["--wait-for-start"]);
    let (code, body) = s.get("/vm/memory");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not supported before starting"), "{body}");
}

#[test]
fn bad_touch_sizes_fail_naming_the_option_and_the_valid_ones() {
    require_kvm!();
    for bad in [
        "touch_mib=0",
        "touch_mib=abc",
        "touch_mib=16385",
        "touch_mib",
    ] {
        let cmdline = format!("workload=touch {bad}");
        let out = run(&["--quiet", "--memory", "64M", "--cmdline", &cmdline]);
        assert_eq!(out.code, Some(1), "{bad}\n{}", out.describe());
        let e = out.guest_event("error");
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains("touch_mib") && m.contains("1 to 16384"),
            "{bad}: {m}"
        );
    }
    // More than the guest has free: refused at run time, naming both.
    let out = run(&[
        "--quiet",
        "--memory",
        "64M",
        "--cmdline",
        "workload=touch touch_mib=128",
    ]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let m = out.guest_event("error")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        m.contains("touch_mib=128") && m.contains("were free"),
        "{m}"
    );
}
