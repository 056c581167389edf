//! Runs one page-allocator benchmark case for one contender, for counting
//! instructions per alloc+free pair under callgrind (see
//! `tools/alloc-instructions.sh`), which does not depend on what else the
//! machine is doing.
//!
//! ```text
//! alloc_instructions <case> <contender> [pairs] [--mib N]
//! ```
//! `case` is one of [`CASES`] (the criterion group names of
//! `benches/page_alloc.rs`; `-` and `_` may stand for a space), `contender`
//! one of `guest-mm`, `buddy_system_allocator`, `vec-bound`. Setup and
//! warm-up happen outside [`measured_loop`], the only function callgrind
//! collects in (`--toggle-collect='*measured_loop*'`); it runs exactly
//! `pairs` pairs (rounded up to whole rounds for the batch cases). `--mib`
//! sets guest-mm's RAM (default 1024, as the bench).

#[path = "../benches/common/mod.rs"]
mod common;

use common::*;
use guest_mm::Pfn;
use std::time::Instant;

/// Everything callgrind counts: `run` once, which holds the loop.
#[inline(never)]
fn measured_loop(run: &mut dyn FnMut()) {
    run();
}

fn usage() -> ! {
    eprintln!(
        "usage: alloc_instructions <case> <contender> [pairs] [--mib N]\n  cases: {CASES:?}\n  contenders: {CONTENDERS:?}"
    );
    std::process::exit(2)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut mib = 1024u64;
    if let Some(i) = args.iter().position(|a| a == "--mib") {
        mib = args
            .get(i + 1)
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| usage());
        args.drain(i..i + 2);
    }
    let (Some(case), Some(who)) = (args.first(), args.get(1)) else {
        usage()
    };
    let norm = |s: &str| s.replace(['-', '_', ' '], "");
    let Some(case) = CASES.into_iter().find(|c| norm(c) == norm(case)) else {
        usage()
    };
    let Some(who) = CONTENDERS.into_iter().find(|c| norm(c) == norm(who)) else {
        usage()
    };
    let pairs: u64 = match args.get(2) {
        Some(n) => n.parse().unwrap_or_else(|_| usage()),
        None => 100_000,
    };
    let n = pairs;
    let batch = batch_pages(case);
    let per_round = batch.unwrap_or(1) as u64;
    let rounds = pairs.div_ceil(per_round);
    let counted = rounds * per_round;

    let t = Instant::now();
    match who {
        "guest-mm" => {
            let gm = GuestMm::new(mib * MIB);
            let a = &*gm.a;
            let mut c = a.cpu(0);
            match (case, batch) {
                ("order-0 steady", _) => {
                    gm_pair(&mut c, 0);
                    measured_loop(&mut || (0..n).for_each(|_| gm_pair(&mut c, 0)));
                }
                (_, Some(pages)) => {
                    check_batch_crosses_high(a, &mut c, pages);
                    let mut buf = vec![Pfn(0); pages];
                    measured_loop(&mut || {
                        (0..rounds).for_each(|_| gm_batch_round(&mut c, &mut buf))
                    });
                }
                _ => {
                    let order = if case == "order-9" { HIGH_ORDER } else { 0 };
                    let held = make_maximal(a, &mut c);
                    if order == 0 {
                        measured_loop(&mut || (0..n).for_each(|_| gm_direct_pair(&mut c, 0)));
                    } else {
                        measured_loop(&mut || (0..n).for_each(|_| gm_pair(&mut c, order)));
                    }
                    check_still_maximal(a, &mut c);
                    release(&mut c, held);
                }
            }
            check_no_fallback(&c);
        }
        "buddy_system_allocator" => match (case, batch) {
            ("order-0 steady", _) => {
                let mut f = peer_steady();
                measured_loop(&mut || (0..n).for_each(|_| peer_pair(&mut f, 1)));
            }
            (_, Some(pages)) => {
                let mut f = peer_fresh();
                let mut buf = vec![0usize; pages];
                measured_loop(&mut || (0..rounds).for_each(|_| peer_batch_round(&mut f, &mut buf)));
                peer_assert_untouched(&mut f);
            }
            _ => {
                let frames = if case == "order-9" {
                    1 << HIGH_ORDER
                } else {
                    1
                };
                let mut f = peer_fresh();
                peer_assert_untouched(&mut f);
                measured_loop(&mut || (0..n).for_each(|_| peer_pair(&mut f, frames)));
                peer_assert_untouched(&mut f);
            }
        },
        _ => {
            let mut v = vec_fresh();
            if let Some(pages) = batch {
                let mut buf = vec![0u64; pages];
                measured_loop(&mut || (0..rounds).for_each(|_| vec_batch_round(&mut v, &mut buf)));
            } else {
                measured_loop(&mut || (0..n).for_each(|_| vec_pair(&mut v)));
            }
        }
    }
    // The script reads `pairs=`; the time is only a sanity check (it
    // includes setup, and under valgrind means nothing).
    println!(
        "case={case:?} contender={who} pairs={counted} mib={mib} wall_ms={}",
        t.elapsed().as_millis()
    );
}
