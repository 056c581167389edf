//! The balloon device without KVM: guest RAM is real (`GuestRam`), the
//! driver's rings are written by hand, and a recording [`HostMemory`]
//! watches every discard and collapse.
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::balloon::{VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ};
use crate::devices::virtio::{VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_CONFIG, VIRTIO_RING_F_EVENT_IDX};

pub(super) const QSIZE: u16 = 16;
const MIB: u64 = 1 << 20;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
pub(super) const STATS: u64 = 1 << VIRTIO_BALLOON_F_STATS_VQ;
pub(super) const REPORTING: u64 = 1 << VIRTIO_BALLOON_F_REPORTING;
/// Where PFN arrays and stats buffers go (below the rings' 0x10000..).
const BUFS: u64 = 0x8_0000;

/// Guest RAM that records what the balloon asks of the host.
pub(super) struct Recorder {
    pub ram: GuestRam,
    pub discards: Mutex<Vec<(u64, u64)>>,
    pub collapses: Mutex<Vec<(u64, u64)>>,
    /// Collapse and read smaps for real (the fuzzer only records: a
    /// collapse costs milliseconds).
    pub real: bool,
    /// What `page_size` says: 2 MiB plays a hugetlb backing.
    pub page: u64,
    /// Held by a test to keep the collapse worker busy (in `usage`, as
    /// after each round of collapses, without the page map's lock).
    pub gate: Mutex<()>,
}

impl HostMemory for Recorder {
    fn discard(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        self.discards.lock().unwrap().push((gpa, len));
        GuestRam::discard(&self.ram, GuestAddress(gpa), len)
    }
    /// The real batched path (process_madvise), recording each range.
    fn discard_many(
        &self,
        ranges: &[(u64, u64)],
        done: &mut dyn FnMut(u64, u64, Result<(), MemoryError>),
    ) {
        self.discards.lock().unwrap().extend_from_slice(ranges);
        GuestRam::discard_many(&self.ram, ranges, done)
    }
    fn collapse(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        self.collapses.lock().unwrap().push((gpa, len));
        if !self.real {
            return Ok(());
        }
        GuestRam::collapse(&self.ram, GuestAddress(gpa), len)
    }
    fn resident(&self, gpa: u64, len: u64) -> Option<u64> {
        // Recording only: every block counts as reused, so the fuzzer sees
        // every collapse the worker would try.
        if !self.real {
            return Some(len / 4096);
        }
        self.ram.resident_pages(gpa, len).ok()
    }
    fn page_size(&self) -> u64 {
        self.page
    }
    fn usage(&self) -> Option<(u64, u64)> {
        drop(self.gate.lock().unwrap_or_else(|p| p.into_inner()));
        self.real.then(|| HostMemory::usage(&self.ram)).flatten()
    }
}

pub(super) struct Fx {
    pub mem: GuestMemory,
    pub host: Arc<Recorder>,
    pub dev: Balloon,
    pub irq: Arc<IrqTrigger>,
    /// Next free descriptor and avail index, per queue.
    next_desc: [u16; 4],
    avail_idx: [u16; 4],
}

pub(super) fn ring(q: usize) -> (u64, u64, u64) {
    let b = 0x1_0000 * (q as u64 + 1);
    (b, b + 0x1000, b + 0x2000)
}

pub(super) fn fixture(ram: u64, cfg: BalloonConfig) -> Fx {
    fixture_with(ram, cfg, true)
}

pub(super) fn fixture_with(ram: u64, cfg: BalloonConfig, real: bool) -> Fx {
    fixture_on(GuestRam::new(ram).unwrap(), cfg, real, 4096)
}

fn fixture_on(ram: GuestRam, cfg: BalloonConfig, real: bool, page: u64) -> Fx {
    let mem = ram.memory().clone();
    let (size, end) = (ram.size(), ram.end());
    let host = Arc::new(Recorder {
        ram,
        discards: Mutex::default(),
        collapses: Mutex::default(),
        real,
        page,
        gate: Mutex::default(),
    });
    let dev =
        Balloon::with_collapse_delay(&cfg, host.clone(), size, end, Duration::from_millis(20))
            .unwrap();
    Fx {
        mem,
        host,
        dev,
        irq: Arc::new(IrqTrigger::new().unwrap()),
        next_desc: [0; 4],
        avail_idx: [0; 4],
    }
}

