//! Counters of the balloon, the guest's last statistics and the timeline of
//! its steps: atomics and a small mutex, so the API, the report and the
//! collapse worker read them without the device lock. Guest-triggered
//! paths count; they never log.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::{tags, Reject};

#[derive(Debug, Default)]
pub struct BalloonMetrics {
    pub inflate_requests: AtomicU64,
    pub inflate_pages: AtomicU64,
    pub deflate_requests: AtomicU64,
    pub deflate_pages: AtomicU64,
    pub report_requests: AtomicU64,
    pub report_pages: AtomicU64,
    pub stats_updates: AtomicU64,
    /// Bytes the host was given back (inflate and reporting discards that
    /// succeeded).
    pub discarded_bytes: AtomicU64,
    /// Discards (one per coalesced range, per RAM region it lies in).
    pub discards: AtomicU64,
    /// Whole aligned 2 MiB blocks inside the discarded ranges.
    pub whole_2m_freed: AtomicU64,
    pub discard_errors: AtomicU64,
    pub ranges_collapsed: AtomicU64,
    pub collapse_errors: AtomicU64,
    /// Deflated blocks left alone: pages of them were in the balloon again.
    pub collapse_skipped: AtomicU64,
    /// Deflated blocks given up because too few of their pages were on the
    /// host whenever the worker looked (the guest had not reused them, or
    /// had handed them over by free page reporting): collapsing would have
    /// filled them, memory for nothing.
    pub collapse_not_resident: AtomicU64,
    pub notifications: AtomicU64,
    pub interrupts: AtomicU64,
    pub config_interrupts: AtomicU64,
    rejected: [AtomicU64; Reject::ALL.len()],
}

impl BalloonMetrics {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn reject(&self, r: Reject) {
        Self::add(&self.rejected[r as usize], 1);
    }

    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }

    pub fn rejected_total(&self) -> u64 {
        Reject::ALL.iter().map(|&r| self.rejected(r)).sum()
    }

    fn rejected_map(&self) -> serde_json::Map<String, serde_json::Value> {
        Reject::ALL
            .iter()
            .map(|&r| (r.name().to_string(), self.rejected(r).into()))
            .collect()
    }
}

/// The guest's last stats buffer, under Firecracker's field names (absent
/// until the guest sent the tag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuestStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
}

impl GuestStats {
    /// Records one entry; unknown tags (newer drivers have more) are
    /// ignored, as the spec asks.
    pub fn set(&mut self, tag: u16, val: u64) {
        let slot = match tag {
            tags::SWAP_IN => &mut self.swap_in,
            tags::SWAP_OUT => &mut self.swap_out,
            tags::MAJFLT => &mut self.major_faults,
            tags::MINFLT => &mut self.minor_faults,
            tags::MEMFREE => &mut self.free_memory,
            tags::MEMTOT => &mut self.total_memory,
            tags::AVAIL => &mut self.available_memory,
            tags::CACHES => &mut self.disk_caches,
            tags::HTLB_PGALLOC => &mut self.hugetlb_allocations,
            tags::HTLB_PGFAIL => &mut self.hugetlb_failures,
            _ => return,
        };
        *slot = Some(val);
    }
}

/// Guest RAM's resident and THP-backed bytes at one moment (smaps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ThpPoint {
    pub at_us: f64,
    pub guest_rss_bytes: u64,
    pub anon_huge_bytes: u64,
    /// anon_huge / rss (0 when nothing is resident).
    pub coverage: f64,
}

impl ThpPoint {
    pub fn new(at_us: f64, rss: u64, anon_huge: u64) -> Self {
        ThpPoint {
            at_us,
            guest_rss_bytes: rss,
            anon_huge_bytes: anon_huge,
            coverage: if rss == 0 {
                0.0
            } else {
                anon_huge as f64 / rss as f64
            },
        }
    }
}

/// One target change and how long the guest and host took to follow it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Step {
    /// "inflate" or "deflate".
    pub kind: &'static str,
    pub from_pages: u32,
    pub to_pages: u32,
    /// When the target was set (µs since the clock origin).
    pub target_set_us: f64,
    /// Target set → the guest wrote `actual` = target.
    pub actual_reached_ms: Option<f64>,
    /// Target set → the last discard of this step returned (inflate: the
    /// Rss drop is complete then; the guest acks buffers only after).
    pub rss_done_ms: Option<f64>,
    /// Guest Rss when the target was reached (read by the worker).
    pub guest_rss_after_bytes: Option<u64>,
}

/// Most steps kept (the API sets targets; a script may set many).
pub const MAX_STEPS: usize = 64;

