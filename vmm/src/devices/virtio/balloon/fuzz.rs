//! A proptest-driven fuzzer of the balloon's guest-facing entry points:
//! whatever the descriptor table, avail ring, PFN arrays, stats entries
//! and negotiated features hold, a pass never panics, never discards or
//! collapses outside guest RAM, never gives back more chains than were
//! offered, and leaves its scratch bounded. (cargo-fuzz needs a nightly
//! toolchain, which these machines cannot install; see the README.)
//!
//! `MEMVISOR_FUZZ_CASES` sets the number of cases (default 512, about three
//! seconds); the corpus below replays the cases that found bugs or hit
//! the edges, every run.
use super::*;
use proptest::prelude::*;

const RAM: u64 = 16 * MIB;
/// PFN arrays and stats entries live here; descriptors mostly point here.
const DATA: u64 = 0x10_0000;
const DATA_LEN: u64 = 0x4000;

fn cases() -> u32 {
    std::env::var("MEMVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// One fuzz input: what the guest controls.
#[derive(Clone, Debug)]
pub(super) struct Input {
    features: u64,
    event_idx: bool,
    queue: usize,
    descs: Vec<(u64, u32, u16, u16)>,
    heads: Vec<u16>,
    avail_idx: Option<u16>,
    data: Vec<u32>,
    config_writes: Vec<(u64, Vec<u8>)>,
    /// The host's page is 2 MiB (hugetlb RAM): only whole ones go back.
    huge: bool,
    /// RAM is two guest NUMA nodes of 8 MiB: two regions that meet.
    numa: bool,
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..DATA_LEN).prop_map(|a| DATA + a),
        2 => (0u64..16).prop_map(|p| DATA + p * 0x1000),
        1 => (0u64..0x2000).prop_map(|a| RAM - a),
        1 => any::<u64>(),
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => (1u32..64).prop_map(|n| n * 4),
        2 => (1u32..8).prop_map(|n| n * 10),
        2 => (1u32..4).prop_map(|n| n * 0x1000),
        1 => any::<u32>(),
    ]
}

/// The PFN area from a seed (generating 4096 values through proptest's
/// value trees costs more than the whole pass): mostly RAM, some just past
/// it, some anything.
fn pfns(seed: u64) -> Vec<u32> {
    let mut x = seed | 1;
    (0..DATA_LEN / 4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ram_pages = (RAM / 4096) as u32;
            match x % 6 {
                0..=3 => (x >> 8) as u32 % ram_pages,
                4 => ram_pages + (x >> 8) as u32 % 16,
                _ => (x >> 16) as u32,
            }
        })
        .collect()
}

fn input() -> impl Strategy<Value = Input> {
    (
        prop::sample::select(vec![0, STATS, REPORTING, STATS | REPORTING]),
        any::<bool>(),
        0usize..4,
        prop::collection::vec(
            (
                addr(),
                len(),
                prop_oneof![Just(0u16), Just(1), Just(2), Just(3), Just(4), any::<u16>()],
                prop_oneof![0u16..QSIZE, any::<u16>()],
            ),
            QSIZE as usize,
        ),
        prop::collection::vec(prop_oneof![0u16..QSIZE, any::<u16>()], 0..24),
        prop::option::of(any::<u16>()),
        any::<u64>().prop_map(pfns),
        prop::collection::vec((0u64..16, prop::collection::vec(any::<u8>(), 0..9)), 0..4),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                features,
                event_idx,
                queue,
                descs,
                heads,
                avail_idx,
                data,
                config_writes,
                (huge, numa),
            )| {
                Input {
                    features,
                    event_idx,
                    queue,
                    descs,
                    heads,
                    avail_idx,
                    data,
                    config_writes,
                    huge,
                    numa,
                }
            },
        )
}

