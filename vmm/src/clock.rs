//! One monotonic clock for every phase timestamp.
//!
//! Phases are measured from the moment `memvisor bench` (or any caller)
//! spawned the process when it tells us so through `MEMVISOR_SPAWN_NS`
//! (CLOCK_MONOTONIC nanoseconds, which are shared between processes), and
//! from `main` otherwise. The report says which.
use std::sync::OnceLock;

pub const SPAWN_ENV: &str = "MEMVISOR_SPAWN_NS";

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The parent's clock reading just before it spawned us.
    Spawn,
    /// Entry to `main`: process exec and dynamic linking are not included.
    Main,
}

/// (origin ns, origin kind, main-entry ns).
static ORIGIN: OnceLock<(u64, Origin, u64)> = OnceLock::new();

/// Fixes the origin; call first thing in `main`. Later calls are no-ops.
pub fn init() {
    ORIGIN.get_or_init(|| {
        let main = now_ns();
        match std::env::var(SPAWN_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(spawn) if spawn <= main => (spawn, Origin::Spawn, main),
            _ => (main, Origin::Main, main),
        }
    });
}

pub fn origin() -> (u64, Origin) {
    init();
    let (ns, kind, _) = *ORIGIN.get().expect("initialised");
    (ns, kind)
}

/// When `main` started (equal to the origin unless spawned by a timer).
pub fn main_ns() -> u64 {
    init();
    ORIGIN.get().expect("initialised").2
}

/// Microseconds since the origin.
pub fn since_origin_us(ns: u64) -> f64 {
    ns.saturating_sub(origin().0) as f64 / 1000.0
}
