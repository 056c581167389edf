use super::*;
use crate::phys::sim::SimMemory;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// 1 MiB of simulated RAM at 0 with `reserved` ranges (in pages) taken.
fn setup(reserved: &[(u64, u64)]) -> (Memblock, SimMemory) {
    let sim = SimMemory::new(PhysAddr(0), 0x100000);
    let mut mb = Memblock::new();
    for &(p, n) in reserved {
        mb.reserve(&sim, Pfn(p).addr(), n * PAGE_SIZE).unwrap();
    }
    // SAFETY: nothing lives in simulated RAM and everything it covers is
    // backed by `sim`.
    unsafe { mb.add(&sim, PhysAddr(0), 0x100000) }.unwrap();
    (mb, sim)
}

#[test]
fn basic_alloc_and_free_checks() {
    let (mut mb, m) = setup(&[(0, 1)]);
    let mut fa = FrameAllocator::from_memblock(&mut mb, &m).unwrap();
    // Page 0 reserved, page 1 holds the bitmaps.
    assert_eq!(mb.reserved()[0].end(), PhysAddr(0x2000));
    assert_eq!(fa.span(), (Pfn(0), Pfn(256)));
    assert_eq!(fa.total_pages(), 254);
    assert_eq!(fa.free_pages(), 254);
    assert_eq!(fa.alloc(&m), Some(Pfn(2)));
    assert_eq!(fa.alloc_run(&m, 10), Some((Pfn(3), 10)));
    assert_eq!(fa.free_pages(), 243);
    assert!(!fa.is_free(&m, Pfn(2)));
    fa.free_run(&m, Pfn(2), 1).unwrap();
    assert!(fa.is_free(&m, Pfn(2)));
    assert_eq!(fa.free_run(&m, Pfn(2), 1), Err(FrameError::AlreadyFree));
    assert_eq!(fa.free_run(&m, Pfn(3), 11), Err(FrameError::AlreadyFree));
    assert_eq!(fa.free_run(&m, Pfn(0), 1), Err(FrameError::NotManaged));
    assert_eq!(fa.free_run(&m, Pfn(1), 1), Err(FrameError::NotManaged));
    assert_eq!(fa.free_run(&m, Pfn(256), 1), Err(FrameError::OutOfRange));
    assert_eq!(fa.free_run(&m, Pfn(250), 10), Err(FrameError::OutOfRange));
    assert_eq!(
        fa.free_run(&m, Pfn(3), u64::MAX),
        Err(FrameError::OutOfRange)
    );
    assert_eq!(fa.free_run(&m, Pfn(3), 0), Ok(()));
    assert_eq!(fa.free_pages(), 244);
    assert_eq!(fa.alloc_run(&m, 0), None);
}

#[test]
fn next_fit_wraps_around() {
    let (mut mb, m) = setup(&[]);
    let mut fa = FrameAllocator::from_memblock(&mut mb, &m).unwrap();
    assert_eq!(fa.alloc(&m), Some(Pfn(1)));
    fa.free_run(&m, Pfn(1), 1).unwrap();
    // The cursor moved on: the freed frame is not reused immediately.
    assert_eq!(fa.alloc(&m), Some(Pfn(2)));
    assert_eq!(fa.alloc_run(&m, 1000), Some((Pfn(3), 253)));
    // End reached: search wraps to the start.
    assert_eq!(fa.alloc(&m), Some(Pfn(1)));
    assert_eq!(fa.alloc(&m), None);
    assert_eq!(fa.free_pages(), 0);
}

#[test]
fn runs_cross_words_and_stop_at_holes() {
    let (mut mb, m) = setup(&[(150, 1)]);
    let mut fa = FrameAllocator::from_memblock(&mut mb, &m).unwrap();
    assert_eq!(fa.alloc_run(&m, 60), Some((Pfn(1), 60)));
    assert_eq!(fa.alloc_run(&m, 500), Some((Pfn(61), 89)));
    assert_eq!(fa.alloc_run(&m, 500), Some((Pfn(151), 105)));
    assert_eq!(fa.alloc_run(&m, 1), None);
    fa.free_run(&m, Pfn(64), 128 - 64).unwrap();
    assert_eq!(fa.alloc_run(&m, 64), Some((Pfn(64), 64)));
}

#[test]
fn empty_memblock_is_an_error() {
    let m = SimMemory::new(PhysAddr(0), 0);
    let mut mb = Memblock::new();
    assert_eq!(
        FrameAllocator::from_memblock(&mut mb, &m),
        Err(FrameError::NoMemory)
    );
    // SAFETY: never written: the range holds no whole page, so no bitmap is
    // allocated.
    unsafe { mb.add(&m, PhysAddr(0x10), 0x100) }.unwrap();
    assert_eq!(
        FrameAllocator::from_memblock(&mut mb, &m),
        Err(FrameError::NoMemory)
    );
}

#[test]
fn no_room_for_bitmap() {
    let (mut mb, m) = setup(&[(0, 256)]);
    assert_eq!(
        FrameAllocator::from_memblock(&mut mb, &m),
        Err(FrameError::Memblock(MemblockError::NoMemory))
    );
}

// ---- property test against a set model ----

