//! entropy: read `bytes=N` bytes (default 65536) from the virtio-rng device
//! and check that they look random.
//!
//! Reports what the data path cost: buffers handed over (`requests`),
//! QueueNotify writes (`notifications`, one exit each), device interrupts,
//! and their ratios; with EVENT_IDX and batches of 8 buffers there should
//! be at most one notification and one interrupt per batch.
//!
//! The distribution check counts each byte value and computes Pearson's
//! chi-square statistic over the 256 bins. For uniform random bytes it has
//! 255 degrees of freedom: mean 255, standard deviation ~22.6. The bound
//! `CHI2_BOUND` = 400 is 6.4 standard deviations above the mean (the
//! Wilson-Hilferty approximation gives z = 5.5: a false alarm about once in
//! 50 million runs) and still fails anything structured (all
//! one value gives 255·n; bytes drawn from 200 values already give ~0.28·n,
//! i.e. > 400 from n = 1,500). It is applied only when every bin expects at
//! least 5 bytes (n >= 1280, the usual validity rule for the test); below
//! that only "more than one distinct value" is checked (n >= 16).
use crate::hostio::{self, LINE};
use crate::virtio::rng::{self, VirtioRng};
use crate::virtio::{VirtioError, Wait, F_RING_EVENT_IDX};
use crate::{abi, arch::cpu, cmdline, user};

pub const DEFAULT_BYTES: u64 = 65536;
pub const CHI2_BOUND: f64 = 400.0;
const CHI2_MIN_BYTES: u64 = 256 * 5;

pub fn run(cpu: usize, _ncpus: usize) -> bool {
    if cpu != 0 {
        return true;
    }
    let bytes = match cmdline::get(user::cmdline(), "bytes") {
        None => DEFAULT_BYTES,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => user::fail(format_args!(
                "bytes={v}: must be a whole number of bytes greater than 0"
            )),
        },
    };
    let wait = match Wait::from_cmdline(user::cmdline()) {
        Ok(w) => w,
        Err(v) => user::fail(format_args!("virtio_wait={v}: must be hlt or spin")),
    };
    let mut dev = match VirtioRng::init(user::cmdline(), cpu) {
        Ok(d) => d,
        Err(e @ VirtioError::NotFound { .. }) => user::fail(format_args!(
            "entropy: virtio-rng: {e}; memvisor adds one with --entropy"
        )),
        Err(e) => user::fail(format_args!("entropy: virtio-rng: {e}")),
    };
    let mut counts = [0u64; 256];
    let t0 = cpu::rdtsc();
    let stats = match dev.read(bytes, wait, |buf| {
        for &b in buf {
            counts[b as usize] += 1;
        }
    }) {
        Ok(s) => s,
        Err(e) => user::fail(format_args!(
            "entropy: virtio-rng at {:#x}: {e}",
            dev.base()
        )),
    };
    let cycles = cpu::rdtsc() - t0;
    let (base, irq, qsize, features) = (dev.base(), dev.irq(), dev.queue_size, dev.features);
    let shutdown = dev.shutdown();

    let n: u64 = counts.iter().sum();
    let distinct = counts.iter().filter(|&&c| c > 0).count();
    let (min, max) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    let chi2 = chi_square(&counts);
    let chi2_checked = n >= CHI2_MIN_BYTES;
    let distribution_ok = if chi2_checked {
        chi2 <= CHI2_BOUND
    } else {
        n < 16 || distinct > 1
    };
    let ok = n == bytes && stats.bytes == bytes && distribution_ok && shutdown.is_ok();
    let per_request = if stats.requests > 0 {
        stats.notifications as f64 / stats.requests as f64
    } else {
        0.0
    };
    let irq_per_request = if stats.requests > 0 {
        stats.interrupts as f64 / stats.requests as f64
    } else {
        0.0
    };

    let mut l = LINE.lock();
    l.begin(abi::RECORD_JSON);
    l.fmt(format_args!(
        "{{\"event\":\"workload\",\"name\":\"entropy\",\"ok\":{ok},\"bytes\":{},\"bytes_requested\":{bytes},\
         \"requests\":{},\"batches\":{},\"buffer_size\":{},\"notifications\":{},\"interrupts\":{},\
         \"polled_batches\":{},\"watchdog_kicks\":{},\"wait\":\"{}\",\"sleeps\":{},\"notifications_per_request\":{per_request:.4},\
         \"interrupts_per_request\":{irq_per_request:.4},\"overlong_used\":{},\
         \"device\":{{\"base\":{base},\"irq\":{irq},\"queue_size\":{qsize},\"features\":{features},\
         \"event_idx\":{}}},\"distribution\":{{\"bins\":256,\"chi2\":{chi2:.2},\"chi2_bound\":{CHI2_BOUND:.1},\
         \"chi2_checked\":{chi2_checked},\"distinct\":{distinct},\"min_count\":{min},\"max_count\":{max},\
         \"ok\":{distribution_ok}}},\"tsc_cycles\":{cycles}",
        stats.bytes,
        stats.requests,
        stats.batches,
        rng::BUF_SIZE,
        stats.notifications,
        stats.interrupts,
        stats.polled_batches,
        stats.watchdog_kicks,
        wait.name(),
        stats.sleeps,
        stats.overlong,
        features & F_RING_EVENT_IDX != 0,
    ));
    if let Err(e) = shutdown {
        l.raw(",\"shutdown_error\":");
        l.string_fmt(format_args!("{e}"));
    }
    l.raw("}");
    hostio::send(l.finish());
    ok
}

/// Pearson's chi-square against the uniform distribution over 256 values:
/// sum over bins of (count - n/256)^2 / (n/256) = sum (256·c - n)^2 / (256·n),
/// summed exactly in integers.
fn chi_square(counts: &[u64; 256]) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let num: u128 = counts
        .iter()
        .map(|&c| {
            let d = (256 * c as i128 - n as i128).unsigned_abs();
            d * d
        })
        .sum();
    num as f64 / (256.0 * n as f64)
}