impl Fx {
    /// Negotiates `features` (plus VERSION_1) and activates with the
    /// queues that exist under them made ready.
    pub fn activate(&mut self, features: u64, event_idx: bool) {
        let acked = features
            | VIRTIO_F_VERSION_1
            | if event_idx {
                VIRTIO_RING_F_EVENT_IDX
            } else {
                0
            };
        self.dev.set_acked_features(acked);
        let qs = (0..BALLOON_MAX_QUEUES)
            .map(|i| {
                let mut q = Queue::new(BALLOON_QUEUE_SIZE).unwrap();
                if queue_role(i, acked).is_some() {
                    let (d, a, u) = ring(i);
                    q.try_set_size(QSIZE).unwrap();
                    q.try_set_desc_table_address(GuestAddress(d)).unwrap();
                    q.try_set_avail_ring_address(GuestAddress(a)).unwrap();
                    q.try_set_used_ring_address(GuestAddress(u)).unwrap();
                    q.set_ready(true);
                    q.set_event_idx(event_idx);
                }
                VirtQueue {
                    queue: q,
                    event: EventFd::new(EFD_NONBLOCK).unwrap(),
                }
            })
            .collect();
        self.dev
            .activate(self.mem.clone(), qs, self.irq.clone())
            .unwrap();
    }

    /// Writes descriptor `i` of queue `q`.
    pub fn desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let (d, _, _) = ring(q);
        self.mem
            .write_obj(raw, GuestAddress(d + 16 * u64::from(i)))
            .unwrap();
    }

    /// Publishes `head` on queue `q`'s avail ring.
    pub fn publish(&mut self, q: usize, head: u16) {
        let (_, a, _) = ring(q);
        let i = self.avail_idx[q];
        self.mem
            .write_obj(head, GuestAddress(a + 4 + 2 * u64::from(i % QSIZE)))
            .unwrap();
        self.avail_idx[q] = i.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(a + 2))
            .unwrap();
    }

    /// A one-descriptor chain of `pfns` on queue `q`; returns its head.
    pub fn pfns(&mut self, q: usize, pfns: &[u32]) -> u16 {
        let h = self.next_desc[q];
        self.next_desc[q] = (h + 1) % QSIZE;
        let at = BUFS + 0x1_0000 * (q as u64) + 0x1000 * u64::from(h);
        assert!(pfns.len() <= 1024, "one page of PFNs per descriptor slot");
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        self.desc(q, h, at, bytes.len() as u32, 0, 0);
        self.publish(q, h);
        h
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem.read_obj(GuestAddress(ring(q).2 + 2)).unwrap()
    }

    pub fn used(&self, q: usize, i: u16) -> (u32, u32) {
        let a = ring(q).2 + 4 + 8 * u64::from(i % QSIZE);
        (
            self.mem.read_obj(GuestAddress(a)).unwrap(),
            self.mem.read_obj(GuestAddress(a + 4)).unwrap(),
        )
    }

    pub fn discards(&self) -> Vec<(u64, u64)> {
        self.host.discards.lock().unwrap().clone()
    }

    pub fn m(&self) -> BalloonReport {
        self.dev.report()
    }
}

fn pfn_range(from: u64, to: u64) -> Vec<u32> {
    (from / 4096..to / 4096).map(|p| p as u32).collect()
}

/// The guest writes every page of `[from, to)`.
fn touch(f: &Fx, from: u64, to: u64) {
    for a in (from..to).step_by(4096) {
        f.mem.write_obj(1u8, GuestAddress(a)).unwrap();
    }
}

