//! RECORD_PTWALK end to end: a guest of a few bytes of x86-64 code
//! (`--kernel`, no firmware workload needed) hands the VMM walk requests
//! over the VMM's own boot identity map (PML4 at 0x9000, 2 MiB leaves over
//! the first 4 GiB, tables in guest node 0), good and hostile, then exits;
//! the report's `ptwalk` and `ptwalk_rejected` say what the model made of
//! them. The model's arithmetic and hostile tables are unit-tested in
//! vmm/src/memory/walk_model_tests.rs and vmm/src/guest/ptwalk_tests.rs.
//!
//! With a bundled kernel that has `workload=ptrepl` (branch fw-ptrepl), a
//! second test runs it and checks the goals the walk model decides.
#[macro_use]
mod common;

use common::{elf, run, TempFile, LOAD};
use memvisor::abi;
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// Where each record sits in the guest image (one per 128 bytes).
const RECORDS_AT: u64 = 0x200;

struct Req {
    cpu: u32,
    config: u32,
    root: u64,
    start: u64,
    len: u64,
    samples: u32,
    levels: u32,
    thp: u32,
}

fn good(start: u64, len: u64) -> Req {
    Req {
        cpu: 0,
        config: abi::PTREPL_LOCAL,
        root: 0x9000,
        start,
        len,
        samples: 512,
        levels: 4,
        thp: 1,
    }
}

