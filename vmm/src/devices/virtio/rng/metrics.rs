//! Counters of the entropy device: atomics, so the report and the API read
//! them without the device lock. No log line on any guest-triggered path.
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct RngMetrics {
    /// Chains served (bad ones included).
    pub requests: AtomicU64,
    /// Entropy bytes written to the guest.
    pub bytes: AtomicU64,
    /// Chains refused: a device-readable descriptor, or a buffer outside
    /// guest RAM. Returned with used length 0.
    pub bad_descriptors: AtomicU64,
    /// Queue notifications (guest kicks) seen by the event loop.
    pub notifications: AtomicU64,
    /// Interrupts raised (at most one per processed batch).
    pub interrupts: AtomicU64,
    /// Times processing stopped for the rate limiter.
    pub rate_limited: AtomicU64,
    /// `getrandom(2)` failures (the request is then returned short).
    pub host_rng_errors: AtomicU64,
}

/// A copy of [`RngMetrics`] for the JSON report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RngMetricsSnapshot {
    pub requests: u64,
    pub bytes: u64,
    pub bad_descriptors: u64,
    pub notifications: u64,
    pub interrupts: u64,
    pub rate_limited: u64,
    pub host_rng_errors: u64,
}

impl RngMetrics {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RngMetricsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RngMetricsSnapshot {
            requests: r(&self.requests),
            bytes: r(&self.bytes),
            bad_descriptors: r(&self.bad_descriptors),
            notifications: r(&self.notifications),
            interrupts: r(&self.interrupts),
            rate_limited: r(&self.rate_limited),
            host_rng_errors: r(&self.host_rng_errors),
        }
    }
}