/// The guest reports `[gpa, gpa + 2 MiB)` free on queue 2 (reporting
/// without stats), with descriptor `slot`.
fn report_block(f: &mut Fx, slot: u16, gpa: u64) {
    f.desc(2, slot, gpa, (2 * MIB) as u32, F_WRITE, 0);
    f.publish(2, slot);
    assert_eq!(f.dev.process_queue(2), 1);
}

fn reporting_fixture() -> Fx {
    let cfg = BalloonConfig {
        free_page_reporting: true,
        ..Default::default()
    };
    let mut f = fixture(16 * MIB, cfg);
    f.activate(REPORTING, false);
    f
}

/// Waits until the collapse worker has settled every pending block.
fn wait_collapses_settled(f: &Fx, blocks: u64) {
    let t0 = std::time::Instant::now();
    loop {
        let m = f.m();
        let settled =
            m.ranges_collapsed + m.collapse_errors + m.collapse_skipped + m.collapse_not_resident;
        if settled >= blocks {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "unsettled: {m:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn inflate_discards_one_range_per_run_keeping_2m_blocks_whole() {
    let mut f = fixture(16 * MIB, BalloonConfig::default());
    f.activate(0, false);
    f.mem
        .write_slice(&[0xab; 4096], GuestAddress(4 * MIB + 0x1000))
        .unwrap();
    // 4M..8M (two whole blocks) in reverse order over two chains, and two
    // scattered pages.
    let mut all = pfn_range(4 * MIB, 8 * MIB);
    all.reverse();
    let (a, b) = all.split_at(512);
    f.pfns(0, a);
    f.pfns(0, b);
    f.pfns(0, &[(10 * MIB / 4096) as u32, (12 * MIB / 4096) as u32 + 3]);
    assert_eq!(f.dev.process_queue(0), 3);
    assert_eq!(
        f.discards(),
        vec![
            (4 * MIB, 4 * MIB),
            (10 * MIB, 4096),
            (12 * MIB + 0x3000, 4096)
        ]
    );
    let m = f.m();
    assert_eq!((m.inflate_requests, m.inflate_pages), (3, 1026));
    assert_eq!(m.whole_2m_freed, 2);
    assert_eq!(m.discarded_bytes, 4 * MIB + 8192);
    assert_eq!(m.interrupts, 1, "one interrupt for the batch");
    assert_eq!(f.used_idx(0), 3);
    assert_eq!(f.used(0, 0), (0, 0));
    // The host really let the page go: the guest reads zeros.
    let v: u8 = f.mem.read_obj(GuestAddress(4 * MIB + 0x1000)).unwrap();
    assert_eq!(v, 0);
    assert_eq!(m.rejected_total, 0);
    assert!(m.timeline.thp_before_inflate.is_some());
}

#[test]
fn whole_blocks_counts_only_aligned_2m_inside() {
    assert_eq!(whole_blocks(0, 2 * MIB), 1);
    assert_eq!(whole_blocks(4096, 4 * MIB), 1);
    assert_eq!(whole_blocks(4096, 2 * MIB), 0);
    assert_eq!(whole_blocks(2 * MIB, 6 * MIB + 4096), 2);
}

#[test]
fn each_rejected_kind_is_counted_never_acted_on_and_the_device_keeps_serving() {
    let mut f = fixture(16 * MIB, BalloonConfig::default());
    f.activate(0, false);
    let good = BUFS + 0x8000;
    f.mem
        .write_obj(((4 * MIB) / 4096) as u32, GuestAddress(good))
        .unwrap();
    type Setup<'a> = &'a dyn Fn(&Fx);
    let kinds: [(Reject, Setup); 8] = [
        (Reject::NextOutOfRange, &|f| {
            f.desc(0, 0, good, 4, F_NEXT, QSIZE + 1)
        }),
        (Reject::ChainLoop, &|f| {
            f.desc(0, 0, good, 4, F_NEXT, 1);
            f.desc(0, 1, good + 8, 4, F_NEXT, 0);
        }),
        (Reject::Indirect, &|f| f.desc(0, 0, good, 16, F_INDIRECT, 0)),
        (Reject::WrongDirection, &|f| {
            f.desc(0, 0, good, 4, F_WRITE, 0)
        }),
        (Reject::BadLength, &|f| f.desc(0, 0, good, 6, 0, 0)),
        (Reject::BufferOutsideRam, &|f| {
            f.desc(0, 0, 16 * MIB - 2, 4, 0, 0)
        }),
        (Reject::Overlap, &|f| {
            f.desc(0, 0, good, 8, F_NEXT, 1);
            f.desc(0, 1, good + 4, 4, 0, 0);
        }),
        (Reject::HeadOutOfRange, &|_| {}),
    ];
    for (i, (kind, setup)) in kinds.iter().enumerate() {
        setup(&f);
        f.publish(
            0,
            if *kind == Reject::HeadOutOfRange {
                QSIZE + 2
            } else {
                0
            },
        );
        f.dev.process_queue(0);
        assert_eq!(f.dev.metrics().rejected(*kind), 1, "{kind:?}");
        assert_eq!(f.dev.metrics().rejected_total(), i as u64 + 1, "{kind:?}");
        assert!(f.discards().is_empty(), "{kind:?} acted on");
    }
    // A refused chain is still given back (but a head past the queue
    // cannot be named in the used ring).
    assert_eq!(f.used_idx(0), 7);
    // The device still serves.
    f.desc(0, 0, good, 4, 0, 0);
    f.publish(0, 0);
    assert_eq!(f.dev.process_queue(0), 1);
    assert_eq!(f.discards(), vec![(4 * MIB, 4096)]);
}

#[test]
fn pfns_outside_ram_and_in_the_mmio_gap_are_refused_one_by_one() {
    // RAM below the gap (3G) and 64M above 4G.
    let mut f = fixture((3 << 30) + 64 * MIB, BalloonConfig::default());
    f.activate(0, false);
    let gap = ((3u64 << 30) + 0x1000) / 4096;
    let above = (4u64 << 30) / 4096;
    let past = ((4u64 << 30) + 64 * MIB) / 4096;
    f.pfns(0, &[gap as u32, above as u32, past as u32, u32::MAX, 0x100]);
    assert_eq!(f.dev.process_queue(0), 1);
    assert_eq!(f.dev.metrics().rejected(Reject::PfnOutsideRam), 3);
    assert_eq!(f.discards(), vec![(0x10_0000, 4096), (4 << 30, 4096)]);
    assert_eq!(f.m().inflate_pages, 2);
}

#[test]
fn deflate_collapses_only_blocks_with_nothing_left_in_the_balloon() {
    let mut f = fixture(16 * MIB, BalloonConfig::default());
    f.activate(0, false);
    f.mem
        .write_slice(&[1; 4096], GuestAddress(4 * MIB))
        .unwrap();
    f.pfns(0, &pfn_range(4 * MIB, 8 * MIB));
    f.dev.process_queue(0);
    // All of block 4M, half of block 6M.
    f.pfns(1, &pfn_range(4 * MIB, 7 * MIB));
    assert_eq!(f.dev.process_queue(1), 1);
    assert!(f.discards().len() == 1, "deflate discards nothing");
    assert_eq!(f.m().deflate_pages, 768);
    // The guest reuses what came back.
    touch(&f, 4 * MIB, 7 * MIB);
    f.dev.flush_collapses();
    let t0 = std::time::Instant::now();
    while f.m().ranges_collapsed + f.m().collapse_errors == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "no collapse");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(*f.host.collapses.lock().unwrap(), vec![(4 * MIB, 2 * MIB)]);
    assert!(f.m().timeline.thp_after_deflate.is_some());
}

/// The rule the collapse worker exists for: a 4 KiB inflate splits a host
/// huge page, and after the deflate and the guest's reuse the worker
/// rebuilds it (AnonHugePages back to where it was).
#[test]
fn a_split_huge_page_is_collapsed_back_after_deflate_and_reuse() {
    let mut f = fixture(16 * MIB, BalloonConfig::default());
    f.activate(0, false);
    let touch = |f: &Fx| {
        for a in (0..16 * MIB).step_by(4096) {
            f.mem.write_obj(1u8, GuestAddress(a)).unwrap();
        }
    };
    touch(&f);
    let host = f.host.clone();
    let huge = || HostMemory::usage(&host.ram).unwrap().1;
    let before = huge();
    if before < 8 * MIB {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipping the collapse check: the host gave no THPs ({before} bytes)"
        );
        return;
    }
    let page = (6 * MIB + 0x3000) / 4096;
    f.pfns(0, &[page as u32]);
    f.dev.process_queue(0);
    assert!(
        huge() <= before - 2 * MIB,
        "the 4 KiB discard split the block"
    );
    f.pfns(1, &[page as u32]);
    f.dev.process_queue(1);
    touch(&f);
    f.dev.flush_collapses();
    let t0 = std::time::Instant::now();
    while f.m().ranges_collapsed == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no collapse: {:?}",
            f.m()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*f.host.collapses.lock().unwrap(), vec![(6 * MIB, 2 * MIB)]);
    assert_eq!(huge(), before, "the huge page is back");
    let cov = f.m().timeline.thp_after_deflate.map(|p| p.coverage);
    assert!(cov.is_some_and(|c| c > 0.99), "{cov:?}");
}

