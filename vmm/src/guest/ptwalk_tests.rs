//! Requests decoded, refused by reason, bounded, and answered over the
//! VMM's own boot identity map (2 MiB leaves, tables at 0x9000, 0xa000 and
//! 0x21000: guest node 0) in a guest of two 16 MiB nodes.
use super::*;
use crate::boot::pagetables::build_identity_map;
use crate::memory::backing::BackingConfig;
use crate::memory::numa::NodeRam;
use crate::memory::GuestRam;

const MIB: u64 = 1 << 20;

fn encode(r: &abi::PtWalkRequest) -> Vec<u8> {
    use abi::PtWalkRequest as R;
    let mut p = vec![0u8; abi::PTWALK_REQUEST_LEN as usize];
    let mut put32 = |o: usize, v: u32| p[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put32(offset_of!(R, cpu), r.cpu);
    put32(offset_of!(R, config), r.config);
    put32(offset_of!(R, samples), r.samples);
    put32(offset_of!(R, levels), r.levels);
    put32(offset_of!(R, thp), r.thp);
    put32(offset_of!(R, reserved), r.reserved);
    for (o, v) in [
        (offset_of!(R, root), r.root),
        (offset_of!(R, start), r.start),
        (offset_of!(R, len), r.len),
    ] {
        p[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    p
}

fn good() -> abi::PtWalkRequest {
    abi::PtWalkRequest {
        cpu: 0,
        config: abi::PTREPL_LOCAL,
        root: crate::memory::layout::PML4,
        start: 0,
        len: 32 * MIB,
        samples: 1000,
        levels: 4,
        thp: 1,
        reserved: 0,
    }
}

fn two_node_ram() -> GuestRam {
    let node = NodeRam {
        size: 16 * MIB,
        host_node: None,
    };
    let ram = GuestRam::with_nodes(&[node, node], BackingConfig::default(), false).unwrap();
    build_identity_map(ram.memory(), ram.end()).unwrap();
    ram
}

/// vCPU 0 on guest node 0, vCPU 1 on node 1; both on host node 0.
fn walker(ram: &GuestRam) -> PtWalker {
    PtWalker::new(
        ram.memory().clone(),
        ram.regions().to_vec(),
        vec![0, 1],
        vec![Some(0), Some(0)],
    )
}

#[test]
fn requests_decode_at_the_abi_offsets() {
    let r = abi::PtWalkRequest {
        cpu: 3,
        config: 2,
        root: 0x1234_5000,
        start: 0xffff_8000_0000_0000,
        len: 1 << 30,
        samples: 77,
        levels: 5,
        thp: 1,
        reserved: 9,
    };
    let d = decode(&encode(&r)).unwrap();
    assert_eq!(
        (d.cpu, d.config, d.root, d.start, d.len, d.samples, d.levels, d.thp, d.reserved),
        (
            3,
            2,
            0x1234_5000,
            0xffff_8000_0000_0000,
            1 << 30,
            77,
            5,
            1,
            9
        )
    );
    assert_eq!(decode(&[0u8; 47]).err(), Some(PtWalkReject::BadLength(47)));
    assert_eq!(decode(&[0u8; 49]).err(), Some(PtWalkReject::BadLength(49)));
}

#[test]
fn bad_requests_are_refused_by_reason_and_name_the_bad_value() {
    let ram = two_node_ram();
    let w = walker(&ram);
    let bad = |f: &dyn Fn(&mut abi::PtWalkRequest)| {
        let mut r = good();
        f(&mut r);
        w.handle(0, &encode(&r)).unwrap_err()
    };
    let cases: Vec<(PtWalkReject, &str)> = vec![
        (bad(&|r| r.levels = 3), "levels 3 (valid: 4 or 5)"),
        (bad(&|r| r.levels = 6), "levels 6"),
        (bad(&|r| r.cpu = 2), "cpu 2 (valid: 0 to 1)"),
        (bad(&|r| r.config = 3), "config 3 (valid: 0 local"),
        (bad(&|r| r.thp = 2), "thp 2"),
        (bad(&|r| r.samples = 0), "samples 0"),
        (bad(&|r| r.len = 0), "range 0x0+0x0"),
        (bad(&|r| r.start = u64::MAX), "range 0xffffffffffffffff"),
        // Crosses the non-canonical hole, and starts inside it.
        (bad(&|r| r.start = 0x7fff_ffff_f000), "canonical 4-level"),
        (bad(&|r| r.start = 0x8000_0000_0000), "canonical"),
        // Root: beyond RAM, in the MMIO gap, reserved bits.
        (bad(&|r| r.root = 64 << 20), "root 0x4000000"),
        (bad(&|r| r.root = 0xfee0_0000), "root 0xfee00000"),
        (bad(&|r| r.root = 0x9000 | 1 << 55), "root 0x80000000009000"),
    ];
    for (e, want) in &cases {
        assert!(e.to_string().contains(want), "{e} lacks {want:?}");
    }
    // A 5-level range above 48 bits is fine, and CR3's flag bits too.
    w.handle(
        0,
        &encode(&abi::PtWalkRequest {
            start: 0x00ff_0000_0000_0000,
            levels: 5,
            root: 0x9000 | 0x18 | 1 << 63,
            ..good()
        }),
    )
    .unwrap();
    assert_eq!(w.handle(0, &[0u8; 16]), Err(PtWalkReject::BadLength(16)));
    let (results, rej) = w.report();
    assert_eq!(results.len(), 1);
    assert_eq!(
        (
            rej.bad_levels,
            rej.bad_cpu,
            rej.bad_config,
            rej.bad_thp,
            rej.no_samples,
            rej.bad_range,
            rej.bad_root,
            rej.bad_length
        ),
        (2, 1, 1, 1, 1, 4, 3, 1)
    );
}

/// vCPU 0 walks node 0's identity map: 3 local guest-PT refs per 2 MiB
/// walk and 19 local 2D refs; vCPU 1 (node 1) sees the same table as
/// remote, and first-touch stage-2 (vCPU 0's node) as remote too.
#[test]
fn walks_are_counted_in_both_views() {
    let ram = two_node_ram();
    let w = walker(&ram);
    w.handle(0, &encode(&good())).unwrap();
    w.handle(1, &encode(&abi::PtWalkRequest { cpu: 1, ..good() }))
        .unwrap();
    let (r, rej) = w.report();
    assert_eq!(rej.walked, 2000);
    let (a, b) = (&r[0], &r[1]);
    assert_eq!(
        (a.sender, a.cpu, a.guest_node, a.config, a.thp),
        (0, 0, 0, "local", true)
    );
    assert_eq!(
        (a.ends.walks, a.ends.leaves.m2, a.ends.non_present),
        (1000, 1000, 0)
    );
    let g = &a.guest_topology;
    assert_eq!(g.ept_first_touch.guest_pt.local, 3000);
    assert_eq!(g.ept_first_touch.guest_pt.remote, 0);
    assert_eq!(g.ept_first_touch.two_d.local, 19_000);
    assert_eq!(g.ept_replicated, g.ept_first_touch);
    let g = &b.guest_topology;
    assert_eq!((b.guest_node, g.vcpu_node), (1, Some(1)));
    assert_eq!(g.ept_first_touch.guest_pt.remote, 3000);
    assert_eq!(g.ept_first_touch.two_d.remote, 19_000);
    assert_eq!(g.ept_replicated.two_d.remote, 3000);
    assert_eq!(g.ept_replicated.two_d.local, 16_000);
    // The host holds the table pages (written by the map builder) on its
    // node 0, the vCPUs' node: local there. Data pages nobody touched are
    // not resident, so their stage-2 refs count and only their own node
    // is unknown (they are not guest-PT pages).
    let h = a.host_placement.expect("move_pages works here");
    assert_eq!(h.ept_first_touch.guest_pt.local, 3000, "{h:?}");
    assert_eq!(h.ept_first_touch.two_d.local, 19_000, "{h:?}");
    assert!(a.host_us > 0.0 && a.at_us <= b.at_us);
}

#[test]
fn samples_are_capped_per_request_and_per_run() {
    let ram = two_node_ram();
    let w = walker(&ram);
    let huge = abi::PtWalkRequest {
        samples: u32::MAX,
        ..good()
    };
    let per_run = (WALK_BUDGET / abi::PTWALK_MAX_SAMPLES as u64) as usize;
    for _ in 0..per_run {
        w.handle(0, &encode(&huge)).unwrap();
    }
    // The budget is spent: the next request is refused whole.
    assert_eq!(w.handle(0, &encode(&good())), Err(PtWalkReject::OverBudget));
    let (r, rej) = w.report();
    assert_eq!(r.len(), per_run);
    assert!(r.iter().all(|x| x.samples == abi::PTWALK_MAX_SAMPLES));
    assert_eq!(rej.walked, WALK_BUDGET);
    assert_eq!(
        rej.samples_capped,
        per_run as u64 * (u32::MAX - abi::PTWALK_MAX_SAMPLES) as u64
    );
    assert_eq!((rej.over_budget, rej.samples_over_budget), (1, 1000));

    // A request that straddles the end of the budget is cut to it.
    let w = walker(&ram);
    for _ in 0..per_run - 1 {
        w.handle(0, &encode(&huge)).unwrap();
    }
    w.handle(0, &encode(&good())).unwrap();
    w.handle(0, &encode(&huge)).unwrap();
    let (r, rej) = w.report();
    assert_eq!(r.last().unwrap().samples, abi::PTWALK_MAX_SAMPLES - 1000);
    assert_eq!(rej.samples_over_budget, 1000);
    assert_eq!(rej.walked, WALK_BUDGET);
}

#[test]
fn a_request_flood_keeps_at_most_max_results() {
    let ram = two_node_ram();
    let w = walker(&ram);
    let one = encode(&abi::PtWalkRequest {
        samples: 1,
        ..good()
    });
    for _ in 0..MAX_RESULTS + 500 {
        let _ = w.handle(0, &one);
    }
    let (r, rej) = w.report();
    assert_eq!(r.len(), MAX_RESULTS);
    assert_eq!(rej.too_many_requests, 500);
    assert_eq!(rej.walked, MAX_RESULTS as u64);
}

/// Many vCPUs flooding at once, each asking for the other's cpu: the
/// results, the walks and the budget still add up exactly, every answer
/// names its sender and the cpu it modelled, and the bounds hold.
#[test]
fn a_concurrent_flood_from_many_senders_stays_within_the_bounds() {
    let ram = two_node_ram();
    let w = walker(&ram);
    let senders = 8u32;
    std::thread::scope(|s| {
        for sender in 0..senders {
            let w = &w;
            s.spawn(move || {
                for i in 0..100u32 {
                    let samples = if i % 10 == 0 { u32::MAX } else { 1 + i };
                    let r = abi::PtWalkRequest {
                        cpu: (sender + 1) % 2,
                        samples,
                        ..good()
                    };
                    let _ = w.handle(sender, &encode(&r));
                }
            });
        }
    });
    let (r, rej) = w.report();
    assert!(r.len() <= MAX_RESULTS);
    // 80 requests of u32::MAX samples: the budget ran out (16 fill it).
    assert_eq!(rej.walked, WALK_BUDGET);
    assert!(rej.over_budget > 0, "{rej:?}");
    assert_eq!(
        rej.too_many_requests + rej.over_budget + r.len() as u64,
        senders as u64 * 100
    );
    assert!(rej.walked <= WALK_BUDGET);
    assert_eq!(rej.walked, r.iter().map(|x| x.samples as u64).sum::<u64>());
    for x in &r {
        assert!(x.sender < senders);
        assert_eq!(x.cpu, (x.sender + 1) % 2, "{x:?}");
        assert_eq!(x.guest_node, x.cpu);
        let ended =
            x.ends.walks + x.ends.non_present + x.ends.outside_ram + x.ends.mmio + x.ends.reserved;
        assert_eq!(ended, x.samples as u64);
    }
}

#[test]
fn vcpu_host_nodes_come_from_the_pinned_cpus() {
    let host = HostNuma {
        nodes: [
            (0, CpuList::parse("0-1").unwrap()),
            (1, CpuList::parse("2-3").unwrap()),
        ]
        .into(),
        online: CpuList::parse("0-3").unwrap(),
    };
    let pins = [
        CpuList::parse("2-3").unwrap(),
        CpuList::parse("1-2").unwrap(),
    ];
    assert_eq!(
        vcpu_host_nodes(&[0, 1, 0], Some(&pins), Some(&host)),
        vec![Some(1), None, Some(1)]
    );
    // Unpinned: every online CPU, here on two nodes.
    assert_eq!(vcpu_host_nodes(&[0], None, Some(&host)), vec![None]);
    let one = HostNuma {
        nodes: [(0, CpuList::parse("0-1").unwrap())].into(),
        online: CpuList::parse("0-1").unwrap(),
    };
    assert_eq!(vcpu_host_nodes(&[0, 0], None, Some(&one)), vec![Some(0); 2]);
    assert_eq!(vcpu_host_nodes(&[0], None, None), vec![None]);
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Whatever bytes a guest sends, a request is answered or refused,
        /// never both and never a panic, and a walk ends in exactly one
        /// counter. Most payloads are 48 bytes, half of those with
        /// plausible levels, cpu, config, thp and root, over ranges mostly
        /// inside RAM, so random ranges are really walked; samples are kept under 256 to keep the test fast (the
        /// caps have their own test).
        #[test]
        fn random_requests_are_answered_or_refused(
            reqs in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 48), 0u8..8, any::<bool>()),
                1..12,
            ),
        ) {
            let ram = two_node_ram();
            let w = walker(&ram);
            let mut answered = 0u64;
            for (bytes, odd, plausible) in &reqs {
                use abi::PtWalkRequest as R;
                let mut p = bytes.clone();
                p[offset_of!(R, samples) + 1..][..3].fill(0);
                if *plausible {
                    let (a, b, c, d) = (p[0] as u32, p[1] as u32, p[2] as u32, p[3]);
                    // Mostly inside the 32 MiB of RAM, sometimes up to 8 GiB.
                    let raw = u64::from_le_bytes(p[16..24].try_into().unwrap());
                    let start = raw & if d & 0x80 == 0 { 0x1ff_ffff } else { 0x1_ffff_ffff };
                    let mut put = |o: usize, v: &[u8]| p[o..o + v.len()].copy_from_slice(v);
                    put(offset_of!(R, levels), &4u32.to_le_bytes());
                    put(offset_of!(R, root), &0x9000u64.to_le_bytes());
                    put(offset_of!(R, cpu), &(a % 2).to_le_bytes());
                    put(offset_of!(R, config), &(b % 3).to_le_bytes());
                    put(offset_of!(R, thp), &(c % 2).to_le_bytes());
                    put(offset_of!(R, start), &start.to_le_bytes());
                    put(offset_of!(R, len), &(1u64 << (d % 27)).to_le_bytes());
                }
                // One in eight of the wrong length.
                if *odd == 0 {
                    p.truncate(40 + (p[4] as usize % 8));
                }
                answered += w.handle(0, &p).is_ok() as u64;
            }
            let (results, rej) = w.report();
            prop_assert_eq!(results.len() as u64, answered);
            prop_assert_eq!(rej.refused() + answered, reqs.len() as u64);
            for r in &results {
                prop_assert!(r.samples <= 255 && r.samples == r.samples_asked);
                prop_assert_eq!(
                    r.ends.walks + r.ends.non_present + r.ends.outside_ram + r.ends.mmio + r.ends.reserved,
                    r.samples as u64
                );
                let g = r.guest_topology.ept_first_touch;
                prop_assert!(g.guest_pt.total() <= 4 * r.ends.walks);
                prop_assert!(g.two_d.total() <= 24 * r.ends.walks);
            }
        }
    }
}

