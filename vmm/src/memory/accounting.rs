//! What guest RAM costs the host now, region by region: the report's
//! `memory` figures and `GET /vm/memory`.
//!
//! Three views, because each sees what the others cannot:
//! - smaps, summed over exactly each region's host range: Rss (4 KiB and
//!   THP pages the host holds), AnonHugePages (of which THP) and the hugetlb
//!   pages mapped (hugetlb memory is in neither Rss nor VmRSS). Every
//!   region is followed by a PROT_NONE guard page (see [`super::backing`]),
//!   so two regions never merge into one VMA whose figures could not be
//!   split; a VMA that still straddles a region's edge makes that region's
//!   figures an error, never a wrong number.
//! - move_pages in query mode (nodes = NULL) over an evenly spaced sample
//!   of at most [`MAX_SAMPLE`] pages per region: on which host node each
//!   resident page is, at a bounded cost whatever the region's size.
//! - get_mempolicy with MPOL_F_ADDR ([`super::mempolicy::policy_of`]): the
//!   policy the kernel holds for the region, which is what proves a
//!   `--numa` binding on a one-node host where residency alone cannot.
//! - KVM's own statistics (`vstate::kvm_stats`): how much of it stage-2 (or
//!   the shadow MMU) maps, and at which page size.
//!
//! Plus counters of what the VMM gave back (discard) and made huge
//! (collapse), incremented by [`super::GuestRam`] on success.
//!
//! Both the report and `GET /vm/memory` serialise these structs, so a
//! field added here shows in both. This is the one place residency is
//! sampled.
use super::rss::{self, MemoryUsage, SmapsSum};
use super::{mempolicy, GuestRam, RamRegion};
use crate::vstate::kvm_stats::KvmMemStats;
use serde::Serialize;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Most pages of one region whose node move_pages is asked for.
pub const MAX_SAMPLE: usize = 4096;

/// Discard and collapse counters of one [`GuestRam`].
#[derive(Debug, Default)]
pub struct OpCounters {
    discarded_bytes: AtomicU64,
    discard_ranges: AtomicU64,
    collapsed_bytes: AtomicU64,
    collapse_ranges: AtomicU64,
}

impl OpCounters {
    pub(super) fn discarded(&self, len: u64) {
        self.discarded_bytes.fetch_add(len, Relaxed);
        self.discard_ranges.fetch_add(1, Relaxed);
    }

    pub(super) fn collapsed(&self, len: u64) {
        self.collapsed_bytes.fetch_add(len, Relaxed);
        self.collapse_ranges.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> OpCounts {
        OpCounts {
            discarded_bytes: self.discarded_bytes.load(Relaxed),
            discard_ranges: self.discard_ranges.load(Relaxed),
            collapsed_bytes: self.collapsed_bytes.load(Relaxed),
            collapse_ranges: self.collapse_ranges.load(Relaxed),
        }
    }
}

/// Bytes and ranges discarded and collapsed since guest RAM was mapped
/// (successful calls only; a refused range counts nowhere).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    pub discarded_bytes: u64,
    pub discard_ranges: u64,
    pub collapsed_bytes: u64,
    pub collapse_ranges: u64,
}

/// Pages of a region on one host node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NodePages {
    pub node: u32,
    pub pages: u64,
}

/// Where the sampled pages of a region are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Residency {
    /// Size of the pages sampled (4 KiB, or 2 MiB for hugetlb RAM).
    pub page_bytes: u64,
    /// Pages asked about, evenly spaced over the region.
    pub sampled: u64,
    /// Of those, the ones present in host memory.
    pub resident: u64,
    /// The resident ones by host node, ascending.
    pub nodes: Vec<NodePages>,
}

/// One RAM region, where the host keeps it and what it costs.
#[derive(Clone, Debug, Serialize)]
pub struct RegionAccounting {
    /// Where it is, with its guest `node` and the `host_node` it is bound
    /// to (null without `--numa`).
    #[serde(flatten)]
    pub region: RamRegion,
    /// The policy read back (`default`, `bind`, ...; null if get_mempolicy
    /// failed) and the nodes of its mask.
    pub policy: Option<String>,
    pub policy_nodes: Vec<u32>,
    /// smaps Rss of exactly this region's host range.
    pub rss_bytes: Option<u64>,
    /// Of which transparent huge pages.
    pub anon_huge_bytes: Option<u64>,
    /// Hugetlb pages mapped in it (Private_Hugetlb + Shared_Hugetlb).
    pub hugetlb_bytes: Option<u64>,
    pub residency: Option<Residency>,
    /// Why a figure above is missing (null when none is).
    pub error: Option<String>,
}