#[test]
fn the_collapse_waits_for_its_delay() {
    let mut f = fixture(16 * MIB, BalloonConfig::default());
    f.activate(0, false);
    f.pfns(0, &pfn_range(4 * MIB, 6 * MIB));
    f.dev.process_queue(0);
    f.pfns(1, &pfn_range(4 * MIB, 6 * MIB));
    f.dev.process_queue(1);
    touch(&f, 4 * MIB, 6 * MIB);
    assert!(f.host.collapses.lock().unwrap().is_empty(), "not at once");
    let t0 = std::time::Instant::now();
    while f.host.collapses.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "never collapsed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(t0.elapsed() >= Duration::from_millis(10));
}

#[test]
fn config_space_target_actual_and_the_config_interrupt() {
    let cfg = BalloonConfig {
        amount_mib: 4,
        ..Default::default()
    };
    let mut f = fixture(16 * MIB, cfg);
    let mut b = [0u8; 8];
    f.dev.read_config(0, &mut b);
    assert_eq!(b, [0, 4, 0, 0, 0, 0, 0, 0]);
    // Before the driver is up, the target cannot change.
    assert!(matches!(
        f.dev.update_target(8),
        Err(BalloonError::DeviceNotActive)
    ));
    f.activate(0, false);
    assert!(matches!(
        f.dev.update_target(17),
        Err(BalloonError::TooManyPagesRequested)
    ));
    f.dev.update_target(8).unwrap();
    assert_eq!(f.dev.num_pages(), 2048);
    assert_eq!(f.irq.status.load(Ordering::SeqCst), VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(f.irq.config_generation.load(Ordering::SeqCst), 1);
    assert_eq!(f.irq.irqfd.read().unwrap(), 1);
    // The same target again: no interrupt.
    f.dev.update_target(8).unwrap();
    assert_eq!(f.irq.config_generation.load(Ordering::SeqCst), 1);
    f.dev.write_config(CONFIG_ACTUAL, &2048u32.to_le_bytes());
    assert_eq!(f.dev.actual(), 2048);
    let mut a = [0u8; 4];
    f.dev.read_config(4, &mut a);
    assert_eq!(u32::from_le_bytes(a), 2048);
    let t = f.m().timeline;
    assert_eq!(t.steps.len(), 2);
    assert_eq!(t.steps[1].kind, "inflate");
    assert!(t.steps[1].actual_reached_ms.is_some());
    // num_pages is the device's; odd sizes and offsets; actual above RAM.
    f.dev.write_config(0, &1u32.to_le_bytes());
    f.dev.write_config(CONFIG_ACTUAL, &[1, 0]);
    f.dev.write_config(6, &[1, 0, 0, 0]);
    f.dev.write_config(CONFIG_ACTUAL, &(4097u32).to_le_bytes());
    assert_eq!(f.dev.metrics().rejected(Reject::BadConfigWrite), 4);
    assert_eq!((f.dev.num_pages(), f.dev.actual()), (2048, 2048));
    // Reads past the config are zeros.
    let mut z = [0xffu8; 4];
    f.dev.read_config(8, &mut z);
    assert_eq!(z, [0; 4]);
    f.dev.read_config(u64::MAX, &mut z);
    assert_eq!(z, [0; 4]);
}

fn stat(tag: u16, val: u64) -> Vec<u8> {
    let mut v = tag.to_le_bytes().to_vec();
    v.extend_from_slice(&val.to_le_bytes());
    v
}

#[test]
fn stats_buffer_is_read_held_and_given_back_on_the_timer() {
    let cfg = BalloonConfig {
        stats_polling_interval_s: 1,
        ..Default::default()
    };
    let mut f = fixture(16 * MIB, cfg);
    f.activate(STATS, false);
    let body: Vec<u8> = [stat(4, 1000), stat(5, 4000), stat(77, 1)].concat();
    f.mem.write_slice(&body, GuestAddress(BUFS)).unwrap();
    f.desc(2, 0, BUFS, 30, 0, 0);
    f.publish(2, 0);
    assert_eq!(f.dev.process_queue(2), 0, "held, not returned");
    assert_eq!(f.used_idx(2), 0);
    let v = serde_json::to_value(f.m()).unwrap();
    assert_eq!(v["free_memory"], 1000);
    assert_eq!(v["total_memory"], 4000);
    assert_eq!(v["stats_updates"], 1);
    f.dev.request_stats();
    assert_eq!(f.used_idx(2), 1);
    assert_eq!(f.used(2, 0), (0, 0));
    // A second buffer while one is held: the old one goes back, counted.
    f.desc(2, 1, BUFS, 10, 0, 0);
    f.publish(2, 1);
    f.dev.process_queue(2);
    f.desc(2, 2, BUFS, 10, 0, 0);
    f.publish(2, 2);
    f.dev.process_queue(2);
    assert_eq!(f.dev.metrics().rejected(Reject::ExtraStatsBuffer), 1);
    assert_eq!(f.used(2, 1), (1, 0));
    // Length not in whole entries.
    f.desc(2, 3, BUFS, 12, 0, 0);
    f.publish(2, 3);
    f.dev.process_queue(2);
    assert_eq!(f.dev.metrics().rejected(Reject::BadLength), 1);
    // The interval may change, stats may not be switched off.
    f.dev.update_stats_interval(5).unwrap();
    assert!(matches!(
        f.dev.update_stats_interval(0),
        Err(BalloonError::InvalidStatsUpdate)
    ));
    assert!(f.dev.stats_timer.is_armed().unwrap());
}

#[test]
fn reporting_discards_writable_ranges_at_the_index_the_features_give() {
    for (features, index) in [(REPORTING, 2), (REPORTING | STATS, 3)] {
        let cfg = BalloonConfig {
            free_page_reporting: true,
            stats_polling_interval_s: 1,
            ..Default::default()
        };
        let mut f = fixture(16 * MIB, cfg);
        f.activate(features, false);
        f.desc(index, 0, 4 * MIB, (2 * MIB) as u32, F_WRITE | F_NEXT, 1);
        f.desc(index, 1, 8 * MIB, (2 * MIB) as u32, F_WRITE, 0);
        f.publish(index, 0);
        assert_eq!(f.dev.process_queue(index), 1, "{features:#x}");
        assert_eq!(f.discards(), vec![(4 * MIB, 2 * MIB), (8 * MIB, 2 * MIB)]);
        let m = f.m();
        assert_eq!(
            (m.report_requests, m.report_pages, m.whole_2m_freed),
            (1, 1024, 2)
        );
        // Reported pages are not in the balloon: inflate counters stay.
        assert_eq!(m.inflate_pages, 0);
        // Device-readable or unaligned ranges are refused.
        f.desc(index, 2, 4 * MIB, 4096, 0, 0);
        f.publish(index, 2);
        f.desc(index, 3, 4 * MIB + 8, 4096, F_WRITE, 0);
        f.publish(index, 3);
        f.dev.process_queue(index);
        assert_eq!(f.dev.metrics().rejected(Reject::WrongDirection), 1);
        assert_eq!(f.dev.metrics().rejected(Reject::BadLength), 1);
        assert_eq!(f.discards().len(), 2);
    }
}

#[test]
fn event_idx_interrupts_only_past_used_event() {
    let mut f = fixture(16 * MIB, BalloonConfig::default());
    f.activate(0, true);
    let (_, a, _) = ring(0);
    // used_event = 2: no interrupt until the used index passes 2.
    f.mem
        .write_obj(2u16, GuestAddress(a + 4 + 2 * u64::from(QSIZE)))
        .unwrap();
    f.pfns(0, &[0x200]);
    f.dev.process_queue(0);
    assert_eq!(f.m().interrupts, 0);
    f.pfns(0, &[0x201]);
    f.pfns(0, &[0x202]);
    f.dev.process_queue(0);
    assert_eq!(f.m().interrupts, 1);
}

#[test]
fn a_pass_is_bounded_and_reschedules_the_rest() {
    let mut f = fixture(16 * MIB, BalloonConfig::default());
    f.activate(0, false);
    f.dev.max_chains_per_pass = 3;
    for i in 0..5 {
        f.pfns(0, &[0x200 + i]);
    }
    assert_eq!(f.dev.process_queue(0), 3);
    assert_eq!(f.dev.queue_evts[0].read().unwrap(), 1, "kicked itself");
    assert_eq!(f.dev.process_queue(0), 2);
    // PFN bytes bound a pass too: chains may all share one array.
    f.dev.max_chains_per_pass = MAX_CHAINS_PER_PASS;
    f.dev.max_pfn_bytes_per_pass = 8;
    for _ in 0..5 {
        f.pfns(0, &[0x200, 0x300]);
    }
    assert_eq!(f.dev.process_queue(0), 1);
    assert_eq!(f.dev.queue_evts[0].read().unwrap(), 1, "kicked itself");
    f.dev.max_pfn_bytes_per_pass = 12;
    assert_eq!(
        f.dev.process_queue(0),
        2,
        "the chain past the budget ends it"
    );
    assert_eq!(f.m().inflate_pages, 5 + 3 * 2);
}

/// While the worker is inside a round of collapses, a guest deflating in
/// a loop queues nothing per pass: its blocks wait in one set.
#[test]
fn deflates_while_the_worker_is_busy_queue_no_job_per_pass() {
    let mut f = fixture_with(16 * MIB, BalloonConfig::default(), false);
    f.activate(0, false);
    let host = f.host.clone();
    let gate = host.gate.lock().unwrap();
    f.pfns(1, &[0x200]);
    f.dev.process_queue(1);
    f.dev.flush_collapses();
    let t0 = std::time::Instant::now();
    while f.host.collapses.lock().unwrap().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "worker never collapsed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 0..2000u32 {
        f.pfns(1, &[0x400 + i % 2048]);
        f.dev.process_queue(1);
    }
    assert!(
        f.dev.worker.backlog() <= 1,
        "{} jobs queued",
        f.dev.worker.backlog()
    );
    drop(gate);
    f.dev.flush_collapses();
    wait_collapses_settled(&f, 1 + 4);
}