/// What happened when, shared by device and worker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    pub steps: Vec<Step>,
    pub steps_dropped: u64,
    /// Before the first inflate discarded anything.
    pub thp_before_inflate: Option<ThpPoint>,
    /// When `actual` first reached an inflate target.
    pub thp_after_inflate: Option<ThpPoint>,
    /// After the collapse worker's last batch (deflate, reuse, collapse).
    pub thp_after_deflate: Option<ThpPoint>,
}

#[derive(Debug, Default)]
pub struct Shared {
    pub metrics: BalloonMetrics,
    pub timeline: Mutex<Timeline>,
    pub stats: Mutex<GuestStats>,
}

impl Shared {
    pub fn timeline(&self) -> std::sync::MutexGuard<'_, Timeline> {
        self.timeline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `GET /balloon/statistics` and the report's `balloon` section:
/// Firecracker's fields first, then the host's side.
#[derive(Clone, Debug, Serialize)]
pub struct BalloonReport {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(flatten)]
    pub guest: GuestStats,
    pub stats_updates: u64,
    pub inflate_requests: u64,
    pub inflate_pages: u64,
    pub deflate_requests: u64,
    pub deflate_pages: u64,
    pub report_requests: u64,
    pub report_pages: u64,
    pub discarded_bytes: u64,
    pub discards: u64,
    pub whole_2m_freed: u64,
    pub discard_errors: u64,
    pub ranges_collapsed: u64,
    pub collapse_errors: u64,
    pub collapse_skipped: u64,
    pub collapse_not_resident: u64,
    pub notifications: u64,
    pub interrupts: u64,
    pub config_interrupts: u64,
    pub rejected_total: u64,
    pub rejected: serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub timeline: Timeline,
}

impl BalloonReport {
    pub fn new(target_pages: u32, actual_pages: u32, s: &Shared) -> Self {
        let m = &s.metrics;
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BalloonReport {
            target_pages,
            actual_pages,
            target_mib: super::pages_to_mib(target_pages),
            actual_mib: super::pages_to_mib(actual_pages),
            guest: *s.stats.lock().unwrap_or_else(|p| p.into_inner()),
            stats_updates: r(&m.stats_updates),
            inflate_requests: r(&m.inflate_requests),
            inflate_pages: r(&m.inflate_pages),
            deflate_requests: r(&m.deflate_requests),
            deflate_pages: r(&m.deflate_pages),
            report_requests: r(&m.report_requests),
            report_pages: r(&m.report_pages),
            discarded_bytes: r(&m.discarded_bytes),
            discards: r(&m.discards),
            whole_2m_freed: r(&m.whole_2m_freed),
            discard_errors: r(&m.discard_errors),
            ranges_collapsed: r(&m.ranges_collapsed),
            collapse_errors: r(&m.collapse_errors),
            collapse_skipped: r(&m.collapse_skipped),
            collapse_not_resident: r(&m.collapse_not_resident),
            notifications: r(&m.notifications),
            interrupts: r(&m.interrupts),
            config_interrupts: r(&m.config_interrupts),
            rejected_total: m.rejected_total(),
            rejected: m.rejected_map(),
            timeline: s.timeline().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_use_firecrackers_names_and_skip_unknown_tags() {
        let mut g = GuestStats::default();
        for t in 0..12u16 {
            g.set(t, u64::from(t) + 100);
        }
        let v = serde_json::to_value(g).unwrap();
        for (name, tag) in [
            ("swap_in", 0),
            ("swap_out", 1),
            ("major_faults", 2),
            ("minor_faults", 3),
            ("free_memory", 4),
            ("total_memory", 5),
            ("available_memory", 6),
            ("disk_caches", 7),
            ("hugetlb_allocations", 8),
            ("hugetlb_failures", 9),
        ] {
            assert_eq!(v[name], tag + 100, "{name}");
        }
        assert_eq!(v.as_object().unwrap().len(), 10);
        assert_eq!(
            serde_json::to_value(GuestStats::default()).unwrap(),
            serde_json::json!({})
        );
    }

    #[test]
    fn report_has_targets_in_pages_and_mib_and_every_reject_kind() {
        let s = Shared::default();
        s.metrics.reject(Reject::ChainLoop);
        s.metrics.reject(Reject::ChainLoop);
        s.metrics.reject(Reject::PfnOutsideRam);
        let v = serde_json::to_value(BalloonReport::new(131072, 256, &s)).unwrap();
        assert_eq!(v["target_mib"], 512);
        assert_eq!(v["actual_mib"], 1);
        assert_eq!(v["rejected_total"], 3);
        assert_eq!(v["rejected"]["chain_loop"], 2);
        assert_eq!(v["rejected"].as_object().unwrap().len(), Reject::ALL.len());
        assert!(v["steps"].as_array().unwrap().is_empty());
    }
}
