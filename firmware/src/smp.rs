//! Per-CPU check-in and a sense-free phase barrier, all at CPL3 in shared
//! memory: no IPIs, no exits.
use crate::MAX_CPUS;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub struct CheckIn {
    pub cpl: AtomicU32,
    pub tsc: AtomicU64,
    pub stack: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: CheckIn = CheckIn {
    cpl: AtomicU32::new(u32::MAX),
    tsc: AtomicU64::new(0),
    stack: AtomicU64::new(0),
};
pub static CHECKINS: [CheckIn; MAX_CPUS] = [EMPTY; MAX_CPUS];
static CHECKED_IN: AtomicU32 = AtomicU32::new(0);

pub fn check_in(cpu: usize, cpl: u16, tsc: u64, stack: u64) {
    let c = &CHECKINS[cpu];
    c.cpl.store(cpl as u32, Ordering::Relaxed);
    c.tsc.store(tsc, Ordering::Relaxed);
    c.stack.store(stack, Ordering::Relaxed);
    CHECKED_IN.fetch_add(1, Ordering::Release);
}

pub fn wait_all_checked_in(n: usize) {
    while (CHECKED_IN.load(Ordering::Acquire) as usize) < n {
        core::hint::spin_loop();
    }
}

/// Counts arrivals; phase k completes when `k * n` CPUs have arrived, so the
/// counter never needs resetting.
pub struct Barrier {
    arrived: AtomicU64,
}

impl Barrier {
    pub const fn new() -> Self {
        Barrier {
            arrived: AtomicU64::new(0),
        }
    }

    pub fn wait(&self, n: usize) {
        let ticket = self.arrived.fetch_add(1, Ordering::AcqRel);
        let target = (ticket / n as u64 + 1) * n as u64;
        while self.arrived.load(Ordering::Acquire) < target {
            core::hint::spin_loop();
        }
    }
}

/// The workload index the BSP publishes; APs spin on it (u32::MAX: none yet).
pub static GO: AtomicU32 = AtomicU32::new(u32::MAX);