#[test]
fn activation_needs_the_negotiated_queues_and_reset_stops_service() {
    let mut f = fixture(16 * MIB, BalloonConfig::default());
    f.dev.set_acked_features(VIRTIO_F_VERSION_1 | STATS);
    let unready: Vec<VirtQueue> = (0..4)
        .map(|_| VirtQueue {
            queue: Queue::new(BALLOON_QUEUE_SIZE).unwrap(),
            event: EventFd::new(EFD_NONBLOCK).unwrap(),
        })
        .collect();
    assert_eq!(
        f.dev.activate(f.mem.clone(), unready, f.irq.clone()),
        Err(ActivateError::QueueNotReady(0))
    );
    assert!(matches!(
        f.dev.activate(f.mem.clone(), vec![], f.irq.clone()),
        Err(ActivateError::QueueCount { .. })
    ));
    f.activate(0, false);
    assert!(f.dev.is_active());
    f.dev.reset();
    assert!(!f.dev.is_active());
    f.pfns(0, &[0x200]);
    assert_eq!(f.dev.process_queue(0), 0);
    assert!(f.discards().is_empty());
}

#[test]
fn reject_kinds_index_their_counters() {
    for (i, r) in Reject::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
}

#[path = "fuzz.rs"]
mod fuzz;

/// Free page reporting hands a deflated block back after the guest used it
/// again: the collapse worker must not fill it (2 MiB of Rss per reported
/// block, climbing back after a large free).
#[test]
fn a_collapse_never_refills_a_block_the_guest_reported() {
    let mut f = reporting_fixture();
    touch(&f, 0, 16 * MIB);
    let page = (4 * MIB + 0x5000) / 4096;
    f.pfns(0, &[page as u32]);
    f.dev.process_queue(0);
    f.pfns(1, &[page as u32]);
    f.dev.process_queue(1);
    touch(&f, 4 * MIB, 6 * MIB);
    report_block(&mut f, 0, 4 * MIB);
    assert_eq!(f.host.ram.resident_pages(4 * MIB, 2 * MIB).unwrap(), 0);
    f.dev.flush_collapses();
    wait_collapses_settled(&f, 1);
    assert!(f.host.collapses.lock().unwrap().is_empty());
    assert_eq!(f.m().collapse_not_resident, 1, "{:?}", f.m());
    assert_eq!(
        f.host.ram.resident_pages(4 * MIB, 2 * MIB).unwrap(),
        0,
        "the reported block stays given back"
    );
}