/// Guest RAM's cost to the host now: per region, KVM's view, the
/// discard/collapse counters and the process's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryAccounting {
    pub regions: Vec<RegionAccounting>,
    /// KVM's binary statistics (null where KVM_GET_STATS_FD is missing).
    pub kvm: Option<KvmMemStats>,
    #[serde(flatten)]
    pub ops: OpCounts,
    #[serde(flatten)]
    pub usage: MemoryUsage,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccountingError {
    #[error(
        "smaps: the mapping {start:#x}-{end:#x} straddles the region {from:#x}-{to:#x}, \
         so its figures cannot be split"
    )]
    Straddles {
        start: u64,
        end: u64,
        from: u64,
        to: u64,
    },
}

/// smaps figures of the mappings inside `[from, to)`. A mapping that is
/// partly inside is an error: its Rss cannot be split by address.
pub fn smaps_in(smaps: &str, from: u64, to: u64) -> Result<SmapsSum, AccountingError> {
    let mut sum = SmapsSum::default();
    for (start, end, s) in rss::smaps_entries(smaps) {
        if start >= from && end <= to {
            sum.rss += s.rss;
            sum.anon_huge += s.anon_huge;
            sum.hugetlb += s.hugetlb;
        } else if start < to && end > from {
            return Err(AccountingError::Straddles {
                start,
                end,
                from,
                to,
            });
        }
    }
    Ok(sum)
}

/// The addresses of an even sample of at most [`MAX_SAMPLE`] pages of
/// `page`-byte pages over `[host, host + size)`.
pub fn sample_addresses(host: u64, size: u64, page: u64) -> Vec<u64> {
    let pages = size / page;
    let n = pages.min(MAX_SAMPLE as u64);
    (0..n).map(|i| host + (i * pages / n) * page).collect()
}