/// Runs one input and checks the invariants; Err names the broken one.
pub(super) fn run(input: &Input) -> Result<(), String> {
    let cfg = BalloonConfig {
        stats_polling_interval_s: 1,
        free_page_reporting: true,
        ..Default::default()
    };
    let page = if input.huge { 2 * MIB } else { 4096 };
    let ram = if input.numa {
        let node = crate::memory::numa::NodeRam {
            size: RAM / 2,
            host_node: None,
        };
        GuestRam::with_nodes(&[node, node], Default::default(), false).unwrap()
    } else {
        GuestRam::new(RAM).unwrap()
    };
    let mut f = fixture_on(ram, cfg, false, page);
    f.activate(input.features, input.event_idx);
    let bytes: Vec<u8> = input.data.iter().flat_map(|p| p.to_le_bytes()).collect();
    f.mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    let q = input.queue;
    for (i, &(a, l, fl, n)) in input.descs.iter().enumerate() {
        f.desc(q, i as u16, a, l, fl, n);
    }
    for &h in &input.heads {
        f.publish(q, h);
    }
    if let Some(idx) = input.avail_idx {
        f.mem.write_obj(idx, GuestAddress(ring(q).1 + 2)).unwrap();
    }
    for (off, data) in &input.config_writes {
        f.dev.write_config(*off, data);
    }
    // Two passes: the second starts from wherever the first left the ring.
    let done = f.dev.process_queue(q) + f.dev.process_queue(q);
    f.dev.request_stats();
    f.dev.flush_collapses();
    let offered = input
        .heads
        .len()
        .max(input.avail_idx.map_or(0, usize::from));
    if done > offered {
        return Err(format!("{done} chains given back, {offered} offered"));
    }
    // Only pages the guest gave: in the balloon (inflate), or inside a
    // device-writable buffer it offered (reporting); whole host pages.
    let role = queue_role(q, f.dev.acked_features);
    let map = f.dev.inflated.lock().unwrap();
    for &(gpa, len) in f.host.discards.lock().unwrap().iter() {
        if gpa.checked_add(len).is_none_or(|e| e > RAM) || len == 0 || gpa % 4096 != 0 {
            return Err(format!("discard {gpa:#x}+{len:#x} outside RAM"));
        }
        if gpa % page != 0 || len % page != 0 {
            return Err(format!(
                "discard {gpa:#x}+{len:#x}: not whole {page:#x} pages"
            ));
        }
        let given = match role {
            Some(QueueRole::Inflate) => map.all_in(gpa, len),
            Some(QueueRole::Reporting) => (gpa..gpa + len).step_by(4096).all(|p| {
                input
                    .descs
                    .iter()
                    .any(|&(a, l, fl, _)| fl & F_WRITE != 0 && p >= a && p - a < u64::from(l))
            }),
            _ => false,
        };
        if !given {
            return Err(format!("discard {gpa:#x}+{len:#x} on {role:?}: not given"));
        }
    }
    drop(map);
    // Pages the guest gave are RAM: the host never refuses their discard.
    if f.m().discard_errors != 0 {
        return Err(format!("{} discards refused", f.m().discard_errors));
    }
    if !f.dev.runs.is_empty() || f.dev.runs.capacity() > MAX_RUNS * 2 {
        return Err(format!("runs left: {}", f.dev.runs.len()));
    }
    if f.dev.done.capacity() > MAX_CHAINS_PER_PASS * 2 || f.dev.bufs.len() > QSIZE as usize {
        return Err("scratch grew past the queue".into());
    }
    if u64::from(f.dev.actual()) > RAM / 4096 {
        return Err(format!("actual {} beyond RAM", f.dev.actual()));
    }
    // Drop joins the worker: any collapse it made is recorded by now.
    let host = f.host.clone();
    drop(f);
    for &(gpa, len) in host.collapses.lock().unwrap().iter() {
        if gpa + len > RAM {
            return Err(format!("collapse {gpa:#x}+{len:#x} outside RAM"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn hostile_queues_are_contained(input in input()) {
        prop_assert_eq!(run(&input), Ok(()));
    }
}

/// The corpus: inputs that hit the edges, replayed on every run.
#[test]
fn corpus() {
    let chain = |descs: Vec<(u64, u32, u16, u16)>| {
        let mut d = descs;
        d.resize(QSIZE as usize, (DATA, 4, 0, 0));
        d
    };
    let base = Input {
        features: STATS | REPORTING,
        event_idx: true,
        queue: 0,
        descs: chain(vec![]),
        heads: vec![0],
        avail_idx: None,
        data: vec![0x200; (DATA_LEN / 4) as usize],
        config_writes: vec![],
        huge: false,
        numa: false,
    };
    let cases = [
        // A loop through every descriptor.
        Input {
            descs: (0..QSIZE).map(|i| (DATA, 4, 1, (i + 1) % QSIZE)).collect(),
            ..base.clone()
        },
        // An avail index far ahead of the ring.
        Input {
            avail_idx: Some(u16::MAX),
            ..base.clone()
        },
        // The largest length, pointing at the end of RAM.
        Input {
            descs: chain(vec![(RAM - 4, u32::MAX, 0, 0)]),
            ..base.clone()
        },
        // Every PFN outside RAM.
        Input {
            data: vec![u32::MAX; (DATA_LEN / 4) as usize],
            descs: chain(vec![(DATA, DATA_LEN as u32, 0, 0)]),
            ..base.clone()
        },
        // A reported range that wraps the address space.
        Input {
            queue: 3,
            descs: chain(vec![(u64::MAX - 0xfff, 0x2000, 2, 0)]),
            ..base.clone()
        },
        // A stats flood: the same buffer offered 20 times.
        Input {
            queue: 2,
            descs: chain(vec![(DATA, 100, 0, 0)]),
            heads: vec![0; 20],
            ..base.clone()
        },
        // Config writes of every size at the edges.
        Input {
            config_writes: vec![
                (4, vec![0xff; 4]),
                (4, vec![1; 8]),
                (15, vec![1]),
                (u64::MAX, vec![1, 2, 3, 4]),
            ],
            ..base.clone()
        },
        // Hugetlb: a whole 2 MiB block over two buffers of one chain
        // (freed), and 4 KiB short of the next (kept).
        Input {
            huge: true,
            data: (0x200..0x400).chain(0x600..0x7ff).collect(),
            descs: chain(vec![(DATA, 0x800, 1, 1), (DATA + 0x800, 0x7fc, 0, 0)]),
            ..base.clone()
        },
        // Two nodes: a run of pages across the cut between their regions.
        Input {
            numa: true,
            data: (0x7f0..0x810).collect(),
            descs: chain(vec![(DATA, 0x80, 0, 0)]),
            ..base.clone()
        },
        // Head indices past the queue, with and without event-idx.
        Input {
            heads: vec![QSIZE, u16::MAX, 3],
            event_idx: false,
            ..base
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(run(c), Ok(()), "corpus case {i}");
    }
}
