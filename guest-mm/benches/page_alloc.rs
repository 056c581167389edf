//! Page allocator benchmark: guest-mm against `buddy_system_allocator` 0.13
//! (with guest-mm's largest order, order 10, over the same maximal blocks:
//! see `common`) and the `Vec` bound, 1 GiB of 4 KiB frames, single thread,
//! time per alloc+free pair. Run with `cargo bench -p guest-mm`; a criterion filter
//! (`cargo bench -p guest-mm -- 'order-0 steady'`) runs some cases only.
//!
//! Cases (criterion groups), each with the functions `guest-mm`,
//! `buddy_system_allocator` and `vec-bound`:
//! - `order-0 steady`: one pair, repeated. guest-mm through its per-CPU
//!   lists with CPU 0's [`CpuCache`](guest_mm::page_alloc::CpuCache) held
//!   across the loop; the peer with one frame held so its buddy stays on
//!   the order-0 list.
//! - `order-0 batch`: 4096 allocations, then 4096 frees; reported per pair
//!   (criterion's iteration is one pair: whole rounds are timed and scaled).
//!   4096 is past the per-CPU high mark, so guest-mm refills its list from
//!   the buddy lists and bulk-frees back to them every round.
//! - `order-0 batch per-CPU only`: the same with 1000 pages, below the high
//!   mark: after warm-up guest-mm never leaves its per-CPU list, so this
//!   times that list alone (both batch cases assert which one they are).
//! - `order-0 buddy`: guest-mm's `alloc_direct`/`free_direct` (no per-CPU
//!   lists) on a zone holding only order-10 blocks, so every pair splits
//!   and merges all ten levels; the peer over only order-10 blocks too, the
//!   same ten levels. Both merge back to exactly the starting state, so
//!   every iteration starts from all-maximal memory without per-iteration
//!   setup (no `iter_batched`); the states are asserted before and after.
//! - `order-9`: 512 contiguous frames from maximal blocks, the same way.
//!
//! After criterion finishes, `main` prints one line per case from
//! criterion's own estimates (`<target>/criterion/<case>/<fn>/new/estimates.json`,
//! the median), with the goals and the anchors.
//! Instruction counts that do not depend on the machine's noise:
//! `tools/alloc-instructions.sh`.

mod common;
mod estimates;

use common::*;
use criterion::Criterion;
use estimates::{criterion_dir, estimate};
use guest_mm::page_alloc::{CpuCache, PageAllocator};
use guest_mm::Pfn;
use std::time::{Duration, Instant, SystemTime};

fn main() {
    let started = SystemTime::now();
    let mut crit = Criterion::default().configure_from_args();
    // One 1 GiB allocator for every case: each case puts it into the state
    // it needs (warm per-CPU lists, or drained and all maximal).
    let gm = GuestMm::new(GIB);
    let a: &PageAllocator = &gm.a;

    order0_steady(&mut crit, a);
    order0_batch(&mut crit, a, CASES[1]);
    order0_batch(&mut crit, a, CASES[2]);
    {
        let mut c = a.cpu(0);
        let held = make_maximal(a, &mut c);
        order0_buddy(&mut crit, a, &mut c);
        order9(&mut crit, a, &mut c);
        release(&mut c, held);
    }

    crit.final_summary();
    summary(started);
}

fn order0_steady(crit: &mut Criterion, a: &PageAllocator) {
    let mut g = crit.benchmark_group(CASES[0]);
    {
        let mut c = a.cpu(0);
        gm_pair(&mut c, 0); // the first allocation refills the per-CPU list
        g.bench_function(CONTENDERS[0], |b| b.iter(|| gm_pair(&mut c, 0)));
        check_no_fallback(&c);
    }
    let mut f = peer_steady();
    g.bench_function(CONTENDERS[1], |b| b.iter(|| peer_pair(&mut f, 1)));
    let mut v = vec_fresh();
    g.bench_function(CONTENDERS[2], |b| b.iter(|| vec_pair(&mut v)));
    g.finish();
}

/// Times whole rounds of `pages` pairs and scales to `iters` pairs, so
/// criterion's estimates are per pair.
fn per_pair(iters: u64, pages: usize, mut round: impl FnMut()) -> Duration {
    let rounds = iters.div_ceil(pages as u64).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        round();
    }
    t.elapsed()
        .mul_f64(iters as f64 / (rounds * pages as u64) as f64)
}

fn order0_batch(crit: &mut Criterion, a: &PageAllocator, case: &str) {
    let pages = batch_pages(case).expect("a batch case");
    let mut g = crit.benchmark_group(case);
    {
        let mut c = a.cpu(0);
        check_batch_crosses_high(a, &mut c, pages);
        let mut buf = vec![Pfn(0); pages];
        g.bench_function(CONTENDERS[0], |b| {
            b.iter_custom(|iters| per_pair(iters, pages, || gm_batch_round(&mut c, &mut buf)))
        });
        check_no_fallback(&c);
    }
    // Plain allocations then frees from a fresh peer; its state merges back
    // to all maximal blocks after every round.
    let mut f = peer_fresh();
    let mut buf = vec![0usize; pages];
    g.bench_function(CONTENDERS[1], |b| {
        b.iter_custom(|iters| per_pair(iters, pages, || peer_batch_round(&mut f, &mut buf)))
    });
    peer_assert_untouched(&mut f);
    let mut v = vec_fresh();
    let mut buf = vec![0u64; pages];
    g.bench_function(CONTENDERS[2], |b| {
        b.iter_custom(|iters| per_pair(iters, pages, || vec_batch_round(&mut v, &mut buf)))
    });
    g.finish();
}