/// A record: header, then the payload laid out as abi::PtWalkRequest.
fn record(r: &Req, len: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [abi::RECORD_MAGIC, abi::RECORD_PTWALK, len, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    let mut p = [0u8; abi::PTWALK_REQUEST_LEN as usize];
    let req = abi::PtWalkRequest {
        cpu: r.cpu,
        config: r.config,
        root: r.root,
        start: r.start,
        len: r.len,
        samples: r.samples,
        levels: r.levels,
        thp: r.thp,
        reserved: 0,
    };
    // SAFETY: PtWalkRequest is repr(C) plain integers with no padding
    // (abi.rs asserts its size is PTWALK_REQUEST_LEN), read as bytes.
    let bytes: &[u8; abi::PTWALK_REQUEST_LEN as usize] =
        unsafe { &*(&req as *const abi::PtWalkRequest).cast() };
    p.copy_from_slice(bytes);
    v.extend_from_slice(&p);
    v
}

/// A PML4 of the guest's own, in its image: entry 0 points at the VMM's
/// PDPT (0xa000), so it maps the first 4 GiB like the boot map.
const OWN_PML4: u64 = LOAD + 0x1000;

/// Code that sends each record in turn (`mov eax, addr; mov dx, 0x6e0;
/// out dx, eax`), then writes 0 to the exit port and halts; the records
/// follow at RECORDS_AT. With `own_table`, OWN_PML4 is in the image and
/// its entry 0 is cleared right after the first record's `out` returns.
fn guest(records: &[Vec<u8>], own_table: bool) -> Vec<u8> {
    let mut code = Vec::new();
    for i in 0..records.len() as u64 {
        let at = (LOAD + RECORDS_AT + 128 * i) as u32;
        code.push(0xb8);
        code.extend_from_slice(&at.to_le_bytes());
        code.extend_from_slice(&[0x66, 0xba, 0xe0, 0x06, 0xef]);
        if own_table && i == 0 {
            // xor eax, eax; mov [OWN_PML4], rax
            code.extend_from_slice(&[0x31, 0xc0, 0x48, 0x89, 0x04, 0x25]);
            code.extend_from_slice(&(OWN_PML4 as u32).to_le_bytes());
        }
    }
    // xor eax, eax; mov dx, 0xf4; out dx, eax; 1: hlt; jmp 1b
    code.extend_from_slice(&[0x31, 0xc0, 0x66, 0xba, 0xf4, 0x00, 0xef, 0xf4, 0xeb, 0xfd]);
    assert!(code.len() as u64 <= RECORDS_AT);
    code.resize(RECORDS_AT as usize, 0x90);
    for r in records {
        assert!(r.len() <= 128);
        let mut r = r.clone();
        r.resize(128, 0);
        code.extend_from_slice(&r);
    }
    if own_table {
        assert!(code.len() as u64 <= OWN_PML4 - LOAD);
        code.resize((OWN_PML4 - LOAD) as usize, 0);
        code.extend_from_slice(&(0xa000u64 | 7).to_le_bytes());
        code.resize((OWN_PML4 - LOAD) as usize + 4096, 0);
    }
    code
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn walk_requests_are_answered_in_the_report_and_hostile_ones_counted() {
    require_kvm!();
    let records = vec![
        // 0: vCPU 0 (guest node 0) over node 0's RAM.
        record(&good(0, 64 * MIB), 48),
        // 1: vCPU 1 (guest node 1) over node 1's RAM, same tables.
        record(
            &Req {
                cpu: 1,
                config: abi::PTREPL_REMOTE,
                ..good(128 * MIB, 64 * MIB)
            },
            48,
        ),
        // 2: the MMIO gap (mapped uncached by the identity map).
        record(&good(3 << 30, 64 * MIB), 48),
        // 3: above 4 GiB, nothing mapped.
        record(&good(5 << 30, MIB), 48),
        // 4: a sample count far over the cap.
        record(
            &Req {
                samples: u32::MAX,
                ..good(0, 64 * MIB)
            },
            48,
        ),
        // Refused: a root in the MMIO gap, 3 levels, a short payload, a
        // non-canonical range.
        record(
            &Req {
                root: 0xfee0_0000,
                ..good(0, MIB)
            },
            48,
        ),
        record(
            &Req {
                levels: 3,
                ..good(0, MIB)
            },
            48,
        ),
        record(&good(0, MIB), 40),
        record(&good(0x7fff_ffff_0000, 1 << 20), 48),
    ];
    let kernel = TempFile::with_contents("ptwalk.elf", &elf(&guest(&records, false)));
    let out = run(&[
        "--kernel",
        kernel.as_str(),
        "--numa",
        "node=0,size=128M,cpus=0,host-node=0",
        "--numa",
        "node=1,size=128M,cpus=1,host-node=0",
        "--timeout",
        "20",
    ]);
    let ctx = out.describe();
    let r = out.report();
    assert_eq!(r["exit"]["status"], "success", "{ctx}\n{r:#}");
    let walks = r["ptwalk"].as_array().expect("ptwalk is an array");
    assert_eq!(walks.len(), 5, "{:#}", r["ptwalk"]);

    let a = &walks[0];
    assert_eq!(
        (
            &a["sender"],
            &a["cpu"],
            &a["guest_node"],
            &a["config"],
            &a["thp"]
        ),
        (
            &0.into(),
            &0.into(),
            &0.into(),
            &"local".into(),
            &true.into()
        ),
        "{a:#}"
    );
    assert_eq!((n(&a["walks"]), n(&a["leaves"]["2m"])), (512, 512), "{a:#}");
    // 2 MiB leaves: 3 guest-PT references and 3 * 5 + 4 = 19 2D ones per
    // walk, all on node 0 like vCPU 0, in both stage-2 models.
    let g = &a["guest_topology"];
    for model in ["ept_first_touch", "ept_replicated"] {
        assert_eq!(n(&g[model]["guest_pt"]["local"]), 3 * 512, "{g:#}");
        assert_eq!(n(&g[model]["guest_pt"]["remote"]), 0, "{g:#}");
        assert_eq!(n(&g[model]["two_d"]["local"]), 19 * 512, "{g:#}");
        assert_eq!(n(&g[model]["two_d"]["remote"]), 0, "{g:#}");
    }
    // This host has one node: by real placement the tables the VMM wrote
    // are on host node 0, where both vCPU threads run.
    let h = &a["host_placement"];
    assert_eq!(a["host_node"], 0, "{a:#}");
    assert_eq!(
        n(&h["ept_first_touch"]["guest_pt"]["local"]),
        3 * 512,
        "{h:#}"
    );
    assert!(a["host_us"].as_f64().unwrap() > 0.0);

    // vCPU 1 on node 1 walking node 0's table: every guest-PT reference
    // remote; first-touch stage-2 (on vCPU 0's node) remote too; stage-2
    // replicas local.
    let b = &walks[1];
    let g = &b["guest_topology"];
    assert_eq!((&b["sender"], &b["guest_node"]), (&0.into(), &1.into()));
    assert_eq!(
        n(&g["ept_first_touch"]["guest_pt"]["remote"]),
        3 * 512,
        "{g:#}"
    );
    assert_eq!(
        n(&g["ept_first_touch"]["two_d"]["remote"]),
        19 * 512,
        "{g:#}"
    );
    assert_eq!(n(&g["ept_replicated"]["two_d"]["local"]), 16 * 512, "{g:#}");
    assert_eq!(n(&g["ept_replicated"]["two_d"]["remote"]), 3 * 512, "{g:#}");

    let (mmio, none, capped) = (&walks[2], &walks[3], &walks[4]);
    assert_eq!((n(&mmio["mmio"]), n(&mmio["walks"])), (512, 0), "{mmio:#}");
    assert_eq!(
        n(&mmio["guest_topology"]["ept_first_touch"]["two_d"]["local"]),
        0
    );
    assert_eq!(
        (n(&none["non_present"]), n(&none["walks"])),
        (512, 0),
        "{none:#}"
    );
    assert_eq!(n(&capped["samples"]), abi::PTWALK_MAX_SAMPLES as u64);
    assert_eq!(n(&capped["walks"]), abi::PTWALK_MAX_SAMPLES as u64);

    let rej = &r["ptwalk_rejected"];
    assert_eq!(
        [
            "bad_root",
            "bad_levels",
            "bad_length",
            "bad_range",
            "samples_capped"
        ]
        .map(|k| n(&rej[k])),
        [1, 1, 1, 1, (u32::MAX - abi::PTWALK_MAX_SAMPLES) as u64],
        "{rej:#}"
    );
    assert_eq!(
        n(&rej["walked"]),
        4 * 512 + abi::PTWALK_MAX_SAMPLES as u64,
        "{rej:#}"
    );
    let warnings = r["warnings"].to_string();
    assert!(
        warnings.contains("ptwalk levels 3 (valid: 4 or 5)")
            && warnings.contains("ptwalk root 0xfee00000"),
        "{warnings}"
    );
    assert_eq!(n(&r["exits"]["records"]), records.len() as u64, "{r:#}");
    // Every field of an answer is in README's report section.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("reading README.md");
    let mut fields: Vec<String> = Vec::new();
    let mut keys = |v: &Value| fields.extend(v.as_object().unwrap().keys().cloned());
    keys(a);
    keys(&a["leaves"]);
    keys(g);
    keys(&g["ept_first_touch"]);
    keys(&g["ept_first_touch"]["two_d"]);
    let missing: Vec<_> = fields
        .iter()
        .filter(|f| !readme.contains(&format!("`{f}`")))
        .collect();
    assert!(missing.is_empty(), "README lacks {missing:?}");
    let walked = 4 * 512 + abi::PTWALK_MAX_SAMPLES;
    assert!(
        out.stdout.contains(&format!(
            "ptwalk: 5 requests answered ({walked} walks), 4 refused"
        )),
        "{ctx}"
    );
}

/// The walk happens before the guest's `out` returns: a guest that clears
/// its table's only entry right after the request still gets complete
/// walks for it, and a second request over the cleared table finds
/// nothing mapped. Answered later (on the event loop), the first would
/// read the cleared table too.
#[test]
fn a_walk_reads_the_tables_as_they_were_during_the_out() {
    require_kvm!();
    let own = Req {
        root: OWN_PML4,
        ..good(0, 64 * MIB)
    };
    let records = vec![record(&own, 48), record(&own, 48)];
    let kernel = TempFile::with_contents("ptwalk-sync.elf", &elf(&guest(&records, true)));
    let out = run(&["--kernel", kernel.as_str(), "--timeout", "20"]);
    let r = out.report();
    assert_eq!(r["exit"]["status"], "success", "{}", out.describe());
    let walks = r["ptwalk"].as_array().unwrap();
    assert_eq!(walks.len(), 2, "{r:#}");
    assert_eq!(
        (n(&walks[0]["walks"]), n(&walks[0]["non_present"])),
        (512, 0),
        "{:#}",
        walks[0]
    );
    assert_eq!(
        (n(&walks[1]["walks"]), n(&walks[1]["non_present"])),
        (0, 512),
        "{:#}",
        walks[1]
    );
}

#[test]
fn bench_ptrepl_bad_values_exit_2_naming_them() {
    for (args, want) in [
        (&["--runs", "0"][..], "--runs 0: must be 1 to 100"),
        (&["--runs", "101"][..], "--runs 101: must be 1 to 100"),
        (&["--mib", "0"][..], "--mib 0: must be even, 2 to 1024"),
        (&["--mib", "3"][..], "--mib 3: must be even, 2 to 1024"),
        (
            &["--mib", "1026"][..],
            "--mib 1026: must be even, 2 to 1024",
        ),
        (&["--ops", "0"][..], "--ops 0: must be 1 to 1000000000"),
        (
            &["--ops", "1000000001"][..],
            "--ops 1000000001: must be 1 to 1000000000",
        ),
    ] {
        let mut all = vec!["bench", "ptrepl"];
        all.extend_from_slice(args);
        let out = common::memvisor(&all, &[]);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.describe());
        assert!(out.stderr.contains(want), "{args:?}: {}", out.describe());
    }
}

/// The bundled kernel's `workload=ptrepl`: replication leaves every vCPU,
/// on either node, no remote guest-PT reference in the walk model, and the
/// remote configuration some.
#[test]
fn ptrepl_replicas_make_every_guest_pt_reference_local() {
    require_kvm!();
    let out = run(&[
        "--numa",
        "node=0,size=256M,cpus=0,host-node=0",
        "--numa",
        "node=1,size=256M,cpus=1,host-node=0",
        "--cmdline",
        "workload=ptrepl ptrepl_mib=16 ptrepl_ops=20000 ptrepl_work=gups ptrepl_thp=off ptrepl_samples=1024",
        "--timeout",
        "80",
    ]);
    let ctx = out.describe();
    let r = out.report();
    assert_eq!(r["exit"]["status"], "success", "{ctx}");
    let walks = r["ptwalk"].as_array().unwrap();
    let of =
        |config: &str| -> Vec<&Value> { walks.iter().filter(|w| w["config"] == config).collect() };
    let (repl, remote) = (of("replicated"), of("remote"));
    assert!(!repl.is_empty() && !remote.is_empty(), "{:#}", r["ptwalk"]);
    for node in [0, 1] {
        assert!(
            repl.iter().any(|w| w["guest_node"] == node),
            "no replicated walk from a node-{node} vCPU: {:#}",
            r["ptwalk"]
        );
    }
    for w in &repl {
        let g = &w["guest_topology"]["ept_first_touch"]["guest_pt"];
        assert!(n(&w["walks"]) > 0, "{w:#}");
        assert_eq!(n(&g["remote"]), 0, "{w:#}");
    }
    for w in remote.iter().filter(|w| w["guest_node"] == 0) {
        let g = &w["guest_topology"]["ept_first_touch"]["guest_pt"];
        assert!(n(&g["remote"]) > 0, "{w:#}");
    }
    assert_eq!(n(&r["ptwalk_rejected"]["bad_root"]), 0);
}

/// `bench ptrepl --json` end to end (with the bundled kernel's
/// workload=ptrepl): one row per work × config × thp, the walk model's
/// figures in them, the goals the model decides met, the anchors apart.
#[test]
fn bench_ptrepl_json_is_well_formed() {
    require_kvm!();
    let out = common::memvisor(
        &["bench", "ptrepl", "--json", "--mib", "8", "--ops", "20000"],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let j: Value = serde_json::from_str(&out.stdout).expect("one JSON object");
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 12, "{j:#}");
    for r in rows {
        assert!(r["ops_per_s"]["median"].as_f64().unwrap() > 0.0, "{r:#}");
        let g = &r["walk"]["guest_topology"]["ept_first_touch"];
        let (local, remote) = (
            g["guest_pt"]["local"].as_f64().unwrap(),
            g["guest_pt"]["remote"].as_f64().unwrap(),
        );
        // 4 levels: 4 guest-PT refs per walk with 4 KiB data pages, 3
        // with 2 MiB; remote only where the table is on the other node.
        let want = if r["thp"] == true { 3.0 } else { 4.0 };
        if r["config"] == "remote" {
            assert_eq!((local, remote), (0.0, want), "{r:#}");
        } else {
            assert_eq!((local, remote), (want, 0.0), "{r:#}");
        }
        assert!(r["pt_pages_per_replica"].as_array().is_some(), "{r:#}");
    }
    let goals = j["goals"].as_array().unwrap();
    assert_eq!(goals.len(), 5);
    for g in &goals[..3] {
        assert_eq!(g["met"], true, "{g:#}");
    }
    assert_eq!(j["anchors"].as_array().unwrap().len(), 2);
    assert!(j["honesty"].as_str().unwrap().starts_with("timings"));
    assert_eq!(j["updates"].as_array().unwrap().len(), 2, "{j:#}");
}