/// move_pages in query mode: the node of each page, or a negative errno
/// (-ENOENT: not present). Also the walk model's host view
/// (`guest::ptwalk`).
pub(crate) fn query_nodes(addrs: &[u64]) -> io::Result<Vec<i32>> {
    let ptrs: Vec<*const libc::c_void> = addrs.iter().map(|&a| a as *const _).collect();
    let mut status = vec![0i32; addrs.len()];
    // SAFETY: query mode (nodes NULL) reads `count` pointers and writes
    // `count` statuses, both arrays that long; it changes no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            ptrs.len() as libc::c_ulong,
            ptrs.as_ptr(),
            std::ptr::null::<i32>(),
            status.as_mut_ptr(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(status)
}

/// Counts a move_pages answer: resident pages, and of them per node.
pub fn tally(status: &[i32], page_bytes: u64) -> Residency {
    let mut nodes: Vec<NodePages> = Vec::new();
    for &s in status.iter().filter(|&&s| s >= 0) {
        match nodes.iter_mut().find(|n| n.node == s as u32) {
            Some(n) => n.pages += 1,
            None => nodes.push(NodePages {
                node: s as u32,
                pages: 1,
            }),
        }
    }
    nodes.sort_by_key(|n| n.node);
    Residency {
        page_bytes,
        sampled: status.len() as u64,
        resident: nodes.iter().map(|n| n.pages).sum(),
        nodes,
    }
}

/// Where the pages of `r` are, from a sample.
pub fn residency(r: &RamRegion, page_bytes: u64) -> io::Result<Residency> {
    let addrs = sample_addresses(r.host_addr, r.size, page_bytes);
    Ok(tally(&query_nodes(&addrs)?, page_bytes))
}

/// Accounts every region of `ram` now; `kvm` is KVM's view, read by the
/// caller (memory knows nothing of KVM's fds).
pub fn measure(ram: &GuestRam, kvm: Option<KvmMemStats>) -> MemoryAccounting {
    let smaps = std::fs::read_to_string("/proc/self/smaps");
    let page = ram.config().backing.page_size();
    let regions = ram
        .regions
        .iter()
        .zip(&ram.mappings)
        .map(|(r, map)| {
            let mut a = RegionAccounting {
                region: *r,
                policy: None,
                policy_nodes: Vec::new(),
                rss_bytes: None,
                anon_huge_bytes: None,
                hugetlb_bytes: None,
                residency: None,
                error: None,
            };
            let mut errors = Vec::new();
            match smaps
                .as_deref()
                .map(|t| smaps_in(t, r.host_addr, r.host_addr + r.size))
            {
                Ok(Ok(s)) => {
                    a.rss_bytes = Some(s.rss);
                    a.anon_huge_bytes = Some(s.anon_huge);
                    a.hugetlb_bytes = Some(s.hugetlb);
                }
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(e) => errors.push(format!("reading /proc/self/smaps: {e}")),
            }
            match mempolicy::policy_of(map) {
                Ok(p) => {
                    a.policy = Some(p.policy);
                    a.policy_nodes = p.policy_nodes;
                }
                Err(e) => errors.push(format!("get_mempolicy: {e}")),
            }
            match residency(r, page) {
                Ok(res) => a.residency = Some(res),
                Err(e) => errors.push(format!("move_pages: {e}")),
            }
            a.error = (!errors.is_empty()).then(|| errors.join("; "));
            a
        })
        .collect();
    MemoryAccounting {
        regions,
        kvm,
        ops: ram.op_counts(),
        usage: smaps
            .as_deref()
            .map_err(|e| io::Error::new(e.kind(), e.to_string()))
            .and_then(|t| rss::measure_with(t, &ram.host_ranges()))
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mappings_wholly_inside_count_and_a_straddler_is_an_error() {
        let smaps = "\
7f0000000000-7f0000200000 rw-p 00000000 00:00 0 [anon:memvisor-ram-0]
Rss:                2048 kB
AnonHugePages:      2048 kB
7f0000200000-7f0000400000 rw-p 00000000 00:00 0 [anon:memvisor-ram-0]
Rss:                 100 kB
AnonHugePages:         0 kB
7f0000400000-7f0000800000 rw-p 00000000 00:00 0 [anon:memvisor-ram-1]
Rss:                4096 kB
AnonHugePages:      4096 kB
Private_Hugetlb:       8 kB
";
        let k = 1024;
        let r0 = smaps_in(smaps, 0x7f00_0000_0000, 0x7f00_0040_0000).unwrap();
        assert_eq!(
            r0,
            SmapsSum {
                rss: 2148 * k,
                anon_huge: 2048 * k,
                hugetlb: 0
            }
        );
        let r1 = smaps_in(smaps, 0x7f00_0040_0000, 0x7f00_0080_0000).unwrap();
        assert_eq!(r1.rss, 4096 * k);
        assert_eq!(r1.hugetlb, 8 * k);
        // A range cutting the first mapping in half cannot be answered.
        assert!(matches!(
            smaps_in(smaps, 0x7f00_0010_0000, 0x7f00_0040_0000),
            Err(AccountingError::Straddles { .. })
        ));
        // Nothing there: zeros.
        assert_eq!(
            smaps_in(smaps, 0x1000, 0x2000).unwrap(),
            SmapsSum::default()
        );
    }

    #[test]
    fn samples_are_bounded_evenly_spaced_and_inside() {
        let page = 4096;
        let small = sample_addresses(0x10000, 16 * page, page);
        assert_eq!(small.len(), 16, "every page of a small region");
        assert_eq!(small[15], 0x10000 + 15 * page);
        let size = 1 << 30;
        let big = sample_addresses(0x4000_0000, size, page);
        assert_eq!(big.len(), MAX_SAMPLE);
        assert_eq!(big[0], 0x4000_0000);
        assert!(*big.last().unwrap() < 0x4000_0000 + size);
        let step = size / MAX_SAMPLE as u64;
        assert!(big.windows(2).all(|w| w[1] - w[0] == step));
        assert_eq!(sample_addresses(0, 2 << 20, 2 << 20).len(), 1);
    }

    #[test]
    fn tally_counts_resident_pages_per_node() {
        let r = tally(&[0, -libc::ENOENT, 1, 0, -libc::EFAULT, 0], 4096);
        assert_eq!(r.sampled, 6);
        assert_eq!(r.resident, 4);
        assert_eq!(
            r.nodes,
            vec![
                NodePages { node: 0, pages: 3 },
                NodePages { node: 1, pages: 1 }
            ]
        );
    }

    use super::super::backing::{Backing, BackingConfig, Thp};
    use super::super::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::{Bytes, GuestAddress};

    const MIB: u64 = 1 << 20;
    const THP_OFF: BackingConfig = BackingConfig {
        backing: Backing::Anon,
        thp: Thp::Off,
    };
    const MEMFD: BackingConfig = BackingConfig {
        backing: Backing::Memfd,
        thp: Thp::Off,
    };

    fn touch(ram: &GuestRam, from: u64, len: u64) {
        for gpa in (from..from + len).step_by(4096) {
            ram.memory().write_obj(0xa5u8, GuestAddress(gpa)).unwrap();
        }
    }

    fn rss_of(a: &MemoryAccounting, i: usize) -> u64 {
        let r = &a.regions[i];
        r.rss_bytes.unwrap_or_else(|| panic!("{:?}", r.error))
    }

    /// Two regions (either side of the MMIO gap), touched by different
    /// amounts: each region's figures are its own. Only the touched pages
    /// cost memory.
    #[test]
    fn each_region_is_accounted_from_its_own_host_range() {
        let ram = GuestRam::with_backing(MMIO_GAP_START + 8 * MIB, THP_OFF).unwrap();
        touch(&ram, 0, 3 * MIB);
        touch(&ram, MMIO_GAP_END, 6 * MIB);
        let a = measure(&ram, None);
        assert_eq!(a.regions.len(), 2);
        assert_eq!(rss_of(&a, 0), 3 * MIB, "{:?}", a.regions[0]);
        assert_eq!(rss_of(&a, 1), 6 * MIB, "{:?}", a.regions[1]);
        assert_eq!(a.regions[0].anon_huge_bytes, Some(0));
        assert_eq!(a.usage.guest_rss_bytes, 9 * MIB);
        // Region 0: 4096 samples 768 KiB apart, 4 of them in the first
        // 3 MiB; region 1: all 2048 pages asked, 1536 resident.
        let r0 = a.regions[0].residency.as_ref().unwrap();
        assert_eq!((r0.sampled, r0.resident), (MAX_SAMPLE as u64, 4), "{r0:?}");
        let r1 = a.regions[1].residency.as_ref().unwrap();
        assert_eq!((r1.sampled, r1.resident), (2048, 1536), "{r1:?}");
        assert_eq!(r1.nodes.iter().map(|n| n.pages).sum::<u64>(), 1536);
        assert_eq!(r1.page_bytes, 4096);
    }

    #[test]
    fn thp_regions_report_their_huge_pages() {
        let ram = GuestRam::new(16 * MIB).unwrap();
        touch(&ram, 0, 8 * MIB);
        let a = measure(&ram, None);
        let r = &a.regions[0];
        assert_eq!(r.rss_bytes, Some(8 * MIB), "{r:?}");
        if r.anon_huge_bytes == Some(0) {
            eprintln!("skipping the THP half: this host gave no THP to an MADV_HUGEPAGE mapping");
            return;
        }
        assert_eq!(r.anon_huge_bytes, Some(8 * MIB), "{r:?}");
    }

    /// Discard drops the region's Rss by exactly the range and counts it;
    /// a refused range counts nowhere and drops nothing.
    #[test]
    fn discard_is_counted_and_drops_the_regions_rss_by_the_range() {
        for cfg in [BackingConfig::default(), MEMFD] {
            let ram = GuestRam::with_backing(16 * MIB, cfg).unwrap();
            touch(&ram, 0, 16 * MIB);
            let before = measure(&ram, None);
            assert_eq!(rss_of(&before, 0), 16 * MIB, "{cfg:?}");
            assert_eq!(before.ops, OpCounts::default());
            for (gpa, len) in [(16 * MIB, 4096), (15 * MIB, 2 * MIB), (4096, u64::MAX)] {
                assert!(ram.discard(GuestAddress(gpa), len).is_err());
            }
            assert_eq!(rss_of(&measure(&ram, None), 0), 16 * MIB, "{cfg:?}");
            assert_eq!(ram.op_counts(), OpCounts::default(), "{cfg:?}");
            ram.discard(GuestAddress(2 * MIB), 4 * MIB).unwrap();
            ram.discard(GuestAddress(9 * MIB), 3 * 4096).unwrap();
            let after = measure(&ram, None);
            assert_eq!(
                rss_of(&before, 0) - rss_of(&after, 0),
                4 * MIB + 3 * 4096,
                "{cfg:?}"
            );
            assert_eq!(
                after.ops,
                OpCounts {
                    discarded_bytes: 4 * MIB + 3 * 4096,
                    discard_ranges: 2,
                    ..Default::default()
                },
                "{cfg:?}"
            );
            let res = after.regions[0].residency.as_ref().unwrap();
            assert_eq!(res.resident, 4096 - 1024 - 3, "{cfg:?}: {res:?}");
        }
    }

    #[test]
    fn collapse_is_counted_on_success_only() {
        let ram = GuestRam::new(8 * MIB).unwrap();
        touch(&ram, 0, 8 * MIB);
        assert!(ram.collapse(GuestAddress(8 * MIB), 2 * MIB).is_err());
        assert_eq!(ram.op_counts(), OpCounts::default());
        let mut r = ram.collapse(GuestAddress(0), 4 * MIB);
        for _ in 0..3 {
            if r.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            r = ram.collapse(GuestAddress(0), 4 * MIB);
        }
        r.unwrap();
        assert_eq!(ram.op_counts().collapsed_bytes, 4 * MIB);
        assert_eq!(ram.op_counts().collapse_ranges, 1);
        let off = GuestRam::with_backing(4 * MIB, THP_OFF).unwrap();
        assert!(off.collapse(GuestAddress(0), 4 * MIB).is_err());
        assert_eq!(off.op_counts(), OpCounts::default());
    }
}