fn order0_buddy(crit: &mut Criterion, a: &PageAllocator, c: &mut CpuCache) {
    let mut g = crit.benchmark_group(CASES[3]);
    g.bench_function(CONTENDERS[0], |b| b.iter(|| gm_direct_pair(c, 0)));
    check_still_maximal(a, c);
    check_no_fallback(c);
    let mut f = peer_fresh();
    peer_assert_untouched(&mut f);
    g.bench_function(CONTENDERS[1], |b| b.iter(|| peer_pair(&mut f, 1)));
    peer_assert_untouched(&mut f);
    let mut v = vec_fresh();
    g.bench_function(CONTENDERS[2], |b| b.iter(|| vec_pair(&mut v)));
    g.finish();
}

fn order9(crit: &mut Criterion, a: &PageAllocator, c: &mut CpuCache) {
    let mut g = crit.benchmark_group(CASES[4]);
    g.bench_function(CONTENDERS[0], |b| b.iter(|| gm_pair(c, HIGH_ORDER)));
    check_still_maximal(a, c);
    check_no_fallback(c);
    let mut f = peer_fresh();
    peer_assert_untouched(&mut f);
    g.bench_function(CONTENDERS[1], |b| {
        b.iter(|| peer_pair(&mut f, 1 << HIGH_ORDER))
    });
    peer_assert_untouched(&mut f);
    let mut v = vec_fresh();
    g.bench_function(CONTENDERS[2], |b| b.iter(|| vec_pair(&mut v)));
    g.finish();
}

// ------------------------------------------------------------------ summary

/// Where criterion writes (its own rule: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else the target directory, which holds
/// this binary at `<target>/[<triple>/]<profile>/deps/`).
fn summary(since: SystemTime) {
    let dir = criterion_dir();
    println!();
    println!("== page allocator, 1 GiB of 4 KiB frames, one thread: ns per alloc+free pair ==");
    println!(
        "   peer: buddy_system_allocator 0.13 FrameAllocator<11> (largest order 10, as guest-mm), \
         memory added as order-10 blocks"
    );
    println!("   (criterion median of each case, from {})", dir.display());
    let mut stale = false;
    for case in CASES {
        let [ours, peer, vec] = CONTENDERS.map(|w| estimate(&dir, case, w, since));
        let (Some(ours), Some(peer), Some(vec)) = (ours, peer, vec) else {
            println!("{case}: not measured (no estimates for all three contenders)");
            continue;
        };
        let r1 = peer.median / ours.median;
        let r2 = ours.median / vec.median;
        let judged = |met: bool| if met { "MET" } else { "MISSED" };
        let goal = match case {
            "order-0 steady" => "goal <= 100 instructions per pair: judged by \
                                 tools/alloc-instructions.sh"
                .to_string(),
            "order-0 batch" => format!(
                "goal >= 3x faster than the fair peer: {}",
                judged(r1 >= 3.0)
            ),
            "order-0 batch per-CPU only" => "no goal (per-CPU list only)".to_string(),
            "order-0 buddy" => "goal >= 3x fewer instructions than the fair peer: judged by \
                                tools/alloc-instructions.sh"
                .to_string(),
            _ => format!(
                "goal < 100 ns: {}; goal >= 2x fewer instructions than the fair peer: \
                 judged by tools/alloc-instructions.sh",
                judged(ours.median < 100.0)
            ),
        };
        let old = !(ours.fresh && peer.fresh && vec.fresh);
        stale |= old;
        println!(
            "{case}: {:.1} ns, {r1:.2}x faster than buddy_system_allocator<11>, {r2:.1}x of Vec bound  [{goal}]{}",
            ours.median,
            if old { " (from an earlier run)" } else { "" },
        );
        println!(
            "    guest-mm {:.1} ns (mean {:.1}), buddy_system_allocator {:.1} ns (mean {:.1}), vec-bound {:.2} ns (mean {:.2})",
            ours.median, ours.mean, peer.median, peer.mean, vec.median, vec.mean
        );
    }
    if stale {
        println!("(lines marked 'from an earlier run' were not measured in this invocation)");
    }
    println!(
        "anchors: LLFree (ATC'23, in-kernel) ~82 ns per order-0 allocation on one core; \
         Linux buddy ~91 ns"
    );
    println!(
        "         (earlier host figures for buddy_system_allocator used FrameAllocator<32> over one \
         order-18 block and are not comparable); Vec bound ~1.4 ns"
    );
}