mod hostile_tables {
    use super::*;
    use proptest::prelude::*;
    use vm_memory::{Bytes, GuestAddress};

    /// A table entry a hostile guest might write: anything, or one of the
    /// 8 table pages with random flags (PS included: loops and reserved
    /// leaves), or a page at the node cut, in the MMIO gap or past RAM.
    fn entry(raw: u64, kind: u8) -> u64 {
        let page = (raw >> 3) % 8;
        // PS (bit 7) in one entry of 8 only, or few walks get past it.
        let flags = raw & if kind & 0x38 == 0 { 0x1ff } else { 0x7f };
        match kind % 8 {
            0 => raw,
            1..=4 => (MIB + page * PAGE) | flags | 1,
            5 => (16 * MIB - PAGE * (raw & 1)) | flags | 1,
            6 => 0xc000_0000 | (page << 21) | flags | 1,
            _ => (32 * MIB + (raw & 0xfff_f000)) | flags | 1,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Hostile tables (loops, PS anywhere, pointers into the gap, past
        /// RAM or across the node cut) walked through the port with 4 and 5
        /// levels and any canonical range: every request is answered or
        /// counted refused, every walk ends in exactly one counter, and a
        /// complete walk touches at most levels + 1 pages.
        #[test]
        fn hostile_tables_through_the_port_stay_bounded(
            seed in any::<u64>(),
            reqs in proptest::collection::vec(
                (any::<u64>(), any::<u64>(), any::<u64>(), 0u32..512, any::<bool>(), any::<bool>()),
                1..6,
            ),
        ) {
            let ram = two_node_ram();
            let mem = ram.memory();
            // Every entry of the 8 pages written (from a seed: 4096 values
            // through proptest's trees would cost more than the walks), so
            // walks go deep.
            let mut x = seed | 1;
            for at in (MIB..MIB + 8 * PAGE).step_by(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                mem.write_obj(entry(x, (x >> 56) as u8), GuestAddress(at)).unwrap();
            }
            let w = walker(&ram);
            let mut answered = 0;
            for &(root, start, len, samples, five, cpu1) in &reqs {
                let levels = if five { 5 } else { 4 };
                let bits = 12 + 9 * levels;
                let start = ((start << (64 - bits)) as i64 >> (64 - bits)) as u64;
                let room = if (start as i64) < 0 { 0u64.wrapping_sub(start) } else { (1 << (bits - 1)) - start };
                let req = abi::PtWalkRequest {
                    cpu: cpu1 as u32,
                    root: (MIB + (root % 8) * PAGE) | (root >> 52) & 0xfff | (root & 1 << 63),
                    start,
                    len: 1 + len % room,
                    samples,
                    levels: levels as u32,
                    ..good()
                };
                answered += w.handle(cpu1 as u32, &encode(&req)).is_ok() as u64;
            }
            let (results, rej) = w.report();
            prop_assert_eq!(results.len() as u64, answered);
            prop_assert_eq!(rej.refused() + answered, reqs.len() as u64);
            prop_assert_eq!(rej.no_samples + answered, reqs.len() as u64);
            for r in &results {
                let e = r.ends;
                prop_assert_eq!(e.walks + e.non_present + e.outside_ram + e.mmio + e.reserved, r.samples as u64);
                prop_assert!(e.loops <= e.walks);
                let l = r.levels as u64;
                prop_assert!(r.pages <= (l + 1) * e.walks);
                for view in [Some(r.guest_topology), r.host_placement].into_iter().flatten() {
                    let m = view.ept_first_touch;
                    prop_assert!(m.guest_pt.total() <= l * e.walks);
                    prop_assert!(m.two_d.total() <= (5 * l + 4) * e.walks);
                }
            }
        }
    }
}

/// The last page of RAM is a root like any other (its walks end where its
/// zeroed entries say); the first page past RAM is not, nor the last page
/// before it with a flag bit that is not CR3's.
#[test]
fn a_root_on_the_last_ram_page_is_answered_and_the_next_page_refused() {
    let ram = two_node_ram();
    let w = walker(&ram);
    let last = ram.end() - PAGE;
    let req = |root| {
        encode(&abi::PtWalkRequest {
            root,
            samples: 16,
            ..good()
        })
    };
    w.handle(1, &req(last | 0x18)).unwrap();
    assert_eq!(
        w.handle(1, &req(ram.end())),
        Err(PtWalkReject::BadRoot(ram.end()))
    );
    assert_eq!(
        w.handle(1, &req(last | 1 << 52)),
        Err(PtWalkReject::BadRoot(last | 1 << 52))
    );
    let (r, rej) = w.report();
    assert_eq!((r.len(), rej.bad_root), (1, 2));
    assert_eq!((r[0].ends.non_present, r[0].ends.walks), (16, 0));
}
