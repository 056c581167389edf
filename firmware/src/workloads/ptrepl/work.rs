//! The two timed kernels of `workload=ptrepl`, each over one vCPU's own
//! region: both make (nearly) every operation a TLB miss once the region
//! is far larger than the TLB's reach, so their speed is the page walk's.
//!
//! * GUPS, HPCC RandomAccess: `table[ran & mask] ^= ran` with HPCC's
//!   LFSR sequence; independent updates, so misses overlap.
//! * chase: dependent loads through one random cyclic permutation
//!   (Sattolo's algorithm) of the region's cache lines: one miss at a time,
//!   the walk's latency exposed.
use crate::arch::cpu;

/// HPCC RandomAccess's polynomial.
const POLY: u64 = 7;
/// One chase element per cache line.
pub const LINE: u64 = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Gups,
    Chase,
}

impl Work {
    pub const ALL: [Work; 2] = [Work::Gups, Work::Chase];

    pub fn name(self) -> &'static str {
        super::params::WORKS[self as usize]
    }
}

/// xorshift64*: the chase permutation's shuffle; any decent generator does.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Words GUPS updates: the largest power of two that fits, as HPCC sizes
/// its table.
fn gups_words(bytes: u64) -> u64 {
    1 << (bytes / 8).ilog2()
}

/// Untimed set-up: GUPS's table or the chase's permutation. `base` is the
/// region's first byte in the current address space.
pub fn prepare(w: Work, base: u64, bytes: u64, seed: u64) {
    match w {
        Work::Gups => {
            for i in 0..gups_words(bytes) {
                // SAFETY: the region is mapped, ours and word-aligned.
                unsafe { ((base + 8 * i) as *mut u64).write_volatile(i) };
            }
        }
        Work::Chase => {
            let n = bytes / LINE;
            let slot = |i: u64| (base + i * LINE) as *mut u64;
            for i in 0..n {
                // SAFETY: as above; one u64 at the start of each line.
                unsafe { slot(i).write_volatile(i) };
            }
            // Sattolo: swapping i only with j < i leaves a single cycle.
            let mut rng = Rng(seed | 1);
            for i in (1..n).rev() {
                let j = rng.next() % i;
                // SAFETY: i, j < n.
                unsafe {
                    let (a, b) = (slot(i).read_volatile(), slot(j).read_volatile());
                    slot(i).write_volatile(b);
                    slot(j).write_volatile(a);
                }
            }
        }
    }
}

/// The timed loop: `ops` operations; (cycles, a value that depends on
/// every operation, so none can be optimised away).
pub fn run(w: Work, base: u64, bytes: u64, ops: u64, seed: u64) -> (u64, u64) {
    let t0;
    let result;
    match w {
        Work::Gups => {
            let mask = gups_words(bytes) - 1;
            let mut ran = seed | 1;
            t0 = cpu::rdtsc();
            for _ in 0..ops {
                ran = (ran << 1) ^ (((ran as i64) >> 63) as u64 & POLY);
                let p = (base + 8 * (ran & mask)) as *mut u64;
                // SAFETY: ran & mask < words: inside the region.
                unsafe { p.write_volatile(p.read_volatile() ^ ran) };
            }
            result = ran;
        }
        Work::Chase => {
            let mut x = 0u64;
            t0 = cpu::rdtsc();
            for _ in 0..ops {
                // SAFETY: every slot holds an index < n (a permutation).
                x = unsafe { ((base + x * LINE) as *const u64).read_volatile() };
            }
            result = x;
        }
    }
    (cpu::rdtsc() - t0, core::hint::black_box(result))
}

/// The chase permutation is one cycle through every line: following it n
/// times from 0 visits n distinct slots and returns to 0. Checked after
/// set-up (a wrong shuffle would chase a short loop that fits in cache).
pub fn chase_is_one_cycle(base: u64, bytes: u64) -> bool {
    let n = bytes / LINE;
    let mut x = 0u64;
    for k in 1..=n {
        // SAFETY: as in run.
        x = unsafe { ((base + x * LINE) as *const u64).read_volatile() };
        if x >= n || (x == 0) != (k == n) {
            return false;
        }
    }
    true
}