/// Reported pages are the guest's free memory, not the balloon's: once the
/// guest reuses a reported block, a later 4 KiB inflate and deflate of it
/// ends in a collapse like any other.
#[test]
fn reported_pages_do_not_keep_a_deflated_block_from_its_collapse() {
    let mut f = reporting_fixture();
    report_block(&mut f, 0, 6 * MIB);
    touch(&f, 6 * MIB, 8 * MIB);
    let page = (6 * MIB + 0x3000) / 4096;
    f.pfns(0, &[page as u32]);
    f.dev.process_queue(0);
    f.pfns(1, &[page as u32]);
    f.dev.process_queue(1);
    touch(&f, 6 * MIB, 8 * MIB);
    f.dev.flush_collapses();
    wait_collapses_settled(&f, 1);
    assert_eq!(f.m().collapse_skipped, 0, "{:?}", f.m());
    assert_eq!(*f.host.collapses.lock().unwrap(), vec![(6 * MIB, 2 * MIB)]);
}

/// A deflated block the guest has not reused yet is looked at again after
/// each delay and collapsed once it is.
#[test]
fn a_block_not_yet_reused_waits_for_its_reuse() {
    let mut f = fixture(16 * MIB, BalloonConfig::default());
    f.activate(0, false);
    f.pfns(0, &pfn_range(2 * MIB, 4 * MIB));
    f.dev.process_queue(0);
    f.pfns(1, &pfn_range(2 * MIB, 4 * MIB));
    f.dev.process_queue(1);
    f.dev.flush_collapses();
    // Two looks at 20 ms: nothing to collapse yet.
    std::thread::sleep(Duration::from_millis(60));
    assert!(f.host.collapses.lock().unwrap().is_empty());
    touch(&f, 2 * MIB, 4 * MIB);
    wait_collapses_settled(&f, 1);
    assert_eq!(*f.host.collapses.lock().unwrap(), vec![(2 * MIB, 2 * MIB)]);
    assert_eq!(f.m().collapse_not_resident, 0);
}

/// Discards where regions meet and on hugetlb RAM.
#[path = "device_discard_tests.rs"]
mod discard;