#[derive(Debug, Clone)]
enum Op {
    /// `alloc_run(max)`.
    Alloc(u64),
    /// Free part of a run we hold: (which run, offset, length), taken
    /// modulo what exists.
    FreeHeld(usize, u64, u64),
    /// Free an arbitrary run; the model predicts the outcome, which covers
    /// double frees, reserved frames and out-of-range frames.
    FreeAny(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..80u64).prop_map(Op::Alloc),
        2 => (any::<usize>(), any::<u64>(), any::<u64>()).prop_map(|(i, o, l)| Op::FreeHeld(i, o, l)),
        1 => (0..270u64, 1..6u64).prop_map(|(p, n)| Op::FreeAny(p, n)),
    ]
}

proptest! {
    #[test]
    fn matches_model(
        reserved in prop::collection::vec((0..256u64, 1..8u64), 0..12),
        ops in prop::collection::vec(op(), 0..300),
    ) {
        let (mut mb, m) = setup(&reserved);
        let mut fa = match FrameAllocator::from_memblock(&mut mb, &m) {
            Ok(fa) => fa,
            Err(e) => {
                // Only possible when reservations leave no page for the bitmap.
                prop_assert_eq!(e, FrameError::Memblock(MemblockError::NoMemory));
                return Ok(());
            }
        };
        let managed: BTreeSet<u64> = mb
            .free_ranges()
            .flat_map(|(s, e)| s.pfn().0..e.pfn().0)
            .collect();
        let initial = fa.free_pages();
        prop_assert_eq!(initial, managed.len() as u64);
        prop_assert_eq!(fa.total_pages(), initial);
        let (lo, hi) = (fa.span().0 .0, fa.span().1 .0);
        // Frames we hold, and the runs they came in.
        let mut held: BTreeSet<u64> = BTreeSet::new();
        let mut runs: Vec<(u64, u64)> = Vec::new();

        for op in ops {
            match op {
                Op::Alloc(max) => match fa.alloc_run(&m, max) {
                    Some((p, n)) => {
                        prop_assert!(n >= 1 && n <= max);
                        for f in p.0..p.0 + n {
                            prop_assert!(managed.contains(&f), "unmanaged frame {}", f);
                            prop_assert!(held.insert(f), "frame {} handed out twice", f);
                        }
                        runs.push((p.0, n));
                    }
                    None => prop_assert_eq!(held.len(), managed.len()),
                },
                Op::FreeHeld(i, o, l) => {
                    if runs.is_empty() {
                        continue;
                    }
                    let i = i % runs.len();
                    let (p, n) = runs.swap_remove(i);
                    let o = o % n;
                    let l = 1 + l % (n - o);
                    fa.free_run(&m, Pfn(p + o), l).unwrap();
                    for f in p + o..p + o + l {
                        held.remove(&f);
                    }
                    if o > 0 {
                        runs.push((p, o));
                    }
                    if o + l < n {
                        runs.push((p + o + l, n - o - l));
                    }
                }
                Op::FreeAny(p, n) => {
                    let frames = p..p + n;
                    let expect = if p < lo || p + n > hi {
                        Err(FrameError::OutOfRange)
                    } else if !frames.clone().all(|f| managed.contains(&f)) {
                        Err(FrameError::NotManaged)
                    } else if !frames.clone().all(|f| held.contains(&f)) {
                        Err(FrameError::AlreadyFree)
                    } else {
                        Ok(())
                    };
                    // The allocator only ever writes its bitmap pages.
                    let bitmap_bytes = (fa.words * 16).next_multiple_of(PAGE_SIZE);
                    let bitmap = fa.bitmap;
                    let snap = || m.snapshot_range(bitmap, bitmap_bytes);
                    let (fa_before, mem_before) = (fa.clone(), snap());
                    let got = fa.free_run(&m, Pfn(p), n);
                    prop_assert_eq!(got, expect);
                    if got.is_err() {
                        prop_assert_eq!(&fa, &fa_before);
                        prop_assert!(snap() == mem_before, "failed free wrote memory");
                    } else {
                        for f in frames {
                            held.remove(&f);
                        }
                        // Keep `runs` to frames still held.
                        runs = runs
                            .iter()
                            .flat_map(|&(s, len)| (s..s + len).map(|f| (f, 1)))
                            .filter(|(f, _)| held.contains(f))
                            .collect();
                    }
                }
            }
            prop_assert_eq!(fa.free_pages() + held.len() as u64, initial);
            prop_assert_eq!(fa.total_pages(), initial);
        }
        for f in &held {
            prop_assert!(!fa.is_free(&m, Pfn(*f)));
        }
        for (p, n) in runs.drain(..) {
            fa.free_run(&m, Pfn(p), n).unwrap();
        }
        prop_assert_eq!(fa.free_pages(), initial);
        for f in lo..hi {
            prop_assert_eq!(fa.is_free(&m, Pfn(f)), managed.contains(&f));
        }
        // Everything can be allocated again, exactly once.
        let mut again = BTreeSet::new();
        while let Some((p, n)) = fa.alloc_run(&m, 64) {
            for f in p.0..p.0 + n {
                prop_assert!(again.insert(f));
            }
        }
        prop_assert_eq!(again, managed);
    }
}
